//! Handing out new items of a job, never more than its `parallelism` in
//! flight: a claim is `lua/job_claim.lua`. A claimer with nothing to take
//! waits outside the script — on the items stream (`XREAD BLOCK`, which
//! delivers nothing) when nothing is new, or a short pause when the job is
//! at its parallelism — then claims again. A job without a bound is waited
//! on with `XREADGROUP BLOCK`, which delivers what comes and is woken by
//! the job's end (its stream deleted), where `XREAD` waits out its slice.

use std::time::Duration;

use redis::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::ClaimedItem;
use super::operations::job_state_error;
use super::spec::MAX_CLAIM_PER_CALL;
use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::conn::BlockingConn;
use crate::error::Result;
use crate::keys::{self, TenantId};
use crate::metrics;
use crate::scripts::scripts;

/// Longest one wait for new items lasts before claiming again.
const WAIT_SLICE: Duration = Duration::from_secs(1);
/// First and longest pause between claims while a job is at its parallelism.
const FIRST_FULL_PAUSE: Duration = Duration::from_millis(10);
const MOST_FULL_PAUSE: Duration = Duration::from_millis(200);

/// What one claim found.
enum Claim {
    /// Delivered entries (at least one).
    Items(Vec<StreamEntry>),
    /// Nothing new: new items will have ids after `after`; `bounded` when
    /// the job has a parallelism (deliveries must go through the script).
    Empty { after: String, bounded: bool },
    /// `parallelism` items are in flight.
    Full,
}

/// Claims for one claimer (a worker, a waiting REST claim): its connection
/// for waiting (connected only if it waits) and its pause while the job is
/// at its parallelism (10 ms, doubling to 200 ms, back to 10 ms once a
/// claim gets items).
pub(crate) struct Claimer {
    bus: AgentBus,
    conn: BlockingConn,
    pause: Duration,
}

impl Claimer {
    /// One claim of up to `count` new items; with none to take, waits (at
    /// most `wait`, and at most a second: a job's end does not wake XREAD)
    /// for new ones, or pauses while the job is at its parallelism, and
    /// answers none. The caller claims again.
    pub(crate) async fn claim(
        &mut self,
        tenant: &TenantId,
        job: &Uuid,
        consumer: &str,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<StreamEntry>> {
        match self.bus.claim_once(tenant, job, consumer, count).await? {
            Claim::Items(entries) => {
                self.pause = FIRST_FULL_PAUSE;
                Ok(entries)
            }
            _ if wait.is_zero() => Ok(Vec::new()),
            Claim::Empty { after, bounded } => {
                let wait = wait.min(WAIT_SLICE);
                if bounded {
                    self.bus
                        .wait_for_items(&mut self.conn, tenant, job, &after, wait)
                        .await?;
                    Ok(Vec::new())
                } else {
                    self.bus
                        .read_new_items(&mut self.conn, tenant, job, consumer, count, wait)
                        .await
                }
            }
            Claim::Full => {
                tokio::time::sleep(self.pause.min(wait)).await;
                self.pause = (self.pause * 2).min(MOST_FULL_PAUSE);
                Ok(Vec::new())
            }
        }
    }
}

impl AgentBus {
    /// A claimer of new items (see [`Claimer`]).
    pub(crate) fn claimer(&self) -> Claimer {
        Claimer {
            bus: self.clone(),
            conn: self.redis().blocking(),
            pause: FIRST_FULL_PAUSE,
        }
    }

    /// One claim of up to `count` new items (1..=1,000) for `consumer`.
    /// A job that no longer runs is `Conflict` (its status), an unknown one
    /// `NotFound`.
    async fn claim_once(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        consumer: &str,
        count: usize,
    ) -> Result<Claim> {
        let keys = self.keys(tenant);
        let mut call = scripts().job_claim.key("job", keys.job(job));
        call.key("items", keys.job_items(job))
            .arg("consumer", consumer)
            .arg("count", count.clamp(1, MAX_CLAIM_PER_CALL));
        let mut conn = self.redis().conn().await?;
        let reply = call.invoke(&mut conn).await?;
        match reply.tag() {
            "ok" => Ok(Claim::Items(
                reply
                    .rest("entries")?
                    .iter()
                    .map(StreamEntry::from_value)
                    .collect::<Result<_>>()?,
            )),
            "empty" => Ok(Claim::Empty {
                after: reply.text("after")?.to_string(),
                bounded: reply.int("bounded")? != 0,
            }),
            "full" => Ok(Claim::Full),
            _ => Err(job_state_error(&reply, job)?),
        }
    }

    /// Waits (at most `wait`) on `conn` for an entry of the job's items
    /// stream after `after`; delivers nothing. A job that ends meanwhile
    /// does not wake it: the next claim finds that out.
    async fn wait_for_items(
        &self,
        conn: &mut BlockingConn,
        tenant: &TenantId,
        job: &Uuid,
        after: &str,
        wait: Duration,
    ) -> Result<()> {
        let read = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(self.keys(tenant).job_items(job))
            .arg(after)
            .to_owned();
        conn.query::<Value>(&read, wait).await.map(drop)
    }

    /// `XREADGROUP` of up to `count` entries of a job's items stream
    /// (`items`) for `consumer`: new ones (`from` `>`, blocking up to `block` when given)
    /// or its own pending ones after the id `from`. Errors as Redis gives
    /// them (`NOGROUP`, `UNBLOCKED` once the job's stream is deleted).
    pub(crate) async fn read_group(
        conn: &mut BlockingConn,
        items: &str,
        consumer: &str,
        count: usize,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<StreamEntry>> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("workers")
            .arg(consumer)
            .arg("COUNT")
            .arg(count.clamp(1, MAX_CLAIM_PER_CALL));
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        read.arg("STREAMS").arg(items).arg(from);
        let value = conn
            .query::<Value>(&read, block.unwrap_or_default())
            .await?;
        StreamEntry::from_read_reply(&value)
    }

    /// Waits (at most `wait`) for new items of a job without a
    /// parallelism bound and delivers up to `count` to `consumer`. The
    /// job's end deletes its stream, which ends the wait at once (nothing
    /// delivered; the next claim finds the job's state).
    async fn read_new_items(
        &self,
        conn: &mut BlockingConn,
        tenant: &TenantId,
        job: &Uuid,
        consumer: &str,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<StreamEntry>> {
        let items = self.keys(tenant).job_items(job);
        match Self::read_group(conn, &items, consumer, count, ">", Some(wait)).await {
            Err(crate::error::Error::Redis(e))
                if matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")) =>
            {
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Delivers up to `count` new items to `consumer`, within the job's
    /// `parallelism`. With `wait` > 0 and nothing to take (nothing new, or
    /// the job at its parallelism), waits up to that long for some.
    pub async fn claim_items(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        consumer: &str,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<ClaimedItem>> {
        keys::validate_id("worker_instance_id", consumer, keys::MAX_ID_LEN)?;
        let deadline = Instant::now() + wait;
        let mut claimer = self.claimer();
        let entries = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let entries = claimer.claim(tenant, job, consumer, count, left).await?;
            if !entries.is_empty() || Instant::now() >= deadline {
                break entries;
            }
        };
        let items = entries
            .iter()
            .map(ClaimedItem::from_entry)
            .collect::<Result<Vec<_>>>()?;
        metrics::items(tenant, "claimed", items.len() as u64);
        Ok(items)
    }
}
