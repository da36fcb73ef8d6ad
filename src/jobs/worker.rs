//! A worker for Rust agents: claims items of one job over `XREADGROUP`,
//! runs a handler with bounded concurrency, and completes or fails items for
//! it in batches.
//!
//! Each worker is one consumer with a stable name, reading on a connection of
//! its own. On start it first re-reads its own pending entries, so a worker
//! restarted under the same name resumes what it held.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::codec::{self, StreamEntry};
use crate::error::{Error, Result};
use crate::jobs::{ClaimedItem, CompleteOutcome, FailOutcome};
use crate::keys::{self, TenantId};

/// Most completions sent in one script call.
const MAX_COMPLETE_BATCH: usize = 256;

/// A handler's failure: the message, and whether another attempt may succeed.
#[derive(Clone, Debug)]
pub struct ItemError {
    pub message: String,
    pub retry: bool,
}

impl ItemError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
        }
    }
}

/// What one worker did.
#[derive(Clone, Debug)]
pub struct WorkerReport {
    pub consumer: String,
    pub completed: u64,
    pub duplicates: u64,
    /// Completions refused because the delivery had been reclaimed.
    pub stale: u64,
    /// Outcomes refused because the job was no longer running (e.g. cancelled).
    pub rejected: u64,
    pub retried: u64,
    pub failed: u64,
    /// Claim to acknowledged completion, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl WorkerReport {
    fn new(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_string(),
            completed: 0,
            duplicates: 0,
            stale: 0,
            rejected: 0,
            retried: 0,
            failed: 0,
            latency_us: new_latency_histogram(),
        }
    }
}

/// Microsecond histogram from 1 µs to 1 hour, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

struct Outcome {
    item_id: String,
    claimed_at: Instant,
    result: std::result::Result<Vec<u8>, ItemError>,
}

pub struct Worker {
    bus: AgentBus,
    tenant: TenantId,
    job: Uuid,
    consumer: String,
    concurrency: usize,
    batch: usize,
    block: Duration,
    shutdown: CancellationToken,
}

impl Worker {
    /// A worker for `job` consuming as `consumer` (its stable instance id).
    pub fn new(bus: AgentBus, tenant: TenantId, job: Uuid, consumer: &str) -> Result<Self> {
        keys::validate_id("consumer", consumer, keys::MAX_ID_LEN)?;
        Ok(Self {
            bus,
            tenant,
            job,
            consumer: consumer.to_string(),
            concurrency: 1,
            batch: 16,
            block: Duration::from_millis(500),
            shutdown: CancellationToken::new(),
        })
    }

