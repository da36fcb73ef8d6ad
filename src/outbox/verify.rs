//! `agentbus verify`: proves the money adds up once the sink has caught up.
//!
//! Per tenant it compares the Redis balance, the Postgres `credit_balances`
//! row and the sums of `credit_ledger`; checks that `reserved` is exactly
//! the sum of live reservations (jobs' still-reserved credits, pending
//! invocations, broadcasts in delivery); and counts outbox events Postgres refused (stranded). Per
//! job — every job Redis, the jobs table or the ledger knows — it compares
//! the job's reserved, spent and refunded credits against its ledger rows,
//! and while Redis still holds the job, its status and figures against the
//! jobs table (its figures once it ended: the table is written at spawn and
//! at the end); a job past retention is checked against Postgres alone and
//! must have ended there. Any difference fails the check.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::credits::Balance;
use crate::error::Result;
use crate::jobs::JobCredits;
use crate::keys::TenantId;
use crate::money::Credits;

#[derive(Clone, Debug, Serialize)]
pub struct TenantCheck {
    pub tenant: String,
    pub redis: Balance,
    pub postgres: Balance,
    pub ledger: Balance,
    /// Sum of live reservations in Redis: must equal `redis.reserved`.
    pub live_reservations: Credits,
    /// Outbox events Postgres refused, not yet replayed (must be 0).
    pub stranded_events: u64,
    /// Outbox events not yet mirrored when the check ran (must be 0).
    pub unmirrored_events: u64,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobCheck {
    pub tenant: String,
    pub job_id: Uuid,
    /// Where the job's own figures came from: `redis` or `postgres`.
    pub source: &'static str,
    pub job: JobCredits,
    pub ledger: JobCredits,
    /// The job's status in Redis (while it holds the job) and in Postgres.
    pub redis_status: Option<String>,
    pub postgres_status: Option<String>,
    /// The jobs table's figures, when it has the job.
    pub postgres: Option<JobCredits>,
    /// What differs, in words (empty when ok).
    pub problem: String,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Outbox events not yet mirrored when the check ran, over every tenant (must be 0).
    pub unmirrored_events: u64,
    pub tenants: Vec<TenantCheck>,
    pub jobs: Vec<JobCheck>,
    pub ok: bool,
}

impl VerifyReport {
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:>44} {:>44} {:>44} {:>20} {:>9}  ok",
            "tenant",
            "redis total/reserved/spent",
            "postgres balance",
            "ledger sums",
            "live reservations",
            "stranded"
        );
        let fmt = |t: &Balance| format!("{}/{}/{}", t.total, t.reserved, t.spent);
        for t in &self.tenants {
            let _ = writeln!(
                out,
                "{:<24} {:>44} {:>44} {:>44} {:>20} {:>9}  {}",
                t.tenant,
                fmt(&t.redis),
                fmt(&t.postgres),
                fmt(&t.ledger),
                t.live_reservations,
                t.stranded_events,
                if t.ok { "yes" } else { "NO" }
            );
        }
        for t in self.tenants.iter().filter(|t| t.unmirrored_events > 0) {
            let _ = writeln!(
                out,
                "  {}: {} outbox event(s) not mirrored yet (is a sink running?)",
                t.tenant, t.unmirrored_events
            );
        }
        for t in self.tenants.iter().filter(|t| t.stranded_events > 0) {
            let _ = writeln!(
                out,
                "  {}: {} outbox event(s) refused by Postgres (agentbus dlq list --events --tenant {})",
                t.tenant, t.stranded_events, t.tenant
            );
        }
        let bad: Vec<&JobCheck> = self.jobs.iter().filter(|j| !j.ok).collect();
        let _ = writeln!(
            out,
            "jobs checked: {}, differing: {}; unmirrored outbox events: {}",
            self.jobs.len(),
            bad.len(),
            self.unmirrored_events
        );
        for j in bad {
            let _ = writeln!(out, "  job {} ({}): {}", j.job_id, j.tenant, j.problem);
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok {
                "verify: OK"
            } else {
                "verify: DIFFERENCES FOUND"
            }
        );
        out
    }
}

/// Flushes metered charges into the ledger, waits up to `wait` for every
/// outbox to drain, then compares every tenant.
pub async fn verify(bus: &AgentBus, pool: &PgPool, wait: Duration) -> Result<VerifyReport> {
    verify_tenants(bus, pool, wait, None).await
}

