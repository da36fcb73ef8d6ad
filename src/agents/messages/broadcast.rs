//! Broadcasts: one message to every instance registered for a job, all or
//! nothing, without any call holding Redis for long.
//!
//! Up to one chunk of recipients ([`BROADCAST_CHUNK`], and at most
//! [`CHUNK_BYTES`] of payload copies) a broadcast is one script
//! (`message_broadcast`): it checks the price of every delivery and charges
//! it once. Past that the recipients are staged in a list, one script
//! reserves the price of every one (`broadcast_begin`, all or nothing), and
//! `broadcast_deliver` delivers a chunk per call and settles at the last
//! (one spend for the deliveries, one refund for those that left). Any
//! process may deliver, any number at once (each call names the position it
//! delivers from, so each recipient gets the message once); a broadcast
//! whose sender stopped is finished by the reaper after
//! [`crate::bus::Limits::spawn_stall`] without progress.

use std::collections::HashSet;

use uuid::Uuid;

use super::validate_type;
use crate::bus::{AgentBus, event_base};
use crate::error::{Error, Result};
use crate::keys::{Chore, Ident, TenantId, TenantKeys};
use crate::metrics;
use crate::money::from_minor;
use crate::payload::{Encode, Payload};
use crate::scripts::scripts;

/// Most recipients one script call delivers to.
pub const BROADCAST_CHUNK: usize = 100;
/// Most payload bytes one call copies into inboxes (at least one copy).
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Index members read, and recipients staged or read back, per command.
const PAGE: usize = 1000;
/// How long a staged recipient list outlives a sender that died before
/// `broadcast_begin` ran (afterwards the broadcast owns it).
const STAGING_TTL_SECS: u64 = 3600;
/// Stalled broadcasts one reaper visit finishes (it comes back for more).
const RESUME_MOST: usize = 16;

/// What a broadcast did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broadcast {
    /// The id of a broadcast delivered in chunks (its ledger events carry
    /// it as `ctx.broadcast`); `None` when one call delivered it.
    pub id: Option<Uuid>,
    /// The instances this call reached.
    pub recipients: Vec<String>,
    /// `false` when delivery stopped mid-way (Redis failed): the credits of
    /// every recipient are reserved, `recipients` are those reached so far,
    /// and the reaper delivers to the rest.
    pub complete: bool,
}

/// Recipients per call: at most [`BROADCAST_CHUNK`], and at most
/// [`CHUNK_BYTES`] of copies of the payload.
fn chunk_for(payload_len: usize) -> usize {
    (CHUNK_BYTES / payload_len.max(1)).clamp(1, BROADCAST_CHUNK)
}

/// A broadcast's recipients read from its list, `base` the position of the first.
struct Window {
    base: usize,
    names: Vec<String>,
}

impl Window {
    fn covers(&self, at: usize) -> bool {
        self.base <= at && at < self.base + self.names.len()
    }
}

impl AgentBus {
    /// Sends one message to every instance registered for `job` but the
    /// sender, all or nothing: every delivery's price is checked (or
    /// reserved) first and charged once; with too little credit none is
    /// delivered. Instances that deregister before their delivery are
    /// skipped and not charged.
    pub async fn broadcast(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        from: &Ident,
        message_type: &str,
        payload: impl Into<Payload>,
    ) -> Result<Broadcast> {
        let (payload, recipients) = self
            .prepare(tenant, job, from, message_type, payload)
            .await?;
        let keys = self.keys(tenant);
        let chunk = chunk_for(payload.len());
        if recipients.len() > chunk {
            return self
                .broadcast_chunked(
                    tenant,
                    job,
                    from,
                    message_type,
                    &payload,
                    &recipients,
                    chunk,
                )
                .await;
        }
        let mut call = scripts().message_broadcast.key("credits", keys.credits());
        call.key("outbox", keys.outbox());
        for to in &recipients {
            call.key("agent", keys.agent(to))
                .key("inbox", keys.inbox(to));
        }
        call.arg("event_base", event_base())
            .arg("tenant", tenant.as_str())
            .arg("price", self.prices().agent_message)
            .arg("inbox_cap", self.limits().inbox_cap)
            .arg("from", from.as_str())
            .arg("type", message_type)
            .arg("job", job.to_string())
            .arg("payload", payload.as_slice());
        for _ in &recipients {
            call.arg("message_id", Uuid::new_v4().to_string());
        }
        let mut conn = self.redis().conn().await?;
        let reply = call.invoke(&mut conn).await?;
        match reply.tag() {
            "ok" => {
                let reached = reply.texts("recipients")?.to_vec();
                for _ in &reached {
                    metrics::message_sent(tenant);
                }
                Ok(Broadcast {
                    id: None,
                    recipients: reached,
                    complete: true,
                })
            }
            // The script names how many it would reach; the amount is exact here.
            "insufficient" => Err(self.insufficient(reply.int("recipients")?, &reply)?),
            other => Err(Error::protocol(format!(
                "message_broadcast answered {other}"
            ))),
        }
    }

