//! The reaper: a background task that marks silent agents stale, ends
//! invocations whose caller stopped waiting (past their deadline) so their
//! reserved credits come back, sweeps expired blackboard entries, turns
//! metered blackboard charges into ledger events, and finishes broadcasts
//! whose sender stopped mid-way.
//!
//! It visits only tenants that are due ([`crate::due`]): registering an
//! agent or a heartbeat (due when it would turn stale), starting an
//! invocation (due at its deadline), every metered blackboard call (due
//! at once: its charge and any TTL) and beginning a chunked broadcast (due
//! when it would count as stalled) write the tenant's deadline; a visit
//! answers the next one from what the tenant still holds.

use tokio_util::sync::CancellationToken;

use crate::agents::registry::REAP_MOST;
use crate::bus::AgentBus;
use crate::due::{self, Schedule, Visited};
use crate::error::Result;
use crate::keys::{Chore, TenantId};

/// Whether the tenant holds anything the reaper looks after: instances,
/// pending invocations, namespaces with expiring entries, broadcasts in
/// delivery, or a metered charge not yet in the ledger. Two commands, so a sweep over idle tenants
/// stays cheap.
async fn has_work(bus: &AgentBus, tenant: &TenantId) -> Result<bool> {
    let keys = bus.keys(tenant);
    let mut conn = bus.redis().conn().await?;
    let (held, credits): (i64, std::collections::HashMap<String, String>) = redis::pipe()
        .cmd("EXISTS")
        .arg(keys.agents())
        .arg(keys.pending_invokes())
        .arg(keys.blackboard_namespaces())
        .arg(keys.broadcasts())
        .cmd("HGETALL")
        .arg(keys.credits())
        .query_async(&mut conn)
        .await?;
    Ok(held > 0
        || credits
            .iter()
            .any(|(field, amount)| field.starts_with("unbilled:") && amount != "0"))
}

/// One visit of a tenant: the five sweeps, then its next deadline (now
/// when a sweep stopped at its bound).
pub async fn visit(bus: AgentBus, tenant: TenantId) -> Result<Visited> {
    if !has_work(&bus, &tenant).await? {
        return Ok(Visited::default());
    }
    let stale = bus.reap_agents(&tenant).await?;
    let expired = bus.expire_due_invokes(&tenant).await?;
    bus.sweep_blackboards(&tenant).await?;
    bus.flush_metering(&tenant).await?;
    let (_, next_stall) = bus.resume_broadcasts(&tenant).await?;
    let next = if stale >= REAP_MOST {
        Some(due::now_ms())
    } else {
        [
            next_stall,
            bus.next_stale_at(&tenant).await?,
            bus.next_invoke_deadline(&tenant).await?,
            bus.next_expiry(&tenant).await?,
        ]
        .into_iter()
        .flatten()
        .min()
    };
    Ok(Visited {
        counts: (stale, expired as i64),
        next,
    })
}

/// One pass over every tenant (what the sweep does, all at once).
/// Returns (agents marked stale, invocations expired).
pub async fn reap_once(bus: &AgentBus) -> Result<(i64, usize)> {
    crate::metrics::reaper_run();
    let tenants = bus.tenants().await?;
    let (stale, expired) = bus.sweep_due(Chore::Reap, &tenants, &visit).await?;
    Ok((stale, expired as usize))
}

/// Runs the reaper on `schedule` until `shutdown`.
pub async fn run(bus: AgentBus, schedule: Schedule, shutdown: CancellationToken) {
    due::run(
        bus,
        Chore::Reap,
        schedule,
        ("stale agents", "expired invocations"),
        shutdown,
        visit,
    )
    .await
}