/// Like [`verify`], for one tenant only when `only` is given.
pub async fn verify_tenants(
    bus: &AgentBus,
    pool: &PgPool,
    wait: Duration,
    only: Option<&TenantId>,
) -> Result<VerifyReport> {
    let selected: Vec<TenantId> = match only {
        Some(t) => vec![t.clone()],
        None => bus.tenants().await?,
    };
    for tenant in &selected {
        bus.flush_metering(tenant).await?;
    }
    let deadline = Instant::now() + wait;
    let mut waiting: HashMap<String, u64>;
    loop {
        waiting = bus
            .outbox_status()
            .await?
            .into_iter()
            .filter(|s| only.is_none_or(|t| t.as_str() == s.tenant))
            .map(|s| (s.tenant, s.events))
            .collect();
        if waiting.values().all(|&n| n == 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unmirrored = waiting.values().sum::<u64>();

    let mut tenants = Vec::new();
    let mut jobs = Vec::new();
    for tenant in selected {
        let b = bus.balance(&tenant).await?;
        let redis = b;
        let pg: Option<(Decimal, Decimal, Decimal)> = sqlx::query_as(
            "SELECT total_credits, reserved_credits, spent_credits FROM agents.credit_balances WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(pool)
        .await?;
        let postgres = pg
            .map(|(total, reserved, spent)| {
                Balance::new(total.into(), reserved.into(), spent.into())
            })
            .unwrap_or_else(|| Balance::from_minor(0, 0, 0));
        let (grant, reserve, spend, refund, charge): (Decimal, Decimal, Decimal, Decimal, Decimal) =
            sqlx::query_as(
                "SELECT COALESCE(SUM(amount) FILTER (WHERE operation = 'grant'), 0),
                    COALESCE(SUM(amount) FILTER (WHERE operation = 'reserve'), 0),
                    COALESCE(SUM(amount) FILTER (WHERE operation = 'spend'), 0),
                    COALESCE(SUM(amount) FILTER (WHERE operation = 'refund'), 0),
                    COALESCE(SUM(amount) FILTER (WHERE operation = 'charge'), 0)
               FROM agents.credit_ledger WHERE tenant_id = $1",
            )
            .bind(tenant.as_str())
            .fetch_one(pool)
            .await?;
        let ledger = Balance::new(
            grant.into(),
            (reserve - spend - refund).into(),
            (spend + charge).into(),
        );
        let stranded_events = bus.stranded_count(&tenant).await?;
        let (job_checks, jobs_reserved) = check_jobs(bus, pool, &tenant).await?;
        let live_reservations = jobs_reserved
            + pending_invoke_reservations(bus, &tenant).await?
            + broadcast_reservations(bus, &tenant).await?;
        let unmirrored_events = waiting.get(tenant.as_str()).copied().unwrap_or(0);
        tenants.push(TenantCheck {
            tenant: tenant.to_string(),
            ok: redis == postgres
                && postgres == ledger
                && stranded_events == 0
                && unmirrored_events == 0
                && live_reservations == redis.reserved,
            unmirrored_events,
            redis,
            postgres,
            ledger,
            live_reservations,
            stranded_events,
        });
        jobs.extend(job_checks);
    }
    let ok = unmirrored == 0 && tenants.iter().all(|t| t.ok) && jobs.iter().all(|j| j.ok);
    Ok(VerifyReport {
        unmirrored_events: unmirrored,
        tenants,
        jobs,
        ok,
    })
}

/// Credits reserved by pending invocations: the price of each (jobs'
/// still-reserved credits come from [`check_jobs`]).
async fn pending_invoke_reservations(bus: &AgentBus, tenant: &TenantId) -> Result<Credits> {
    let keys = bus.keys(tenant);
    held_by_index(
        bus,
        &keys.pending_invokes(),
        |id| Some(keys.invoke(id)),
        &["price"],
    )
    .await
}

/// Credits reserved by broadcasts still being delivered in chunks: the
/// price of each of their recipients (settled when the last is handled).
async fn broadcast_reservations(bus: &AgentBus, tenant: &TenantId) -> Result<Credits> {
    let keys = bus.keys(tenant);
    let record = |id: &str| Uuid::parse_str(id).ok().map(|id| keys.broadcast(&id));
    held_by_index(bus, &keys.broadcasts(), record, &["price", "count"]).await
}

/// The sum, over the members of the zset `index` (read a page at a time),
/// of the product of `fields` of each member's hash (`record`; a member
/// without one counts nothing).
async fn held_by_index(
    bus: &AgentBus,
    index: &str,
    record: impl Fn(&str) -> Option<String>,
    fields: &[&str],
) -> Result<Credits> {
    const PAGE: isize = 500;
    let mut conn = bus.redis().conn().await?;
    let mut minor: i64 = 0;
    let mut start = 0;
    loop {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(index)
            .arg(start)
            .arg(start + PAGE - 1)
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for key in ids.iter().filter_map(|id| record(id)) {
            pipe.cmd("HMGET").arg(key).arg(fields);
        }
        if !pipe.is_empty() {
            let rows: Vec<Vec<Option<i64>>> = pipe.query_async(&mut conn).await?;
            for row in rows {
                let held = row
                    .into_iter()
                    .map(|v| v.unwrap_or(0))
                    .fold(1i64, i64::saturating_mul);
                minor = minor.saturating_add(held);
            }
        }
        if (ids.len() as isize) < PAGE {
            break;
        }
        start += PAGE;
    }
    Ok(Credits::from_minor(minor))
}

/// Every job of `tenant` that Redis, the jobs table or the ledger knows.
/// Also returns what Redis's jobs still hold reserved.
async fn check_jobs(
    bus: &AgentBus,
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<(Vec<JobCheck>, Credits)> {
    // Per job: only the job's own skills (invokes and messages may name a job too).
    let ledger: HashMap<Uuid, JobCredits> = sqlx::query_as::<_, (Uuid, Decimal, Decimal, Decimal)>(
        "SELECT job_id,
                COALESCE(SUM(amount) FILTER (WHERE operation = 'reserve'), 0),
                COALESCE(SUM(amount) FILTER (WHERE operation = 'spend'), 0),
                COALESCE(SUM(amount) FILTER (WHERE operation = 'refund'), 0)
           FROM agents.credit_ledger
          WHERE tenant_id = $1 AND job_id IS NOT NULL AND skill IN ('job', 'agent_spawn', 'job_item')
          GROUP BY job_id",
    )
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, reserved, spent, refunded)| {
        (
            id,
            JobCredits::new(reserved.into(), spent.into(), refunded.into()),
        )
    })
    .collect();
    let pg_jobs: HashMap<Uuid, (String, JobCredits)> =
        sqlx::query_as::<_, (Uuid, String, Decimal, Decimal, Decimal)>(
            "SELECT id, status, credits_reserved, credits_spent, credits_refunded
               FROM agents.jobs WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(id, status, reserved, spent, refunded)| {
            (
                id,
                (
                    status,
                    JobCredits::new(reserved.into(), spent.into(), refunded.into()),
                ),
            )
        })
        .collect();
    let mut ids: std::collections::BTreeSet<Uuid> = ledger.keys().copied().collect();
    ids.extend(pg_jobs.keys().copied());
    let mut conn = bus.redis().conn().await?;
    let in_redis: Vec<String> = redis::cmd("ZRANGE")
        .arg(bus.keys(tenant).jobs())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    drop(conn);
    ids.extend(in_redis.iter().filter_map(|id| Uuid::parse_str(id).ok()));

    let ids: Vec<Uuid> = ids.into_iter().collect();
    let in_redis = bus.jobs_by_id(tenant, &ids).await?;
    let still_reserved = in_redis.values().map(|j| j.credits.still_reserved).sum();
    let mut out = Vec::with_capacity(ids.len());
    for job_id in ids {
        let in_ledger = ledger.get(&job_id).copied().unwrap_or_default();
        let pg = pg_jobs.get(&job_id);
        let redis = in_redis.get(&job_id);
        let mut problems = Vec::new();
        let (source, job) = match &redis {
            Some(j) => ("redis", j.credits),
            None => ("postgres", pg.map(|(_, m)| *m).unwrap_or_default()),
        };
        let fmt = |m: &JobCredits| format!("{}/{}/{}", m.reserved, m.spent, m.refunded);
        if job != in_ledger {
            problems.push(format!(
                "job {} (from {source}) vs ledger {} (reserved/spent/refunded)",
                fmt(&job),
                fmt(&in_ledger)
            ));
        }
        match (&redis, pg) {
            (_, None) => problems.push("missing from the jobs table".into()),
            (Some(j), Some((status, money))) => {
                if status != j.status.as_str() {
                    problems.push(format!(
                        "status {} in Redis but {status} in Postgres",
                        j.status.as_str()
                    ));
                }
                // The jobs table gets a job's figures at spawn and at its end.
                let ended = j.status.is_finished();
                if ended && *money != job {
                    problems.push(format!("jobs table {} vs Redis {}", fmt(money), fmt(&job)));
                }
            }
            (None, Some((status, _))) => {
                if matches!(status.as_str(), "running" | "pending" | "spawning") {
                    problems.push(format!(
                        "{status} in Postgres but gone from Redis (its end never reached the mirror)"
                    ));
                }
            }
        }
        out.push(JobCheck {
            tenant: tenant.to_string(),
            job_id,
            source,
            job,
            ledger: in_ledger,
            redis_status: redis.as_ref().map(|j| j.status.as_str().to_string()),
            postgres_status: pg.map(|(s, _)| s.clone()),
            postgres: pg.map(|(_, m)| *m),
            ok: problems.is_empty(),
            problem: problems.join("; "),
        });
    }
    Ok((out, still_reserved))
}