    fn insufficient(&self, recipients: i64, reply: &crate::scripts::Answer) -> Result<Error> {
        Ok(Error::InsufficientCredits {
            required: from_minor(self.prices().agent_message)
                * rust_decimal::Decimal::from(recipients),
            available: from_minor(reply.int("available")?),
        })
    }

    /// A broadcast's checked type and encoded payload, and its recipients.
    async fn prepare(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        from: &Ident,
        message_type: &str,
        payload: impl Into<Payload>,
    ) -> Result<(Vec<u8>, Vec<Ident>)> {
        validate_type(message_type)?;
        let payload = payload
            .into()
            .encode_checked("payload", self.limits().max_payload_bytes)?;
        let recipients = self.recipients(&self.keys(tenant), job, from).await?;
        Ok((payload, recipients))
    }

    /// The job's registered instances but `from`, read a page per command
    /// (each once: a page boundary moved by a heartbeat may repeat one).
    async fn recipients(&self, keys: &TenantKeys, job: &Uuid, from: &Ident) -> Result<Vec<Ident>> {
        let index = keys.agents_of_job(job);
        let mut conn = self.redis().conn().await?;
        let (mut seen, mut out) = (HashSet::new(), Vec::new());
        let mut start = 0;
        loop {
            let page: Vec<String> = redis::cmd("ZRANGE")
                .arg(&index)
                .arg(start)
                .arg(start + PAGE - 1)
                .query_async(&mut conn)
                .await?;
            let full = page.len() == PAGE;
            for member in page {
                // Index members were validated when registered; skip anything else.
                let Ok(to) = Ident::new("instance_id", member.as_str()) else {
                    continue;
                };
                if &to != from && seen.insert(member) {
                    out.push(to);
                }
            }
            if !full {
                return Ok(out);
            }
            start += PAGE;
        }
    }

    /// The first half of a broadcast delivered in chunks, whatever its size:
    /// stages the recipients (the job's instances but `from`) in the
    /// broadcast's list and reserves the price of every one — all or
    /// nothing. Answers the broadcast's id; [`AgentBus::deliver_broadcast`]
    /// (or the reaper, once it stalls) delivers it.
    pub async fn begin_broadcast(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        from: &Ident,
        message_type: &str,
        payload: impl Into<Payload>,
    ) -> Result<Uuid> {
        let (payload, recipients) = self
            .prepare(tenant, job, from, message_type, payload)
            .await?;
        if recipients.is_empty() {
            return Err(Error::not_found(format!(
                "instances of job {job} to broadcast to"
            )));
        }
        let chunk = chunk_for(payload.len());
        self.stage_and_reserve(
            tenant,
            job,
            from,
            message_type,
            &payload,
            &recipients,
            chunk,
        )
        .await
    }

    /// Delivers a begun broadcast to its end (see [`AgentBus::begin_broadcast`]);
    /// any process may, any number at once. Answers the instances this call
    /// reached.
    pub async fn deliver_broadcast(&self, tenant: &TenantId, id: &Uuid) -> Result<Vec<String>> {
        let mut reached = Vec::new();
        self.deliver(tenant, id, &mut reached).await?;
        for _ in &reached {
            metrics::message_sent(tenant);
        }
        Ok(reached)
    }

