//! Deadlines of the background chores (the reaper, the reclaimer): which
//! tenants need a visit and when, so a chore visits only the tenants that
//! are due and an idle tenant costs nothing.
//!
//! Each chore has one zset per shard (`Keyspace::due`, the shard of the
//! tenant as for the sink's ready signal): tenant → the time (ms) it next
//! needs the chore. A call that creates a deadline writes it next to the
//! script (`Call::due`, `ZADD LT`: the earliest stays). A chore's pass
//! takes what is due in each shard with a lease (`lua/due_take.lua`),
//! visits each tenant and settles it with the next deadline the visit
//! found, or removes it (`lua/due_settle.lua`); a deadline written during
//! the visit lowers the lease and is kept. A lease left by a process that
//! stopped mid-visit is taken again after [`STUCK_MS`]. On Redis Cluster
//! every shard key is its own slot and each script touches one key.
//!
//! The safety net is a slow sweep over every tenant, spread evenly over
//! `sweep_every` (each pass visits its share), so it costs a steady trickle
//! rather than a burst: it finds what a lost deadline left (a crash between
//! a script and its deadline on a cluster, a client that does not write
//! them). The first sweep of a deployment (no `Keyspace::due_swept` mark
//! yet: data from before deadlines existed) visits every tenant in the
//! process's first pass.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::bus::AgentBus;
use crate::error::Result;
use crate::keys::{Chore, READY_SHARDS, TenantId};
use crate::scripts::scripts;

/// Score of a lease at time 0: above every real deadline (ms since 1970
/// are ~1.8e12), below 2^53 so scores stay exact.
pub const LEASE_BASE: i64 = 4_000_000_000_000_000;
/// A lease this old (ms) is taken again: its visitor stopped.
pub const STUCK_MS: i64 = 60_000;
/// Tenants taken from one shard per call.
const TAKE_MOST: usize = 200;

/// When a chore runs.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Between passes over what is due.
    pub interval: Duration,
    /// Between sweeps over every tenant (the first at start).
    pub sweep_every: Duration,
}

/// What one visit did and when the tenant is next due.
#[derive(Clone, Copy, Debug, Default)]
pub struct Visited {
    /// The chore's two counts (reaper: stale agents, expired invocations;
    /// reclaimer: re-queued, failed items).
    pub counts: (i64, i64),
    /// The tenant's next deadline (ms), `None` when it has none.
    pub next: Option<i64>,
}

