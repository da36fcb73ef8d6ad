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

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::Value;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::{AgentBus, event_base};
use crate::codec::{Reply, StreamEntry};
use crate::error::{Error, Result, redis_code};
use crate::jobs::validate_stream_id;
use crate::keys::{self, Ident, TenantId};
use crate::metrics;
use crate::money::from_minor;
use crate::payload::{self, Encode, Payload};
use crate::replies::ReplyWaiter;
use crate::scripts::scripts;

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
        let reply = Reply::new(
            scripts()
                .message_send
                .key(keys.credits())
                .key(keys.outbox())
                .key(keys.agent(&msg.to))
                .key(stream)
                .arg(event_base())
                .arg(tenant.as_str())
                .arg(self.prices().agent_message)
                .arg(self.limits().inbox_cap)
                .arg(message_id)
                .arg(msg.from.as_str())
                .arg(&msg.message_type)
                .arg(msg.job_id.map(|j| j.to_string()).unwrap_or_default())
                .arg(msg.reply_to.as_deref().unwrap_or(""))
                .arg(payload)
                .arg(reply_stream.unwrap_or(""))
                .arg(if require_recipient { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await?,
        )?;
        match reply.tag()?.as_str() {
            "ok" => {
                metrics::message_sent(tenant);
                Ok(SentMessage {
                    message_id: message_id.to_string(),
                    entry_id: reply.str(1)?,
                    reply: None,
                })
            }
            "unknown_recipient" => Err(Error::not_found(format!("agent instance {}", msg.to))),
            "insufficient" => Err(Error::InsufficientCredits {
                required: from_minor(reply.i64(1)?),
                available: from_minor(reply.i64(2)?),
            }),
            other => Err(Error::protocol(format!("message_send answered {other}"))),
        }
    }

    /// Sends one message to every instance registered for `job` but the
    /// sender, all or nothing: every delivery's price is checked first and
    /// charged once; with too little credit none is delivered. Returns the
    /// instances reached.
    pub async fn broadcast(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        from: &Ident,
        message_type: &str,
        payload: impl Into<Payload>,
    ) -> Result<Vec<String>> {
        validate_type(message_type)?;
        let payload = payload
            .into()
            .encode_checked("payload", self.limits().max_payload_bytes)?;
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys.agents_of_job(job))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut call = scripts().message_broadcast.key(keys.credits());
        call.key(keys.outbox());
        let mut ids = Vec::new();
        for member in &members {
            // Index members were validated when registered; skip anything else.
            let Ok(to) = Ident::new("instance_id", member.as_str()) else {
                continue;
            };
            if &to == from {
                continue;
            }
            call.key(keys.agent(&to)).key(keys.inbox(&to));
            ids.push(Uuid::new_v4().to_string());
        }
        call.arg(event_base())
            .arg(tenant.as_str())
            .arg(self.prices().agent_message)
            .arg(self.limits().inbox_cap)
            .arg(from.as_str())
            .arg(message_type)
            .arg(job.to_string())
            .arg(payload);
        for id in &ids {
            call.arg(id);
        }
        let reply = Reply::new(call.invoke_async(&mut conn).await?)?;
        match reply.tag()?.as_str() {
            "ok" => {
                let reached = reply.texts(1)?;
                for _ in &reached {
                    metrics::message_sent(tenant);
                }
                Ok(reached)
            }
            "insufficient" => Err(Error::InsufficientCredits {
                required: from_minor(reply.i64(1)?),
                available: from_minor(reply.i64(2)?),
            }),
            other => Err(Error::protocol(format!(
                "message_broadcast answered {other}"
            ))),
        }
    }

    /// A receiver of `instance`'s inbox on a connection of its own.
    pub fn receiver(&self, tenant: &TenantId, instance: &Ident) -> Receiver {
        Receiver {
            bus: self.clone(),
            tenant: tenant.clone(),
            instance: instance.clone(),
            conn: self.redis().blocking(),
            batch: 64,
            max_bytes: None,
            next_redeliver: None,
            to_ack: Vec::new(),
        }
    }

    /// Receives one message, acknowledging it (at most `timeout` of waiting).
    pub async fn wait_for_message(
        &self,
        tenant: &TenantId,
        instance: &Ident,
        timeout: Duration,
    ) -> Result<Option<Message>> {
        let mut rx = self.receiver(tenant, instance);
        rx.batch = 1;
        let Some(msg) = rx.recv(timeout).await?.into_iter().next() else {
            return Ok(None);
        };
        rx.ack(&[msg.entry_id.as_str()]).await?;
        Ok(Some(msg))
    }

    /// Acknowledges messages of `instance`, by entry id or message id.
    /// Returns how many were pending and are now read.
    pub async fn ack_messages(
        &self,
        tenant: &TenantId,
        instance: &Ident,
        ids: &[&str],
    ) -> Result<u64> {
        let inbox = self.keys(tenant).inbox(instance);
        let mut entry_ids: Vec<String> = Vec::new();
        let mut by_message_id: HashSet<&str> = HashSet::new();
        for id in ids {
            if validate_stream_id("message_id", id).is_ok() {
                entry_ids.push(id.to_string());
            } else if Uuid::parse_str(id).is_ok() {
                by_message_id.insert(id);
            } else {
                return Err(Error::invalid(
                    "message_id",
                    format!("{id:?} is neither a message id nor an entry id"),
                ));
            }
        }
        let mut conn = self.redis().conn().await?;
        if !by_message_id.is_empty() {
            // Find them among this consumer's unacknowledged entries.
            let pending = redis::cmd("XPENDING")
                .arg(&inbox)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(1000)
                .arg(instance.as_str())
                .query_async::<Value>(&mut conn)
                .await
                .or_else(|e| match e.code() {
                    // No inbox (or no group): nothing of this instance to acknowledge.
                    Some("NOGROUP") => Ok(Value::Nil),
                    _ => Err(e),
                })?;
            if let Value::Array(rows) = pending {
                let mut pipe = redis::pipe();
                let mut candidates = Vec::new();
                for row in rows {
                    if let Value::Array(cols) = row
                        && let Some(Value::BulkString(id)) = cols.first()
                    {
                        let id = String::from_utf8_lossy(id).into_owned();
                        pipe.cmd("XRANGE").arg(&inbox).arg(&id).arg(&id);
                        candidates.push(id);
                    }
                }
                if !candidates.is_empty() {
                    let found: Vec<Value> = pipe.query_async(&mut conn).await?;
                    for value in found {
                        for e in entries(value)? {
                            if e.text("id").is_some_and(|m| by_message_id.contains(m)) {
                                entry_ids.push(e.id);
                            }
                        }
                    }
                }
            }
        }
        if entry_ids.is_empty() {
            return Ok(0);
        }
        Ok(redis::cmd("XACK")
            .arg(&inbox)
            .arg(GROUP)
            .arg(&entry_ids)
            .query_async(&mut conn)
            .await?)
    }

    /// Delivers up to `count` messages to `instance` (REST receive): first its
    /// own unacknowledged ones idle past `redeliver_after`, then new ones,
    /// waiting up to `wait` when there are none.
    pub async fn receive_messages(
        &self,
        tenant: &TenantId,
        instance: &Ident,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Message>> {
        let mut rx = self.receiver(tenant, instance);
        rx.batch = count.max(1);
        rx.max_bytes = Some(self.limits().max_page_bytes);
        rx.next_redeliver = Some(Instant::now());
        rx.recv(wait).await
    }

    /// Lists an inbox without changing it: each message with its status.
    pub async fn list_messages(
        &self,
        tenant: &TenantId,
        instance: &Ident,
        filter: &MessageFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MessagePage> {
        let inbox = self.keys(tenant).inbox(instance);
        let start = match (after, filter.since) {
            (Some(id), _) => {
                validate_stream_id("after", id)?;
                format!("({id}")
            }
            // Entries of that millisecond on: after the last id of the one before.
            (None, Some(t)) if t.timestamp_millis() > 0 => {
                format!("({}-{}", t.timestamp_millis() - 1, u64::MAX)
            }
            (None, _) => "-".to_string(),
        };
        // Filters skip entries: look at a window of several pages' worth,
        // itself bounded in bytes.
        let scan = (limit * 5).clamp(100, 5000);
        let Some(page) = self.stream_page(&inbox, &inbox, &start, scan).await? else {
            // No inbox: unknown instance, unless it is registered (then empty).
            self.agent(tenant, instance).await?;
            return Ok(MessagePage::default());
        };
        let window_next = page.next();
        let window = page.entries;
        let mut conn = self.redis().conn().await?;
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&inbox)
            .query_async(&mut conn)
            .await?;
        let last_delivered = last_delivered_id(&groups);
        let pending_ids: HashSet<String> =
            if let (Some(first), Some(last)) = (window.first(), window.last()) {
                let pel: Value = redis::cmd("XPENDING")
                    .arg(&inbox)
                    .arg(GROUP)
                    .arg(&first.id)
                    .arg(&last.id)
                    .arg(scan)
                    .query_async(&mut conn)
                    .await?;
                pel_ids(&pel)
            } else {
                HashSet::new()
            };
        let mut out = Vec::new();
        for e in &window {
            let mut m = Message::from_entry(e)?;
            let status = if pending_ids.contains(&e.id) {
                MessageStatus::Delivered
            } else if last_delivered
                .as_ref()
                .is_some_and(|last| stream_id_le(&e.id, last))
            {
                MessageStatus::Read
            } else {
                MessageStatus::Pending
            };
            m.status = Some(status);
            let keep = filter.status.is_none_or(|s| s == status)
                && filter
                    .message_type
                    .as_ref()
                    .is_none_or(|t| *t == m.message_type)
                && filter.job_id.is_none_or(|j| m.job_id == Some(j));
            if keep {
                out.push(m);
                if out.len() >= limit {
                    let next = out.last().map(|m| m.entry_id.clone());
                    return Ok(MessagePage {
                        messages: out,
                        next,
                    });
                }
            }
        }
        Ok(MessagePage {
            messages: out,
            next: window_next,
        })
    }
}