    /// Items processed at once (default 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Most items claimed per read (default 16; never more than free slots).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How long one read blocks waiting for items (default 500 ms).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Stops claiming when the token is cancelled; items in hand still finish.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Runs until the job is no longer running (or shutdown), then returns
    /// what this worker did.
    pub async fn run<H, F>(self, handler: H) -> Result<WorkerReport>
    where
        H: Fn(ClaimedItem) -> F + Send + Sync + 'static,
        F: Future<Output = std::result::Result<serde_json::Value, ItemError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let (tx, rx) = mpsc::channel::<Outcome>(self.concurrency * 2 + MAX_COMPLETE_BATCH);
        let completer = tokio::spawn(complete_loop(
            self.bus.clone(),
            self.tenant.clone(),
            self.job,
            rx,
            WorkerReport::new(&self.consumer),
        ));
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let items_key = self.bus.keys(&self.tenant).job_items(&self.job);
        let mut conn = self.bus.redis().blocking();
        // Re-read this consumer's own pending entries first (after a restart),
        // walking them by id; then ">" takes new ones.
        let mut pending_after: Option<String> = Some("0".into());
        let mut backoff = Duration::from_millis(50);

        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.map_err(|_| Error::protocol("worker slots closed"))?,
            };
            let mut permits = vec![first];
            while permits.len() < self.batch {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg("workers")
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(permits.len());
            match &pending_after {
                Some(after) => read.arg("STREAMS").arg(&items_key).arg(after),
                None => read
                    .arg("BLOCK")
                    .arg(self.block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&items_key)
                    .arg(">"),
            };

            let reply = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = conn.query::<Value>(&read, self.block) => r,
            };
            let entries = match reply.and_then(|v| StreamEntry::from_read_reply(&v)) {
                Ok(entries) => {
                    backoff = Duration::from_millis(50);
                    entries
                }
                Err(Error::Redis(e)) if e.code() == Some("NOGROUP") => break,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, consumer = %self.consumer, "worker read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if pending_after.is_some() {
                pending_after = entries.last().map(|e| e.id.clone());
            }
            // Pending entries whose data was trimmed come back without fields.
            let entries: Vec<_> = entries.into_iter().filter(|e| !e.fields.is_empty()).collect();
            if entries.is_empty() {
                if pending_after.is_some() {
                    continue;
                }
                if !self.job_running().await? {
                    break;
                }
                continue;
            }
            let claimed_at = Instant::now();
            for (entry, permit) in entries.into_iter().zip(permits.drain(..)) {
                let item = ClaimedItem::from_entry(&entry)?;
                let handler = handler.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let item_id = item.item_id.clone();
                    let result = match handler(item).await {
                        Ok(output) => codec::encode(&output).map_err(|e| ItemError::fatal(e.to_string())),
                        Err(e) => Err(e),
                    };
                    let _ = tx
                        .send(Outcome {
                            item_id,
                            claimed_at,
                            result,
                        })
                        .await;
                    drop(permit);
                });
            }
        }

        // Let every handler in flight finish and hand in its outcome.
        let _all = slots
            .acquire_many(self.concurrency as u32)
            .await
            .map_err(|_| Error::protocol("worker slots closed"))?;
        drop(tx);
        completer
            .await
            .map_err(|e| Error::protocol(format!("completer task: {e}")))?
    }

    async fn job_running(&self) -> Result<bool> {
        match self.bus.job(&self.tenant, &self.job).await {
            Ok(job) => Ok(!job.status.is_finished()),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Sends outcomes to Redis in batches; retries transient failures, since
/// completion is idempotent and an outcome must not be lost to a blip.
async fn complete_loop(
    bus: AgentBus,
    tenant: TenantId,
    job: Uuid,
    mut rx: mpsc::Receiver<Outcome>,
    mut report: WorkerReport,
) -> Result<WorkerReport> {
    let mut batch = Vec::with_capacity(MAX_COMPLETE_BATCH);
    while rx.recv_many(&mut batch, MAX_COMPLETE_BATCH).await > 0 {
        let (ok, failed): (Vec<_>, Vec<_>) = batch.drain(..).partition(|o| o.result.is_ok());
        if !ok.is_empty() {
            let outputs: Vec<(&str, Vec<u8>)> = ok
                .iter()
                .map(|o| (o.item_id.as_str(), o.result.clone().unwrap_or_default()))
                .collect();
            match with_retries(|| bus.complete_encoded(&tenant, &job, &outputs)).await {
                Ok(outcomes) => {
                    for (o, outcome) in ok.iter().zip(outcomes) {
                        match outcome {
                            CompleteOutcome::Completed => {
                                report.completed += 1;
                                let _ = report
                                    .latency_us
                                    .record(o.claimed_at.elapsed().as_micros() as u64);
                            }
                            CompleteOutcome::Duplicate => report.duplicates += 1,
                            CompleteOutcome::Stale | CompleteOutcome::Invalid => report.stale += 1,
                        }
                    }
                }
                Err(Error::Conflict { .. }) | Err(Error::NotFound(_)) => {
                    report.rejected += ok.len() as u64
                }
                Err(e) => return Err(e),
            }
        }
        for o in failed {
            let Err(err) = &o.result else { continue };
            match with_retries(|| bus.fail_item(&tenant, &job, &o.item_id, &err.message, err.retry)).await {
                Ok(FailOutcome::Retried { .. }) => report.retried += 1,
                Ok(FailOutcome::Failed) => report.failed += 1,
                Ok(FailOutcome::Duplicate) => report.duplicates += 1,
                Ok(FailOutcome::Stale | FailOutcome::Invalid) => report.stale += 1,
                Err(Error::Conflict { .. }) | Err(Error::NotFound(_)) => report.rejected += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(report)
}

async fn with_retries<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    for _ in 0..8 {
        match op().await {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "completion failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
    op().await
}
