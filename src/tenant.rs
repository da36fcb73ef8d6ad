//! A handle scoped to one tenant: `bus.tenant(&t)` binds the tenant once,
//! and every operation reached through it (`.jobs()`, `.credits()`,
//! `.agents()`, `.messages()`, `.invocations()`, `.blackboard(ns)`) acts
//! on that tenant only, so a call against another tenant cannot be written
//! by passing the wrong id. The REST handlers
//! reach the engine only through it (their `Tenant` extractor yields one).
//!
//! Each group forwards to the `AgentBus` operation of the same capability
//! (the table below says which), which stays public for the engine's own
//! background tasks, the tools and the tests.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::agents::dlq::DeadLetter;
use crate::agents::invoke::{Answer, Invocation, InvokeRequest, InvokeResult};
use crate::agents::messages::{
    Broadcast, InboxDepth, Message, MessageFilter, MessagePage, OutgoingMessage, Receiver,
    SentMessage,
};
use crate::agents::registry::{AgentFilter, AgentStatus, Instance, Registration};
use crate::blackboard::Blackboard;
use crate::bus::AgentBus;
use crate::credits::Balance;
use crate::error::Result;
use crate::inspect::{AgentInspection, JobInspection};
use crate::jobs::{
    CancelOutcome, ClaimedItem, CompleteOutcome, FailOutcome, Job, JobPage, JobSpec, ResultPage,
};
use crate::keys::{Ident, TenantId};
use crate::money::Credits;
use crate::payload::{Encode, Payload};
use crate::simulate::{Simulation, StageSpec, TaskHistory};

/// One tenant's view of the bus.
#[derive(Clone)]
pub struct TenantBus {
    bus: AgentBus,
    tenant: TenantId,
}

impl AgentBus {
    /// The handle for `tenant`'s operations.
    pub fn tenant(&self, tenant: &TenantId) -> TenantBus {
        TenantBus {
            bus: self.clone(),
            tenant: tenant.clone(),
        }
    }
}

impl TenantBus {
    pub fn id(&self) -> &TenantId {
        &self.tenant
    }

    pub fn jobs(&self) -> Jobs<'_> {
        Jobs(self)
    }

    pub fn credits(&self) -> Account<'_> {
        Account(self)
    }

    pub fn agents(&self) -> Agents<'_> {
        Agents(self)
    }

    pub fn messages(&self) -> Messages<'_> {
        Messages(self)
    }

    pub fn invocations(&self) -> Invocations<'_> {
        Invocations(self)
    }

    /// A namespace of the tenant's blackboard.
    pub fn blackboard(&self, namespace: &Ident) -> Blackboard {
        self.bus.blackboard(&self.tenant, namespace)
    }

    /// The tenant's blackboard namespaces, in name order (at most `most`).
    pub async fn namespaces(&self, most: usize) -> Result<Vec<String>> {
        self.bus.namespaces(&self.tenant, most).await
    }

    /// The state of the tenant's outbox (what the sink has still to mirror).
    pub async fn outbox_status(&self) -> Result<crate::outbox::status::OutboxStatus> {
        let mut rows = self
            .bus
            .outbox_status_of(std::slice::from_ref(&self.tenant))
            .await?;
        rows.pop()
            .ok_or_else(|| crate::error::Error::protocol("no outbox status"))
    }
}