/// Milliseconds since 1970, as the scripts' `now_ms`.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl AgentBus {
    /// The deadline key of `tenant` for `chore`.
    pub fn due_key(&self, chore: Chore, tenant: &TenantId) -> String {
        self.keyspace().due_of(chore, tenant.as_str())
    }

    /// Writes `tenant`'s deadline `at_ms` for `chore` (the earliest stays).
    pub async fn mark_due(&self, chore: Chore, tenant: &TenantId, at_ms: i64) -> Result<()> {
        let mut conn = self.redis().conn().await?;
        crate::scripts::due_cmd(&self.due_key(chore, tenant), tenant.as_str(), at_ms)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// `tenant`'s deadline for `chore` (a lease when a visit is under way).
    pub async fn due_at(&self, chore: Chore, tenant: &TenantId) -> Result<Option<i64>> {
        let mut conn = self.redis().conn().await?;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(self.due_key(chore, tenant))
            .arg(tenant.as_str())
            .query_async(&mut conn)
            .await?;
        Ok(score.map(|s| s as i64))
    }

    /// Whether a sweep of `chore` has ever completed on this deployment.
    pub async fn swept(&self, chore: Chore) -> Result<bool> {
        let mut conn = self.redis().conn().await?;
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.keyspace().due_swept(chore))
            .query_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Marks that a sweep of `chore` completed (later ones are paced).
    pub async fn mark_swept(&self, chore: Chore) -> Result<()> {
        let mut conn = self.redis().conn().await?;
        redis::cmd("SET")
            .arg(self.keyspace().due_swept(chore))
            .arg(now_ms())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes up to `most` due tenants of one shard, and leases older than
    /// [`STUCK_MS`] when `stuck`. Returns the lease they hold and the tenants.
    pub async fn take_due(
        &self,
        chore: Chore,
        shard: usize,
        most: usize,
        stuck: bool,
    ) -> Result<(i64, Vec<TenantId>)> {
        let mut conn = self.redis().conn().await?;
        let reply = scripts()
            .due_take
            .key("due", self.keyspace().due(chore, shard))
            .arg("now", now_ms())
            .arg("most", most.clamp(1, 10_000))
            .arg("lease_base", LEASE_BASE)
            .arg("stuck_ms", if stuck { STUCK_MS } else { 0 })
            .invoke(&mut conn)
            .await?;
        let tenants = reply
            .texts("tenants")?
            .iter()
            .filter_map(|t| TenantId::new(t.as_str()).ok())
            .collect();
        Ok((reply.int("lease")?, tenants))
    }

    /// Ends a visit: `next` replaces the lease (`None` removes the
    /// tenant), unless a deadline written meanwhile is earlier. `lease` 0
    /// for a visit without one. Returns whether the tenant keeps a deadline.
    pub async fn settle_due(
        &self,
        chore: Chore,
        tenant: &TenantId,
        lease: i64,
        next: Option<i64>,
    ) -> Result<bool> {
        let mut conn = self.redis().conn().await?;
        let kept = scripts()
            .due_settle
            .key("due", self.due_key(chore, tenant))
            .arg("tenant", tenant.as_str())
            .arg("lease", lease.max(0))
            .arg("next", next.unwrap_or(0).clamp(0, LEASE_BASE))
            .invoke(&mut conn)
            .await?
            .value()?;
        Ok(kept == 1)
    }

    /// Whether anything in one shard is due: one range read, so an idle
    /// shard costs a pass one command.
    async fn any_due(&self, chore: Chore, shard: usize) -> Result<bool> {
        let mut conn = self.redis().conn().await?;
        let first: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keyspace().due(chore, shard))
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(!first.is_empty())
    }

    /// Visits every due tenant of `chore` once (each shard until nothing
    /// due is left); with `stuck`, also the tenants whose lease is older
    /// than [`STUCK_MS`]. Returns the summed counts.
    pub async fn run_due<F, Fut>(&self, chore: Chore, stuck: bool, visit: &F) -> Result<(i64, i64)>
    where
        F: Fn(AgentBus, TenantId) -> Fut,
        Fut: Future<Output = Result<Visited>>,
    {
        let mut totals = (0, 0);
        for shard in 0..READY_SHARDS {
            if !stuck && !self.any_due(chore, shard).await? {
                continue;
            }
            loop {
                let (lease, tenants) = self.take_due(chore, shard, TAKE_MOST, stuck).await?;
                for tenant in &tenants {
                    // A visit that fails keeps its lease: the tenant is
                    // taken again after STUCK_MS (a back-off), the others
                    // go on.
                    if let Some(v) = self.visit_logged(chore, tenant, visit).await {
                        self.settle_due(chore, tenant, lease, v.next).await?;
                        add(&mut totals, v.counts);
                    }
                }
                if tenants.len() < TAKE_MOST {
                    break;
                }
            }
        }
        Ok(totals)
    }

    /// Visits `tenants` without a lease (a sweep) and records each one's
    /// next deadline.
    pub async fn sweep_due<F, Fut>(
        &self,
        chore: Chore,
        tenants: &[TenantId],
        visit: &F,
    ) -> Result<(i64, i64)>
    where
        F: Fn(AgentBus, TenantId) -> Fut,
        Fut: Future<Output = Result<Visited>>,
    {
        let mut totals = (0, 0);
        for tenant in tenants {
            if let Some(v) = self.visit_logged(chore, tenant, visit).await {
                // Without a lease and without a deadline there is nothing
                // to write (most tenants of a sweep).
                if v.next.is_some() {
                    self.settle_due(chore, tenant, 0, v.next).await?;
                }
                add(&mut totals, v.counts);
            }
        }
        Ok(totals)
    }

    async fn visit_logged<F, Fut>(
        &self,
        chore: Chore,
        tenant: &TenantId,
        visit: &F,
    ) -> Option<Visited>
    where
        F: Fn(AgentBus, TenantId) -> Fut,
        Fut: Future<Output = Result<Visited>>,
    {
        match visit(self.clone(), tenant.clone()).await {
            Ok(v) => Some(v),
            Err(e) => {
                e.count_failure();
                tracing::warn!(error = %e, chore = chore.name(), tenant = %tenant, "visit failed");
                None
            }
        }
    }
}

