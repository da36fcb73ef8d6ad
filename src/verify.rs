//! `agentbus verify`: proves the money adds up once the sink has caught up.
//!
//! Per tenant it compares the Redis balance, the Postgres `credit_balances`
//! row and the sums of `credit_ledger`; per job, the job's reserved, spent
//! and refunded credits (from Redis while it is there, else from the jobs
//! table) against its ledger rows. Any difference fails the check.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::error::Result;
use crate::keys::TenantId;
use crate::money;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Triple {
    #[serde(with = "money::json")]
    pub total: Decimal,
    #[serde(with = "money::json")]
    pub reserved: Decimal,
    #[serde(with = "money::json")]
    pub spent: Decimal,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantCheck {
    pub tenant: String,
    pub redis: Triple,
    pub postgres: Triple,
    pub ledger: Triple,
    pub ok: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobMoney {
    #[serde(with = "money::json")]
    pub reserved: Decimal,
    #[serde(with = "money::json")]
    pub spent: Decimal,
    #[serde(with = "money::json")]
    pub refunded: Decimal,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobCheck {
    pub tenant: String,
    pub job_id: Uuid,
    /// Where the job's own figures came from: `redis` or `postgres`.
    pub source: &'static str,
    pub job: JobMoney,
    pub ledger: JobMoney,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Outbox events not yet mirrored when the check ran (must be 0).
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
            "{:<24} {:>44} {:>44} {:>44}  ok",
            "tenant", "redis total/reserved/spent", "postgres balance", "ledger sums"
        );
        let fmt = |t: &Triple| format!("{}/{}/{}", t.total, t.reserved, t.spent);
        for t in &self.tenants {
            let _ = writeln!(
                out,
                "{:<24} {:>44} {:>44} {:>44}  {}",
                t.tenant,
                fmt(&t.redis),
                fmt(&t.postgres),
                fmt(&t.ledger),
                if t.ok { "yes" } else { "NO" }
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
            let _ = writeln!(
                out,
                "  job {} ({}, {}): job {}/{}/{} vs ledger {}/{}/{} (reserved/spent/refunded)",
                j.job_id,
                j.tenant,
                j.source,
                j.job.reserved,
                j.job.spent,
                j.job.refunded,
                j.ledger.reserved,
                j.ledger.spent,
                j.ledger.refunded
            );
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
    let mut unmirrored;
    loop {
        unmirrored = bus
            .outbox_status()
            .await?
            .iter()
            .filter(|s| only.is_none_or(|t| t.as_str() == s.tenant))
            .map(|s| s.events)
            .sum::<u64>();
        if unmirrored == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut tenants = Vec::new();
    let mut jobs = Vec::new();
    for tenant in selected {
        let b = bus.balance(&tenant).await?;
        let redis = Triple {
            total: b.total,
            reserved: b.reserved,
            spent: b.spent,
        };
        let pg: Option<(Decimal, Decimal, Decimal)> = sqlx::query_as(
            "SELECT total_credits, reserved_credits, spent_credits FROM agents.credit_balances WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(pool)
        .await?;
        let postgres = pg
            .map(|(total, reserved, spent)| Triple {
                total,
                reserved,
                spent,
            })
            .unwrap_or_default();
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
        let ledger = Triple {
            total: grant,
            reserved: reserve - spend - refund,
            spent: spend + charge,
        };
        tenants.push(TenantCheck {
            tenant: tenant.to_string(),
            ok: redis == postgres && postgres == ledger,
            redis,
            postgres,
            ledger,
        });

        // Per job: only the job's own skills (invokes and messages may name a job too).
        let rows: Vec<(Uuid, Decimal, Decimal, Decimal)> = sqlx::query_as(
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
        .await?;
        let pg_jobs: HashMap<Uuid, (Decimal, Decimal, Decimal)> = sqlx::query_as::<_, (Uuid, Decimal, Decimal, Decimal)>(
            "SELECT id, credits_reserved, credits_spent, credits_refunded FROM agents.jobs WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(id, r, s, f)| (id, (r, s, f)))
        .collect();
        for (job_id, reserved, spent, refunded) in rows {
            let ledger = JobMoney {
                reserved,
                spent,
                refunded,
            };
            let (source, job) = match bus.job(&tenant, &job_id).await {
                Ok(j) => (
                    "redis",
                    JobMoney {
                        reserved: j.credits.reserved,
                        spent: j.credits.spent,
                        refunded: j.credits.refunded,
                    },
                ),
                Err(_) => {
                    let (r, s, f) = pg_jobs.get(&job_id).copied().unwrap_or_default();
                    (
                        "postgres",
                        JobMoney {
                            reserved: r,
                            spent: s,
                            refunded: f,
                        },
                    )
                }
            };
            jobs.push(JobCheck {
                tenant: tenant.to_string(),
                job_id,
                source,
                ok: job == ledger,
                job,
                ledger,
            });
        }
    }
    let ok = unmirrored == 0 && tenants.iter().all(|t| t.ok) && jobs.iter().all(|j| j.ok);
    Ok(VerifyReport {
        unmirrored_events: unmirrored,
        tenants,
        jobs,
        ok,
    })
}
