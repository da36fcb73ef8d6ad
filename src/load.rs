//! The load test (`agentbus load`): one job, many workers as separate
//! consumers, and a report that checks the guarantees: every item finished
//! once, nothing lost, credits exact, no deadlock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngExt;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::error::{Error, Result};
use crate::jobs::worker::{Completer, ItemError, Worker, new_latency_histogram};
use crate::jobs::{JobSpec, JobStatus, reclaim};
use crate::keys::TenantId;
use crate::money;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub tenant: TenantId,
    pub items: usize,
    pub workers: usize,
    /// Items each worker processes at once.
    pub concurrency: usize,
    /// Items each worker claims per read.
    pub batch: usize,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
    /// Simulated work per item: uniform in `work_min..=work_max`.
    pub work_min: Duration,
    pub work_max: Duration,
    /// Probability that an attempt fails (and is retried).
    pub fail_rate: f64,
    /// Cancel the job once this percentage of items completed.
    pub cancel_at: Option<f64>,
    pub max_retries: i64,
    pub timeout_per_item: i64,
}

impl LoadOptions {
    pub fn new(tenant: TenantId, items: usize, workers: usize) -> Self {
        Self {
            tenant,
            items,
            workers,
            concurrency: 1,
            batch: 16,
            timeout: Duration::from_secs(300),
            work_min: Duration::ZERO,
            work_max: Duration::ZERO,
            fail_rate: 0.0,
            cancel_at: None,
            max_retries: 3,
            timeout_per_item: 60,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub job_id: Uuid,
    pub tenant: String,
    pub items: usize,
    pub workers: usize,
    pub status: JobStatus,
    pub elapsed_secs: f64,
    pub items_per_sec: f64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub retried: i64,
    /// Completions of an item that was already complete (must be 0).
    pub duplicates: u64,
    /// Items in no terminal state once the job ended (must be 0).
    pub lost: i64,
    pub claim_to_complete: Percentiles,
    #[serde(with = "money::json")]
    pub credits_reserved: Decimal,
    #[serde(with = "money::json")]
    pub credits_spent: Decimal,
    #[serde(with = "money::json")]
    pub credits_refunded: Decimal,
    pub credits_exact: bool,
    /// The job reached a final state before the timeout.
    pub finished_in_time: bool,
    pub violations: Vec<String>,
}

impl LoadReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn to_text(&self) -> String {
        let l = &self.claim_to_complete;
        format!(
            "job {} ({} items, {} workers): {}\n\
             elapsed {:.2}s, {:.0} items/s\n\
             completed {}, failed {}, cancelled {}, retried {}\n\
             claim→complete p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             duplicates {}, lost {}\n\
             credits reserved {}, spent {}, refunded {}: {}\n\
             {}",
            self.job_id,
            self.items,
            self.workers,
            self.status.as_str(),
            self.elapsed_secs,
            self.items_per_sec,
            self.completed,
            self.failed,
            self.cancelled,
            self.retried,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            self.duplicates,
            self.lost,
            self.credits_reserved,
            self.credits_spent,
            self.credits_refunded,
            if self.credits_exact {
                "exact"
            } else {
                "MISMATCH"
            },
            if self.passed() {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", self.violations.join("; "))
            }
        )
    }
}

/// Progress callback: (finished items, total).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Runs one load test. Grants the tenant what the job needs first.
pub async fn run(
    bus: &AgentBus,
    options: &LoadOptions,
    progress: Option<Progress>,
) -> Result<LoadReport> {
    let mut spec = JobSpec::new(
        "load-orchestrator",
        "load-worker",
        "load-test",
        (0..options.items)
            .map(|i| serde_json::json!({ "i": i }))
            .collect(),
    );
    spec.parallelism = (options.workers as i64).clamp(1, 100);
    spec.max_retries = options.max_retries;
    spec.timeout_per_item = options.timeout_per_item;
    spec.validate(bus.limits().max_items)?;

    let need = money::from_minor(bus.prices().job_reservation(options.items));
    bus.grant_credits(
        &options.tenant,
        need,
        serde_json::json!({ "reason": "load test" }),
    )
    .await?;
    let started = Instant::now();
    let job = bus.spawn_job(&options.tenant, &spec).await?;

    let shutdown = CancellationToken::new();
    let reclaimer = tokio::spawn(reclaim::run(
        bus.clone(),
        Duration::from_millis(500),
        shutdown.clone(),
    ));
    let finished = Arc::new(AtomicU64::new(0));

    // The workers share one completer: their completions reach Redis together.
    let completer = Completer::new(bus.clone(), options.tenant.clone(), job.id);
    let mut handles = Vec::new();
    for w in 0..options.workers {
        let worker = Worker::new(
            bus.clone(),
            options.tenant.clone(),
            job.id,
            &format!("load-{w}"),
        )?
        .concurrency(options.concurrency)
        .batch(options.batch)
        .completer(completer.clone())
        .shutdown_token(shutdown.clone());
        let (work_min, work_max, fail_rate) =
            (options.work_min, options.work_max, options.fail_rate);
        let finished = finished.clone();
        handles.push(tokio::spawn(worker.run(move |item| {
            let finished = finished.clone();
            async move {
                let (work, fail) = {
                    let mut rng = rand::rng();
                    let work = if work_max > work_min {
                        rng.random_range(work_min..=work_max)
                    } else {
                        work_min
                    };
                    (work, fail_rate > 0.0 && rng.random_bool(fail_rate.min(1.0)))
                };
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                if fail {
                    return Err(ItemError::retry("simulated failure"));
                }
                finished.fetch_add(1, Ordering::Relaxed);
                Ok(serde_json::json!({ "i": item.item_index }))
            }
        })));
    }

    // Watch: progress, the cancel point, and the overall timeout.
    let total = options.items as u64;
    let cancel_after = options
        .cancel_at
        .map(|pct| ((pct / 100.0) * total as f64).round() as u64);
    let mut finished_in_time = true;
    loop {
        let done = finished.load(Ordering::Relaxed);
        if let Some(p) = &progress {
            p(done, total);
        }
        if let Some(limit) = cancel_after
            && done >= limit
        {
            match bus
                .cancel_job(&options.tenant, &job.id, "load", "cancel-at")
                .await
            {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let state = bus.job(&options.tenant, &job.id).await?;
        if state.status.is_finished() {
            break;
        }
        if started.elapsed() > options.timeout {
            finished_in_time = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    drop(completer);
    let mut latency = new_latency_histogram();
    let mut duplicates = 0;
    for h in handles {
        let report = h
            .await
            .map_err(|e| Error::protocol(format!("worker task: {e}")))??;
        latency
            .add(&report.latency_us)
            .map_err(|e| Error::protocol(e.to_string()))?;
        duplicates += report.duplicates;
    }
    let _ = reclaimer.await;
    if let Some(p) = &progress {
        p(finished.load(Ordering::Relaxed), total);
    }

    let state = bus.job(&options.tenant, &job.id).await?;
    let completed_in_results = count_results(bus, &options.tenant, &job.id, options.items).await?;
    let mut violations = Vec::new();
    if !finished_in_time {
        violations.push(format!(
            "job still {} after {:?}",
            state.status.as_str(),
            options.timeout
        ));
    }
    let p = &state.progress;
    let cancelled = if state.status == JobStatus::Cancelled {
        p.cancelled
    } else {
        0
    };
    let lost = if state.status.is_finished() {
        p.total - p.completed - p.failed - cancelled
    } else {
        0
    };
    if lost != 0 {
        violations.push(format!("{lost} items lost"));
    }
    let twice = completed_in_results.iter().filter(|&&n| n > 1).count() as u64;
    duplicates += twice;
    if duplicates > 0 {
        violations.push(format!("{duplicates} duplicate completions"));
    }
    let results_total: u64 = completed_in_results.iter().map(|&n| n as u64).sum();
    if results_total != p.completed as u64 {
        violations.push(format!(
            "{} results for {} completed items",
            results_total, p.completed
        ));
    }
    let cost = state.credits_per_item;
    let overhead = money::from_minor(bus.prices().agent_spawn);
    let c = &state.credits;
    let credits_exact = c.reserved == c.spent + c.refunded + c.still_reserved
        && c.spent == overhead + cost * Decimal::from(p.completed)
        && (!state.status.is_finished()
            || c.refunded == cost * Decimal::from(p.failed + cancelled));
    if !credits_exact {
        violations.push("credits do not add up".into());
    }
    let balance = bus.balance(&options.tenant).await?;
    if state.status.is_finished() && balance.available < Decimal::ZERO {
        violations.push("negative balance".into());
    }

    Ok(LoadReport {
        job_id: job.id,
        tenant: options.tenant.to_string(),
        items: options.items,
        workers: options.workers,
        status: state.status,
        elapsed_secs: elapsed.as_secs_f64(),
        items_per_sec: (p.completed + p.failed) as f64 / elapsed.as_secs_f64().max(1e-9),
        completed: p.completed,
        failed: p.failed,
        cancelled,
        retried: p.retried,
        duplicates,
        lost,
        claim_to_complete: Percentiles::of(&latency),
        credits_reserved: c.reserved,
        credits_spent: c.spent,
        credits_refunded: c.refunded,
        credits_exact,
        finished_in_time,
        violations,
    })
}

/// How many results each item index has (from the job's results stream).
async fn count_results(
    bus: &AgentBus,
    tenant: &TenantId,
    job: &Uuid,
    items: usize,
) -> Result<Vec<u32>> {
    let mut counts = vec![0u32; items];
    let key = bus.keys(tenant).job_results(job);
    let mut conn = bus.redis().conn().await?;
    let mut start = "-".to_string();
    loop {
        let page: redis::Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await?;
        let redis::Value::Array(entries) = page else {
            break;
        };
        if entries.is_empty() {
            break;
        }
        let mut last = None;
        for e in &entries {
            let e = StreamEntry::from_value(e)?;
            if let Some(slot) = e.int("idx").and_then(|i| counts.get_mut(i as usize)) {
                *slot += 1;
            }
            last = Some(e.id);
        }
        match last {
            Some(id) => start = format!("({id}"),
            None => break,
        }
    }
    Ok(counts)
}