/// Tenants per pass so a sweep of `tenants` ends within `sweep_every`.
fn sweep_share(tenants: usize, schedule: Schedule) -> usize {
    let passes = (schedule.sweep_every.as_secs_f64() / schedule.interval.as_secs_f64().max(0.001))
        .floor()
        .max(1.0);
    ((tenants as f64 / passes).ceil() as usize).max(1)
}

fn add(totals: &mut (i64, i64), counts: (i64, i64)) {
    totals.0 += counts.0;
    totals.1 += counts.1;
}

/// Runs `chore` until `shutdown`: every `interval` a pass over what is due
/// plus this pass's share of the running sweep. Logs what each pass did
/// under `what` (the names of its two counts).
pub async fn run<F, Fut>(
    bus: AgentBus,
    chore: Chore,
    schedule: Schedule,
    what: (&'static str, &'static str),
    shutdown: CancellationToken,
    visit: F,
) where
    F: Fn(AgentBus, TenantId) -> Fut,
    Fut: Future<Output = Result<Visited>>,
{
    let mut sweep: Vec<TenantId> = Vec::new();
    let mut per_pass = 1;
    let mut first_sweep = false;
    let mut next_sweep = Instant::now();
    // Stuck leases are looked for now and then, not on every pass.
    let mut next_stuck = Instant::now();
    let stuck_every = Duration::from_millis(STUCK_MS as u64 / 4);
    loop {
        match chore {
            Chore::Reap => crate::metrics::reaper_run(),
            Chore::Reclaim => crate::metrics::reclaimer_run(),
        }
        let pass = async {
            if sweep.is_empty() && Instant::now() >= next_sweep {
                sweep = bus.tenants().await?;
                first_sweep = !bus.swept(chore).await?;
                per_pass = if first_sweep {
                    sweep.len()
                } else {
                    sweep_share(sweep.len(), schedule)
                };
                next_sweep = Instant::now() + schedule.sweep_every;
            }
            let stuck = Instant::now() >= next_stuck;
            if stuck {
                next_stuck = Instant::now() + stuck_every;
            }
            let mut totals = bus.run_due(chore, stuck, &visit).await?;
            let chunk: Vec<TenantId> = sweep.drain(..sweep.len().min(per_pass)).collect();
            add(&mut totals, bus.sweep_due(chore, &chunk, &visit).await?);
            if first_sweep && sweep.is_empty() {
                bus.mark_swept(chore).await?;
                first_sweep = false;
            }
            Ok::<_, crate::error::Error>(totals)
        };
        // A pass may take a while: shutdown does not wait for it (each
        // script call is atomic; a lease left behind is taken again).
        let pass = tokio::select! {
            _ = shutdown.cancelled() => return,
            pass = pass => pass,
        };
        match pass {
            Ok((0, 0)) => {}
            Ok((a, b)) => tracing::info!(chore = chore.name(), "{} {a}, {} {b}", what.0, what.1),
            Err(e) => {
                e.count_failure();
                tracing::warn!(error = %e, chore = chore.name(), "chore pass failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(schedule.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_spread_over_its_period() {
        let s = |interval_ms, every_s| Schedule {
            interval: Duration::from_millis(interval_ms),
            sweep_every: Duration::from_secs(every_s),
        };
        // 900 s of 5 s passes: 180 passes.
        assert_eq!(sweep_share(100_000, s(5000, 900)), 556);
        assert_eq!(sweep_share(10_000, s(5000, 3600)), 14);
        assert_eq!(sweep_share(10, s(5000, 900)), 1);
        assert_eq!(sweep_share(0, s(5000, 900)), 1);
        // A period shorter than a pass: everything in one.
        assert_eq!(sweep_share(300, s(5000, 1)), 300);
        assert_eq!(sweep_share(3600, s(1000, 3600)), 1);
    }
}
