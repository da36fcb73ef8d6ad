//! Benchmarks (`agentbus bench <scenario>`): each scenario runs several
//! times against the configured Redis (and Postgres) and prints a Markdown
//! section with the medians, ready for `bench/RESULTS.md`.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::load::{self, LoadOptions, Percentiles};
use agentbus::bus::AgentBus;
use agentbus::credits::CreditOp;
use agentbus::error::{Error, Result};
use agentbus::invoke::InvokeRequest;
use agentbus::jobs::worker::new_latency_histogram;
use agentbus::keys::{Ident, TenantId};
use agentbus::messages::OutgoingMessage;
use agentbus::registry::Registration;
use agentbus::sink::{Sink, SinkOptions};

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

/// Jobs end to end: spawn, claim, complete through the library worker.
pub async fn jobs(bus: &AgentBus, runs: usize) -> Result<String> {
    let shapes: [(usize, usize, usize, usize); 4] = [
        (1_000, 50, 1, 16),
        (100_000, 50, 1, 16),
        (100_000, 50, 4, 16),
        (100_000, 50, 16, 32),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Jobs: spawn → claim → complete (median of {runs} runs)\n\n\
         | items × workers | concurrency/batch | items/s | claim→complete p50 | p95 | p99 | command |\n\
         |---|---|---|---|---|---|---|"
    );
    for (items, workers, concurrency, batch) in shapes {
        let (mut rate, mut p50, mut p95, mut p99) = (vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            let mut options = LoadOptions::new(fresh_tenant("jobs")?, items, workers);
            options.concurrency = concurrency;
            options.batch = batch;
            let report = load::run(bus, &options, None).await?;
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
        let _ = writeln!(
            out,
            "| {items} × {workers} | {concurrency}/{batch} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | `agentbus load --items {items} --workers {workers} --concurrency {concurrency} --batch {batch}` |",
            median(&mut rate),
            median(&mut p50),
            median(&mut p95),
            median(&mut p99),
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
        "\nSpawning 100,000 items (one Lua call, Redis busy throughout): {:.0} ms median.",
        median(&mut spawn_ms)
    );
    let _ = writeln!(
        out,
        "\nitems/s counts from the spawn call to the job's completion (the spawn itself included). \
         Latency is from the moment a worker's read returns an item to the moment Redis has \
         recorded its completion."
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
            let (bus2, tenant2, target2) = (bus.clone(), tenant.clone(), target.clone());
            let rx = bus.receiver(&tenant, &target);
            tokio::spawn(rx.run(shutdown.clone(), move |m| {
                let (bus, tenant, target) = (bus2.clone(), tenant2.clone(), target2.clone());
                async move {
                    if let Some(id) = m.invoke_id {
                        bus.respond(&tenant, &id, &m.payload, None, Some(&target))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                }
            }))
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

/// Sink: rows/s draining a backlog, and lag (append → commit) at a steady rate.
pub async fn sink(
    bus: &AgentBus,
    pool: &PgPool,
    backlog: usize,
    rate: u64,
    secs: u64,
    runs: usize,
) -> Result<String> {
    agentbus::db::migrate_up(pool).await?;
    let (mut rows_per_sec, mut lag50, mut lag99, mut steady) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // 1. Throughput: a backlog of ledger events, drained as fast as possible.
        let tenant = fresh_tenant("sink")?;
        produce(bus, &tenant, backlog, None).await?;
        let sink = Sink::new(
            bus.clone(),
            pool.clone(),
            SinkOptions::new(&format!("bench-sink-{run}")),
        );
        let started = Instant::now();
        let mut rows = 0;
        loop {
            let w = sink.drain_tenant(&tenant, false, 16).await?;
            if w.events == 0 {
                break;
            }
            rows += w.ledger_rows;
        }
        if rows as usize != backlog + 1 {
            return Err(Error::protocol(format!(
                "{rows} rows for {} events",
                backlog + 1
            )));
        }
        rows_per_sec.push(rows as f64 / started.elapsed().as_secs_f64());

        // 2. Lag: events appended at `rate`/s while the sink drains.
        let tenant = fresh_tenant("lag")?;
        bus.grant_credits(&tenant, rust_decimal::Decimal::ONE, serde_json::json!({}))
            .await?;
        let stop = CancellationToken::new();
        let lags = Arc::new(Mutex::new(new_latency_histogram()));
        let drainer = {
            let (sink, tenant, stop, lags) = (
                Sink::new(
                    bus.clone(),
                    pool.clone(),
                    SinkOptions::new(&format!("bench-lag-{run}")),
                ),
                tenant.clone(),
                stop.clone(),
                lags.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let w = sink.drain_tenant(&tenant, false, 16).await?;
                    let now = chrono::Utc::now().timestamp_millis();
                    for at in &w.appended_at_ms {
                        record(&lags, ((now - at).max(0) as u64) * 1000);
                    }
                    if w.events == 0 {
                        if stop.is_cancelled() {
                            return Ok::<(), Error>(());
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        };
        let produced_at = Instant::now();
        produce(bus, &tenant, (rate * secs) as usize, Some(rate)).await?;
        steady.push((rate * secs) as f64 / produced_at.elapsed().as_secs_f64());
        stop.cancel();
        drainer
            .await
            .map_err(|e| Error::protocol(e.to_string()))??;
        let p = Percentiles::of(&histogram_of(&lags));
        lag50.push(p.p50_ms);
        lag99.push(p.p99_ms);
    }
    Ok(format!(
        "### Sink: Redis outbox → Postgres (median of {runs} runs)\n\n\
         | measurement | result | command |\n|---|---|---|\n\
         | backlog of {backlog} ledger events drained | {:.0} rows/s | `agentbus bench sink --backlog {backlog}` |\n\
         | lag append → commit at {:.0} events/s for {secs} s | p50 {:.0} ms, p99 {:.0} ms | `agentbus bench sink --rate {rate} --secs {secs}` |\n\n\
         The sink's own loop: one transaction per batch of up to 1000 events (UNNEST inserts, \
         `ON CONFLICT DO NOTHING`, balance deltas of the inserted rows), the next batch read from \
         Redis while Postgres writes, then XACK and a trim of the outbox. Lag is measured per event \
         from its outbox entry id (ms) to the commit of its batch, at millisecond resolution.\n",
        median(&mut rows_per_sec),
        median(&mut steady),
        median(&mut lag50),
        median(&mut lag99),
    ))
}

/// Appends `count` ledger events (credit grants) to `tenant`'s outbox, as fast
/// as possible or at `rate` per second.
async fn produce(bus: &AgentBus, tenant: &TenantId, count: usize, rate: Option<u64>) -> Result<()> {
    bus.register_tenant(tenant).await?;
    bus.grant_credits(tenant, rust_decimal::Decimal::ONE, serde_json::json!({}))
        .await?;
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|n| {
            let (bus, tenant) = (bus.clone(), tenant.clone());
            async move {
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
                }
                bus.move_credits(
                    &tenant,
                    CreditOp::Grant,
                    "grant",
                    1,
                    None,
                    serde_json::json!({ "n": n }),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(())
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

/// Blackboard at each size: latency of get, set, a page of 100, top-10 and
/// the aggregate, side by side with the original's approach (one key per
/// entry, SCAN + MGET, computed in the client), measured in the same run.
pub async fn blackboard(
    bus: &AgentBus,
    sizes: &[usize],
    samples: usize,
    runs: usize,
) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Blackboard: one namespace, agentbus vs a SCAN-based equivalent (median of {runs} runs)\n\n\
         | keys | operation | agentbus p50 | agentbus p99 | SCAN p50 | SCAN p99 |\n|---|---|---|---|---|---|"
    );
    let ops = ["get", "set", "page of 100", "top-10", "aggregate"];
    for &size in sizes {
        // results[op] = (ab p50s, ab p99s, scan p50s, scan p99s)
        let mut results: Vec<[Vec<f64>; 4]> = (0..ops.len()).map(|_| Default::default()).collect();
        for _ in 0..runs {
            let tenant = fresh_tenant("bb")?;
            let ns = Ident::new("namespace", "bench")?;
            bus.grant_credits(
                &tenant,
                rust_decimal::Decimal::from(100_000_000),
                serde_json::json!({}),
            )
            .await?;
            // The baseline's keys share the tenant's hash tag (one cluster slot, like ours).
            let scan_prefix = format!("{}:{{{tenant}}}:scanbench:", bus.keyspace().prefix());
            populate(bus, &tenant, &ns, &scan_prefix, size).await?;
            let board = bus.blackboard(&tenant, &ns);
            // The O(N) baselines get fewer samples at large sizes.
            let scan_samples = (samples * 10_000 / size).clamp(3, samples);
            for (i, op) in ops.iter().enumerate() {
                let ab = time_samples(samples, |n| {
                    let board = &board;
                    async move {
                        let key = format!("k{:08}", (n * 7919) % size);
                        match *op {
                            "get" => board.get(&key).await.map(|_| ()),
                            "set" => board
                                .set(&key, &serde_json::json!(n % 1000), None, None)
                                .await
                                .map(|_| ()),
                            "page of 100" => board.keys_page(Some(&key), 100).await.map(|_| ()),
                            "top-10" => board.top(10, true).await.map(|_| ()),
                            _ => board.aggregate().await.map(|_| ()),
                        }
                    }
                })
                .await?;
                let n_scan = if i < 2 { samples } else { scan_samples };
                let scan = time_samples(n_scan, |n| {
                    let prefix = &scan_prefix;
                    async move { scan_op(bus, prefix, op, n, size).await }
                })
                .await?;
                results[i][0].push(ab.p50_ms);
                results[i][1].push(ab.p99_ms);
                results[i][2].push(scan.p50_ms);
                results[i][3].push(scan.p99_ms);
            }
            cleanup(bus, &tenant, &scan_prefix).await?;
        }
        for (i, op) in ops.iter().enumerate() {
            let r = &mut results[i];
            let _ = writeln!(
                out,
                "| {size} | {op} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
                median(&mut r[0]),
                median(&mut r[1]),
                median(&mut r[2]),
                median(&mut r[3]),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCommand: `agentbus bench blackboard --sizes {}`. agentbus answers each read with one Lua call \
         (sorted-set index, running aggregates); the baseline stores one key per entry like the \
         original and answers pages with SCAN + MGET and top-10 and aggregates by SCANning every key \
         and computing in the client.",
        sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(out)
}

/// Latency percentiles of `n` sequential calls of `op`.
async fn time_samples<F, Fut>(n: usize, mut op: F) -> Result<Percentiles>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut h = new_latency_histogram();
    for i in 0..n {
        let t0 = Instant::now();
        op(i).await?;
        let _ = h.record((t0.elapsed().as_micros() as u64).max(1));
    }
    Ok(Percentiles::of(&h))
}

/// Fills the namespace (and the baseline's keys) with `size` numeric entries,
/// pipelining the write script.
async fn populate(
    bus: &AgentBus,
    tenant: &TenantId,
    ns: &Ident,
    scan_prefix: &str,
    size: usize,
) -> Result<()> {
    let script = &agentbus::scripts::scripts().bb_write;
    let mut conn = bus.redis().conn().await?;
    script.prepare_invoke().load_async(&mut conn).await?;
    let keys = bus.keys(tenant).blackboard(ns);
    let credits = bus.keys(tenant).credits();
    for chunk_start in (0..size).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in chunk_start..(chunk_start + 1000).min(size) {
            let key = format!("k{i:08}");
            let value = (i * 7919) % 100_000;
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(9)
                .arg(&credits)
                .arg(&keys.vals)
                .arg(&keys.nums)
                .arg(&keys.lex)
                .arg(&keys.score)
                .arg(&keys.agg)
                .arg(&keys.exp)
                .arg(&keys.fence)
                .arg(&keys.namespaces)
                .arg(ns.as_str())
                .arg(0)
                .arg("set")
                .arg(&key)
                .arg(value)
                .arg(value * 1_000_000)
                .arg(0)
                .arg("")
                .arg("")
                .arg(0)
                .ignore();
            pipe.cmd("SET")
                .arg(format!("{scan_prefix}{key}"))
                .arg(value)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

/// The original's approach to each operation: one key per entry.
async fn scan_op(bus: &AgentBus, prefix: &str, op: &str, n: usize, size: usize) -> Result<()> {
    let mut conn = bus.redis().conn().await?;
    let key = format!("{prefix}k{:08}", (n * 7919) % size);
    match op {
        "get" => redis::cmd("GET")
            .arg(&key)
            .query_async::<Option<String>>(&mut conn)
            .await
            .map(|_| ())?,
        "set" => {
            redis::cmd("SET")
                .arg(&key)
                .arg(n % 1000)
                .query_async::<()>(&mut conn)
                .await?
        }
        "page of 100" => {
            let (_, keys): (String, Vec<String>) = redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(100)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<String>>>(&mut conn)
                    .await?;
            }
        }
        _ => {
            // Every key, every value, then top-10 or the aggregate in the client.
            let mut cursor = 0u64;
            let mut values: Vec<f64> = Vec::new();
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    let vals: Vec<Option<String>> =
                        redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
                    values.extend(
                        vals.into_iter()
                            .flatten()
                            .filter_map(|v| v.parse::<f64>().ok()),
                    );
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            if op == "top-10" {
                values.sort_by(|a, b| b.total_cmp(a));
                values.truncate(10);
            } else {
                let _sum: f64 = values.iter().sum();
            }
        }
    }
    Ok(())
}

async fn cleanup(bus: &AgentBus, tenant: &TenantId, scan_prefix: &str) -> Result<()> {
    let ns = Ident::new("namespace", "bench")?;
    let k = bus.keys(tenant).blackboard(&ns);
    let mut conn = bus.redis().conn().await?;
    redis::cmd("DEL")
        .arg(&k.vals)
        .arg(&k.nums)
        .arg(&k.lex)
        .arg(&k.score)
        .arg(&k.agg)
        .arg(&k.exp)
        .query_async::<()>(&mut conn)
        .await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{scan_prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(())
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
