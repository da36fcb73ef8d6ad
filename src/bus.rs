//! The shared handle every capability hangs off: Redis, the keyspace, the
//! price table and the operating limits. Cheap to clone.

use std::sync::Arc;
use std::time::Duration;

use crate::agents::reply_hub::ReplyHub;
use crate::auth::cache::TokenCache;
use crate::balance_cache::BalanceCache;
use crate::conn::Redis;
use crate::error::Result;
use crate::keys::{Keyspace, TenantId, TenantKeys};
use crate::prices::Prices;

/// Operating limits and retention, all configurable.
/// The default of every engine limit, named once: `Limits::default`, the
/// command line (`default_value_t`) and `Config::defaults` all read these.
pub mod defaults {
    pub const JOB_RETENTION_SECS: u64 = 24 * 3600;
    pub const MAX_ITEMS: usize = 100_000;
    pub const MAX_PAYLOAD_BYTES: usize = crate::payload::DEFAULT_MAX_BYTES;
    pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
    pub const MAX_INSTANCES: usize = 10_000;
    pub const RECLAIM_BATCH: usize = 100;
    pub const STALE_AFTER_SECS: u64 = 60;
    pub const INBOX_CAP: usize = 10_000;
    pub const MAX_DELIVERIES: u32 = 5;
    pub const REDELIVER_AFTER_SECS: u64 = 30;
    pub const INBOX_RETENTION_SECS: u64 = 24 * 3600;
    pub const INVOKE_RETENTION_SECS: u64 = 3600;
    pub const TOKEN_CACHE_SECS: u64 = 10;
    pub const BALANCE_CACHE_SECS: u64 = 5;
    pub const SPAWN_CHUNK: usize = 100;
    /// Largest spawn chunk accepted (configuration and library alike).
    pub const MAX_SPAWN_CHUNK: usize = 10_000;
    pub const SPAWN_STALL_SECS: u64 = 10;
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a finished job's keys stay in Redis.
    pub job_retention: Duration,
    /// Most items one job may have.
    pub max_items: usize,
    /// Largest payload (item input or output, message, invocation request
    /// or response), in bytes as stored (MessagePack).
    pub max_payload_bytes: usize,
    /// Most payload bytes one page of results or messages carries (at least
    /// one entry per page, so a page is at most this plus one payload).
    pub max_page_bytes: usize,
    /// Most agent instances one tenant may have registered at once.
    pub max_instances: usize,
    /// Most stalled entries one reclaim call handles.
    pub reclaim_batch: usize,
    /// An agent silent for longer than this is stale.
    pub stale_after: Duration,
    /// Most entries an inbox keeps (MAXLEN ~): a dead agent cannot fill memory.
    pub inbox_cap: usize,
    /// Deliveries of a message before it is dead-lettered.
    pub max_deliveries: u32,
    /// How long an unacknowledged message waits before it is delivered again.
    pub redeliver_after: Duration,
    /// How long an inbox stays readable after its agent deregistered.
    pub inbox_retention: Duration,
    /// How long a finished invocation stays in Redis (the audit trail lives on in Postgres).
    pub invoke_retention: Duration,
    /// How long a process may trust a cached token record without hearing
    /// of its revocation (zero: every request reads Redis).
    pub token_cache: Duration,
    /// How long a process may serve a cached balance that Redis has not
    /// said changed (zero: every balance is read from Redis).
    pub balance_cache: Duration,
    /// Most items one spawn script call enqueues: a larger job is enqueued
    /// in chunks, so no call holds Redis for long whatever the job's size.
    pub spawn_chunk: usize,
    /// A spawning job whose enqueuing made no progress for this long is
    /// finished by the reclaimer (its spawner is taken for dead).
    pub spawn_stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        use defaults as d;
        Self {
            job_retention: Duration::from_secs(d::JOB_RETENTION_SECS),
            max_items: d::MAX_ITEMS,
            max_payload_bytes: d::MAX_PAYLOAD_BYTES,
            max_page_bytes: d::MAX_PAGE_BYTES,
            max_instances: d::MAX_INSTANCES,
            reclaim_batch: d::RECLAIM_BATCH,
            stale_after: Duration::from_secs(d::STALE_AFTER_SECS),
            inbox_cap: d::INBOX_CAP,
            max_deliveries: d::MAX_DELIVERIES,
            redeliver_after: Duration::from_secs(d::REDELIVER_AFTER_SECS),
            inbox_retention: Duration::from_secs(d::INBOX_RETENTION_SECS),
            invoke_retention: Duration::from_secs(d::INVOKE_RETENTION_SECS),
            token_cache: Duration::from_secs(d::TOKEN_CACHE_SECS),
            balance_cache: Duration::from_secs(d::BALANCE_CACHE_SECS),
            spawn_chunk: d::SPAWN_CHUNK,
            spawn_stall: Duration::from_secs(d::SPAWN_STALL_SECS),
        }
    }
}

