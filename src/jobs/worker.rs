//! A worker for Rust agents: claims items of one job (through
//! `lua/job_claim.lua`, so within the job's `parallelism`, waiting with
//! `XREAD BLOCK` when nothing is new; a job without a bound is read with
//! `XREADGROUP` directly, and read ahead of the free slots while handlers
//! are quick), runs a handler with bounded
//! concurrency, and completes or fails items for it in batches.
//!
//! Each worker is one consumer with a stable name, reading on a connection of
//! its own. On start it first re-reads its own pending entries, so a worker
//! restarted under the same name resumes what it held; one that stops gives
//! back what it holds unhandled. Outcomes go through a
//! [`Completer`]; workers of one process may share one, so completions of many
//! workers travel to Redis in one script call.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::codec::{self, StreamEntry};
use crate::error::{Error, Result};
use crate::jobs::{ClaimedItem, CompleteOutcome, FailOutcome};
use crate::keys::{self, TenantId};

/// Items a worker reads ahead of its free slots unless told: on the
/// 100,000-item load at concurrency 1 (bench/RESULTS.md), Redis CPU per
/// item was 12.3 µs with 3, 11.4 µs with 7 and 15 (~20 µs on the build
/// before read-ahead); the claim-to-completion p99 ~12, ~17 and ~23 ms
/// (~6 ms before): more items in flight at the same throughput.
pub const DEFAULT_READ_AHEAD: usize = 7;

/// Longest an item read ahead should wait for a slot (at the handlers'
/// measured pace): handlers slower than this are not read ahead of.
const READ_AHEAD_WAIT: Duration = Duration::from_millis(5);

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

/// Counters of one worker, updated by whichever completer handles its outcomes.
struct Tally {
    completed: AtomicU64,
    duplicates: AtomicU64,
    stale: AtomicU64,
    rejected: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    /// Outcomes handed to the completer and not yet answered by Redis.
    unanswered: AtomicU64,
    answered: Notify,
}

