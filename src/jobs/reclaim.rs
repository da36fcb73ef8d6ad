//! The reclaimer: a background task that re-delivers items whose worker went
//! quiet (idle past the job's `timeout_per_item`) and fails for good those
//! past `max_retries`.
//!
//! It visits only tenants with running jobs ([`crate::due`]): a spawn makes
//! the tenant due, and each visit keeps it due while it has a running job,
//! again after a tenth of the shortest `timeout_per_item` among them (at
//! least the pass interval, at most [`MAX_CADENCE`]): an item that stalls is
//! re-delivered within 1.1× its timeout, and a job's pending list is not
//! scanned every second when its items may take minutes. Any number of reclaimers may run at once: each call
//! is one Lua script that claims, re-queues and acknowledges in one step,
//! so they cannot double up.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::AgentBus;
use crate::due::{self, Schedule, Visited};
use crate::error::Result;
use crate::keys::{Chore, TenantId};

/// Consumer name the reclaim script claims stalled entries to. It holds them
/// only inside the script, so every reclaimer may share it.
pub const RECLAIMER_CONSUMER: &str = "agentbus-reclaimer";

/// The longest a tenant with a running job waits between visits.
pub const MAX_CADENCE: Duration = Duration::from_secs(30);

/// One visit of a tenant: every running job once. Due again while it has
/// one (see the module's doc for when).
pub async fn visit(bus: AgentBus, tenant: TenantId, interval: Duration) -> Result<Visited> {
    let jobs = bus.active_jobs(&tenant).await?;
    let mut counts = (0, 0);
    for job in &jobs {
        let (requeued, failed) = bus.reclaim_job(&tenant, job).await?;
        counts.0 += requeued;
        counts.1 += failed;
    }
    if jobs.is_empty() {
        return Ok(Visited { counts, next: None });
    }
    // The jobs' timeouts, in one round trip (the tenant's slot).
    let keys = bus.keys(&tenant);
    let mut pipe = redis::pipe();
    for job in &jobs {
        pipe.cmd("HGET").arg(keys.job(job)).arg("timeout_ms");
    }
    let mut conn = bus.redis().conn().await?;
    let timeouts: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
    let cadence = cadence(timeouts.into_iter().flatten().min(), interval);
    let next = due::now_ms() + i64::try_from(cadence.as_millis()).unwrap_or(i64::MAX / 2);
    Ok(Visited {
        counts,
        next: Some(next),
    })
}

/// A tenth of the shortest timeout, within [interval, MAX_CADENCE].
fn cadence(shortest_timeout_ms: Option<i64>, interval: Duration) -> Duration {
    let tenth = Duration::from_millis(shortest_timeout_ms.unwrap_or(0).max(0) as u64 / 10);
    tenth.min(MAX_CADENCE).max(interval)
}

/// One pass over every running job of every tenant. Returns (re-queued, failed).
pub async fn reclaim_once(bus: &AgentBus) -> Result<(i64, i64)> {
    crate::metrics::reclaimer_run();
    let tenants = bus.tenants().await?;
    bus.sweep_due(Chore::Reclaim, &tenants, &|b, t| {
        visit(b, t, Duration::ZERO)
    })
    .await
}

/// Runs the reclaimer on `schedule` until `shutdown`.
pub async fn run(bus: AgentBus, schedule: Schedule, shutdown: CancellationToken) {
    let interval = schedule.interval;
    due::run(
        bus,
        Chore::Reclaim,
        schedule,
        ("re-queued", "failed"),
        shutdown,
        move |b, t| visit(b, t, interval),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_is_a_tenth_of_the_shortest_timeout_within_bounds() {
        let second = Duration::from_secs(1);
        assert_eq!(cadence(Some(60_000), second), Duration::from_secs(6));
        assert_eq!(cadence(Some(2_000), second), second);
        assert_eq!(cadence(Some(3_600_000), second), MAX_CADENCE);
        assert_eq!(cadence(None, second), second);
        assert_eq!(cadence(Some(-5), second), second);
    }
}
