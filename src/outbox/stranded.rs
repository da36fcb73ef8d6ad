//! Stranded outbox events: events Postgres refused.
//!
//! The sink moves each to the tenant's `outbox:dead` stream with the
//! reason, where it stays visible — `agentbus sink status`, the
//! `agentbus_sink_stranded_events` gauge, and `verify`, which fails while
//! any is left — until an operator replays it once the cause is fixed
//! (`agentbus dlq replay --events`) or discards it. A replayed event
//! carries its event id, so writing it again is as idempotent as the sink.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::bus::AgentBus;
use crate::codec::{self, StreamEntry};
use crate::error::{Error, Result};
use crate::jobs::validate_stream_id;
use crate::keys::TenantId;
use crate::scripts::scripts;

/// Most entries one replay or discard call handles.
pub const MAX_IDS_PER_CALL: usize = 1000;
/// Ids one `outbox_replay` script call moves.
const REPLAY_CHUNK: usize = 100;
/// MessagePack fields of an event, shown decoded.
const PACKED: [&str; 3] = ["ctx", "request", "response"];

/// One stranded event, as `agentbus dlq list --events` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct StrandedEvent {
    /// Entry id in `outbox:dead` (what replay and discard take).
    pub entry_id: String,
    /// Entry id it had in the outbox.
    pub outbox_entry: String,
    /// What Postgres (or the parser) said.
    pub reason: String,
    pub stranded_at: Option<DateTime<Utc>>,
    /// The event's own fields (`type`, `id`, `amount`, …).
    pub event: serde_json::Map<String, serde_json::Value>,
}

impl StrandedEvent {
    fn from_entry(e: &StreamEntry) -> Self {
        let mut event = serde_json::Map::new();
        for (k, v) in &e.fields {
            let Some(name) = k.strip_prefix("m.") else {
                continue;
            };
            let value = if PACKED.contains(&name) {
                codec::decode_json(v).unwrap_or(serde_json::Value::Null)
            } else {
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
            };
            event.insert(name.to_string(), value);
        }
        StrandedEvent {
            entry_id: e.id.clone(),
            outbox_entry: e.text("entry").unwrap_or_default().to_string(),
            reason: e.text("reason").unwrap_or_default().to_string(),
            stranded_at: e.int("ts").and_then(DateTime::from_timestamp_millis),
            event,
        }
    }
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Replayed {
    pub replayed: u64,
    /// Ids no longer stranded (already replayed or discarded).
    pub missing: u64,
}

fn check_ids(ids: &[String]) -> Result<()> {
    if ids.len() > MAX_IDS_PER_CALL {
        return Err(Error::invalid(
            "entry_id",
            format!("at most {MAX_IDS_PER_CALL} per call"),
        ));
    }
    ids.iter()
        .try_for_each(|id| validate_stream_id("entry_id", id))
}

impl AgentBus {
    /// Keeps events Postgres refused, with the reason (called by the sink
    /// before it acknowledges them).
    pub(crate) async fn strand_events(
        &self,
        tenant: &TenantId,
        events: &[(StreamEntry, String)],
    ) -> Result<()> {
        let keys = self.keys(tenant);
        let now = Utc::now().timestamp_millis();
        let mut pipe = redis::pipe();
        for (e, reason) in events {
            tracing::error!(tenant = %tenant, entry = %e.id, %reason, "sink: event stranded");
            let cmd = pipe.cmd("XADD").arg(keys.outbox_dead()).arg("*");
            cmd.arg("entry")
                .arg(&e.id)
                .arg("reason")
                .arg(reason)
                .arg("ts")
                .arg(now);
            for (k, v) in &e.fields {
                cmd.arg(format!("m.{k}")).arg(v.as_slice());
            }
        }
        let mut conn = self.redis().conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// How many events of `tenant` are stranded.
    pub async fn stranded_count(&self, tenant: &TenantId) -> Result<u64> {
        let mut conn = self.redis().conn().await?;
        Ok(redis::cmd("XLEN")
            .arg(self.keys(tenant).outbox_dead())
            .query_async(&mut conn)
            .await?)
    }

    /// Stranded events, oldest first, after `after` (exclusive).
    pub async fn stranded_events(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StrandedEvent>> {
        Ok(self
            .entries_after(&self.keys(tenant).outbox_dead(), after, limit)
            .await?
            .iter()
            .map(StrandedEvent::from_entry)
            .collect())
    }

    /// Puts stranded events back into the outbox for the sink to write again.
    pub async fn replay_stranded(&self, tenant: &TenantId, ids: &[String]) -> Result<Replayed> {
        check_ids(ids)?;
        if ids.is_empty() {
            return Ok(Replayed::default());
        }
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let mut total = Replayed::default();
        // A bounded script call per chunk: each id is a read, an append and
        // a delete, so 1,000 in one call would hold Redis for milliseconds.
        for chunk in ids.chunks(REPLAY_CHUNK) {
            let mut call = scripts().outbox_replay.key("stranded", keys.outbox_dead());
            call.key("outbox", keys.outbox());
            for id in chunk {
                call.arg("entry", id);
            }
            let reply = call.invoke(&mut conn).await?;
            let count = |name| reply.int(name).map(|n| n.max(0) as u64);
            total.replayed += count("replayed")?;
            total.missing += count("missing")?;
        }
        Ok(total)
    }

    /// Drops stranded events for good: their rows will never reach Postgres
    /// (`verify` then shows what the mirror lacks). Returns how many went.
    pub async fn discard_stranded(&self, tenant: &TenantId, ids: &[String]) -> Result<u64> {
        check_ids(ids)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.redis().conn().await?;
        Ok(redis::cmd("XDEL")
            .arg(self.keys(tenant).outbox_dead())
            .arg(ids)
            .query_async(&mut conn)
            .await?)
    }
}
