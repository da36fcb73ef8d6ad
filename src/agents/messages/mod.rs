//! Messages between agents over inbox streams.
//!
//! Each instance has an inbox `ab:{t}:inbox:<instance>` with the consumer
//! group `inbox`; the instance reads as consumer `<instance>`. Sending is one
//! Lua call that charges `agent_message` and appends the entry (header
//! fields in plain text, payload in MessagePack). Delivery is at-least-once:
//! a message is acknowledged after its handler succeeds; unacknowledged ones
//! come back (after a restart, or after `redeliver_after`), and past
//! `max_deliveries` they go to the dead-letter stream, from which they can be
//! replayed. Inboxes are capped so a dead agent cannot fill memory.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Value;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::agents::replies::ReplyWaiter;
use crate::bus::{AgentBus, event_base};
use crate::codec::StreamEntry;
use crate::error::{Error, Result};
use crate::keys::{self, Ident, TenantId};
use crate::metrics;
use crate::money::from_minor;
use crate::payload::{self, Encode, Payload};
use crate::scripts::scripts;

mod broadcast;
mod listing;
mod receive;

pub use broadcast::{BROADCAST_CHUNK, Broadcast};

pub use listing::InboxDepth;
pub use receive::Receiver;

const GROUP: &str = "inbox";

/// A message to send.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    pub from: Ident,
    pub to: Ident,
    pub message_type: String,
    pub payload: Payload,
    pub job_id: Option<Uuid>,
    pub reply_to: Option<String>,
}

impl OutgoingMessage {
    pub fn new(from: &Ident, to: &Ident, message_type: &str, payload: impl Into<Payload>) -> Self {
        Self {
            from: from.clone(),
            to: to.clone(),
            message_type: message_type.to_string(),
            payload: payload.into(),
            job_id: None,
            reply_to: None,
        }
    }
}

/// A sent message; when sent expecting a reply, wait for it here.
pub struct SentMessage {
    pub message_id: String,
    pub entry_id: String,
    reply: Option<ReplyWaiter>,
}

impl SentMessage {
    /// The reply to this message, or `None` after `timeout`. Only for
    /// messages sent with [`AgentBus::request`].
    pub async fn wait_for_reply(self, timeout: Duration) -> Result<Option<Message>> {
        let waiter = self.reply.ok_or_else(|| {
            Error::invalid("message_id", "the message was not sent expecting a reply")
        })?;
        match waiter.wait(timeout).await {
            Some(entry) => Ok(Some(Message::from_entry(&entry)?)),
            None => Ok(None),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Not yet delivered to the instance.
    Pending,
    /// Delivered, not yet acknowledged.
    Delivered,
    /// Acknowledged.
    Read,
}

impl MessageStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => MessageStatus::Pending,
            "delivered" => MessageStatus::Delivered,
            "read" => MessageStatus::Read,
            _ => return None,
        })
    }
}

/// A received (or listed) message.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    /// Stable id of the message (kept across dead-letter replays).
    pub message_id: String,
    /// Position in the inbox; acknowledge with this (or the message id).
    pub entry_id: String,
    pub from_instance_id: String,
    pub message_type: String,
    pub job_id: Option<Uuid>,
    pub reply_to_id: Option<String>,
    pub payload: Payload,
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoke_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<MessageStatus>,
    #[serde(skip)]
    pub reply_stream: Option<String>,
    /// Why the stored payload could not be decoded (then `payload` is null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|v| !v.is_empty()).map(str::to_string)
}

impl Message {
    /// The message of an inbox entry; a payload that is not MessagePack
    /// reads as null with the reason in `undecodable`, never as an error.
    pub fn from_entry(e: &StreamEntry) -> Result<Self> {
        let (payload, undecodable) = payload::from_stored(e.get("payload"), "message");
        Ok(Message {
            message_id: e.text("id").unwrap_or_default().to_string(),
            entry_id: e.id.clone(),
            from_instance_id: e.text("from").unwrap_or_default().to_string(),
            message_type: e.text("type").unwrap_or("response").to_string(),
            job_id: e.text("job").and_then(|j| Uuid::parse_str(j).ok()),
            reply_to_id: non_empty(e.text("reply_to")),
            payload,
            undecodable,
            sent_at: e.int("ts").and_then(DateTime::from_timestamp_millis),
            invoke_id: non_empty(e.text("invoke_id")),
            deadline: e.int("deadline").and_then(DateTime::from_timestamp_millis),
            status: None,
            reply_stream: non_empty(e.text("reply_stream")),
        })
    }
}

/// A page of an inbox listing, and where the next one starts.
#[derive(Debug, Default, Serialize)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// Pass as `after` for the next page (none when the inbox was read to its end).
    pub next: Option<String>,
}

/// Filters of `GET /agents/{id}/messages`.
#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    pub status: Option<MessageStatus>,
    pub message_type: Option<String>,
    pub job_id: Option<Uuid>,
    /// Only messages sent at or after this time (within the inbox's retention).
    pub since: Option<DateTime<Utc>>,
    /// Only replies to this message (its `message_id`), as the original's
    /// lookup of the replies to a message.
    pub reply_to_id: Option<String>,
}