impl Tally {
    fn new() -> Self {
        Self {
            completed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency_us: Mutex::new(new_latency_histogram()),
            unanswered: AtomicU64::new(0),
            answered: Notify::new(),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn record_latency(&self, since: Instant) {
        if let Ok(mut h) = self.latency_us.lock() {
            let _ = h.record(since.elapsed().as_micros() as u64);
        }
    }

    fn done(&self) {
        if self.unanswered.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.answered.notify_waiters();
        }
    }

    async fn wait_answered(&self) {
        loop {
            let notified = self.answered.notified();
            if self.unanswered.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn report(&self, consumer: &str) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            consumer: consumer.to_string(),
            completed: get(&self.completed),
            duplicates: get(&self.duplicates),
            stale: get(&self.stale),
            rejected: get(&self.rejected),
            retried: get(&self.retried),
            failed: get(&self.failed),
            latency_us: self
                .latency_us
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|_| new_latency_histogram()),
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
    tally: Arc<Tally>,
}

/// Sends item outcomes of one job to Redis in batches. Cheap to clone; the
/// background task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<Outcome>,
}

impl Completer {
    pub fn new(bus: AgentBus, tenant: TenantId, job: Uuid) -> Self {
        let (tx, rx) = mpsc::channel(MAX_COMPLETE_BATCH * 4);
        tokio::spawn(complete_loop(bus, tenant, job, rx));
        Self { tx }
    }
}

pub struct Worker {
    bus: AgentBus,
    tenant: TenantId,
    job: Uuid,
    consumer: String,
    concurrency: usize,
    batch: usize,
    read_ahead: usize,
    block: Duration,
    shutdown: CancellationToken,
    completer: Option<Completer>,
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
            read_ahead: DEFAULT_READ_AHEAD,
            block: Duration::from_millis(500),
            shutdown: CancellationToken::new(),
            completer: None,
        })
    }

    /// Items processed at once (default 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Most items claimed per read (default 16; more than the free slots
    /// only by the read-ahead).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Most items read ahead of the free slots (default 7; 0: none): each
    /// read then fetches up to this many more than it has slots for, so
    /// quick handlers cost fewer reads per item, and each item read ahead
    /// waits in the worker (claim-to-completion latency grows with it).
    /// Only for a job without a parallelism bound, and only as many as the
    /// handlers' measured pace starts within 5 ms (and a quarter of
    /// `timeout_per_item`): slow handlers are never read ahead of.
    pub fn read_ahead(mut self, n: usize) -> Self {
        self.read_ahead = n;
        self
    }

    /// How long one read blocks waiting for items (default 500 ms).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Sends outcomes through a completer shared with other workers of the
    /// same job (default: one of its own).
    pub fn completer(mut self, completer: Completer) -> Self {
        self.completer = Some(completer);
        self
    }

    /// Stops claiming when the token is cancelled; items in hand still finish.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Runs until the job is no longer running (or shutdown), then returns
    /// what this worker did.
    pub async fn run<H, F>(mut self, handler: H) -> Result<WorkerReport>
    where
        H: Fn(ClaimedItem) -> F + Send + Sync + 'static,
        F: Future<Output = std::result::Result<serde_json::Value, ItemError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let completer = match self.completer.take() {
            Some(c) => c,
            None => Completer::new(self.bus.clone(), self.tenant.clone(), self.job),
        };
        let tally = Arc::new(Tally::new());
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let items_key = self.bus.keys(&self.tenant).job_items(&self.job);
        let mut conn = self.bus.redis().blocking();
        // Re-read this consumer's own pending entries first (after a restart),
        // walking them by id; then ">" takes new ones.
        let mut pending_after: Option<String> = Some("0".into());
        let mut backoff = Duration::from_millis(50);
        let mut claimer = self.bus.claimer();
        // A job without a parallelism bound (0, fixed at spawn) is read
        // directly: one XREADGROUP per read, no script, and may be read
        // ahead. Unknown (the job gone, Redis away): the claim script, which
        // finds out.
        let job = self.bus.job(&self.tenant, &self.job).await.ok();
        let unbounded = matches!(&job, Some(job) if job.parallelism == 0);
        let pace = Arc::new(Pace::new(
            self.concurrency,
            self.batch,
            self.read_ahead,
            job.filter(|_| unbounded)
                .map(|job| Duration::from_secs(job.timeout_per_item.max(0) as u64)),
        ));
        let dispatcher = Dispatcher {
            handler,
            tx: completer.tx.clone(),
            tally: tally.clone(),
            pace,
        };
        // Items read ahead of a free slot, oldest first, with when each was read.
        let mut queued: VecDeque<(StreamEntry, Instant)> = VecDeque::new();

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
            if !queued.is_empty() {
                let take = permits.len().min(queued.len());
                let ready: Vec<_> = queued.drain(..take).collect();
                for ((entry, claimed_at), permit) in ready.into_iter().zip(permits) {
                    dispatcher.dispatch(&entry, claimed_at, permit)?;
                }
                continue;
            }
            // With quick handlers one read fetches more than the free slots
            // (fewer reads per item); the rest waits here, briefly.
            let count = dispatcher.pace.read_count(permits.len());
            let reply = match (&pending_after, unbounded) {
                // New items of a bounded job only through the claim script.
                (None, false) => tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    r = claimer.claim(&self.tenant, &self.job, &self.consumer, permits.len(), self.block) => r,
                },
                // Its own pending entries after `after`, or new ones (blocking).
                (after, _) => {
                    let (from, block) = match after {
                        Some(after) => (after.as_str(), None),
                        None => (">", Some(self.block)),
                    };
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        r = AgentBus::read_group(&mut conn, &items_key, &self.consumer, count, from, block) => r,
                    }
                }
            };
            let entries = match reply {
                Ok(entries) => {
                    backoff = Duration::from_millis(50);
                    entries
                }
                // The claim found the job ended (or gone).
                Err(Error::Conflict { .. } | Error::NotFound(_)) => break,
                // The items stream is deleted when the job ends: readers blocked
                // on it are unblocked, later reads find no group.
                Err(Error::Redis(e)) if matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")) => {
                    if !self.job_running().await? {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(e) if e.is_transient() => {
                    e.count_failure();
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
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|e| !e.fields.is_empty())
                .collect();
            if entries.is_empty() {
                // Nothing claimed (waited for, or paused while the job is at
                // its parallelism): the next claim says whether it still
                // runs. A direct read learns it from the job.
                if pending_after.is_none() && unbounded && !self.job_running().await? {
                    break;
                }
                continue;
            }
            let claimed_at = Instant::now();
            crate::metrics::items(&self.tenant, "claimed", entries.len() as u64);
            let mut entries = entries.into_iter();
            for permit in permits {
                match entries.next() {
                    Some(entry) => dispatcher.dispatch(&entry, claimed_at, permit)?,
                    None => break,
                }
            }
            queued.extend(entries.map(|e| (e, claimed_at)));
        }

        // Let every handler in flight finish, then wait for Redis to answer
        // every outcome this worker handed in.
        let _all = slots
            .acquire_many(self.concurrency as u32)
            .await
            .map_err(|_| Error::protocol("worker slots closed"))?;
        drop(dispatcher);
        drop(completer);
        tally.wait_answered().await;
        // Whatever this consumer still holds was never handed to a handler
        // (a read answered as the shutdown cut it short): give it back, so
        // it goes out again now rather than after `timeout_per_item`.
        match self
            .bus
            .release_items(&self.tenant, &self.job, &self.consumer, &[])
            .await
        {
            Ok(released) if !released.is_empty() => {
                tracing::info!(consumer = %self.consumer, released = released.len(), "worker gave back the items it held");
            }
            Ok(_) | Err(Error::Conflict { .. } | Error::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(consumer = %self.consumer, error = %e, "worker could not give back its items; they return after timeout_per_item");
            }
        }
        Ok(tally.report(&self.consumer))
    }

    async fn job_running(&self) -> Result<bool> {
        match self.bus.job(&self.tenant, &self.job).await {
            Ok(job) => Ok(!job.status.is_finished()),
            Err(Error::NotFound(_)) => Ok(false),
            // Unknowable while Redis is away: keep going, the next read retries.
            Err(e) if e.is_transient() => {
                e.count_failure();
                tracing::warn!(error = %e, consumer = %self.consumer, "cannot read the job's state; carrying on");
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

/// What a worker hands each claimed item to: its handler, in a task of its
/// own, and then the completer.
struct Dispatcher<H> {
    handler: Arc<H>,
    tx: mpsc::Sender<Outcome>,
    tally: Arc<Tally>,
    pace: Arc<Pace>,
}

impl<H, F> Dispatcher<H>
where
    H: Fn(ClaimedItem) -> F + Send + Sync + 'static,
    F: Future<Output = std::result::Result<serde_json::Value, ItemError>> + Send + 'static,
{
    /// Runs the handler on one claimed entry, holding `permit` (a slot)
    /// until it is done, and hands its outcome to the completer.
    fn dispatch(
        &self,
        entry: &StreamEntry,
        claimed_at: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Result<()> {
        let item = ClaimedItem::from_entry(entry)?;
        let handler = self.handler.clone();
        let tx = self.tx.clone();
        let tally = self.tally.clone();
        let pace = self.pace.clone();
        tokio::spawn(async move {
            let item_id = item.item_id.clone();
            let started = Instant::now();
            // Input that cannot be decoded will not decode on a retry
            // either: failed for good (dead-lettered, credits released)
            // without reaching the handler.
            let result = match &item.undecodable {
                Some(why) => Err(ItemError::fatal(format!("undecodable input: {why}"))),
                None => match handler(item).await {
                    Ok(output) => {
                        codec::encode(&output).map_err(|e| ItemError::fatal(e.to_string()))
                    }
                    Err(e) => Err(e),
                },
            };
            pace.record(started.elapsed());
            tally.unanswered.fetch_add(1, Ordering::AcqRel);
            let outcome = Outcome {
                item_id,
                claimed_at,
                result,
                tally: tally.clone(),
            };
            if tx.send(outcome).await.is_err() {
                // No completer: the item stays pending and is reclaimed later.
                tally.done();
            }
            drop(permit);
        });
        Ok(())
    }
}

/// How far a worker reads ahead of its free slots. Reading ahead saves
/// reads only where handlers are about as quick as a read; an item read
/// ahead waits in the worker (while another worker may be idle) and its
/// delivery ages toward `timeout_per_item`, after which it is re-delivered.
/// So the queue is kept to what the handlers, at their measured pace,
/// start within [`READ_AHEAD_WAIT`] (and a quarter of that timeout);
/// until a handler has finished, or for a bounded job (whose parallelism
/// counts every item held), nothing is read ahead.
struct Pace {
    concurrency: u64,
    batch: usize,
    /// Most items held beyond the free slots.
    most_ahead: usize,
    /// Longest an item read ahead should wait, in µs (0: no read-ahead).
    budget_us: u64,
    /// Mean handler time in µs (moving average; 0 until one finished).
    mean_us: AtomicU64,
}

impl Pace {
    fn new(concurrency: usize, batch: usize, most_ahead: usize, timeout: Option<Duration>) -> Self {
        Self {
            concurrency: concurrency as u64,
            batch,
            most_ahead,
            budget_us: timeout.map_or(0, |t| {
                (t.as_micros() as u64 / 4).min(READ_AHEAD_WAIT.as_micros() as u64)
            }),
            mean_us: AtomicU64::new(0),
        }
    }

    fn record(&self, took: Duration) {
        let took = (took.as_micros() as u64).max(1);
        let mean = self.mean_us.load(Ordering::Relaxed);
        let next = if mean == 0 {
            took
        } else {
            (mean * 7 + took) / 8
        };
        self.mean_us.store(next.max(1), Ordering::Relaxed);
    }

    /// Items to read when `free` slots are free: those, and as many more
    /// (up to the read-ahead and the batch) as wait no longer than the budget.
    fn read_count(&self, free: usize) -> usize {
        let mean = self.mean_us.load(Ordering::Relaxed);
        if self.budget_us == 0 || mean == 0 || free >= self.batch {
            return free;
        }
        // The k-th queued item starts after about k / concurrency handler times.
        let ahead = (self.budget_us.saturating_mul(self.concurrency) / mean) as usize;
        free + ahead.min(self.most_ahead).min(self.batch - free)
    }
}

/// Sends outcomes to Redis in batches; retries transient failures, since
/// completion is idempotent and an outcome must not be lost to a blip. An
/// outcome that still cannot be delivered leaves its item pending, so the
/// reclaimer re-delivers it after its timeout.
async fn complete_loop(
    bus: AgentBus,
    tenant: TenantId,
    job: Uuid,
    mut rx: mpsc::Receiver<Outcome>,
) {
    let mut batch = Vec::with_capacity(MAX_COMPLETE_BATCH);
    while rx.recv_many(&mut batch, MAX_COMPLETE_BATCH).await > 0 {
        let (ok, failed): (Vec<_>, Vec<_>) = batch.drain(..).partition(|o| o.result.is_ok());
        if !ok.is_empty() {
            let outputs: Vec<(&str, &[u8])> = ok
                .iter()
                .map(|o| (o.item_id.as_str(), o.result.as_deref().unwrap_or_default()))
                .collect();
            match with_retries(|| bus.complete_encoded(&tenant, &job, &outputs)).await {
                Ok(outcomes) => {
                    for (o, outcome) in ok.iter().zip(outcomes) {
                        let t = &o.tally;
                        match outcome {
                            CompleteOutcome::Completed => {
                                Tally::count(&t.completed);
                                t.record_latency(o.claimed_at);
                            }
                            CompleteOutcome::Duplicate => Tally::count(&t.duplicates),
                            CompleteOutcome::Stale | CompleteOutcome::Invalid => {
                                Tally::count(&t.stale)
                            }
                        }
                    }
                }
                Err(Error::Conflict { .. }) | Err(Error::NotFound(_)) => {
                    ok.iter().for_each(|o| Tally::count(&o.tally.rejected))
                }
                Err(e) => {
                    e.count_failure();
                    tracing::error!(error = %e, items = ok.len(), "completions not delivered; items will be reclaimed")
                }
            }
            ok.iter().for_each(|o| o.tally.done());
        }
        for o in failed {
            if let Err(err) = &o.result {
                let t = &o.tally;
                match with_retries(|| {
                    bus.fail_item(&tenant, &job, &o.item_id, &err.message, err.retry)
                })
                .await
                {
                    Ok(FailOutcome::Retried { .. }) => Tally::count(&t.retried),
                    Ok(FailOutcome::Failed) => Tally::count(&t.failed),
                    Ok(FailOutcome::Duplicate) => Tally::count(&t.duplicates),
                    Ok(FailOutcome::Stale | FailOutcome::Invalid) => Tally::count(&t.stale),
                    Err(Error::Conflict { .. }) | Err(Error::NotFound(_)) => {
                        Tally::count(&t.rejected)
                    }
                    Err(e) => {
                        e.count_failure();
                        tracing::error!(error = %e, "failure report not delivered; item will be reclaimed")
                    }
                }
            }
            o.tally.done();
        }
    }
}

async fn with_retries<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    for _ in 0..8 {
        match op().await {
            // Not counted yet: the attempt is retried (the caller counts a
            // completion given up).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ahead_only_of_quick_handlers_of_an_unbounded_job() {
        let pace = Pace::new(1, 16, 3, Some(Duration::from_secs(60)));
        assert_eq!(pace.read_count(1), 1, "no handler measured yet");
        pace.record(Duration::from_micros(20));
        assert_eq!(pace.read_count(1), 4, "quick: up to the read-ahead");
        assert_eq!(pace.read_count(15), 16, "never past the batch");
        assert_eq!(pace.read_count(16), 16);
        // Handlers slower than the wait allowed: none read ahead.
        let slow = Pace::new(1, 16, 3, Some(Duration::from_secs(60)));
        slow.record(READ_AHEAD_WAIT + Duration::from_millis(1));
        assert_eq!(slow.read_count(1), 1);
        // 2 ms handlers: two start within 5 ms.
        let medium = Pace::new(1, 16, 3, Some(Duration::from_secs(60)));
        medium.record(Duration::from_millis(2));
        assert_eq!(medium.read_count(1), 3);
        // A short timeout bounds it too (a quarter of 1 s against 300 ms).
        let short = Pace::new(1, 16, 3, Some(Duration::from_secs(1)));
        short.record(Duration::from_millis(300));
        assert_eq!(short.read_count(1), 1);
        let bounded = Pace::new(1, 16, 3, None);
        bounded.record(Duration::from_micros(1));
        assert_eq!(bounded.read_count(1), 1, "a bounded job");
    }
}
