//! The reaper: a background task that marks silent agents stale, ends
//! invocations whose caller stopped waiting (past their deadline) so their
//! reserved credits come back, sweeps expired blackboard entries, and turns
//! metered blackboard charges into ledger events.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::AgentBus;
use crate::error::Result;

/// One pass over every tenant. Returns (agents marked stale, invocations expired).
pub async fn reap_once(bus: &AgentBus) -> Result<(i64, usize)> {
    crate::metrics::reaper_run();
    let mut totals = (0, 0);
    for tenant in bus.tenants().await? {
        totals.0 += bus.reap_agents(&tenant).await?;
        totals.1 += bus.expire_due_invokes(&tenant).await?;
        bus.sweep_blackboards(&tenant).await?;
        bus.flush_metering(&tenant).await?;
    }
    Ok(totals)
}

/// Runs [`reap_once`] every `interval` until `shutdown`.
pub async fn run(bus: AgentBus, interval: Duration, shutdown: CancellationToken) {
    loop {
        // As the reclaimer: shutdown does not wait for a long pass.
        let pass = tokio::select! {
            _ = shutdown.cancelled() => return,
            pass = reap_once(&bus) => pass,
        };
        match pass {
            Ok((0, 0)) => {}
            Ok((stale, expired)) => tracing::info!(stale, expired, "reaped agents and invocations"),
            Err(e) => {
                e.count_failure();
                tracing::warn!(error = %e, "reaper pass failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