    /// A broadcast past one chunk: stage and reserve, then deliver from a
    /// task of its own (a caller that goes away mid-way leaves it running).
    #[allow(clippy::too_many_arguments)]
    async fn broadcast_chunked(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        from: &Ident,
        message_type: &str,
        payload: &[u8],
        recipients: &[Ident],
        chunk: usize,
    ) -> Result<Broadcast> {
        let id = self
            .stage_and_reserve(tenant, job, from, message_type, payload, recipients, chunk)
            .await?;
        let (bus, t) = (self.clone(), tenant.clone());
        let task = tokio::spawn(async move {
            let mut reached = Vec::new();
            let done = bus.deliver(&t, &id, &mut reached).await;
            (reached, done)
        });
        let (recipients, complete) = match task.await {
            Ok((reached, Ok(_))) => (reached, true),
            Ok((reached, Err(e))) => {
                warn_stopped(tenant, &id, &e);
                (reached, false)
            }
            Err(e) => {
                warn_stopped(tenant, &id, &e);
                (Vec::new(), false)
            }
        };
        for _ in &recipients {
            metrics::message_sent(tenant);
        }
        Ok(Broadcast {
            id: Some(id),
            recipients,
            complete,
        })
    }

    /// Stages `recipients` in a new broadcast's list (a page per RPUSH) and
    /// runs `broadcast_begin`; a refusal leaves nothing behind.
    #[allow(clippy::too_many_arguments)]
    async fn stage_and_reserve(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        from: &Ident,
        message_type: &str,
        payload: &[u8],
        recipients: &[Ident],
        chunk: usize,
    ) -> Result<Uuid> {
        let id = Uuid::new_v4();
        let keys = self.keys(tenant);
        let list = keys.broadcast_recipients(&id);
        let mut conn = self.redis().conn().await?;
        for group in recipients.chunks(PAGE * 16) {
            let mut pipe = redis::pipe();
            for page in group.chunks(PAGE) {
                let mut cmd = redis::cmd("RPUSH");
                cmd.arg(&list);
                for to in page {
                    cmd.arg(to.as_str());
                }
                pipe.add_command(cmd).ignore();
            }
            pipe.cmd("EXPIRE").arg(&list).arg(STAGING_TTL_SECS).ignore();
            pipe.query_async::<()>(&mut conn).await?;
        }
        let mut call = scripts().broadcast_begin.key("credits", keys.credits());
        call.key("outbox", keys.outbox())
            .key("broadcasts", keys.broadcasts())
            .key("record", keys.broadcast(&id))
            .key("recipients", &list)
            .arg("event_base", event_base())
            .arg("tenant", tenant.as_str())
            .arg("id", id.to_string())
            .arg("price", self.prices().agent_message)
            .arg("count", recipients.len())
            .arg("chunk", chunk)
            .arg("from", from.as_str())
            .arg("type", message_type)
            .arg("job", job.to_string())
            .arg("payload", payload)
            // If the sender stops, the reaper finishes the delivery.
            .due(
                self.due_key(Chore::Reap, tenant),
                tenant.as_str(),
                crate::due::now_ms() + self.limits().spawn_stall.as_millis() as i64 + 1,
            );
        let reply = call.invoke(&mut conn).await?;
        if !reply.is("ok") {
            // Refused: nothing reserved, the list belongs to no broadcast.
            // (On an error the script may have run: the list stays, for the
            // broadcast if it began, else until its TTL.)
            redis::cmd("UNLINK")
                .arg(&list)
                .query_async::<()>(&mut conn)
                .await?;
        }
        match reply.tag() {
            "ok" => Ok(id),
            "insufficient" => Err(self.insufficient(recipients.len() as i64, &reply)?),
            other => Err(Error::protocol(format!("broadcast_begin answered {other}"))),
        }
    }

