//! Benchmarks (`agentbus bench <scenario>`): each scenario runs several
//! times against the configured Redis (and Postgres) and prints a Markdown
//! section with the medians, ready for `bench/RESULTS.md`.

use std::fmt::Write;

use crate::bus::AgentBus;
use crate::error::Result;
use crate::keys::TenantId;
use crate::load::{self, LoadOptions};

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
                return Err(crate::Error::protocol(format!(
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
        let spec = crate::jobs::JobSpec::new(
            "bench",
            "bench",
            "spawn",
            (0..100_000)
                .map(|i| serde_json::json!({ "i": i }))
                .collect(),
        );
        let need = crate::money::from_minor(bus.prices().job_reservation(100_000));
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

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(&mut []), 0.0);
    }
}
