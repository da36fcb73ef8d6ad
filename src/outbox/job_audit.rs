//! One job judged against the guarantees from its own state and results:
//! every item ended exactly once, no result twice, its credits exact to the
//! minor unit. Used by `agentbus load` and by the tests, next to `verify`
//! (which judges the mirror).

use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::error::Result;
use crate::jobs::JobStatus;
use crate::keys::TenantId;
use crate::money::Credits;

/// What a finished (or running) job's state says about the guarantees.
#[derive(Clone, Debug, Serialize)]
pub struct JobAudit {
    pub status: JobStatus,
    pub cancelled: i64,
    /// Items in no terminal state once the job ended (must be 0).
    pub lost: i64,
    /// Items with more than one result (must be 0).
    pub duplicate_results: u64,
    pub credits_exact: bool,
    pub violations: Vec<String>,
}

/// Checks one job against the invariants: every item ends exactly once,
/// results match completions, and its credits add up to the minor unit.
pub async fn audit_job(
    bus: &AgentBus,
    tenant: &TenantId,
    job: &Uuid,
    items: usize,
) -> Result<JobAudit> {
    let state = bus.job(tenant, job).await?;
    let completed_in_results = count_results(bus, tenant, job, items).await?;
    let mut violations = Vec::new();
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
    let duplicate_results = completed_in_results.iter().filter(|&&n| n > 1).count() as u64;
    if duplicate_results > 0 {
        violations.push(format!("{duplicate_results} items completed twice"));
    }
    let results_total: u64 = completed_in_results.iter().map(|&n| n as u64).sum();
    if results_total != p.completed as u64 {
        violations.push(format!(
            "{} results for {} completed items",
            results_total, p.completed
        ));
    }
    let cost = state.credits_per_item;
    let overhead = Credits::from_minor(bus.prices().agent_spawn);
    let c = &state.credits;
    // Each figure from the job's own counts and price, none from the others.
    let credits_exact = c.reserved == overhead + cost * Decimal::from(p.total)
        && c.spent == overhead + cost * Decimal::from(p.completed)
        && (!state.status.is_finished()
            || c.refunded == cost * Decimal::from(p.failed + cancelled));
    if !credits_exact {
        violations.push("credits do not add up".into());
    }
    let balance = bus.balance(tenant).await?;
    if state.status.is_finished() && balance.available < Credits::ZERO {
        violations.push("negative balance".into());
    }
    Ok(JobAudit {
        status: state.status,
        cancelled,
        lost,
        duplicate_results,
        credits_exact,
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
