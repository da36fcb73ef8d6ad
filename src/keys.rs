//! The keyspace: the one place that names Redis keys.
//!
//! Every key of a tenant carries the hash tag `{tenant}`, so each Lua script
//! touches a single cluster slot. Ids that end up inside key names are
//! validated here (`[A-Za-z0-9_.-]`, bounded length), so no input can forge a
//! key of another tenant or escape its namespace.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

/// Longest tenant id accepted.
pub const MAX_TENANT_LEN: usize = 64;
/// Longest id of any other kind (instance ids, namespaces, tasks, keys).
pub const MAX_ID_LEN: usize = 128;

/// Checks that `value` is a non-empty `[A-Za-z0-9_.-]` string of at most `max` bytes.
pub fn validate_id(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(Error::invalid(
            field,
            format!("longer than {max} characters"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Error::invalid(
            field,
            format!("character {bad:?} not allowed (use A-Z a-z 0-9 _ . -)"),
        ));
    }
    Ok(())
}

/// A validated tenant id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TenantId(String);

impl TenantId {
    pub fn new(value: impl Into<String>) -> Result<Self, Error> {
        let value = value.into();
        validate_id("tenant", &value, MAX_TENANT_LEN)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        TenantId::new(raw).map_err(serde::de::Error::custom)
    }
}

/// A validated id of an agent instance, namespace, task or similar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Ident(String);

impl Ident {
    pub fn new(field: &str, value: impl Into<String>) -> Result<Self, Error> {
        let value = value.into();
        validate_id(field, &value, MAX_ID_LEN)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Ident {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ident::new("id", raw).map_err(serde::de::Error::custom)
    }
}

/// Ids in API documents: strings of `[A-Za-z0-9_.-]`, at most `max` long.
fn id_schema(max: usize) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": format!("^[A-Za-z0-9_.-]{{1,{max}}}$"),
    })
}

impl schemars::JsonSchema for TenantId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TenantId".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        id_schema(MAX_TENANT_LEN)
    }
}

impl schemars::JsonSchema for Ident {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ident".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        id_schema(MAX_ID_LEN)
    }
}

/// Shards of the sink's ready signal ([`Keyspace::outbox_ready`]).
pub const READY_SHARDS: usize = 16;

/// The shard of `tenant`'s ready signal: FNV-1a (32 bit) of its name,
/// modulo [`READY_SHARDS`] (clients in other languages compute the same).
pub fn ready_shard(tenant: &str) -> usize {
    let hash = tenant.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash as usize % READY_SHARDS
}

/// A background chore that works from deadlines ([`Keyspace::due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chore {
    /// The reaper: stale agents, expired invocations and blackboard
    /// entries, metered charges.
    Reap,
    /// The reclaimer: stalled items of running jobs.
    Reclaim,
}

impl Chore {
    pub fn name(self) -> &'static str {
        match self {
            Chore::Reap => "reap",
            Chore::Reclaim => "reclaim",
        }
    }
}

/// For a tenant's outbox key, the ready-signal key to write and the tenant
/// to write into it; `None` for anything that is not an outbox key.
pub fn ready_signal(outbox_key: &[u8]) -> Option<(String, String)> {
    let key = std::str::from_utf8(outbox_key).ok()?;
    let rest = key.strip_suffix("}:outbox")?;
    let (prefix, tenant) = rest.rsplit_once(":{")?;
    TenantId::new(tenant).ok()?;
    let keys = Keyspace::new(prefix).ok()?;
    Some((keys.outbox_ready(ready_shard(tenant)), tenant.to_string()))
}

/// The key names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Keyspace {
    prefix: Arc<str>,
}

