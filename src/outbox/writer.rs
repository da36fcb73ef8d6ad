//! The Postgres side of a batch: one transaction of set-based statements
//! (UNNEST), idempotent by event id, balances moved by the rows really
//! inserted.

use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};

use super::events::{Batch, InvokeRow, JobRow, LedgerRow};

/// Newly inserted ledger rows of a batch: (operation, rows, amount).
pub(super) type Inserted = Vec<(String, i64, Decimal)>;

/// Writes a batch; returns the ledger rows actually inserted, by operation
/// (repeated events insert nothing).
pub(super) async fn write_batch(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    b: &Batch,
) -> std::result::Result<Inserted, sqlx::Error> {
    let mut inserted = Vec::new();
    if !b.ledger.is_empty() {
        let col = |f: fn(&LedgerRow) -> String| b.ledger.iter().map(f).collect::<Vec<_>>();
        inserted = sqlx::query_as::<_, (String, i64, Decimal)>(
            "WITH ins AS (
                INSERT INTO agents.credit_ledger
                    (event_id, tenant_id, job_id, operation, skill, amount, context, created_at)
                SELECT e, $1, NULLIF(j, '')::uuid, o, s, a, c::jsonb, to_timestamp(ts / 1000.0)
                  FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[], $8::bigint[])
                       AS u(e, j, o, s, a, c, ts)
                ON CONFLICT (event_id) DO NOTHING
                RETURNING operation, amount
             ), d AS (
                SELECT COALESCE(SUM(CASE WHEN operation = 'grant' THEN amount ELSE 0 END), 0) AS total,
                       COALESCE(SUM(CASE operation WHEN 'reserve' THEN amount
                                                   WHEN 'spend' THEN -amount
                                                   WHEN 'refund' THEN -amount ELSE 0 END), 0) AS reserved,
                       COALESCE(SUM(CASE WHEN operation IN ('spend', 'charge') THEN amount ELSE 0 END), 0) AS spent,
                       COUNT(*) AS n
                  FROM ins
             ), bal AS (
                INSERT INTO agents.credit_balances (tenant_id, total_credits, reserved_credits, spent_credits)
                SELECT $1, total, reserved, spent FROM d WHERE n > 0
                ON CONFLICT (tenant_id) DO UPDATE SET
                    total_credits = agents.credit_balances.total_credits + excluded.total_credits,
                    reserved_credits = agents.credit_balances.reserved_credits + excluded.reserved_credits,
                    spent_credits = agents.credit_balances.spent_credits + excluded.spent_credits,
                    updated_at = now()
             )
             SELECT operation, COUNT(*), COALESCE(SUM(amount), 0) FROM ins GROUP BY operation",
        )
        .bind(tenant)
        .bind(col(|r| r.event_id.clone()))
        .bind(col(|r| r.job_id.clone()))
        .bind(col(|r| r.operation.clone()))
        .bind(col(|r| r.skill.clone()))
        .bind(b.ledger.iter().map(|r| r.amount).collect::<Vec<_>>())
        .bind(col(|r| r.context.clone()))
        .bind(b.ledger.iter().map(|r| r.ts).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    }
    if !b.cancels.is_empty() {
        let c = &b.cancels;
        sqlx::query(
            "INSERT INTO agents.job_cancellations
                (event_id, job_id, tenant_id, cancelled_by, reason, items_completed, items_cancelled,
                 credits_refunded, cancelled_at)
             SELECT e, j::uuid, $1, b, r, ic, ix, cr, to_timestamp(ts / 1000.0)
               FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[], $8::numeric[], $9::bigint[])
                    AS u(e, j, b, r, ic, ix, cr, ts)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(c.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.cancelled_by.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.items_completed).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.items_cancelled).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.refunded).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.ts).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !b.jobs.is_empty() {
        let j: Vec<&JobRow> = b.jobs.values().collect();
        sqlx::query(
            "INSERT INTO agents.jobs
                (id, tenant_id, orchestrator_instance_id, worker_agent, task, config, status, total_items,
                 completed_items, failed_items, credits_reserved, credits_spent, credits_refunded,
                 created_at, started_at, completed_at, updated_at)
             SELECT id::uuid, $1, o, w, t, c::jsonb, s, tot, comp, f, res, sp, ref,
                    to_timestamp(ca / 1000.0), to_timestamp(sa / 1000.0), to_timestamp(fa / 1000.0),
                    to_timestamp(ts / 1000.0)
               FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[],
                           $9::int[], $10::int[], $11::numeric[], $12::numeric[], $13::numeric[],
                           $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[])
                    AS u(id, o, w, t, c, s, tot, comp, f, res, sp, ref, ca, sa, fa, ts)
             ON CONFLICT (id) DO UPDATE SET
                status = excluded.status, config = excluded.config,
                completed_items = excluded.completed_items, failed_items = excluded.failed_items,
                credits_reserved = excluded.credits_reserved, credits_spent = excluded.credits_spent,
                credits_refunded = excluded.credits_refunded, started_at = excluded.started_at,
                completed_at = excluded.completed_at, updated_at = excluded.updated_at
             WHERE (CASE agents.jobs.status WHEN 'pending' THEN 0 WHEN 'spawning' THEN 1 WHEN 'running' THEN 2 ELSE 3 END,
                    agents.jobs.updated_at)
                <= (CASE excluded.status WHEN 'pending' THEN 0 WHEN 'spawning' THEN 1 WHEN 'running' THEN 2 ELSE 3 END,
                    excluded.updated_at)",
        )
        .bind(tenant)
        .bind(j.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.orchestrator.clone()).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.worker_agent.clone()).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.task.clone()).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.config.clone()).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.total).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.completed).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.failed).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.reserved).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.spent).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.refunded).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.completed_at).collect::<Vec<_>>())
        .bind(j.iter().map(|r| r.ts).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !b.invokes.is_empty() {
        let v: Vec<&InvokeRow> = b.invokes.values().collect();
        sqlx::query(
            "INSERT INTO agents.invoke_audit
                (invoke_id, caller_instance_id, target_instance_id, job_id, request_payload, response_payload,
                 status, credits_charged, started_at, completed_at, duration_ms, error_message)
             SELECT i, c, t, NULLIF(j, '')::uuid, rq::jsonb, rs::jsonb, s, cc,
                    to_timestamp(sa / 1000.0), to_timestamp(ca / 1000.0), d, err
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                           $8::numeric[], $9::bigint[], $10::bigint[], $11::int[], $12::text[])
                    AS u(i, c, t, j, rq, rs, s, cc, sa, ca, d, err)
             ON CONFLICT (invoke_id) DO UPDATE SET
                status = CASE WHEN agents.invoke_audit.status = 'pending' THEN excluded.status
                              ELSE agents.invoke_audit.status END,
                response_payload = COALESCE(agents.invoke_audit.response_payload, excluded.response_payload),
                credits_charged = COALESCE(agents.invoke_audit.credits_charged, excluded.credits_charged),
                completed_at = COALESCE(agents.invoke_audit.completed_at, excluded.completed_at),
                duration_ms = COALESCE(agents.invoke_audit.duration_ms, excluded.duration_ms),
                error_message = COALESCE(agents.invoke_audit.error_message, excluded.error_message)",
        )
        .bind(v.iter().map(|r| r.invoke_id.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.caller.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.target.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.request.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.response.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.credits_charged).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.completed_at).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO agents.invoke_tenants (invoke_id, tenant_id)
             SELECT i, $1 FROM UNNEST($2::text[]) AS u(i)
             ON CONFLICT (invoke_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(v.iter().map(|r| r.invoke_id.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(inserted)
}

/// Errors the data itself causes (bad value, constraint): retrying the same
/// rows cannot help, so they are isolated and dead-lettered.
pub(super) fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}