fn pel_ids(pel: &Value) -> HashSet<String> {
    let mut ids = HashSet::new();
    if let Value::Array(rows) = pel {
        for row in rows {
            if let Value::Array(cols) = row
                && let Some(Value::BulkString(id)) = cols.first()
            {
                ids.insert(String::from_utf8_lossy(id).into_owned());
            }
        }
    }
    ids
}

fn last_delivered_id(groups: &Value) -> Option<String> {
    let Value::Array(groups) = groups else {
        return None;
    };
    for g in groups {
        let fields: Vec<(String, String)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|p| match p {
                    [Value::BulkString(k), Value::BulkString(v)] => Some((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )),
                    _ => None,
                })
                .collect(),
            Value::Map(kv) => kv
                .iter()
                .filter_map(|(k, v)| match (k, v) {
                    (Value::BulkString(k), Value::BulkString(v)) => Some((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )),
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        let is_inbox = fields.iter().any(|(k, v)| k == "name" && v == GROUP);
        if is_inbox {
            return fields
                .into_iter()
                .find(|(k, _)| k == "last-delivered-id")
                .map(|(_, v)| v);
        }
    }
    None
}

/// `a <= b` for stream ids `<ms>-<seq>`.
fn stream_id_le(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> (u64, u64) {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) <= parse(b)
}

/// Reads one instance's inbox as its consumer, on a connection of its own.
/// Most entries one script reads per call (the scripts refuse more).
const MAX_READ: usize = 10_000;

pub struct Receiver {
    bus: AgentBus,
    tenant: TenantId,
    instance: Ident,
    conn: crate::conn::BlockingConn,
    batch: usize,
    /// Most bytes of entries per read (REST receive); `None`: count only.
    max_bytes: Option<usize>,
    /// When to hand back unacknowledged messages next (`None`: at once, with no idle minimum).
    next_redeliver: Option<Instant>,
    /// Entries handled and not yet acknowledged: sent ahead of the next read.
    to_ack: Vec<String>,
}

impl Receiver {
    /// Most messages per read (default 64).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Own unacknowledged messages (idle past `min_idle`) handed back;
    /// those delivered `max_deliveries` times go to the dead-letter stream.
    async fn redeliver(&mut self, min_idle: Duration) -> Result<Vec<Message>> {
        let keys = self.bus.keys(&self.tenant);
        let limits = self.bus.limits();
        let mut conn = self.bus.redis().conn().await?;
        let reply = Reply::new(
            scripts()
                .inbox_redeliver
                .key(keys.inbox(&self.instance))
                .key(keys.dlq())
                .arg(self.instance.as_str())
                .arg(min_idle.as_millis() as u64)
                .arg(limits.max_deliveries)
                .arg(self.batch.min(MAX_READ))
                .arg(self.max_bytes.map(|b| b.to_string()).unwrap_or_default())
                .invoke_async(&mut conn)
                .await?,
        )?;
        let dead = reply.i64(1)?;
        metrics::messages_dead_lettered(&self.tenant, dead.max(0) as u64);
        if dead > 0 {
            tracing::warn!(instance = %self.instance, dead, "messages dead-lettered after too many deliveries");
        }
        let entries = match reply.get(0)? {
            Value::Array(items) => items
                .iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| StreamEntry::from_value(v).and_then(|e| Message::from_entry(&e)))
                .collect::<Result<Vec<_>>>()?,
            _ => Vec::new(),
        };
        // Handled ones whose acknowledgement is still queued are not handed out twice.
        let entries = entries
            .into_iter()
            .filter(|m| !self.to_ack.contains(&m.entry_id))
            .collect();
        self.set_aside_poison(entries).await
    }

    /// Dead-letters, each alone and with its reason, the messages whose
    /// payload cannot be decoded; returns the others, to be delivered.
    async fn set_aside_poison(&self, messages: Vec<Message>) -> Result<Vec<Message>> {
        let (poison, good): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(|m| m.undecodable.is_some());
        if poison.is_empty() {
            return Ok(good);
        }
        let keys = self.bus.keys(&self.tenant);
        let mut call = scripts().inbox_poison.prepare_invoke();
        call.key(keys.inbox(&self.instance)).key(keys.dlq());
        for m in &poison {
            call.arg(&m.entry_id).arg(format!(
                "undecodable payload: {}",
                m.undecodable.as_deref().unwrap_or_default()
            ));
        }
        let mut conn = self.bus.redis().conn().await?;
        let dead: i64 = call.invoke_async(&mut conn).await?;
        metrics::messages_dead_lettered(&self.tenant, dead.max(0) as u64);
        tracing::warn!(instance = %self.instance, dead, "undecodable messages dead-lettered");
        Ok(good)
    }

    /// Re-creates the inbox group after it went missing (e.g. Redis came back
    /// without it); an instance that is no longer registered is not found.
    async fn recover_group(&mut self) -> Result<()> {
        let keys = self.bus.keys(&self.tenant);
        let mut conn = self.bus.redis().conn().await?;
        let recovered: i64 = scripts()
            .inbox_recover
            .key(keys.inbox(&self.instance))
            .key(keys.agent(&self.instance))
            .arg(GROUP)
            .invoke_async(&mut conn)
            .await?;
        if recovered == 0 {
            return Err(Error::not_found(format!(
                "agent instance {}",
                self.instance
            )));
        }
        tracing::warn!(instance = %self.instance, "inbox group was missing; re-created it");
        self.next_redeliver = None;
        Ok(())
    }

    /// The next messages: unacknowledged ones due again first, then new ones,
    /// waiting up to `wait` for any. A missing inbox group is re-created while
    /// the instance is registered; `UNBLOCKED` and `LOADING` come back as
    /// transient errors.
    pub async fn recv(&mut self, wait: Duration) -> Result<Vec<Message>> {
        match self.recv_once(wait).await {
            Err(Error::Redis(ref e)) if redis_code(e).as_deref() == Some("NOGROUP") => {
                self.recover_group().await?;
                Ok(Vec::new())
            }
            other => other,
        }
    }

    async fn recv_once(&mut self, wait: Duration) -> Result<Vec<Message>> {
        let redeliver_after = self.bus.limits().redeliver_after;
        let due = self.next_redeliver.is_none_or(|at| Instant::now() >= at);
        if due {
            // The first pass hands back everything this consumer held (a restart).
            let min_idle = if self.next_redeliver.is_none() {
                Duration::ZERO
            } else {
                redeliver_after
            };
            self.next_redeliver = Some(Instant::now() + redeliver_after / 2);
            let again = self.redeliver(min_idle).await?;
            if !again.is_empty() {
                return Ok(again);
            }
        }
        if let Some(max_bytes) = self.max_bytes {
            return self.take(max_bytes, wait).await;
        }
        let inbox = self.bus.keys(&self.tenant).inbox(&self.instance);
        let read = self.read_new(self.batch, wait);
        let result = if self.to_ack.is_empty() {
            self.conn.query::<Value>(&read, wait).await
        } else {
            // Acknowledge what was handled and read on, in one round trip.
            let mut pipe = redis::pipe();
            pipe.cmd("XACK")
                .arg(&inbox)
                .arg(GROUP)
                .arg(&self.to_ack)
                .ignore();
            pipe.add_command(read);
            let result = self
                .conn
                .query_pipeline::<(Value,)>(&pipe, wait)
                .await
                .map(|(v,)| v);
            if result.is_ok() {
                self.to_ack.clear();
            }
            result
        };
        let value = result?;
        let messages = StreamEntry::from_read_reply(&value)?
            .iter()
            .map(Message::from_entry)
            .collect::<Result<Vec<_>>>()?;
        self.deliver(messages).await
    }

    /// XREADGROUP of up to `count` new entries, blocking up to `wait` (if any).
    fn read_new(&self, count: usize, wait: Duration) -> redis::Cmd {
        let inbox = self.bus.keys(&self.tenant).inbox(&self.instance);
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(self.instance.as_str())
            .arg("COUNT")
            .arg(count);
        if !wait.is_zero() {
            read.arg("BLOCK").arg(wait.as_millis() as u64);
        }
        read.arg("STREAMS").arg(&inbox).arg(">");
        read
    }

    /// New messages bounded in bytes as well as count (REST receive): taken
    /// at once when there are any, else one waited for, then the rest taken.
    async fn take(&mut self, max_bytes: usize, wait: Duration) -> Result<Vec<Message>> {
        let mut messages = self.take_now(self.batch, max_bytes).await?;
        if messages.is_empty() && !wait.is_zero() {
            // One entry is at most the payload limit: safe to wait for.
            let read = self.read_new(1, wait);
            let value = self.conn.query::<Value>(&read, wait).await?;
            let entries = StreamEntry::from_read_reply(&value)?;
            let used: usize = entries
                .iter()
                .flat_map(|e| e.fields.iter().map(|(_, v)| v.len()))
                .sum();
            messages = entries
                .iter()
                .map(Message::from_entry)
                .collect::<Result<Vec<_>>>()?;
            if !messages.is_empty() && self.batch > 1 && used < max_bytes {
                let more = self.take_now(self.batch - 1, max_bytes - used).await?;
                messages.extend(more);
            }
        }
        self.deliver(messages).await
    }

    async fn take_now(&self, count: usize, max_bytes: usize) -> Result<Vec<Message>> {
        let keys = self.bus.keys(&self.tenant);
        let mut conn = self.bus.redis().conn().await?;
        let value: Value = scripts()
            .inbox_take
            .key(keys.inbox(&self.instance))
            .arg(self.instance.as_str())
            .arg(count.min(MAX_READ))
            .arg(max_bytes.max(1))
            .invoke_async(&mut conn)
            .await?;
        match value {
            Value::Array(items) => items
                .iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| StreamEntry::from_value(v).and_then(|e| Message::from_entry(&e)))
                .collect(),
            _ => Ok(Vec::new()),
        }
    }

    /// Sets aside undecodable messages and counts the delivered ones.
    async fn deliver(&self, messages: Vec<Message>) -> Result<Vec<Message>> {
        let messages = self.set_aside_poison(messages).await?;
        let now = chrono::Utc::now();
        for m in &messages {
            metrics::message_delivered(
                &self.tenant,
                m.sent_at.and_then(|at| (now - at).to_std().ok()),
            );
        }
        Ok(messages)
    }

    /// Acknowledges messages by entry id (or message id).
    pub async fn ack(&self, ids: &[&str]) -> Result<u64> {
        self.bus
            .ack_messages(&self.tenant, &self.instance, ids)
            .await
    }

    /// Handles messages one at a time, in inbox order, acknowledging each
    /// after its handler succeeds, until `shutdown`. A failed handler leaves
    /// the message to come back after `redeliver_after`.
    pub async fn run<H, F>(mut self, shutdown: CancellationToken, handler: H) -> Result<()>
    where
        H: Fn(Message) -> F,
        F: Future<Output = std::result::Result<(), String>>,
    {
        let wait = Duration::from_millis(500);
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.recv(wait) => r,
            };
            let batch = match batch {
                Ok(b) => {
                    backoff = Duration::from_millis(50);
                    b
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, instance = %self.instance, "inbox read failed; retrying");
                    // Whatever was delivered while the link was down is handed back first.
                    self.next_redeliver = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for msg in batch {
                let entry_id = msg.entry_id.clone();
                match handler(msg).await {
                    // Acknowledged together with the next read.
                    Ok(()) => self.to_ack.push(entry_id),
                    Err(reason) => {
                        tracing::warn!(instance = %self.instance, entry = %entry_id, %reason, "message handler failed; will be delivered again");
                    }
                }
            }
        }
        if !self.to_ack.is_empty() {
            let ids: Vec<String> = std::mem::take(&mut self.to_ack);
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            self.ack(&refs).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_compare_numerically() {
        assert!(super::stream_id_le("9-1", "10-0"));
        assert!(super::stream_id_le("10-2", "10-2"));
        assert!(!super::stream_id_le("10-3", "10-2"));
    }
}
