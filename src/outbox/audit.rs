//! The invoke audit trail in Postgres (`agents.invoke_audit`, mirrored by
//! the sink): one invocation's trace, filtered lists and statistics, always
//! within one tenant.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::agents::invoke::Invocation;
use crate::error::{Error, Result};
use crate::keys::TenantId;
use crate::money::Credits;
use crate::payload::Payload;

type AuditRow = (
    String,
    String,
    String,
    Option<Uuid>,
    serde_json::Value,
    Option<serde_json::Value>,
    String,
    Option<Decimal>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<i32>,
    Option<String>,
);

const COLUMNS: &str = "a.invoke_id, a.caller_instance_id, a.target_instance_id, a.job_id, a.request_payload,
     a.response_payload, a.status, a.credits_charged, a.started_at, a.completed_at, a.duration_ms, a.error_message";

fn to_invocation(r: AuditRow) -> Invocation {
    Invocation {
        invoke_id: r.0,
        caller_instance_id: r.1,
        target_instance_id: r.2,
        job_id: r.3,
        request_payload: r.4.into(),
        response_payload: r.5.map(Payload::from),
        status: r.6,
        credits_charged: r.7.map(Credits::from),
        started_at: Some(r.8),
        completed_at: r.9,
        duration_ms: r.10.map(i64::from),
        error_message: r.11,
        undecodable: None,
    }
}

/// Filters of `GET /invocations`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub job_id: Option<Uuid>,
    pub caller: Option<String>,
    pub status: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusStats {
    pub status: String,
    pub count: i64,
    pub avg_duration_ms: Option<f64>,
    pub credits_charged: Credits,
}

pub async fn invocation(pool: &PgPool, tenant: &TenantId, invoke_id: &str) -> Result<Invocation> {
    let row: Option<AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM agents.invoke_audit a
           JOIN agents.invoke_tenants t ON t.invoke_id = a.invoke_id
          WHERE a.invoke_id = $1 AND t.tenant_id = $2"
    )))
    .bind(invoke_id)
    .bind(tenant.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(to_invocation)
        .ok_or_else(|| Error::not_found(format!("invocation {invoke_id}")))
}

/// Newest first.
pub async fn list(
    pool: &PgPool,
    tenant: &TenantId,
    filter: &AuditFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<Invocation>> {
    let rows: Vec<AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM agents.invoke_audit a
           JOIN agents.invoke_tenants t ON t.invoke_id = a.invoke_id
          WHERE t.tenant_id = $1
            AND ($2::uuid IS NULL OR a.job_id = $2)
            AND ($3::text IS NULL OR a.caller_instance_id = $3)
            AND ($4::text IS NULL OR a.status = $4)
          ORDER BY a.started_at DESC, a.invoke_id
          LIMIT $5 OFFSET $6"
    )))
    .bind(tenant.as_str())
    .bind(filter.job_id)
    .bind(filter.caller.as_deref())
    .bind(filter.status.as_deref())
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(to_invocation).collect())
}

/// Counts, average duration and credits by status, over the last `since_hours`.
pub async fn stats(pool: &PgPool, tenant: &TenantId, since_hours: i64) -> Result<Vec<StatusStats>> {
    let rows: Vec<(String, i64, Option<f64>, Decimal)> = sqlx::query_as(
        "SELECT a.status, COUNT(*), AVG(a.duration_ms)::float8, COALESCE(SUM(a.credits_charged), 0)
           FROM agents.invoke_audit a
           JOIN agents.invoke_tenants t ON t.invoke_id = a.invoke_id
          WHERE t.tenant_id = $1 AND a.started_at >= now() - make_interval(hours => $2::int)
          GROUP BY a.status ORDER BY a.status",
    )
    .bind(tenant.as_str())
    .bind(since_hours)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(status, count, avg_duration_ms, credits_charged)| StatusStats {
                status,
                count,
                avg_duration_ms: avg_duration_ms.map(|a| (a * 10.0).round() / 10.0),
                credits_charged: credits_charged.into(),
            },
        )
        .collect())
}
