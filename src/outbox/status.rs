//! The state of each tenant's outbox, for `agentbus sink status`, the lag
//! gauges and `verify`.

use redis::Value;
use serde::Serialize;

use super::sink::{GROUP, entry_millis};
use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::error::Result;
use crate::keys::TenantId;

/// The state of one tenant's outbox, for `agentbus sink status`.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxStatus {
    pub tenant: String,
    /// Events in the outbox (not yet mirrored and deleted).
    pub events: u64,
    /// Events delivered to a sink and not yet acknowledged.
    pub in_flight: u64,
    /// Age of the oldest event, in seconds.
    pub oldest_age_secs: f64,
    /// Events Postgres refused, kept in `outbox:dead` (see [`crate::outbox::stranded`]).
    pub stranded: u64,
}

impl AgentBus {
    /// Every tenant's outbox.
    pub async fn outbox_status(&self) -> Result<Vec<OutboxStatus>> {
        self.outbox_status_of(&self.tenants().await?).await
    }

    /// The outboxes of `tenants`.
    pub async fn outbox_status_of(&self, tenants: &[TenantId]) -> Result<Vec<OutboxStatus>> {
        let mut out = Vec::new();
        let now = chrono::Utc::now().timestamp_millis();
        for tenant in tenants {
            let tenant = tenant.clone();
            let outbox = self.keys(&tenant).outbox();
            let mut conn = self.redis().conn().await?;
            let (len, stranded, first): (u64, u64, Value) = redis::pipe()
                .cmd("XLEN")
                .arg(&outbox)
                .cmd("XLEN")
                .arg(self.keys(&tenant).outbox_dead())
                .cmd("XRANGE")
                .arg(&outbox)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let in_flight: u64 = match redis::cmd("XPENDING")
                .arg(&outbox)
                .arg(GROUP)
                .query_async::<Value>(&mut conn)
                .await
            {
                Ok(Value::Array(v)) => match v.first() {
                    Some(Value::Int(n)) => *n as u64,
                    _ => 0,
                },
                _ => 0,
            };
            let oldest = match first {
                Value::Array(items) if !items.is_empty() => {
                    entry_millis(&StreamEntry::from_value(&items[0])?.id)
                }
                _ => None,
            };
            out.push(OutboxStatus {
                tenant: tenant.to_string(),
                events: len,
                in_flight,
                oldest_age_secs: oldest
                    .map(|ms| (now - ms).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0),
                stranded,
            });
        }
        Ok(out)
    }
}