    /// Delivers a begun broadcast from where it stands to its end, a chunk
    /// per call (its list read a page at a time), adding the instances
    /// reached to `reached`. Safe to run from any number of processes at once. Answers `true` when this
    /// call settled it, `false` when it was over already or another call
    /// settled it.
    async fn deliver(
        &self,
        tenant: &TenantId,
        id: &Uuid,
        reached: &mut Vec<String>,
    ) -> Result<bool> {
        let keys = self.keys(tenant);
        let (record, list) = (keys.broadcast(id), keys.broadcast_recipients(id));
        let mut conn = self.redis().conn().await?;
        let (cursor, count, chunk): (Option<usize>, Option<usize>, Option<usize>) =
            redis::cmd("HMGET")
                .arg(&record)
                .arg("cursor")
                .arg("count")
                .arg("chunk")
                .query_async(&mut conn)
                .await?;
        let (Some(mut cursor), Some(count), Some(chunk)) = (cursor, count, chunk) else {
            return Ok(false);
        };
        let chunk = chunk.clamp(1, 1000);
        let mut window = Window {
            base: 0,
            names: Vec::new(),
        };
        while cursor < count {
            if !window.covers(cursor) {
                let names: Vec<String> = redis::cmd("LRANGE")
                    .arg(&list)
                    .arg(cursor)
                    .arg(cursor + PAGE - 1)
                    .query_async(&mut conn)
                    .await?;
                if names.is_empty() {
                    // Settled meanwhile (the list goes with the record), or lost.
                    let exists: bool = redis::cmd("EXISTS")
                        .arg(&record)
                        .query_async(&mut conn)
                        .await?;
                    if !exists {
                        return Ok(false);
                    }
                    return Err(Error::protocol(format!(
                        "broadcast {id} stands at {cursor} of {count} but its recipient list is gone"
                    )));
                }
                window = Window {
                    base: cursor,
                    names,
                };
            }
            let from = cursor - window.base;
            let until = (from + chunk)
                .min(window.names.len())
                .min(count - window.base);
            let mut call = scripts().broadcast_deliver.key("credits", keys.credits());
            call.key("outbox", keys.outbox())
                .key("broadcasts", keys.broadcasts())
                .key("record", &record)
                .key("recipients", &list);
            for name in &window.names[from..until] {
                let to = Ident::new("instance_id", name.as_str()).map_err(|_| {
                    Error::protocol(format!("broadcast {id} lists recipient {name:?}"))
                })?;
                call.key("agent", keys.agent(&to))
                    .key("inbox", keys.inbox(&to));
            }
            call.arg("event_base", event_base())
                .arg("tenant", tenant.as_str())
                .arg("id", id.to_string())
                .arg("inbox_cap", self.limits().inbox_cap)
                .arg("cursor", cursor);
            for _ in from..until {
                call.arg("message_id", Uuid::new_v4().to_string());
            }
            let reply = call.invoke(&mut conn).await?;
            match reply.tag() {
                "ok" => {
                    reached.extend_from_slice(reply.texts("recipients")?);
                    if reply.int("done")? == 1 {
                        return Ok(true);
                    }
                    cursor += until - from;
                }
                "moved" => cursor = usize::try_from(reply.int("cursor")?).unwrap_or(count),
                "missing" => return Ok(false),
                other => {
                    return Err(Error::protocol(format!(
                        "broadcast_deliver answered {other}"
                    )));
                }
            }
        }
        Ok(false)
    }

    /// Finishes the tenant's broadcasts that made no progress for
    /// [`crate::bus::Limits::spawn_stall`] (their sender stopped), a few per
    /// call. Answers how many it finished and when the next one would
    /// stall (ms), for the reaper's next visit.
    pub async fn resume_broadcasts(&self, tenant: &TenantId) -> Result<(usize, Option<i64>)> {
        let keys = self.keys(tenant);
        let stall = self.limits().spawn_stall.as_millis() as i64;
        let now = crate::due::now_ms();
        let mut conn = self.redis().conn().await?;
        let stalled: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys.broadcasts())
            .arg("-inf")
            .arg(now - stall)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(RESUME_MOST)
            .query_async(&mut conn)
            .await?;
        let mut finished = 0;
        for name in &stalled {
            let Ok(id) = Uuid::parse_str(name) else {
                tracing::warn!(%tenant, broadcast = %name, "broadcasts index names no broadcast");
                continue;
            };
            let mut reached = Vec::new();
            match self.deliver(tenant, &id, &mut reached).await {
                Ok(_) => finished += 1,
                Err(e) => warn_stopped(tenant, &id, &e),
            }
            for _ in &reached {
                metrics::message_sent(tenant);
            }
        }
        if stalled.len() == RESUME_MOST {
            return Ok((finished, Some(now)));
        }
        let first: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys.broadcasts())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok((
            finished,
            first
                .first()
                .map(|(_, at)| (*at as i64 + stall + 1).max(now)),
        ))
    }
}

fn warn_stopped(tenant: &TenantId, id: &Uuid, error: &dyn std::fmt::Display) {
    tracing::warn!(%tenant, broadcast = %id, %error, "broadcast: delivery stopped; the reaper will go on");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_bounded_by_recipients_and_by_bytes() {
        assert_eq!(chunk_for(0), BROADCAST_CHUNK);
        assert_eq!(chunk_for(100), BROADCAST_CHUNK);
        assert_eq!(chunk_for(CHUNK_BYTES / 10), 10);
        assert_eq!(chunk_for(CHUNK_BYTES * 4), 1);
    }
}