fn validate_type(message_type: &str) -> Result<()> {
    keys::validate_id("message_type", message_type, 64)
}

fn entries(value: Value) -> Result<Vec<StreamEntry>> {
    match value {
        Value::Array(items) => items.iter().map(StreamEntry::from_value).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(Error::protocol(format!("stream reply {other:?}"))),
    }
}

impl AgentBus {
    /// Sends a message (charged `agent_message`) to a registered instance.
    pub async fn send_message(
        &self,
        tenant: &TenantId,
        msg: &OutgoingMessage,
    ) -> Result<SentMessage> {
        self.send_to(tenant, msg, None, true).await
    }

    /// Sends a message whose reply comes back to this process; wait for it
    /// with [`SentMessage::wait_for_reply`].
    pub async fn request(&self, tenant: &TenantId, msg: &OutgoingMessage) -> Result<SentMessage> {
        let message_id = Uuid::new_v4().to_string();
        let waiter = self.expect_reply(tenant, &message_id);
        let stream = self.reply_stream(tenant);
        let mut sent = self
            .send_with_id(
                tenant,
                msg,
                &message_id,
                &self.keys(tenant).inbox(&msg.to),
                Some(&stream),
                true,
            )
            .await?;
        sent.reply = Some(waiter);
        Ok(sent)
    }

    /// Replies to a received message: to the sender's reply stream when it
    /// waits for one, else to the sender's inbox.
    pub async fn reply(
        &self,
        tenant: &TenantId,
        original: &Message,
        from: &Ident,
        payload: impl Into<Payload>,
    ) -> Result<SentMessage> {
        let to = Ident::new("from_instance_id", original.from_instance_id.as_str())?;
        let mut msg = OutgoingMessage::new(from, &to, "response", payload);
        msg.job_id = original.job_id;
        msg.reply_to = Some(original.message_id.clone());
        match &original.reply_stream {
            Some(stream) => {
                if !stream.starts_with(&self.keys(tenant).replies("")) {
                    return Err(Error::invalid(
                        "reply_stream",
                        "not a reply stream of this tenant",
                    ));
                }
                let id = Uuid::new_v4().to_string();
                self.send_with_id(tenant, &msg, &id, stream, None, false)
                    .await
            }
            None => self.send_to(tenant, &msg, None, true).await,
        }
    }

    async fn send_to(
        &self,
        tenant: &TenantId,
        msg: &OutgoingMessage,
        reply_stream: Option<&str>,
        require_recipient: bool,
    ) -> Result<SentMessage> {
        let id = Uuid::new_v4().to_string();
        let inbox = self.keys(tenant).inbox(&msg.to);
        self.send_with_id(tenant, msg, &id, &inbox, reply_stream, require_recipient)
            .await
    }

    async fn send_with_id(
        &self,
        tenant: &TenantId,
        msg: &OutgoingMessage,
        message_id: &str,
        stream: &str,
        reply_stream: Option<&str>,
        require_recipient: bool,
    ) -> Result<SentMessage> {
        validate_type(&msg.message_type)?;
        if let Some(r) = &msg.reply_to {
            keys::validate_id("reply_to_id", r, keys::MAX_ID_LEN)?;
        }
        let payload = msg
            .payload
            .encode_checked("payload", self.limits().max_payload_bytes)?;
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let reply = scripts()
            .message_send
            .key("credits", keys.credits())
            .key("outbox", keys.outbox())
            .key("agent", keys.agent(&msg.to))
            .key("inbox", stream)
            .arg("event_base", event_base())
            .arg("tenant", tenant.as_str())
            .arg("price", self.prices().agent_message)
            .arg("inbox_cap", self.limits().inbox_cap)
            .arg("message_id", message_id)
            .arg("from", msg.from.as_str())
            .arg("type", &msg.message_type)
            .arg("job", msg.job_id.map(|j| j.to_string()).unwrap_or_default())
            .arg("reply_to", msg.reply_to.as_deref().unwrap_or(""))
            .arg("payload", payload)
            .arg("reply_stream", reply_stream.unwrap_or(""))
            .arg("registered", if require_recipient { "1" } else { "0" })
            .invoke(&mut conn)
            .await?;
        match reply.tag() {
            "ok" => {
                metrics::message_sent(tenant);
                Ok(SentMessage {
                    message_id: message_id.to_string(),
                    entry_id: reply.text("entry_id")?.to_string(),
                    reply: None,
                })
            }
            "unknown_recipient" => Err(Error::not_found(format!("agent instance {}", msg.to))),
            "insufficient" => Err(Error::InsufficientCredits {
                required: from_minor(reply.int("required")?),
                available: from_minor(reply.int("available")?),
            }),
            other => Err(Error::protocol(format!("message_send answered {other}"))),
        }
    }
}
