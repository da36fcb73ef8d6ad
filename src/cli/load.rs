//! The load test (`agentbus load`): one job, many workers as separate
//! consumers, and a report that checks the guarantees: every item finished
//! once, nothing lost, credits exact, no deadlock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use agentbus::bus::AgentBus;
use agentbus::error::{Error, Result};
use agentbus::jobs::worker::{Completer, ItemError, Worker, WorkerReport, new_latency_histogram};
use agentbus::jobs::{JobSpec, JobStatus, reclaim};
use agentbus::keys::TenantId;
use agentbus::money::Credits;
use agentbus::outbox::job_audit::audit_job;
use agentbus::outbox::sink::{Sink, SinkOptions};
use agentbus::outbox::verify;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub tenant: TenantId,
    pub items: usize,
    pub workers: usize,
    /// Items each worker processes at once.
    pub concurrency: usize,
    /// Items each worker claims per read.
    pub batch: usize,
    /// Items each worker reads ahead of its free slots.
    pub read_ahead: usize,
    /// The job's parallelism (0: no bound; workers then read directly).
    pub parallelism: i64,
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
    /// Worker processes to run the workers in (0: tasks of this process).
    pub processes: usize,
    /// Mirror into this database during the run, then verify Redis against it.
    pub verify_sink: Option<sqlx::PgPool>,
    /// Environment for worker processes (how to reach the same Redis and keyspace).
    pub child_env: Vec<(String, String)>,
}

impl LoadOptions {
    pub fn new(tenant: TenantId, items: usize, workers: usize) -> Self {
        Self {
            tenant,
            items,
            workers,
            concurrency: 1,
            batch: 16,
            read_ahead: agentbus::jobs::worker::DEFAULT_READ_AHEAD,
            parallelism: 0,
            timeout: Duration::from_secs(300),
            work_min: Duration::ZERO,
            work_max: Duration::ZERO,
            fail_rate: 0.0,
            cancel_at: None,
            max_retries: 3,
            timeout_per_item: 60,
            processes: 0,
            verify_sink: None,
            child_env: Vec::new(),
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
    pub processes: usize,
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
    pub credits_reserved: Credits,
    pub credits_spent: Credits,
    pub credits_refunded: Credits,
    pub credits_exact: bool,
    /// The job reached a final state before the timeout.
    pub finished_in_time: bool,
    /// Result of the Redis-vs-Postgres check, when asked for.
    pub sink_verified: Option<bool>,
    pub violations: Vec<String>,
}

impl LoadReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn to_text(&self) -> String {
        let l = &self.claim_to_complete;
        let mut text = format!(
            "job {} ({} items, {} workers{}): {}\n\
             elapsed {:.2}s, {:.0} items/s\n\
             completed {}, failed {}, cancelled {}, retried {}\n\
             claim→complete p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             duplicates {}, lost {}\n\
             credits reserved {}, spent {}, refunded {}: {}\n",
            self.job_id,
            self.items,
            self.workers,
            if self.processes > 0 {
                format!(" in {} processes", self.processes)
            } else {
                String::new()
            },
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
        );
        if let Some(ok) = self.sink_verified {
            text.push_str(if ok {
                "sink: Postgres matches Redis and the ledger\n"
            } else {
                "sink: DIFFERENCES\n"
            });
        }
        text.push_str(&if self.passed() {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.violations.join("; "))
        });
        text
    }
}

/// Progress callback: (finished items, total).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How the workers of a load run behave.
#[derive(Clone, Copy, Debug)]
pub struct WorkProfile {
    pub concurrency: usize,
    pub batch: usize,
    pub read_ahead: usize,
    pub work_min: Duration,
    pub work_max: Duration,
    pub fail_rate: f64,
}

impl LoadOptions {
    fn profile(&self) -> WorkProfile {
        WorkProfile {
            concurrency: self.concurrency,
            batch: self.batch,
            read_ahead: self.read_ahead,
            work_min: self.work_min,
            work_max: self.work_max,
            fail_rate: self.fail_rate,
        }
    }
}

