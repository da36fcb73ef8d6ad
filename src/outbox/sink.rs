//! The sink: mirrors every tenant's outbox into Postgres, durably and
//! idempotently.
//!
//! It reads each outbox through the consumer group `sink` (its own pending
//! entries first), writes a batch in one transaction — ledger rows inserted
//! `ON CONFLICT (event_id) DO NOTHING` with the balance deltas of only the
//! rows actually inserted, cancellations, invoke audit rows (an upsert that
//! converges whatever the order or repetition of events) and job summaries —
//! commits, then acknowledges and deletes the entries. A crash anywhere
//! before the acknowledgement means the batch is read again and written
//! again to no effect. Postgres being down means waiting, not dropping. An
//! event Postgres refuses is stranded: kept, counted and replayable (see
//! [`crate::outbox::stranded`]).
//!
//! Which tenants to visit is driven by work: every script call that writes
//! an outbox also writes its tenant into a ready signal (one zset per shard,
//! `keys::ready_signal`), and the sink blocks on those (`BZMPOP`, one reader
//! per shard), so an idle tenant costs nothing. A full sweep of every
//! tenant — taking over what a dead sink left, reading its own pending
//! entries, refreshing the backlog gauges — is the safety net for a signal
//! lost with a crash: at start as fast as it goes, then continuously, spread
//! evenly so each tenant is visited once per `sweep_every`; both in slices
//! between signal-driven drains, so a sweep never holds up a signal.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::Value;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::error::{Error, Result};
use crate::keys::TenantId;
use crate::metrics;
use crate::scripts::scripts;

use super::events::{Batch, parse_event};
pub use super::status::OutboxStatus;
use super::writer::{is_data_error, write_batch};

pub const GROUP: &str = "sink";
/// Most events per batch.
pub const MAX_BATCH: usize = 5000;
/// Events per batch unless configured (`AGENTBUS_SINK_BATCH`).
pub const DEFAULT_BATCH: usize = 1000;
/// How often every tenant is visited whatever the signals (default).
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Most tenants one signal read takes.
const SIGNALS_PER_READ: usize = 1000;
/// Entries another sink has held this long without acknowledging are taken over (default).
pub const TAKEOVER_IDLE: Duration = Duration::from_secs(30);

/// Points in a batch where tests inject a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkStage {
    /// Entries read, nothing written.
    Read,
    /// Rows written inside the open transaction, not committed.
    Written,
    /// Committed, not yet acknowledged in Redis.
    Committed,
}

pub type SinkHook = Arc<dyn Fn(SinkStage) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Clone)]
pub struct SinkOptions {
    /// Consumer name: unique per sink process, stable across its restarts.
    pub consumer: String,
    pub batch: usize,
    /// Entries another consumer (a sink that died) has held this long are taken over.
    pub takeover_idle: Duration,
    /// Every tenant is visited this often, signalled or not.
    pub sweep_every: Duration,
    pub hook: Option<SinkHook>,
}

impl SinkOptions {
    pub fn new(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_string(),
            batch: DEFAULT_BATCH,
            takeover_idle: TAKEOVER_IDLE,
            sweep_every: SWEEP_EVERY,
            hook: None,
        }
    }
}

/// What one batch wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Written {
    pub events: usize,
    pub ledger_rows: i64,
    pub dead_lettered: usize,
    /// When each event entered the outbox (ms, from its entry id): lag = commit time − this.
    pub appended_at_ms: Vec<i64>,
    /// The last batch was full: more may be waiting.
    #[serde(skip)]
    pub more: bool,
}

impl Written {
    /// Adds what another batch wrote.
    fn absorb(&mut self, other: Written) {
        self.events += other.events;
        self.ledger_rows += other.ledger_rows;
        self.dead_lettered += other.dead_lettered;
        self.appended_at_ms.extend(other.appended_at_ms);
    }
}

/// The sink of one process.
pub struct Sink {
    bus: AgentBus,
    pool: PgPool,
    options: SinkOptions,
    /// Tenants whose outbox group is known to exist.
    grouped: std::sync::Mutex<HashSet<TenantId>>,
}

impl Sink {
    pub fn new(bus: AgentBus, pool: PgPool, mut options: SinkOptions) -> Self {
        // Acknowledgements pass the ids as script arguments: stay well inside Lua's stack.
        options.batch = options.batch.clamp(1, MAX_BATCH);
        Self {
            bus,
            pool,
            options,
            grouped: std::sync::Mutex::new(HashSet::new()),
        }
    }