struct Inner {
    redis: Redis,
    keys: Keyspace,
    prices: Prices,
    limits: Limits,
    /// Unique per process: names its reply streams and consumers.
    process_id: String,
    replies: ReplyHub,
    tokens: TokenCache,
    balances: BalanceCache,
}

#[derive(Clone)]
pub struct AgentBus {
    inner: Arc<Inner>,
}

impl AgentBus {
    pub fn new(redis: Redis, keys: Keyspace, prices: Prices, limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                keys,
                prices,
                tokens: TokenCache::new(limits.token_cache),
                balances: BalanceCache::new(limits.balance_cache),
                limits,
                process_id: format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
                replies: ReplyHub::default(),
            }),
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.inner.keys
    }

    pub fn keys(&self, tenant: &TenantId) -> TenantKeys {
        self.inner.keys.tenant(tenant)
    }

    pub fn prices(&self) -> &Prices {
        &self.inner.prices
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// This process's cache of token records (see [`crate::auth::cache`]).
    pub fn token_cache(&self) -> &TokenCache {
        &self.inner.tokens
    }

    /// This process's cache of balances (see [`crate::balance_cache`]).
    pub fn balance_cache(&self) -> &BalanceCache {
        &self.inner.balances
    }

    /// This process's unique id.
    pub fn process_id(&self) -> &str {
        &self.inner.process_id
    }

    pub(crate) fn reply_hub(&self) -> &ReplyHub {
        &self.inner.replies
    }

    /// Records that `tenant` exists, so the sink and reclaimer find it. Kept
    /// outside the Lua scripts: the tenants set lives in another cluster slot.
    pub async fn register_tenant(&self, tenant: &TenantId) -> Result<()> {
        let mut conn = self.redis().conn().await?;
        redis::cmd("SADD")
            .arg(self.inner.keys.tenants_of(tenant.as_str()))
            .arg(tenant.as_str())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Tells the sink `tenant` has new outbox events (what every script call
    /// that writes an outbox does by itself; see `scripts`).
    pub async fn signal_outbox(&self, tenant: &TenantId) -> Result<()> {
        let key = self
            .inner
            .keys
            .outbox_ready(crate::keys::ready_shard(tenant.as_str()));
        let mut conn = self.redis().conn().await?;
        crate::scripts::signal_cmd(&key, tenant.as_str())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Every tenant known to this deployment (each shard of the registry,
    /// and the unsharded set of an older deployment), in name order.
    pub async fn tenants(&self) -> Result<Vec<TenantId>> {
        let keys = &self.inner.keys;
        let mut conn = self.redis().conn().await?;
        let mut names = std::collections::BTreeSet::new();
        // One command per key: the shards live in different cluster slots.
        for key in (0..crate::keys::READY_SHARDS)
            .map(|s| keys.tenants(s))
            .chain([keys.tenants_legacy()])
        {
            let shard: Vec<String> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await?;
            names.extend(shard);
        }
        Ok(names
            .into_iter()
            .filter_map(|n| TenantId::new(n).ok())
            .collect())
    }
}

/// A fresh base for the event ids of one script call (the script appends
/// `.n`). Time-ordered (UUIDv7), so the ledger's unique index grows at its
/// right edge instead of taking random inserts.
pub(crate) fn event_base() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
