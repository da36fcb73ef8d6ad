//! Receiving: an instance reads its inbox as its consumer (new messages,
//! then its own unacknowledged ones past the redelivery time), acknowledges
//! them, and sets undecodable ones aside.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use redis::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::error::{Error, Result, redis_code};
use crate::jobs::validate_stream_id;
use crate::keys::{Ident, TenantId};
use crate::metrics;
use crate::scripts::scripts;

use super::{GROUP, Message, entries};

impl AgentBus {
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
    /// A message not yet delivered is marked read too: no reader hands it
    /// out. Returns how many were unread and are now read.
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
            entry_ids.extend(
                self.find_by_message_id(&mut conn, &inbox, instance, &by_message_id)
                    .await?,
            );
        }
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let mut call = scripts().inbox_mark_read.key("inbox", &inbox);
        call.key("read_early", self.keys(tenant).inbox_read_early(instance));
        for id in &entry_ids {
            call.arg("entry", id);
        }
        Ok(call.invoke(&mut conn).await?.value()?.max(0) as u64)
    }

    /// The entry ids of messages (by message id) among `instance`'s
    /// unacknowledged entries and the first 1,000 not yet delivered.
    async fn find_by_message_id(
        &self,
        conn: &mut crate::conn::Conn,
        inbox: &str,
        instance: &Ident,
        wanted: &HashSet<&str>,
    ) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let pending = match redis::cmd("XPENDING")
            .arg(inbox)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1000)
            .arg(instance.as_str())
            .query_async::<Value>(conn)
            .await
        {
            Ok(v) => v,
            // No inbox (or no group): nothing of this instance to mark.
            Err(e) if e.code() == Some("NOGROUP") => return Ok(found),
            Err(e) => return Err(e.into()),
        };
        let mut pipe = redis::pipe();
        if let Value::Array(rows) = pending {
            for row in rows {
                if let Value::Array(cols) = row
                    && let Some(Value::BulkString(id)) = cols.first()
                {
                    let id = String::from_utf8_lossy(id).into_owned();
                    pipe.cmd("XRANGE").arg(inbox).arg(&id).arg(&id);
                }
            }
        }
        // The inbox may have expired since (a deregistered instance's).
        let groups: Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(inbox)
            .query_async(conn)
            .await
        {
            Err(e) if e.to_string().contains("no such key") => Value::Nil,
            other => other?,
        };
        if let Some(last) = super::listing::last_delivered_id(&groups) {
            pipe.cmd("XRANGE")
                .arg(inbox)
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(1000);
        }
        if pipe.cmd_iter().next().is_none() {
            return Ok(found);
        }
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        for value in replies {
            for e in entries(value)? {
                if e.text("id").is_some_and(|m| wanted.contains(m)) {
                    found.push(e.id);
                }
            }
        }
        Ok(found)
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
        let reply = scripts()
            .inbox_redeliver
            .key("inbox", keys.inbox(&self.instance))
            .key("dlq", keys.dlq())
            .arg("consumer", self.instance.as_str())
            .arg("min_idle", min_idle.as_millis() as u64)
            .arg("most_deliveries", limits.max_deliveries)
            .arg("count", self.batch.min(MAX_READ))
            .arg(
                "most_bytes",
                self.max_bytes.map(|b| b.to_string()).unwrap_or_default(),
            )
            .invoke(&mut conn)
            .await?;
        let dead = reply.int("dead_lettered")?;
        metrics::messages_dead_lettered(&self.tenant, dead.max(0) as u64);
        if dead > 0 {
            tracing::warn!(instance = %self.instance, dead, "messages dead-lettered after too many deliveries");
        }
        let entries = match reply.raw("entries")? {
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
        let mut call = scripts()
            .inbox_poison
            .key("inbox", keys.inbox(&self.instance));
        call.key("dlq", keys.dlq());
        for m in &poison {
            call.arg("entry", &m.entry_id).arg(
                "reason",
                format!(
                    "undecodable payload: {}",
                    m.undecodable.as_deref().unwrap_or_default()
                ),
            );
        }
        let mut conn = self.bus.redis().conn().await?;
        let dead = call.invoke(&mut conn).await?.value()?;
        metrics::messages_dead_lettered(&self.tenant, dead.max(0) as u64);
        tracing::warn!(instance = %self.instance, dead, "undecodable messages dead-lettered");
        Ok(good)
    }

    /// Re-creates the inbox group after it went missing (e.g. Redis came back
    /// without it); an instance that is no longer registered is not found.
    async fn recover_group(&mut self) -> Result<()> {
        let keys = self.bus.keys(&self.tenant);
        let mut conn = self.bus.redis().conn().await?;
        let recovered = scripts()
            .inbox_recover
            .key("inbox", keys.inbox(&self.instance))
            .key("agent", keys.agent(&self.instance))
            .arg("group", GROUP)
            .invoke(&mut conn)
            .await?
            .value()?;
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
        let keys = self.bus.keys(&self.tenant);
        let mut pipe = redis::pipe();
        if !self.to_ack.is_empty() {
            // Acknowledge what was handled and read on, in one round trip.
            pipe.cmd("XACK")
                .arg(keys.inbox(&self.instance))
                .arg(GROUP)
                .arg(&self.to_ack)
                .ignore();
        }
        pipe.add_command(self.read_new(self.batch, wait));
        // Whether any message was marked read before delivery (rare): only
        // then are the new ones checked against the marks.
        pipe.cmd("ZCARD").arg(keys.inbox_read_early(&self.instance));
        let (value, marked): (Value, u64) = self.conn.query_pipeline(&pipe, wait).await?;
        self.to_ack.clear();
        let messages = StreamEntry::from_read_reply(&value)?
            .iter()
            .map(Message::from_entry)
            .collect::<Result<Vec<_>>>()?;
        let messages = self.drop_read_early(messages, marked).await?;
        self.deliver(messages).await
    }

    /// Of messages just read, acknowledges and leaves out those marked read
    /// before delivery (`marked`: how many marks the inbox held at the read).
    async fn drop_read_early(&self, messages: Vec<Message>, marked: u64) -> Result<Vec<Message>> {
        if marked == 0 || messages.is_empty() {
            return Ok(messages);
        }
        let keys = self.bus.keys(&self.tenant);
        let mut call = scripts()
            .inbox_settle_read
            .key("inbox", keys.inbox(&self.instance));
        call.key("read_early", keys.inbox_read_early(&self.instance));
        for m in &messages {
            call.arg("entry", &m.entry_id);
        }
        let mut conn = self.bus.redis().conn().await?;
        let settled: HashSet<String> = match call.invoke(&mut conn).await?.into_raw()? {
            Value::Array(ids) => ids
                .iter()
                .filter_map(|v| match v {
                    Value::BulkString(id) => Some(String::from_utf8_lossy(id).into_owned()),
                    _ => None,
                })
                .collect(),
            _ => HashSet::new(),
        };
        Ok(messages
            .into_iter()
            .filter(|m| !settled.contains(&m.entry_id))
            .collect())
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
            let mut pipe = redis::pipe();
            pipe.add_command(self.read_new(1, wait));
            pipe.cmd("ZCARD")
                .arg(self.bus.keys(&self.tenant).inbox_read_early(&self.instance));
            let (value, marked): (Value, u64) = self.conn.query_pipeline(&pipe, wait).await?;
            let entries = StreamEntry::from_read_reply(&value)?;
            let used: usize = entries
                .iter()
                .flat_map(|e| e.fields.iter().map(|(_, v)| v.len()))
                .sum();
            messages = entries
                .iter()
                .map(Message::from_entry)
                .collect::<Result<Vec<_>>>()?;
            messages = self.drop_read_early(messages, marked).await?;
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
        let value = scripts()
            .inbox_take
            .key("inbox", keys.inbox(&self.instance))
            .key("read_early", keys.inbox_read_early(&self.instance))
            .arg("consumer", self.instance.as_str())
            .arg("count", count.min(MAX_READ))
            .arg("most_bytes", max_bytes.max(1))
            .invoke(&mut conn)
            .await?
            .into_raw()?;
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
                    e.count_failure();
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
