//! Benchmarks of the stores around the bus: the sink into Postgres, and a
//! blackboard namespace against a SCAN-based equivalent.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{fresh_tenant, histogram_of, median, record};
use crate::cli::load::Percentiles;
use agentbus::bus::AgentBus;
use agentbus::credits::CreditOp;
use agentbus::error::{Error, Result};
use agentbus::jobs::worker::new_latency_histogram;
use agentbus::keys::{Ident, TenantId};
use agentbus::outbox::sink::{Sink, SinkOptions};

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
    let script = agentbus::scripts::scripts().bb_write.script();
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
                .arg(agentbus::scripts::BB_WRITE.keys.len())
                .arg(&credits)
                .arg(&keys.vals)
                .arg(&keys.nums)
                .arg(&keys.lex)
                .arg(&keys.score)
                .arg(&keys.agg)
                .arg(&keys.exp)
                .arg(&keys.fence)
                .arg(&keys.namespaces)
                .arg(&keys.names)
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