/// Declares a group's operations, each forwarding to the `AgentBus` method
/// after `=` with the handle's tenant.
macro_rules! forward {
    ($group:ident { $( $(#[$meta:meta])* fn $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty = $target:ident; )* }) => {
        impl $group<'_> {
            $(
                $(#[$meta])*
                pub async fn $name(&self, $($arg: $ty),*) -> $ret {
                    self.0.bus.$target(&self.0.tenant, $($arg),*).await
                }
            )*
        }
    };
}

/// Jobs: spawn, claim, complete, fail, cancel, read, simulate.
pub struct Jobs<'a>(&'a TenantBus);

forward!(Jobs {
    fn spawn(spec: &JobSpec) -> Result<Job> = spawn_job;
    fn get(id: &Uuid) -> Result<Job> = job;
    fn list(offset: usize, limit: usize) -> Result<JobPage> = list_jobs;
    fn claim(job: &Uuid, consumer: &str, count: usize, wait: Duration) -> Result<Vec<ClaimedItem>> = claim_items;
    fn complete(job: &Uuid, outputs: &[(String, impl Encode)]) -> Result<Vec<CompleteOutcome>> = complete_items;
    fn complete_batch(job: &Uuid, outputs: &[(String, impl Encode)]) -> Result<Vec<CompleteOutcome>> = complete_batch;
    fn fail(job: &Uuid, item_id: &str, error: &str, retry: bool) -> Result<FailOutcome> = fail_item;
    fn release(job: &Uuid, worker: &str, item_ids: &[String]) -> Result<Vec<String>> = release_items;
    fn cancel(job: &Uuid, cancelled_by: &str, reason: &str) -> Result<CancelOutcome> = cancel_job;
    fn results(job: &Uuid, after: Option<&str>, limit: usize) -> Result<ResultPage> = job_results;
    fn results_in(job: &Uuid, after: Option<&str>, limit: usize, newest_first: bool) -> Result<ResultPage> = job_results_in;
    fn simulate(spec: &JobSpec, stages: &[StageSpec]) -> Result<Simulation> = simulate;
    fn history(worker_agent: &str, task: &str) -> Result<Option<TaskHistory>> = task_history;
    fn inspect(id: &Uuid) -> Result<JobInspection> = inspect_job;
});

/// The tenant's credits.
pub struct Account<'a>(&'a TenantBus);

forward!(Account {
    fn balance() -> Result<Balance> = balance;
    fn grant(amount: Credits, context: Value) -> Result<Balance> = grant_credits;
});

/// Agent instances.
pub struct Agents<'a>(&'a TenantBus);

forward!(Agents {
    fn register(reg: &Registration) -> Result<Instance> = register_agent;
    fn heartbeat(instance: &Ident, status: Option<AgentStatus>) -> Result<AgentStatus> = heartbeat;
    fn deregister(instance: &Ident) -> Result<()> = deregister_agent;
    fn get(instance: &Ident) -> Result<Instance> = agent;
    fn list(filter: &AgentFilter, limit: usize) -> Result<Vec<Instance>> = list_agents;
    fn inspect(instance: &Ident) -> Result<AgentInspection> = inspect_agent;
});

/// Messages between the tenant's agents, and their dead letters.
pub struct Messages<'a>(&'a TenantBus);

forward!(Messages {
    fn send(msg: &OutgoingMessage) -> Result<SentMessage> = send_message;
    fn request(msg: &OutgoingMessage) -> Result<SentMessage> = request;
    fn reply(original: &Message, from: &Ident, payload: impl Into<Payload>) -> Result<SentMessage> = reply;
    fn broadcast(job: &Uuid, from: &Ident, message_type: &str, payload: impl Into<Payload>) -> Result<Broadcast> = broadcast;
    fn receive(instance: &Ident, count: usize, wait: Duration) -> Result<Vec<Message>> = receive_messages;
    fn wait_for(instance: &Ident, timeout: Duration) -> Result<Option<Message>> = wait_for_message;
    fn ack(instance: &Ident, ids: &[&str]) -> Result<u64> = ack_messages;
    fn list(instance: &Ident, filter: &MessageFilter, after: Option<&str>, limit: usize) -> Result<MessagePage> = list_messages;
    fn inbox_depths(instances: &[String]) -> Result<Vec<InboxDepth>> = inbox_depths;
    fn dead_letters(after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> = dead_letters;
    fn replay_dead_letter(entry_id: &str) -> Result<String> = replay_dead_letter;
});

impl Messages<'_> {
    /// A receiver of `instance`'s inbox.
    pub fn receiver(&self, instance: &Ident) -> Receiver {
        self.0.bus.receiver(&self.0.tenant, instance)
    }
}

/// Invocations: call an agent and wait, answer, read the record.
pub struct Invocations<'a>(&'a TenantBus);

forward!(Invocations {
    fn invoke(req: &InvokeRequest) -> Result<InvokeResult> = invoke;
    fn respond(invoke_id: &str, response: &impl Encode, error: Option<&str>, responder: Option<&Ident>) -> Result<(String, i64)> = respond;
    fn get(invoke_id: &str) -> Result<Invocation> = invocation;
    fn expire(invoke_id: &str, force: bool) -> Result<Option<i64>> = expire_invoke;
});

impl Invocations<'_> {
    /// Answers the invocations addressed to `instance` with `handler` until
    /// `shutdown` (see `AgentBus::serve_invocations`).
    pub async fn serve<H, F>(
        &self,
        instance: &Ident,
        shutdown: tokio_util::sync::CancellationToken,
        handler: H,
    ) -> Result<()>
    where
        H: Fn(Payload) -> F,
        F: std::future::Future<Output = Answer>,
    {
        self.0
            .bus
            .serve_invocations(&self.0.tenant, instance, shutdown, handler)
            .await
    }
}
