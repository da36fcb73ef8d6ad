//! Dead letters: items past their retries and messages delivered too often
//! without acknowledgement, in `ab:{t}:dlq`. Messages can be replayed into
//! the inbox they came from.

use chrono::{DateTime, Utc};
use redis::Value;
use serde::Serialize;

use crate::bus::AgentBus;
use crate::codec::{self, StreamEntry};
use crate::error::{Error, Result};
use crate::jobs::validate_stream_id;
use crate::keys::TenantId;
use crate::scripts::scripts;

#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub entry_id: String,
    /// `item` or `message`.
    pub kind: String,
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    /// The job (items) or the inbox stream (messages) it came from.
    pub source: String,
    pub item_index: Option<i64>,
    pub attempts: Option<i64>,
    /// The item's input or the message's payload.
    pub payload: serde_json::Value,
}

impl DeadLetter {
    fn from_entry(e: &StreamEntry) -> Result<Self> {
        let kind = e.text("type").unwrap_or_default().to_string();
        let (source, payload_field, attempts) = if kind == "message" {
            (e.text("stream"), "m.payload", e.int("deliveries"))
        } else {
            (e.text("job"), "input", e.int("attempt").map(|a| a + 1))
        };
        Ok(DeadLetter {
            entry_id: e.id.clone(),
            reason: e.text("reason").unwrap_or_default().to_string(),
            dead_at: e.int("ts").and_then(DateTime::from_timestamp_millis),
            source: source.unwrap_or_default().to_string(),
            item_index: e.int("idx"),
            attempts,
            payload: codec::decode_json(e.get(payload_field).unwrap_or_default())
                .unwrap_or(serde_json::Value::Null),
            kind,
        })
    }
}

impl AgentBus {
    /// Dead letters, oldest first, after `after` (exclusive).
    pub async fn dead_letters(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        self.entries_after(&self.keys(tenant).dlq(), after, limit)
            .await?
            .iter()
            .map(DeadLetter::from_entry)
            .collect()
    }

    /// Moves a dead-lettered message back to its inbox. Returns its new entry id.
    pub async fn replay_dead_letter(&self, tenant: &TenantId, entry_id: &str) -> Result<String> {
        validate_stream_id("entry_id", entry_id)?;
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let value: Value = redis::cmd("XRANGE")
            .arg(keys.dlq())
            .arg(entry_id)
            .arg(entry_id)
            .query_async(&mut conn)
            .await?;
        let entry = match value {
            Value::Array(items) if !items.is_empty() => StreamEntry::from_value(&items[0])?,
            _ => return Err(Error::not_found(format!("dead letter {entry_id}"))),
        };
        if entry.text("type") != Some("message") {
            return Err(Error::conflict(
                "only messages can be replayed; a failed item ended its job's accounting (spawn a new job with its input)",
            ));
        }
        let stream = entry.text("stream").unwrap_or_default().to_string();
        // The stream named in the entry must be an inbox of this tenant.
        let is_inbox = stream
            .strip_prefix(&keys.inbox_prefix())
            .is_some_and(|instance| crate::keys::Ident::new("instance_id", instance).is_ok());
        if !is_inbox {
            return Err(Error::protocol(format!(
                "dead letter names a foreign stream {stream:?}"
            )));
        }
        let reply = scripts()
            .dlq_replay
            .key("dlq", keys.dlq())
            .key("inbox", &stream)
            .arg("entry", entry_id)
            .arg("inbox_cap", self.limits().inbox_cap)
            .invoke(&mut conn)
            .await?;
        match reply.tag() {
            "ok" => Ok(reply.text("entry_id")?.to_string()),
            "missing" => Err(Error::not_found(format!("dead letter {entry_id}"))),
            other => Err(Error::protocol(format!("dlq_replay answered {other}"))),
        }
    }
}