/// Starts `count` workers (consumers `load-<first>` …) on `job`, sharing one
/// completer. Each simulates its work and fails at the profile's rate.
pub fn start_workers(
    bus: &AgentBus,
    tenant: &TenantId,
    job: Uuid,
    first: usize,
    count: usize,
    profile: WorkProfile,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<Result<WorkerReport>>>> {
    let completer = Completer::new(bus.clone(), tenant.clone(), job);
    let mut handles = Vec::new();
    for w in first..first + count {
        let worker = Worker::new(bus.clone(), tenant.clone(), job, &format!("load-{w}"))?
            .concurrency(profile.concurrency)
            .batch(profile.batch)
            .read_ahead(profile.read_ahead)
            .completer(completer.clone())
            .shutdown_token(shutdown.clone());
        handles.push(tokio::spawn(worker.run(move |item| async move {
            let (work, fail) = {
                let mut rng = rand::rng();
                let work = if profile.work_max > profile.work_min {
                    rng.random_range(profile.work_min..=profile.work_max)
                } else {
                    profile.work_min
                };
                (
                    work,
                    profile.fail_rate > 0.0 && rng.random_bool(profile.fail_rate.min(1.0)),
                )
            };
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            if fail {
                return Err(ItemError::retry("simulated failure"));
            }
            Ok(serde_json::json!({ "i": item.item_index }))
        })));
    }
    Ok(handles)
}

/// What a worker process of a load run reports (one JSON line on stdout).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessReport {
    pub completed: u64,
    pub duplicates: u64,
    /// Claim→complete latencies as (µs, count) pairs, to merge exactly.
    pub latency_us: Vec<(u64, u64)>,
}

/// Runs `count` workers of a load run in this process until the job ends
/// (the hidden `agentbus load-worker`).
pub async fn worker_process(
    bus: &AgentBus,
    tenant: &TenantId,
    job: Uuid,
    first: usize,
    count: usize,
    profile: WorkProfile,
) -> Result<ProcessReport> {
    let shutdown = CancellationToken::new();
    let mut report = ProcessReport::default();
    let mut latency = new_latency_histogram();
    for h in start_workers(bus, tenant, job, first, count, profile, &shutdown)? {
        let r = h
            .await
            .map_err(|e| Error::protocol(format!("worker task: {e}")))??;
        report.completed += r.completed;
        report.duplicates += r.duplicates;
        latency
            .add(&r.latency_us)
            .map_err(|e| Error::protocol(e.to_string()))?;
    }
    report.latency_us = latency
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    Ok(report)
}

