//! The shared handle every capability hangs off: Redis, the keyspace, the
//! price table and the operating limits. Cheap to clone.

use std::sync::Arc;
use std::time::Duration;

use crate::conn::Redis;
use crate::error::Result;
use crate::keys::{Keyspace, TenantId, TenantKeys};
use crate::prices::Prices;

/// Operating limits and retention, all configurable.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a finished job's keys stay in Redis.
    pub job_retention: Duration,
    /// Most items one job may have.
    pub max_items: usize,
    /// Most stalled entries one reclaim call handles.
    pub reclaim_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            job_retention: Duration::from_secs(24 * 3600),
            max_items: 100_000,
            reclaim_batch: 100,
        }
    }
}

struct Inner {
    redis: Redis,
    keys: Keyspace,
    prices: Prices,
    limits: Limits,
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
                limits,
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

    /// Records that `tenant` exists, so the sink and reclaimer find it. Kept
    /// outside the Lua scripts: the tenants set lives in another cluster slot.
    pub async fn register_tenant(&self, tenant: &TenantId) -> Result<()> {
        let mut conn = self.redis().conn().await?;
        redis::cmd("SADD")
            .arg(self.inner.keys.tenants())
            .arg(tenant.as_str())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Every tenant known to this deployment.
    pub async fn tenants(&self) -> Result<Vec<TenantId>> {
        let mut conn = self.redis().conn().await?;
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.tenants())
            .query_async(&mut conn)
            .await?;
        Ok(names
            .into_iter()
            .filter_map(|n| TenantId::new(n).ok())
            .collect())
    }
}

/// A fresh base for the event ids of one script call (the script appends `.n`).
pub(crate) fn event_base() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
