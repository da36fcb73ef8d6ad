//! Benchmarks (`agentbus bench <scenario>`): each scenario runs several
//! times against the configured Redis (and Postgres) and prints a Markdown
//! section with the medians, ready for `bench/RESULTS.md`.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::cli::load::{self, LoadOptions, Percentiles};
use agentbus::agents::invoke::{Answer, InvokeRequest};
use agentbus::agents::messages::OutgoingMessage;
use agentbus::agents::registry::Registration;
use agentbus::bus::AgentBus;
use agentbus::error::{Error, Result};
use agentbus::jobs::worker::new_latency_histogram;
use agentbus::keys::{Ident, TenantId};

mod store;

pub use store::{blackboard, sink};

/// Median of a list of numbers (0 for an empty list).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn fresh_tenant(scenario: &str) -> Result<TenantId> {
    TenantId::new(format!(
        "bench-{scenario}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
}

/// Seconds of CPU the Redis main thread has used (`INFO cpu`; the whole
/// process on a Redis without per-thread figures). `None` where `INFO`
/// cannot be read (e.g. a cluster routes it to one node of several).
async fn redis_cpu(bus: &AgentBus) -> Option<f64> {
    let mut conn = bus.redis().conn().await.ok()?;
    let text: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    match (
        field("used_cpu_user_main_thread"),
        field("used_cpu_sys_main_thread"),
    ) {
        (Some(u), Some(s)) => Some(u + s),
        _ => Some(field("used_cpu_user")? + field("used_cpu_sys")?),
    }
}

/// Jobs end to end: spawn, claim, complete through the library worker.
pub async fn jobs(bus: &AgentBus, runs: usize) -> Result<String> {
    // items, workers, concurrency, batch, parallelism (0: no bound; the
    // bounded row is what every claim's check costs).
    let shapes: [(usize, usize, usize, usize, i64); 5] = [
        (1_000, 50, 1, 16, 0),
        (100_000, 50, 1, 16, 0),
        (100_000, 50, 1, 16, 10_000),
        (100_000, 50, 4, 16, 0),
        (100_000, 50, 16, 32, 0),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Jobs: spawn → claim → complete (median of {runs} runs)\n\n\
         | items × workers | concurrency/batch | items/s | claim→complete p50 | p95 | p99 | Redis CPU per item | command |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for (items, workers, concurrency, batch, parallelism) in shapes {
        let (mut rate, mut p50, mut p95, mut p99) = (vec![], vec![], vec![], vec![]);
        let mut cpu = vec![];
        for _ in 0..runs {
            let mut options = LoadOptions::new(fresh_tenant("jobs")?, items, workers);
            options.concurrency = concurrency;
            options.batch = batch;
            options.parallelism = parallelism;
            let cpu_before = redis_cpu(bus).await;
            let report = load::run(bus, &options, None).await?;
            if let (Some(before), Some(after)) = (cpu_before, redis_cpu(bus).await) {
                cpu.push((after - before) * 1e6 / items as f64);
            }
            if !report.passed() {
                return Err(agentbus::Error::protocol(format!(
                    "benchmark run violated guarantees: {:?}",
                    report.violations
                )));
            }
            rate.push(report.items_per_sec);
            p50.push(report.claim_to_complete.p50_ms);
            p95.push(report.claim_to_complete.p95_ms);
            p99.push(report.claim_to_complete.p99_ms);
        }
        let bound = match parallelism {
            0 => String::new(),
            p => format!(" --parallelism {p}"),
        };
        let _ = writeln!(
            out,
            "| {items} × {workers} | {concurrency}/{batch}{bound} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | `agentbus load --items {items} --workers {workers} --concurrency {concurrency} --batch {batch}{bound}` |",
            median(&mut rate),
            median(&mut p50),
            median(&mut p95),
            median(&mut p99),
            if cpu.is_empty() {
                "—".to_string()
            } else {
                format!("{:.1} µs", median(&mut cpu))
            },
        );
    }
    // How long one spawn holds Redis: a single Lua call writes every item.
    let mut spawn_ms = Vec::new();
    for _ in 0..runs {
        let tenant = fresh_tenant("spawn")?;
        let spec = agentbus::jobs::JobSpec::new(
            "bench",
            "bench",
            "spawn",
            (0..100_000)
                .map(|i| serde_json::json!({ "i": i }))
                .collect(),
        );
        let need = bus.prices().job_reservation(100_000);
        bus.grant_credits(&tenant, need, serde_json::json!({}))
            .await?;
        let started = std::time::Instant::now();
        let job = bus.spawn_job(&tenant, &spec).await?;
        spawn_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        bus.cancel_job(&tenant, &job.id, "bench", "spawn measured")
            .await?;
    }
    let _ = writeln!(
        out,
        "\nSpawning 100,000 items (in chunks of `AGENTBUS_SPAWN_CHUNK`, one Lua call each): {:.0} ms median.",
        median(&mut spawn_ms)
    );
    let _ = writeln!(
        out,
        "\nitems/s counts from the spawn call to the job's completion (the spawn itself included). \
         Latency is from the moment a worker's read returns an item to the moment Redis has \
         recorded its completion. Redis CPU per item is the main thread's (`INFO cpu`, user + \
         system) over the run, divided by the items."
    );
    Ok(out)
}

fn record(h: &Mutex<Histogram<u64>>, micros: u64) {
    if let Ok(mut h) = h.lock() {
        let _ = h.record(micros.max(1));
    }
}

fn histogram_of(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    h.lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_latency_histogram())
}

async fn register(bus: &AgentBus, tenant: &TenantId, instance: &str) -> Result<Ident> {
    let reg = Registration::new("bench")?.instance(instance)?;
    let inst = bus.register_agent(tenant, &reg).await?;
    Ident::new("instance_id", inst.instance_id)
}

/// One-way message latency: `agents` agents, each receiving on its own
/// connection, sent `rate` messages/s in total for `secs` seconds.
pub async fn messages(
    bus: &AgentBus,
    agents: usize,
    rate: u64,
    secs: u64,
    runs: usize,
) -> Result<String> {
    let (mut p50, mut p95, mut p99, mut achieved) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let tenant = fresh_tenant("msg")?;
        let total = rate * secs;
        bus.grant_credits(
            &tenant,
            agentbus::money::from_minor(bus.prices().agent_message * total as i64 + 100),
            serde_json::json!({}),
        )
        .await?;
        let mut ids = Vec::new();
        for i in 0..agents {
            ids.push(register(bus, &tenant, &format!("agent-{i}")).await?);
        }
        let started = Instant::now();
        let latency = Arc::new(Mutex::new(new_latency_histogram()));
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let mut receivers = Vec::new();
        for me in &ids {
            let (latency, received) = (latency.clone(), received.clone());
            let rx = bus.receiver(&tenant, me);
            receivers.push(tokio::spawn(rx.run(shutdown.clone(), move |m| {
                let sent = m.payload.json()["t"].as_u64().unwrap_or(0);
                record(
                    &latency,
                    (started.elapsed().as_micros() as u64).saturating_sub(sent),
                );
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { Ok(()) }
            })));
        }
        // Steady pacing: message n leaves at n / rate seconds.
        let send_started = Instant::now();
        futures::stream::iter(0..total)
            .map(|n| {
                let (bus, tenant, ids) = (bus.clone(), tenant.clone(), ids.clone());
                async move {
                    let due = Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(send_started + due))
                        .await;
                    let from = &ids[n as usize % ids.len()];
                    let to = &ids[(n as usize * 7 + 1) % ids.len()];
                    let t = started.elapsed().as_micros() as u64;
                    let msg =
                        OutgoingMessage::new(from, to, "request", serde_json::json!({ "t": t }));
                    bus.send_message(&tenant, &msg).await.map(|_| ())
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let send_secs = send_started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.load(std::sync::atomic::Ordering::Relaxed) < total
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        for r in receivers {
            r.await.map_err(|e| Error::protocol(e.to_string()))??;
        }
        let got = received.load(std::sync::atomic::Ordering::Relaxed);
        if got != total {
            return Err(Error::protocol(format!(
                "{got} of {total} messages received"
            )));
        }
        let p = Percentiles::of(&histogram_of(&latency));
        p50.push(p.p50_ms);
        p95.push(p.p95_ms);
        p99.push(p.p99_ms);
        achieved.push(total as f64 / send_secs);
    }
    Ok(format!(
        "### Messages: one-way latency, {agents} agents, {rate} msg/s for {secs} s (median of {runs} runs)\n\n\
         | sent msg/s | p50 | p95 | p99 | command |\n|---|---|---|---|---|\n\
         | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms | `agentbus bench messages --agents {agents} --rate {rate} --secs {secs}` |\n\n\
         From the send call (a Lua call that charges the message and appends it) to the \
         recipient's handler, each recipient blocked in XREADGROUP on its own connection; \
         every message is acknowledged after its handler.\n",
        median(&mut achieved),
        median(&mut p50),
        median(&mut p95),
        median(&mut p99),
    ))
}

/// Invoke round trip: callers invoke a target that answers at once.
pub async fn invoke(
    bus: &AgentBus,
    calls: usize,
    concurrency: usize,
    runs: usize,
) -> Result<String> {
    let (mut p50, mut p95, mut p99, mut rate) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let tenant = fresh_tenant("inv")?;
        bus.grant_credits(
            &tenant,
            agentbus::money::from_minor(bus.prices().agent_invoke * calls as i64 + 100),
            serde_json::json!({}),
        )
        .await?;
        let caller = register(bus, &tenant, "caller").await?;
        let target = register(bus, &tenant, "target").await?;
        let shutdown = CancellationToken::new();
        let responder = {
            let (bus, tenant, target, stop) = (
                bus.clone(),
                tenant.clone(),
                target.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                bus.serve_invocations(&tenant, &target, stop, |payload| async move {
                    Answer::Response(payload)
                })
                .await
            })
        };
        let latency = Arc::new(Mutex::new(new_latency_histogram()));
        let started = Instant::now();
        futures::stream::iter(0..calls)
            .map(|i| {
                let (bus, tenant, caller, target, latency) = (
                    bus.clone(),
                    tenant.clone(),
                    caller.clone(),
                    target.clone(),
                    latency.clone(),
                );
                async move {
                    let t0 = Instant::now();
                    let r = bus
                        .invoke(
                            &tenant,
                            &InvokeRequest::new(&caller, &target, serde_json::json!({ "i": i })),
                        )
                        .await?;
                    if !r.success {
                        return Err(Error::protocol(format!("invoke failed: {r:?}")));
                    }
                    record(&latency, t0.elapsed().as_micros() as u64);
                    Ok(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<Result<()>>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        rate.push(calls as f64 / started.elapsed().as_secs_f64());
        shutdown.cancel();
        responder
            .await
            .map_err(|e| Error::protocol(e.to_string()))??;
        let p = Percentiles::of(&histogram_of(&latency));
        p50.push(p.p50_ms);
        p95.push(p.p95_ms);
        p99.push(p.p99_ms);
    }
    Ok(format!(
        "### Invoke round trip, {calls} calls, {concurrency} at a time (median of {runs} runs)\n\n\
         | invokes/s | p50 | p95 | p99 | command |\n|---|---|---|---|---|\n\
         | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms | `agentbus bench invoke --calls {calls} --concurrency {concurrency}` |\n\n\
         Caller: reserve + audit + request (one Lua call), then wait on its process's reply \
         reader; target: XREADGROUP, then respond (charge + audit + reply, one Lua call).\n",
        median(&mut rate),
        median(&mut p50),
        median(&mut p95),
        median(&mut p99),
    ))
}

/// Many tenants at once: `tenants` load runs side by side, each its own job
/// and workers. On a cluster the tenants spread over the masters by slot.
pub async fn tenants(
    bus: &AgentBus,
    tenants: usize,
    items: usize,
    workers: usize,
    runs: usize,
) -> Result<String> {
    let mut rates = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..tenants {
            let bus = bus.clone();
            let mut options = LoadOptions::new(fresh_tenant("tenants")?, items, workers);
            options.concurrency = 4;
            handles.push(tokio::spawn(async move {
                load::run(&bus, &options, None).await
            }));
        }
        for h in handles {
            let report = h.await.map_err(|e| Error::protocol(e.to_string()))??;
            if !report.passed() {
                return Err(Error::protocol(format!(
                    "run violated guarantees: {:?}",
                    report.violations
                )));
            }
        }
        rates.push((tenants * items) as f64 / started.elapsed().as_secs_f64());
    }
    let (target, env) = if bus.redis().is_cluster() {
        ("Redis Cluster", "REDIS_URL=$(scripts/cluster.sh start) ")
    } else {
        ("one Redis", "")
    };
    Ok(format!(
        "| {target} | {tenants} × {items} items, {workers} workers each | {:.0} items/s | `{env}agentbus bench tenants --tenants {tenants} --items {items} --workers {workers}` |",
        median(&mut rates)
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(&mut []), 0.0);
    }
}