/// Runs one load test. Grants the tenant what the job needs first. With
/// `processes` > 0 the workers run in that many child processes (the
/// current executable's hidden `load-worker` command) instead of here.
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
    spec.parallelism = options.parallelism;
    spec.max_retries = options.max_retries;
    spec.timeout_per_item = options.timeout_per_item;
    spec.validate(bus.limits().max_items)?;

    let need = bus.prices().job_reservation(options.items);
    bus.grant_credits(
        &options.tenant,
        need,
        serde_json::json!({ "reason": "load test" }),
    )
    .await?;
    let shutdown = CancellationToken::new();
    // The sink outlives the workers: it stops after the verification.
    let sink_stop = CancellationToken::new();
    let sink = options.verify_sink.as_ref().map(|pool| {
        let options = SinkOptions::new(&format!("load-sink-{}", std::process::id()));
        tokio::spawn(Sink::new(bus.clone(), pool.clone(), options).run(sink_stop.clone()))
    });
    let started = Instant::now();
    let job = bus.spawn_job(&options.tenant, &spec).await?;
    let reclaimer = tokio::spawn(reclaim::run(
        bus.clone(),
        agentbus::due::Schedule {
            interval: Duration::from_millis(500),
            sweep_every: Duration::from_secs(3600),
        },
        shutdown.clone(),
    ));

    let mut handles = Vec::new();
    let mut children = Vec::new();
    if options.processes == 0 {
        handles = start_workers(
            bus,
            &options.tenant,
            job.id,
            0,
            options.workers,
            options.profile(),
            &shutdown,
        )?;
    } else {
        let per = options.workers.div_ceil(options.processes);
        for p in 0..options.processes {
            let first = p * per;
            let count = per.min(options.workers.saturating_sub(first));
            if count > 0 {
                children.push(spawn_worker_process(options, &job.id, first, count)?);
            }
        }
    }

    // Watch: progress, the cancel point, and the overall timeout.
    let total = options.items as u64;
    let cancel_after = options
        .cancel_at
        .map(|pct| ((pct / 100.0) * total as f64).round() as u64);
    let mut finished_in_time = true;
    let mut completed_at_cancel = None;
    let mut workers_gone = false;
    loop {
        // Worker processes that all exited (or one that failed) leave nobody to finish.
        if !children.is_empty() {
            let mut exited = 0;
            for c in &mut children {
                if let Ok(Some(status)) = c.try_wait() {
                    exited += 1;
                    if !status.success() {
                        workers_gone = true;
                    }
                }
            }
            workers_gone |= exited == children.len();
        }
        let state = bus.job(&options.tenant, &job.id).await?;
        let done = (state.progress.completed + state.progress.failed) as u64;
        if let Some(p) = &progress {
            p(done, total);
        }
        if state.status.is_finished() {
            break;
        }
        if let Some(limit) = cancel_after
            && done >= limit
            && completed_at_cancel.is_none()
        {
            match bus
                .cancel_job(&options.tenant, &job.id, "load", "cancel-at")
                .await
            {
                Ok(c) => completed_at_cancel = Some(c),
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        if started.elapsed() > options.timeout || workers_gone {
            finished_in_time = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
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
    for child in children {
        if workers_gone {
            break;
        }
        let report = collect_worker_process(child).await?;
        duplicates += report.duplicates;
        for (value, count) in report.latency_us {
            let _ = latency.record_n(value.max(1), count);
        }
    }
    let _ = reclaimer.await;

    let state = bus.job(&options.tenant, &job.id).await?;
    if let Some(p) = &progress {
        p(
            (state.progress.completed + state.progress.failed) as u64,
            total,
        );
    }
    let mut violations = Vec::new();
    if workers_gone {
        violations.push(format!(
            "the worker processes exited with the job still {}",
            state.status.as_str()
        ));
    } else if !finished_in_time {
        violations.push(format!(
            "job still {} after {:?}",
            state.status.as_str(),
            options.timeout
        ));
    }
    let audit = audit_job(bus, &options.tenant, &job.id, options.items).await?;
    violations.extend(audit.violations.iter().cloned());
    duplicates += audit.duplicate_results;
    if duplicates > audit.duplicate_results {
        violations.push(format!(
            "{} duplicate completions reported by workers",
            duplicates - audit.duplicate_results
        ));
    }
    let (p, c, cancelled, lost, credits_exact) = (
        &state.progress,
        &state.credits,
        audit.cancelled,
        audit.lost,
        audit.credits_exact,
    );
    let cost = state.credits_per_item;
    if let Some(cancel) = &completed_at_cancel
        && cancel.credits_refunded != cost * Decimal::from(cancel.cancelled_items)
    {
        violations.push(format!(
            "refund {} is not {} uncompleted items × {cost}",
            cancel.credits_refunded, cancel.cancelled_items
        ));
    }
    let sink_verified = match (&options.verify_sink, sink) {
        (Some(pool), Some(task)) => {
            let report =
                verify::verify_tenants(bus, pool, Duration::from_secs(60), Some(&options.tenant))
                    .await?;
            sink_stop.cancel();
            let _ = task.await;
            if !report.ok {
                violations.push(format!("sink verification failed:\n{}", report.to_table()));
            }
            Some(report.ok)
        }
        _ => None,
    };

    Ok(LoadReport {
        job_id: job.id,
        tenant: options.tenant.to_string(),
        items: options.items,
        workers: options.workers,
        processes: options.processes,
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
        sink_verified,
        violations,
    })
}

fn spawn_worker_process(
    options: &LoadOptions,
    job: &Uuid,
    first: usize,
    count: usize,
) -> Result<tokio::process::Child> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::protocol(format!("cannot find this executable: {e}")))?;
    tokio::process::Command::new(exe)
        .envs(
            options
                .child_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .arg("load-worker")
        .args([
            "--tenant",
            options.tenant.as_str(),
            "--job",
            &job.to_string(),
        ])
        .args(["--first", &first.to_string(), "--count", &count.to_string()])
        .args([
            "--concurrency",
            &options.concurrency.to_string(),
            "--batch",
            &options.batch.to_string(),
            "--read-ahead",
            &options.read_ahead.to_string(),
        ])
        .args(["--work-min-ms", &options.work_min.as_millis().to_string()])
        .args(["--work-max-ms", &options.work_max.as_millis().to_string()])
        .args(["--fail-rate", &options.fail_rate.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::protocol(format!("cannot start a worker process: {e}")))
}

async fn collect_worker_process(child: tokio::process::Child) -> Result<ProcessReport> {
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::protocol(format!("worker process: {e}")))?;
    if !out.status.success() {
        return Err(Error::protocol(format!(
            "a worker process failed: {}",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| Error::Codec(format!("worker process report: {e}")))
}
