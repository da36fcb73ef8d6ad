//! Handing out new items of a job, never more than its `parallelism` in
//! flight: every delivery of a new item is `lua/job_claim.lua`. A claimer
//! with nothing to take waits outside the script — on the items stream
//! (`XREAD BLOCK`, which delivers nothing) when nothing is new, or a short
//! pause when the job is at its parallelism — then claims again.

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
use crate::error::{Error, Result};
use crate::keys::{self, TenantId};
use crate::metrics;
use crate::scripts::scripts;

/// Longest one wait for new items lasts before claiming again.
const WAIT_SLICE: Duration = Duration::from_secs(1);
/// Longest pause between claims while a job is at its parallelism.
const MOST_FULL_PAUSE: Duration = Duration::from_millis(200);

/// What one claim found.
pub(crate) enum Claim {
    /// Delivered entries (at least one).
    Items(Vec<StreamEntry>),
    /// Nothing new: new items will have ids after `after`.
    Empty { after: String },
    /// `parallelism` items are in flight.
    Full,
}

impl AgentBus {
    /// One claim of up to `count` new items (1..=1,000) for `consumer`.
    /// A job that no longer runs is `Conflict` (its status), an unknown one
    /// `NotFound`.
    pub(crate) async fn claim_once(
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
            }),
            "full" => Ok(Claim::Full),
            _ => Err(job_state_error(&reply, job)?),
        }
    }

    /// Waits (at most `wait`) on `conn` for an entry of the job's items
    /// stream after `after`; delivers nothing. A job that ends meanwhile
    /// does not wake it: the next claim finds that out.
    pub(crate) async fn wait_for_items(
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
        let mut blocking: Option<BlockingConn> = None;
        let mut pause = Duration::from_millis(10);
        let entries = loop {
            let claim = self.claim_once(tenant, job, consumer, count).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match claim {
                Claim::Items(entries) => break entries,
                _ if left.is_zero() => break Vec::new(),
                Claim::Empty { after } => {
                    let conn = blocking.get_or_insert_with(|| self.redis().blocking());
                    // In slices: XREAD is not woken when the job ends (its
                    // stream deleted), the next claim is.
                    let slice = left.min(WAIT_SLICE);
                    match self.wait_for_items(conn, tenant, job, &after, slice).await {
                        Ok(()) => {}
                        // The stream went with the job: the next claim says how it ended.
                        Err(Error::Redis(ref r)) if r.code() == Some("UNBLOCKED") => {
                            return Err(self.ended_job_error(tenant, job).await);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Claim::Full => {
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(MOST_FULL_PAUSE);
                }
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