impl Keyspace {
    /// `prefix` may contain `[A-Za-z0-9_.:-]`; braces would break the hash tags.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        if prefix.is_empty() || prefix.len() > MAX_TENANT_LEN {
            return Err(Error::invalid("prefix", "must be 1-64 characters"));
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
        {
            return Err(Error::invalid(
                "prefix",
                "only A-Z a-z 0-9 _ . : - are allowed",
            ));
        }
        Ok(Self {
            prefix: prefix.into(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tenants registry, one set per shard (of the tenant, as
    /// [`ready_shard`]): how the sweeps find every tenant.
    pub fn tenants(&self, shard: usize) -> String {
        format!("{}:tenants:{shard}", self.prefix)
    }

    /// The shard of the tenants registry that holds `tenant`.
    pub fn tenants_of(&self, tenant: &str) -> String {
        self.tenants(ready_shard(tenant))
    }

    /// The unsharded registry of deployments from before the shards: read
    /// (with the shards), never written.
    pub fn tenants_legacy(&self) -> String {
        format!("{}:tenants", self.prefix)
    }

    /// API tokens, one hash per shard (of the token id, as
    /// [`ready_shard`]): token id → record (tenant, hash of the secret).
    /// Shards spread the records over a cluster's masters; a rotation's new
    /// id is drawn in its old one's shard so one MULTI swaps them.
    pub fn tokens(&self, shard: usize) -> String {
        format!("{}:tokens:{shard}", self.prefix)
    }

    /// The shard of the token records that holds token `id`.
    pub fn tokens_of(&self, id: &str) -> String {
        self.tokens(ready_shard(id))
    }

    /// The unsharded token hash of deployments from before the shards:
    /// read, rotated in place and revoked from, never added to.
    pub fn tokens_legacy(&self) -> String {
        format!("{}:tokens", self.prefix)
    }

    /// Pub/sub channel of revoked (and rotated) token ids: each process
    /// drops them from its token cache.
    pub fn tokens_revoked(&self) -> String {
        format!("{}:tokens:revoked", self.prefix)
    }

    /// The "ready" signals of the sink, one zset per shard: tenant → time
    /// its outbox was first written since the sink last took the signal.
    /// Written after every script call that writes an outbox (see
    /// [`ready_signal`]); shards spread them over a cluster's masters.
    pub fn outbox_ready(&self, shard: usize) -> String {
        format!("{}:outbox:ready:{shard}", self.prefix)
    }

    /// Every shard of [`outbox_ready`](Self::outbox_ready).
    pub fn outbox_ready_all(&self) -> Vec<String> {
        (0..READY_SHARDS).map(|s| self.outbox_ready(s)).collect()
    }

    /// The deadlines of one background chore, one zset per shard (the
    /// shard of the tenant, as [`ready_shard`]): tenant → the time (ms) it
    /// next needs the chore. Written (`ZADD LT`) next to each call that
    /// creates a deadline; the chore visits only tenants that are due.
    pub fn due(&self, chore: Chore, shard: usize) -> String {
        format!("{}:due:{}:{shard}", self.prefix, chore.name())
    }

    /// Set once a sweep of `chore` has visited every tenant: later sweeps
    /// are spread over their period (see `due`).
    pub fn due_swept(&self, chore: Chore) -> String {
        format!("{}:due:{}:swept", self.prefix, chore.name())
    }

    /// The deadline key of `tenant` for `chore`.
    pub fn due_of(&self, chore: Chore, tenant: &str) -> String {
        self.due(chore, ready_shard(tenant))
    }

    /// A token's rate-limit state (one key per token, expiring when idle).
    pub fn rate_limit(&self, token_id: &str) -> String {
        format!("{}:rl:{token_id}", self.prefix)
    }

    /// The keys of one tenant.
    pub fn tenant(&self, tenant: &TenantId) -> TenantKeys {
        TenantKeys {
            base: format!("{}:{{{}}}", self.prefix, tenant.as_str()),
        }
    }
}

/// Key names of one tenant, all sharing the `{tenant}` hash tag.
#[derive(Clone, Debug)]
pub struct TenantKeys {
    base: String,
}

impl TenantKeys {
    fn key(&self, suffix: &str) -> String {
        format!("{}:{}", self.base, suffix)
    }

    /// Hash `total`, `reserved`, `spent` in minor units.
    pub fn credits(&self) -> String {
        self.key("credits")
    }

    /// Stream of ledger, cancellation, audit and job-summary events; group `sink`.
    pub fn outbox(&self) -> String {
        self.key("outbox")
    }

    /// Zset of job ids by creation time (ms).
    pub fn jobs(&self) -> String {
        self.key("jobs")
    }

    /// Set of running job ids, scanned by the reclaimer.
    pub fn active_jobs(&self) -> String {
        self.key("jobs:active")
    }

    pub fn job(&self, job: &Uuid) -> String {
        self.key(&format!("job:{job}"))
    }

    /// Stream of items (one entry per attempt); group `workers`.
    pub fn job_items(&self, job: &Uuid) -> String {
        self.key(&format!("job:{job}:items"))
    }

    /// Bitmap of items in a terminal state: makes completion idempotent.
    pub fn job_done(&self, job: &Uuid) -> String {
        self.key(&format!("job:{job}:done"))
    }

    /// List of a large spawn's inputs not yet in the items stream (see
    /// `lua/job_enqueue.lua`); gone once every item is enqueued.
    pub fn job_staging(&self, job: &Uuid) -> String {
        self.key(&format!("job:{job}:staging"))
    }

    /// Stream of outputs in completion order.
    pub fn job_results(&self, job: &Uuid) -> String {
        self.key(&format!("job:{job}:results"))
    }

    /// Stream of dead letters: messages and items past their retries.
    pub fn dlq(&self) -> String {
        self.key("dlq")
    }

    /// Stream of outbox events Postgres refused (fields `m.*` the original
    /// event, `reason`, `entry`, `ts`), kept until replayed or discarded.
    pub fn outbox_dead(&self) -> String {
        self.key("outbox:dead")
    }

    /// Hash of item-duration histogram buckets and outcomes of one task.
    pub fn task_stats(&self, task: &str) -> String {
        self.key(&format!("stats:task:{task}"))
    }

    /// The same history, for one worker agent doing one task.
    pub fn agent_task_stats(&self, worker_agent: &str, task: &str) -> String {
        self.key(&format!("stats:agent:{worker_agent}:{task}"))
    }

    /// Zset of agent instance ids by last heartbeat (ms).
    pub fn agents(&self) -> String {
        self.key("agents")
    }

    pub fn agent(&self, instance: &Ident) -> String {
        format!("{}{instance}", self.agent_prefix())
    }

    /// What `agent` puts before the instance id (the reaper names hashes from it).
    pub fn agent_prefix(&self) -> String {
        self.key("agent:")
    }

    /// Registry index: zset of the instances of one agent type, by last heartbeat.
    pub fn agents_of_type(&self, agent_id: &Ident) -> String {
        format!("{}{agent_id}", self.agents_of_type_prefix())
    }

    /// Registry index: zset of the instances working on one job, by last heartbeat.
    /// The record of a deregistered instance, kept as `stopped` until it
    /// expires (`inbox_retention`).
    pub fn agent_stopped(&self, instance: &Ident) -> String {
        self.key(&format!("agent_stopped:{instance}"))
    }

    /// Zset of deregistered instances whose record is kept: instance → the
    /// time (ms) it stopped.
    pub fn agents_stopped(&self) -> String {
        self.key("agents:stopped")
    }

    pub fn agents_of_job(&self, job: &Uuid) -> String {
        format!("{}{job}", self.agents_of_job_prefix())
    }

    /// Registry index: zset of the instances whose stored status is `status`
    /// (starting, running, idle, stopped or stale), by last heartbeat.
    pub fn agents_with_status(&self, status: &str) -> String {
        format!("{}{status}", self.agents_with_status_prefix())
    }

    /// The prefixes of the three registry indexes, for the registry scripts:
    /// they learn an instance's type, job and status from its hash, so they
    /// append that value to the prefix (same tenant, same slot).
    pub fn agents_of_type_prefix(&self) -> String {
        self.key("agents:by-type:")
    }

    pub fn agents_of_job_prefix(&self) -> String {
        self.key("agents:by-job:")
    }

    pub fn agents_with_status_prefix(&self) -> String {
        self.key("agents:by-status:")
    }

    /// Stream of messages to one instance; group `inbox`.
    pub fn inbox(&self, instance: &Ident) -> String {
        format!("{}{instance}", self.inbox_prefix())
    }

    /// What every inbox key of the tenant starts with.
    pub fn inbox_prefix(&self) -> String {
        self.key("inbox:")
    }

    /// Zset of one inbox's entries marked read before they were delivered
    /// (entry id → its milliseconds): readers acknowledge them instead of
    /// handing them out (`lua/inbox_mark_read.lua`, `lua/inbox_settle_read.lua`).
    pub fn inbox_read_early(&self, instance: &Ident) -> String {
        self.key(&format!("inbox-read:{instance}"))
    }

    /// Zset of the tenant's broadcasts being delivered in chunks: id → time
    /// (ms) of its last progress (the reaper finishes a stalled one).
    pub fn broadcasts(&self) -> String {
        self.key("broadcasts")
    }

    /// Hash of one broadcast being delivered in chunks (see
    /// `lua/broadcast_deliver.lua`); gone once every recipient is handled.
    pub fn broadcast(&self, id: &Uuid) -> String {
        self.key(&format!("broadcast:{id}"))
    }

    /// List of a chunked broadcast's recipients (instance ids), read by
    /// position; gone with its hash.
    pub fn broadcast_recipients(&self, id: &Uuid) -> String {
        self.key(&format!("broadcast:{id}:to"))
    }

    /// Hash of one live invocation.
    pub fn invoke(&self, invoke_id: &str) -> String {
        self.key(&format!("invoke:{invoke_id}"))
    }

    /// Zset of pending invocations by deadline (ms): what the sweeper expires.
    pub fn pending_invokes(&self) -> String {
        self.key("invokes:pending")
    }

    /// Stream of replies to one process's waiting callers.
    pub fn replies(&self, process: &str) -> String {
        self.key(&format!("replies:{process}"))
    }

    /// The keys of one blackboard namespace, in the order the blackboard
    /// scripts take them (after the credits hash).
    pub fn blackboard(&self, namespace: &Ident) -> BlackboardKeys {
        let p = format!("{}{namespace}:", self.blackboard_root());
        BlackboardKeys {
            vals: format!("{p}vals"),
            nums: format!("{p}nums"),
            lex: format!("{p}lex"),
            score: format!("{p}score"),
            agg: format!("{p}agg"),
            exp: format!("{p}exp"),
            fence: format!("{p}fence"),
            namespaces: self.blackboard_namespaces(),
            names: self.blackboard_names(),
            lock_prefix: format!("{p}lock:"),
        }
    }

    /// What every blackboard key of the tenant starts with (`…bb:`); a
    /// namespace's keys are `<this><namespace>:<structure>`.
    pub fn blackboard_root(&self) -> String {
        self.key("bb:")
    }

    /// Set of blackboard namespaces holding entries with a TTL (what the sweeper visits).
    pub fn blackboard_namespaces(&self) -> String {
        self.key("bbns")
    }

    /// Set of every blackboard namespace written to (`GET /namespaces`).
    pub fn blackboard_names(&self) -> String {
        self.key("bbnames")
    }
}

/// Keys of one blackboard namespace.
#[derive(Clone, Debug)]
pub struct BlackboardKeys {
    /// Hash key -> compact JSON value.
    pub vals: String,
    /// Hash key -> micro-units, numeric values only.
    pub nums: String,
    /// Zset of keys (lexicographic listing).
    pub lex: String,
    /// Zset of numeric keys by value.
    pub score: String,
    /// Hash `keys`, `count`, `sum` (micro-units).
    pub agg: String,
    /// Zset key -> expiry (ms).
    pub exp: String,
    /// Hash lock name -> last fencing token.
    pub fence: String,
    pub namespaces: String,
    /// The tenant's set of every namespace written to.
    pub names: String,
    lock_prefix: String,
}

impl BlackboardKeys {
    /// The hash of one lock (holder, token), expiring with the lock.
    /// A lock's hash; `name` is checked by the blackboard (any text a key
    /// may be, `:` included: it follows the hash tag, so it names no slot).
    pub fn lock(&self, name: &str) -> String {
        format!("{}{name}", self.lock_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_key_names_its_ready_signal() {
        let ks = Keyspace::new("ab:x").unwrap();
        let t = TenantId::new("acme.1").unwrap();
        let (key, tenant) = ready_signal(ks.tenant(&t).outbox().as_bytes()).unwrap();
        assert_eq!(tenant, "acme.1");
        assert_eq!(key, ks.outbox_ready(ready_shard("acme.1")));
        assert!(ready_signal(ks.tenant(&t).credits().as_bytes()).is_none());
        assert!(ready_signal(b"ab:{a b}:outbox").is_none());
        // FNV-1a, as other languages compute it.
        assert_eq!(ready_shard(""), 0x811c_9dc5 % READY_SHARDS);
        assert_eq!(ready_shard("a"), 0xe40c_292c_u32 as usize % READY_SHARDS);
    }

    #[test]
    fn tenant_keys_share_one_hash_tag() {
        let ks = Keyspace::new("ab").unwrap();
        let t = TenantId::new("acme").unwrap();
        let keys = ks.tenant(&t);
        let job = Uuid::nil();
        for key in [
            keys.credits(),
            keys.outbox(),
            keys.jobs(),
            keys.job(&job),
            keys.job_items(&job),
            keys.dlq(),
            keys.outbox_dead(),
        ] {
            assert!(key.starts_with("ab:{acme}:"), "{key}");
        }
    }

    #[test]
    fn ids_that_could_forge_keys_are_refused() {
        for bad in ["", "a}b", "a{b", "a:b", "a b", "ü", "a*", &"x".repeat(65)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "tenant_1", "A.b-c", &"x".repeat(64)] {
            assert!(TenantId::new(good).is_ok(), "{good:?} refused");
        }
        assert!(Keyspace::new("ab{x}").is_err());
        assert!(Keyspace::new("test:123").is_ok());
    }
}
