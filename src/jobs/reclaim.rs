//! The reclaimer: a background task that re-delivers items whose worker went
//! quiet (idle past the job's `timeout_per_item`) and fails for good those
//! past `max_retries`.
//!
//! It visits only tenants with running jobs ([`crate::due`]): a spawn makes
//! the tenant due, and each visit keeps it due one interval later while it
//! has a running job. Any number of reclaimers may run at once: each call
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

/// One visit of a tenant: every running job once. Due again `interval`
/// later while it has one.
pub async fn visit(bus: AgentBus, tenant: TenantId, interval: Duration) -> Result<Visited> {
    let jobs = bus.active_jobs(&tenant).await?;
    let mut counts = (0, 0);
    for job in &jobs {
        let (requeued, failed) = bus.reclaim_job(&tenant, job).await?;
        counts.0 += requeued;
        counts.1 += failed;
    }
    let next = (!jobs.is_empty())
        .then(|| due::now_ms() + i64::try_from(interval.as_millis()).unwrap_or(i64::MAX / 2));
    Ok(Visited { counts, next })
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
