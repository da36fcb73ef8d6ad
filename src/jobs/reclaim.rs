//! The reclaimer: a background task that re-delivers items whose worker went
//! quiet (idle past the job's `timeout_per_item`) and fails for good those
//! past `max_retries`.
//!
//! Any number of reclaimers may run at once: each call is one Lua script that
//! claims, re-queues and acknowledges in one step, so they cannot double up.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::AgentBus;
use crate::error::Result;

/// Consumer name the reclaim script claims stalled entries to. It holds them
/// only inside the script, so every reclaimer may share it.
pub const RECLAIMER_CONSUMER: &str = "agentbus-reclaimer";

/// One pass over every running job of every tenant. Returns (re-queued, failed).
pub async fn reclaim_once(bus: &AgentBus) -> Result<(i64, i64)> {
    crate::metrics::reclaimer_run();
    let mut totals = (0, 0);
    for tenant in bus.tenants().await? {
        for job in bus.active_jobs(&tenant).await? {
            let (requeued, failed) = bus.reclaim_job(&tenant, &job).await?;
            totals.0 += requeued;
            totals.1 += failed;
        }
    }
    Ok(totals)
}

/// Runs [`reclaim_once`] every `interval` until `shutdown`.
pub async fn run(bus: AgentBus, interval: Duration, shutdown: CancellationToken) {
    loop {
        // A pass over many tenants takes a while: shutdown does not wait
        // for it (each script call is atomic; an unfinished pass is redone).
        let pass = tokio::select! {
            _ = shutdown.cancelled() => return,
            pass = reclaim_once(&bus) => pass,
        };
        match pass {
            Ok((0, 0)) => {}
            Ok((requeued, failed)) => {
                tracing::info!(requeued, failed, "reclaimed stalled items")
            }
            Err(e) => {
                e.count_failure();
                tracing::warn!(error = %e, "reclaim pass failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
