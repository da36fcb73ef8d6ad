//! Dead letters: items past their retries and messages delivered too often
//! without acknowledgement, in `ab:{t}:dlq`. A message is replayed into the
//! inbox it came from; an item of a live job goes out again as a new attempt
//! of the same item, its price reserved again (`lua/dlq_replay_item.lua`).

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

    /// Replays a dead letter, once: a message goes back to its inbox, an
    /// item of a live job out again as a new attempt (its price reserved
    /// again; 402 without the credit, 409 once the job has ended). Returns
    /// the new entry id: the inbox entry, or the item's new delivery id.
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
        match entry.text("type") {
            Some("message") => {}
            Some("item") => return self.replay_item(tenant, &entry).await,
            other => {
                return Err(Error::conflict(format!(
                    "a dead letter of type {other:?} cannot be replayed"
                )));
            }
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

    async fn replay_item(&self, tenant: &TenantId, entry: &StreamEntry) -> Result<String> {
        let job = entry
            .text("job")
            .and_then(|j| uuid::Uuid::parse_str(j).ok())
            .ok_or_else(|| Error::protocol(format!("dead letter {} names no job", entry.id)))?;
        let keys = self.keys(tenant);
        let mut call = crate::jobs::job_call(
            &scripts().dlq_replay_item,
            &keys,
            tenant,
            &job,
            self.limits().job_retention,
        );
        call.arg("entry", entry.id.as_str());
        let mut conn = self.redis().conn().await?;
        let reply = call.invoke(&mut conn).await?;
        match reply.tag() {
            "ok" => Ok(reply.text("item_id")?.to_string()),
            "missing" => Err(Error::not_found(format!("dead letter {}", entry.id))),
            "insufficient" => Err(Error::InsufficientCredits {
                required: crate::money::from_minor(reply.int("required")?),
                available: crate::money::from_minor(reply.int("available")?),
            }),
            "not_running" => Err(Error::conflict(format!(
                "job {job} is {}: its accounting is closed (spawn a new job with the item's input)",
                reply.text("status")?
            ))),
            other => Err(Error::protocol(format!("dlq_replay_item answered {other}"))),
        }
    }
}