    async fn hook(&self, stage: SinkStage) {
        if let Some(h) = &self.options.hook {
            h(stage).await;
        }
    }

    async fn ensure_group(&self, tenant: &TenantId) -> Result<()> {
        if self.grouped.lock().is_ok_and(|g| g.contains(tenant)) {
            return Ok(());
        }
        let mut conn = self.bus.redis().conn().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.bus.keys(tenant).outbox())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => {
                if let Ok(mut g) = self.grouped.lock() {
                    g.insert(tenant.clone());
                }
                Ok(())
            }
        }
    }

    async fn read(&self, tenant: &TenantId, id: &str) -> Result<Vec<StreamEntry>> {
        let mut conn = self.bus.redis().conn().await?;
        let value: redis::RedisResult<Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg("COUNT")
            .arg(self.options.batch)
            .arg("STREAMS")
            .arg(self.bus.keys(tenant).outbox())
            .arg(id)
            .query_async(&mut conn)
            .await;
        match value {
            Ok(v) => StreamEntry::from_read_reply(&v),
            Err(e) => {
                if e.code() == Some("NOGROUP")
                    && let Ok(mut g) = self.grouped.lock()
                {
                    // The outbox was deleted (or Redis lost it): create the group again.
                    g.remove(tenant);
                }
                Err(e.into())
            }
        }
    }

    /// Takes over entries another sink consumer left unacknowledged.
    async fn take_over(&self, tenant: &TenantId) -> Result<()> {
        let mut conn = self.bus.redis().conn().await?;
        let _: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.bus.keys(tenant).outbox())
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg(self.options.takeover_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.options.batch)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Mirrors one batch of `tenant`'s outbox (own pending entries first).
    /// Returns what it wrote; `events == 0` means the outbox is drained.
    pub async fn drain_once(&self, tenant: &TenantId) -> Result<Written> {
        let entries = self.read_batch(tenant, true).await?;
        self.process(tenant, entries).await
    }

    /// The next entries to mirror: this consumer's own unacknowledged ones
    /// first when `recover` (after a start or a failure), then new ones.
    async fn read_batch(&self, tenant: &TenantId, recover: bool) -> Result<Vec<StreamEntry>> {
        self.ensure_group(tenant).await?;
        if recover {
            let kept = self.read_pending(tenant).await?;
            if !kept.is_empty() {
                return Ok(kept);
            }
        }
        self.read(tenant, ">").await
    }

    /// The first batch of this consumer's own unacknowledged entries.
    async fn read_pending(&self, tenant: &TenantId) -> Result<Vec<StreamEntry>> {
        let entries = self.read(tenant, "0").await?;
        // Pending entries whose data is gone cannot be mirrored: just release them.
        let (gone, kept): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.fields.is_empty());
        if !gone.is_empty() {
            self.ack(tenant, &gone).await?;
        }
        Ok(kept)
    }

    /// Writes one batch in one transaction, dead-letters what can never be
    /// written, then acknowledges the batch.
    #[tracing::instrument(name = "sink_batch", skip_all, fields(tenant = %tenant, events = entries.len()))]
    async fn process(&self, tenant: &TenantId, entries: Vec<StreamEntry>) -> Result<Written> {
        if entries.is_empty() {
            return Ok(Written::default());
        }
        self.hook(SinkStage::Read).await;
        let started = Instant::now();
        let mut batch = Batch::default();
        let mut poison: Vec<(StreamEntry, String)> = Vec::new();
        for e in &entries {
            match parse_event(e) {
                Ok(ev) => batch.add(ev),
                Err(err) => poison.push((e.clone(), err.to_string())),
            }
        }
        let ledger_rows = match self.write(tenant, &batch).await {
            Ok(n) => n,
            Err(Error::Postgres(e)) if is_data_error(&e) => {
                // Find the events Postgres refuses, one by one; write the rest.
                let (n, refused) = self.write_one_by_one(tenant, &entries, &poison).await?;
                poison.extend(refused);
                n
            }
            Err(e) => return Err(e),
        };
        self.hook(SinkStage::Committed).await;
        if !poison.is_empty() {
            self.bus.strand_events(tenant, &poison).await?;
        }
        self.ack(tenant, &entries).await?;
        let now = chrono::Utc::now().timestamp_millis();
        metrics::sink_batch(
            started.elapsed(),
            entries.len(),
            entries
                .iter()
                .filter_map(|e| entry_millis(&e.id))
                .map(|at| (now - at).max(0) as f64 / 1000.0),
        );
        Ok(Written {
            events: entries.len(),
            ledger_rows,
            dead_lettered: poison.len(),
            appended_at_ms: entries.iter().filter_map(|e| entry_millis(&e.id)).collect(),
            more: false,
        })
    }

    /// Mirrors up to `max_batches` batches of one tenant, reading the next
    /// batch from Redis while the current one is written to Postgres, and
    /// reading its own pending entries first when `recover`.
    pub async fn drain_tenant(
        &self,
        tenant: &TenantId,
        recover: bool,
        max_batches: usize,
    ) -> Result<Written> {
        let mut total = Written::default();
        if recover {
            // Every entry this consumer holds (read before a failure, or
            // taken over), before anything new: once a tenant counts as
            // recovered, only new entries are read.
            self.ensure_group(tenant).await?;
            let mut last_first: Option<String> = None;
            loop {
                let pending = self.read_pending(tenant).await?;
                let first = pending.first().map(|e| e.id.clone());
                if pending.is_empty() || first == last_first {
                    break;
                }
                last_first = first;
                total.absorb(self.process(tenant, pending).await?);
            }
        }
        let mut current = self.read_batch(tenant, false).await?;
        for round in 0..max_batches {
            if current.is_empty() {
                break;
            }
            // Prefetch only when more is likely and another round will take it.
            let prefetch = current.len() >= self.options.batch && round + 1 < max_batches;
            let (written, next) = if prefetch {
                let (w, n) = tokio::join!(self.process(tenant, current), self.read(tenant, ">"));
                (w?, n?)
            } else {
                (self.process(tenant, current).await?, Vec::new())
            };
            let full = written.events >= self.options.batch;
            total.absorb(written);
            total.more = full;
            current = next;
        }
        Ok(total)
    }

    /// Writes one batch in one transaction. Returns the ledger rows inserted.
    async fn write(&self, tenant: &TenantId, batch: &Batch) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let inserted = write_batch(&mut tx, tenant.as_str(), batch).await?;
        self.hook(SinkStage::Written).await;
        tx.commit().await?;
        // Counted once committed, from the rows this batch really inserted.
        let mut rows = 0;
        for (op, count, amount) in &inserted {
            let minor = crate::money::to_minor("amount", *amount).unwrap_or(0);
            metrics::credits(op, *count as u64, minor as u64);
            rows += count;
        }
        Ok(rows)
    }

    async fn write_one_by_one(
        &self,
        tenant: &TenantId,
        entries: &[StreamEntry],
        already_poison: &[(StreamEntry, String)],
    ) -> Result<(i64, Vec<(StreamEntry, String)>)> {
        let mut written = 0;
        let mut refused = Vec::new();
        for e in entries {
            if already_poison.iter().any(|(p, _)| p.id == e.id) {
                continue;
            }
            let Ok(event) = parse_event(e) else { continue };
            let mut batch = Batch::default();
            batch.add(event);
            match self.write(tenant, &batch).await {
                Ok(n) => written += n,
                Err(Error::Postgres(err)) if is_data_error(&err) => {
                    refused.push((e.clone(), err.to_string()))
                }
                Err(other) => return Err(other),
            }
        }
        Ok((written, refused))
    }

    /// Acknowledges entries and trims the outbox below what any sink still holds.
    async fn ack(&self, tenant: &TenantId, entries: &[StreamEntry]) -> Result<()> {
        let mut conn = self.bus.redis().conn().await?;
        let mut call = scripts()
            .outbox_ack
            .key("outbox", self.bus.keys(tenant).outbox());
        call.arg("group", GROUP);
        for e in entries {
            call.arg("entry", &e.id);
        }
        // It removes events: nothing new for the sink.
        call.quiet();
        call.invoke(&mut conn).await?;
        Ok(())
    }

    /// Runs until `shutdown`: the tenants the ready signals name, as they
    /// are signalled, and every tenant at each sweep; backing off while
    /// Postgres or Redis fail.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut signals) = tokio::sync::mpsc::channel::<Vec<TenantId>>(64);
        let readers: Vec<_> = self
            .bus
            .keyspace()
            .outbox_ready_all()
            .into_iter()
            .map(|key| {
                tokio::spawn(read_signals(
                    self.bus.clone(),
                    key,
                    tx.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        drop(tx);
        let mut backoff = Duration::from_millis(100);
        let mut next_sweep = Instant::now();
        // The sweep in progress: a slice of tenants between drains.
        let mut sweep: Option<Sweep> = None;
        let mut first = true;
        // Tenants whose own pending entries must be read first (all, at start).
        let mut recovered: HashSet<TenantId> = HashSet::new();
        // Tenants to drain next, in arrival order, each once.
        let mut queue = Queue::default();
        while !shutdown.is_cancelled() {
            if sweep.is_none() && Instant::now() >= next_sweep {
                match self.bus.tenants().await {
                    Ok(tenants) => sweep = Some(Sweep::new(tenants, first)),
                    Err(e) => {
                        e.count_failure();
                        tracing::warn!(error = %e, "sink: cannot list tenants; will retry");
                        next_sweep = Instant::now() + backoff;
                    }
                }
            }
            if let Some(current) = sweep.as_mut() {
                let upto = current.due_now(self.options.sweep_every);
                // Shutdown does not wait for a slice (a batch cut off is read
                // again by the next start's sweep).
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.sweep_slice(current, upto, &mut recovered) => {},
                }
                if current.is_done() {
                    self.report_lag(&current.idle, &current.busy).await;
                    // Spread sweeps follow one another: each tenant is
                    // visited once per period.
                    next_sweep = if current.failed {
                        Instant::now() + backoff
                    } else {
                        current.next_start(self.options.sweep_every)
                    };
                    first = false;
                    sweep = None;
                }
            }
            // A sweep behind its schedule goes on at once; one on schedule
            // waits for its next slice (or a signal).
            let wake = match &sweep {
                Some(s) if s.behind(self.options.sweep_every) => Instant::now(),
                Some(_) => Instant::now() + SWEEP_TICK,
                None => next_sweep,
            };
            if queue.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(wake.into()) => continue,
                    got = signals.recv() => match got {
                        Some(tenants) => queue.add(tenants),
                        None => break,
                    },
                }
            }
            while let Ok(tenants) = signals.try_recv() {
                queue.add(tenants);
            }
            let mut failed = false;
            for tenant in queue.take() {
                let recover = !recovered.contains(&tenant);
                match self.drain_tenant(&tenant, recover, 16).await {
                    Ok(written) => {
                        recovered.insert(tenant.clone());
                        if written.more {
                            queue.add(vec![tenant]);
                        }
                    }
                    Err(e) => {
                        e.count_failure();
                        tracing::warn!(tenant = %tenant, error = %e, "sink: batch failed; will retry");
                        recovered.remove(&tenant);
                        queue.add(vec![tenant]);
                        failed = true;
                    }
                }
            }
            if failed {
                sleep_or_stop(&shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
        for reader in readers {
            reader.abort();
        }
    }

    /// Visits the sweep's tenants up to `upto`: each one's outbox is probed;
    /// where there is work, takes over what another sink left idle, reads
    /// this sink's own pending entries and drains.
    async fn sweep_slice(&self, sweep: &mut Sweep, upto: usize, recovered: &mut HashSet<TenantId>) {
        while sweep.done < upto {
            let tenant = sweep.tenants[sweep.done].clone();
            sweep.done += 1;
            // Most tenants have nothing in flight and nothing undelivered:
            // two commands tell, and there is nothing to do for them.
            match self.idle_outbox(&tenant).await {
                Ok(Some(stranded)) => {
                    recovered.insert(tenant.clone());
                    sweep.idle.push((tenant, stranded));
                    continue;
                }
                Ok(None) => sweep.busy.push(tenant.clone()),
                Err(e) => {
                    e.count_failure();
                    tracing::warn!(error = %e, "sink: outbox probe failed");
                    sweep.busy.push(tenant.clone());
                }
            }
            // A tenant whose outbox has no group yet has nothing to take over.
            let taken = match self.ensure_group(&tenant).await {
                Ok(()) => self.take_over(&tenant).await,
                Err(e) => Err(e),
            };
            if let Err(e) = taken {
                e.count_failure();
                tracing::warn!(error = %e, "sink: takeover failed");
            }
            loop {
                match self.drain_tenant(&tenant, true, 16).await {
                    Ok(written) if written.more => continue,
                    Ok(_) => {
                        recovered.insert(tenant.clone());
                    }
                    Err(e) => {
                        e.count_failure();
                        tracing::warn!(tenant = %tenant, error = %e, "sink: sweep could not drain; will retry");
                        recovered.remove(&tenant);
                        sweep.failed = true;
                    }
                }
                break;
            }
        }
    }

    /// Refreshes the backlog gauges from a finished sweep: the busy tenants'
    /// outboxes read again, the idle ones' stranded counts as probed.
    async fn report_lag(&self, idle: &[(TenantId, u64)], busy: &[TenantId]) {
        if let Ok(status) = self.bus.outbox_status_of(busy).await {
            metrics::sink_lag(
                status
                    .iter()
                    .map(|s| (s.tenant.as_str(), s.events, s.oldest_age_secs, s.stranded))
                    .chain(
                        idle.iter()
                            .map(|(t, stranded)| (t.as_str(), 0, 0.0, *stranded)),
                    ),
            );
        }
    }

    /// For an outbox with nothing pending and nothing undelivered in the
    /// sink's group (or no outbox at all), its stranded events; `None` when
    /// the sweep has work there (or cannot tell: no group yet, or a lag
    /// Redis does not know after a deletion).
    async fn idle_outbox(&self, tenant: &TenantId) -> Result<Option<u64>> {
        let keys = self.bus.keys(tenant);
        let mut conn = self.bus.redis().conn().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(keys.outbox_dead())
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(keys.outbox())
            .ignore_errors();
        let mut replies = pipe
            .query_async::<Vec<redis::RedisResult<Value>>>(&mut conn)
            .await?
            .into_iter();
        let stranded = match replies.next() {
            Some(Ok(Value::Int(n))) => n.max(0) as u64,
            Some(Err(e)) => return Err(e.into()),
            _ => return Ok(None),
        };
        let idle = match replies.next() {
            Some(Ok(Value::Array(groups))) => groups.iter().any(|g| {
                let field = |name: &str| match g {
                    Value::Array(kv) => kv
                        .chunks(2)
                        .find(|p| matches!(&p[0], Value::BulkString(k) if k.as_slice() == name.as_bytes()))
                        .and_then(|p| p.get(1).cloned()),
                    Value::Map(kv) => kv
                        .iter()
                        .find(|(k, _)| matches!(k, Value::BulkString(k) if k.as_slice() == name.as_bytes()))
                        .map(|(_, v)| v.clone()),
                    _ => None,
                };
                let is_sink = matches!(field("name"), Some(Value::BulkString(n)) if n.as_slice() == GROUP.as_bytes());
                is_sink
                    && matches!(field("pending"), Some(Value::Int(0)))
                    && matches!(field("lag"), Some(Value::Int(0)))
            }),
            // No outbox at all: nothing was ever appended.
            Some(Err(e)) if e.to_string().contains("no such key") => true,
            Some(Err(e)) => return Err(e.into()),
            _ => false,
        };
        Ok(idle.then_some(stranded))
    }
}

/// Most tenants one sweep slice visits before the sink turns to its
/// signals again: the sweep never holds up a signalled tenant for long.
const SWEEP_SLICE: usize = 64;

/// How often a sweep on schedule takes its next slice.
const SWEEP_TICK: Duration = Duration::from_millis(500);

/// A sweep over every tenant, in slices between signal-driven drains: the
/// first of a process as fast as it goes (it recovers what the process held
/// before a restart), the later ones spread evenly over `sweep_every`, so
/// no pass costs Redis a burst of commands per tenant.
struct Sweep {
    tenants: Vec<TenantId>,
    done: usize,
    started: Instant,
    first: bool,
    idle: Vec<(TenantId, u64)>,
    busy: Vec<TenantId>,
    failed: bool,
}

impl Sweep {
    fn new(tenants: Vec<TenantId>, first: bool) -> Self {
        Self {
            tenants,
            done: 0,
            started: Instant::now(),
            first,
            idle: Vec::new(),
            busy: Vec::new(),
            failed: false,
        }
    }

    /// How many tenants should have been visited by now: the k-th of n
    /// falls due k/n of the way through the period.
    fn quota(&self, period: Duration) -> usize {
        quota(
            self.tenants.len(),
            self.first,
            self.started.elapsed(),
            period,
        )
    }

    /// When the next sweep may start: a spread sweep's period is over.
    fn next_start(&self, period: Duration) -> Instant {
        if self.first {
            Instant::now()
        } else {
            (self.started + period).max(Instant::now())
        }
    }

    /// Where the next slice ends.
    fn due_now(&self, period: Duration) -> usize {
        self.quota(period).min(self.done + SWEEP_SLICE)
    }

    fn behind(&self, period: Duration) -> bool {
        self.done < self.quota(period)
    }

    fn is_done(&self) -> bool {
        self.done >= self.tenants.len()
    }
}

/// Of `n` tenants, how many a sweep `elapsed` into its `period` should have
/// visited (all at once for a process's first sweep).
fn quota(n: usize, first: bool, elapsed: Duration, period: Duration) -> usize {
    if first || period.is_zero() {
        return n;
    }
    let share = elapsed.as_secs_f64() / period.as_secs_f64();
    ((n as f64 * share).floor() as usize).min(n)
}

/// Tenants waiting to be drained, in arrival order, each at most once.
#[derive(Default)]
struct Queue {
    order: Vec<TenantId>,
    members: HashSet<TenantId>,
}

impl Queue {
    fn add(&mut self, tenants: Vec<TenantId>) {
        for t in tenants {
            if self.members.insert(t.clone()) {
                self.order.push(t);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn take(&mut self) -> Vec<TenantId> {
        self.members.clear();
        std::mem::take(&mut self.order)
    }
}

/// Reads one shard of the ready signals into `tx` until `shutdown`: each
/// read takes (and removes) up to [`SIGNALS_PER_READ`] tenants, blocking up
/// to five seconds when there are none.
async fn read_signals(
    bus: AgentBus,
    key: String,
    tx: tokio::sync::mpsc::Sender<Vec<TenantId>>,
    shutdown: CancellationToken,
) {
    // Long: an idle sink costs Redis one command per shard per BLOCK.
    const BLOCK: Duration = Duration::from_secs(5);
    let mut conn = bus.redis().blocking();
    let mut backoff = Duration::from_millis(100);
    let mut cmd = redis::cmd("BZMPOP");
    cmd.arg(BLOCK.as_secs())
        .arg(1)
        .arg(&key)
        .arg("MIN")
        .arg("COUNT")
        .arg(SIGNALS_PER_READ);
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = conn.query::<Value>(&cmd, BLOCK) => read,
        };
        match read {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                let tenants = signalled_tenants(&reply);
                if !tenants.is_empty() && tx.send(tenants).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                e.count_failure();
                tracing::debug!(error = %e, key, "sink: cannot read signals");
                sleep_or_stop(&shutdown, backoff).await;
                if shutdown.is_cancelled() {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The members of a `BZMPOP` reply (`[key, [[member, score], ...]]`, or
/// nil when it timed out), as tenants; anything else is ignored.
fn signalled_tenants(reply: &Value) -> Vec<TenantId> {
    let Value::Array(parts) = reply else {
        return Vec::new();
    };
    let Some(Value::Array(pairs)) = parts.get(1) else {
        return Vec::new();
    };
    pairs
        .iter()
        .filter_map(|pair| match pair {
            Value::Array(p) => crate::codec::text(p.first()?),
            _ => None,
        })
        .filter_map(|name| TenantId::new(name).ok())
        .collect()
}

/// The millisecond part of a stream entry id.
pub fn entry_millis(id: &str) -> Option<i64> {
    id.split('-').next().and_then(|ms| ms.parse().ok())
}

async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_sweep_visits_the_kth_tenant_k_nths_into_its_period() {
        let period = Duration::from_secs(600);
        let at = |secs: u64| Duration::from_secs(secs);
        // A lone tenant is due at the end of the period, not at once (a
        // sweep that were over at once would start again at once).
        assert_eq!(quota(1, false, at(0), period), 0);
        assert_eq!(quota(1, false, at(599), period), 0);
        assert_eq!(quota(1, false, at(600), period), 1);
        assert_eq!(quota(10_000, false, at(0), period), 0);
        assert_eq!(quota(10_000, false, at(60), period), 1_000);
        assert_eq!(quota(10_000, false, at(6_000), period), 10_000);
        // A process's first sweep: everyone at once.
        assert_eq!(quota(10_000, true, at(0), period), 10_000);
        assert_eq!(quota(3, false, at(1), Duration::ZERO), 3);
    }
}
