//! The sink: mirrors every tenant's outbox into Postgres, durably and
//! idempotently.
//!
//! It reads each outbox through the consumer group `sink` (its own pending
//! entries first), writes a batch in one transaction — ledger rows inserted
//! `ON CONFLICT (event_id) DO NOTHING` with the balance deltas of only the
//! rows actually inserted, cancellations, invoke audit rows (an upsert that
//! converges whatever the order or repetition of events) and job summaries —
//! commits, then acknowledges and deletes the entries. A crash anywhere
//! before the acknowledgement means the batch is read again and written
//! again to no effect. Postgres being down means waiting, not dropping. An
//! event Postgres refuses is stranded: kept, counted and replayable (see
//! [`crate::stranded`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::Value;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

use crate::bus::AgentBus;
use crate::codec::{self, StreamEntry};
use crate::error::{Error, Result};
use crate::keys::TenantId;
use crate::metrics;
use crate::money::from_minor;
use crate::scripts::scripts;
use crate::text;

pub const GROUP: &str = "sink";
/// Most events per batch.
pub const MAX_BATCH: usize = 5000;
/// How often the lag gauges are refreshed.
const LAG_REPORT_EVERY: Duration = Duration::from_secs(5);
/// Entries another sink has held this long without acknowledging are taken over (default).
pub const TAKEOVER_IDLE: Duration = Duration::from_secs(30);

/// Points in a batch where tests inject a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkStage {
    /// Entries read, nothing written.
    Read,
    /// Rows written inside the open transaction, not committed.
    Written,
    /// Committed, not yet acknowledged in Redis.
    Committed,
}

pub type SinkHook = Arc<dyn Fn(SinkStage) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Clone)]
pub struct SinkOptions {
    /// Consumer name: unique per sink process, stable across its restarts.
    pub consumer: String,
    pub batch: usize,
    /// Pause when every outbox is empty.
    pub idle_sleep: Duration,
    /// Entries another consumer (a sink that died) has held this long are taken over.
    pub takeover_idle: Duration,
    pub hook: Option<SinkHook>,
}

impl SinkOptions {
    pub fn new(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_string(),
            batch: 1000,
            idle_sleep: Duration::from_millis(20),
            takeover_idle: TAKEOVER_IDLE,
            hook: None,
        }
    }
}

/// One outbox event, parsed.
#[derive(Clone, Debug)]
enum Event {
    Ledger(LedgerRow),
    Cancel(CancelRow),
    Job(JobRow),
    Invoke(InvokeRow),
}

#[derive(Clone, Debug)]
struct LedgerRow {
    event_id: String,
    job_id: String,
    operation: String,
    skill: String,
    amount: Decimal,
    context: String,
    ts: i64,
}

#[derive(Clone, Debug)]
struct CancelRow {
    event_id: String,
    job_id: String,
    cancelled_by: String,
    reason: String,
    items_completed: i32,
    items_cancelled: i32,
    refunded: Decimal,
    ts: i64,
}

#[derive(Clone, Debug)]
struct JobRow {
    job_id: String,
    orchestrator: String,
    worker_agent: String,
    task: String,
    config: String,
    status: String,
    total: i32,
    completed: i32,
    failed: i32,
    reserved: Decimal,
    spent: Decimal,
    refunded: Decimal,
    created_at: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    ts: i64,
}

#[derive(Clone, Debug)]
struct InvokeRow {
    invoke_id: String,
    caller: String,
    target: String,
    job_id: String,
    request: String,
    response: Option<String>,
    status: String,
    credits_charged: Option<Decimal>,
    started_at: i64,
    completed_at: Option<i64>,
    duration_ms: Option<i32>,
    error: Option<String>,
}

fn status_rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "running" => 1,
        _ => 2,
    }
}

impl JobRow {
    /// Keeps the later of two summaries of one job: a final status beats a
    /// running one; otherwise the newer event wins.
    fn merge(self, other: JobRow) -> JobRow {
        let key = |r: &JobRow| (status_rank(&r.status), r.ts);
        if key(&other) >= key(&self) {
            other
        } else {
            self
        }
    }
}

impl InvokeRow {
    /// Start and end events of one invocation converge to the same row.
    fn merge(mut self, other: InvokeRow) -> InvokeRow {
        if self.status == "pending" {
            self.status = other.status.clone();
        }
        self.response = self.response.or(other.response);
        self.credits_charged = self.credits_charged.or(other.credits_charged);
        self.completed_at = self.completed_at.or(other.completed_at);
        self.duration_ms = self.duration_ms.or(other.duration_ms);
        self.error = self.error.or(other.error);
        self
    }
}

fn need<'a>(e: &'a StreamEntry, field: &str) -> Result<&'a str> {
    e.text(field)
        .ok_or_else(|| Error::Codec(format!("event {} lacks {field}", e.id)))
}

fn need_int(e: &StreamEntry, field: &str) -> Result<i64> {
    need(e, field)?
        .parse()
        .map_err(|_| Error::Codec(format!("event {}: {field} is not an integer", e.id)))
}

fn opt_int(e: &StreamEntry, field: &str) -> Option<i64> {
    e.int(field)
}

fn small(e: &StreamEntry, field: &str) -> Result<i32> {
    i32::try_from(need_int(e, field)?)
        .map_err(|_| Error::Codec(format!("event {}: {field} out of range", e.id)))
}

/// MessagePack payload to JSON text; empty means none.
fn json_text(bytes: Option<&[u8]>) -> Result<Option<String>> {
    match bytes {
        None | Some([]) => Ok(None),
        Some(b) => {
            let mut v = codec::decode_json(b)?;
            text::value_for_postgres(&mut v);
            // Lua packs an empty table as an array; a context is an object.
            if v.as_array().is_some_and(Vec::is_empty) {
                v = serde_json::json!({});
            }
            Ok(Some(
                serde_json::to_string(&v).map_err(|e| Error::Codec(e.to_string()))?,
            ))
        }
    }
}

/// Text as Postgres can hold it (see [`crate::text`]).
fn pg(s: &str) -> String {
    text::for_postgres(s).into_owned()
}

fn parse_event(e: &StreamEntry) -> Result<Event> {
    let kind = need(e, "type")?;
    let event_id = pg(need(e, "id")?);
    let ts = need_int(e, "ts")?;
    Ok(match kind {
        "ledger" => Event::Ledger(LedgerRow {
            event_id,
            job_id: pg(e.text("job").unwrap_or_default()),
            operation: pg(need(e, "op")?),
            skill: pg(need(e, "skill")?),
            amount: from_minor(need_int(e, "amount")?),
            context: json_text(e.get("ctx"))?.unwrap_or_else(|| "{}".into()),
            ts,
        }),
        "cancel" => Event::Cancel(CancelRow {
            event_id,
            job_id: pg(need(e, "job")?),
            cancelled_by: pg(e.text("cancelled_by").unwrap_or_default()),
            reason: pg(e.text("reason").unwrap_or_default()),
            items_completed: small(e, "items_completed")?,
            items_cancelled: small(e, "items_cancelled")?,
            refunded: from_minor(need_int(e, "refunded")?),
            ts,
        }),
        "job" => {
            let config = serde_json::json!({
                "parallelism": opt_int(e, "parallelism"),
                "timeout_per_item": opt_int(e, "timeout_ms").map(|ms| ms / 1000),
                "max_retries": opt_int(e, "max_retries"),
                "credits_per_item": opt_int(e, "item_cost").map(from_minor),
                "retried": opt_int(e, "retried"),
                "cancelled_by": e.text("cancelled_by").map(pg),
                "cancel_reason": e.text("cancel_reason").map(pg),
            });
            Event::Job(JobRow {
                job_id: pg(need(e, "job")?),
                orchestrator: pg(e.text("orchestrator").unwrap_or_default()),
                worker_agent: pg(e.text("worker_agent").unwrap_or_default()),
                task: pg(need(e, "task")?),
                config: config.to_string(),
                status: pg(need(e, "status")?),
                total: small(e, "total")?,
                completed: small(e, "completed")?,
                failed: small(e, "failed")?,
                reserved: from_minor(need_int(e, "reserved")?),
                spent: from_minor(need_int(e, "spent")?),
                refunded: from_minor(need_int(e, "refunded")?),
                created_at: need_int(e, "created_at")?,
                started_at: opt_int(e, "started_at"),
                completed_at: opt_int(e, "completed_at"),
                ts,
            })
        }
        "invoke_start" | "invoke_end" | "invoke_refused" => Event::Invoke(InvokeRow {
            invoke_id: pg(need(e, "invoke_id")?),
            caller: pg(need(e, "caller")?),
            target: pg(need(e, "target")?),
            job_id: pg(e.text("job").unwrap_or_default()),
            request: json_text(e.get("request"))?.unwrap_or_else(|| "null".into()),
            response: json_text(e.get("response"))?,
            status: pg(need(e, "status")?),
            credits_charged: opt_int(e, "credits_charged").map(from_minor),
            started_at: need_int(e, "started_at")?,
            completed_at: opt_int(e, "completed_at"),
            duration_ms: opt_int(e, "duration_ms").and_then(|d| i32::try_from(d).ok()),
            error: e.text("error").filter(|s| !s.is_empty()).map(pg),
        }),
        other => {
            return Err(Error::Codec(format!(
                "event {} has unknown type {other:?}",
                e.id
            )));
        }
    })
}

/// Rows of one batch, folded so each key appears once.
#[derive(Default)]
struct Batch {
    ledger: Vec<LedgerRow>,
    cancels: Vec<CancelRow>,
    jobs: HashMap<String, JobRow>,
    invokes: HashMap<String, InvokeRow>,
}

impl Batch {
    fn add(&mut self, event: Event) {
        match event {
            Event::Ledger(r) => self.ledger.push(r),
            Event::Cancel(r) => self.cancels.push(r),
            Event::Job(r) => {
                let merged = match self.jobs.remove(&r.job_id) {
                    Some(prev) => prev.merge(r),
                    None => r,
                };
                self.jobs.insert(merged.job_id.clone(), merged);
            }
            Event::Invoke(r) => {
                let merged = match self.invokes.remove(&r.invoke_id) {
                    Some(prev) => prev.merge(r),
                    None => r,
                };
                self.invokes.insert(merged.invoke_id.clone(), merged);
            }
        }
    }
}

/// Newly inserted ledger rows of a batch: (operation, rows, amount).
type Inserted = Vec<(String, i64, Decimal)>;

/// What one batch wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Written {
    pub events: usize,
    pub ledger_rows: i64,
    pub dead_lettered: usize,
    /// When each event entered the outbox (ms, from its entry id): lag = commit time − this.
    pub appended_at_ms: Vec<i64>,
}

/// Writes a batch; returns the ledger rows actually inserted, by operation
/// (repeated events insert nothing).
async fn write_batch(
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
             WHERE (CASE agents.jobs.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 ELSE 2 END,
                    agents.jobs.updated_at)
                <= (CASE excluded.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 ELSE 2 END,
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
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// The sink of one process.
pub struct Sink {
    bus: AgentBus,
    pool: PgPool,
    options: SinkOptions,
    /// Tenants whose outbox group is known to exist.
    grouped: std::sync::Mutex<HashSet<TenantId>>,
}

impl Sink {
    pub fn new(bus: AgentBus, pool: PgPool, mut options: SinkOptions) -> Self {
        // Acknowledgements pass the ids as script arguments: stay well inside Lua's stack.
        options.batch = options.batch.clamp(1, MAX_BATCH);
        Self {
            bus,
            pool,
            options,
            grouped: std::sync::Mutex::new(HashSet::new()),
        }
    }

    async fn hook(&self, stage: SinkStage) {
        if let Some(h) = &self.options.hook {
            h(stage).await;
        }
    }

    async fn ensure_group(&self, tenant: &TenantId) -> Result<()> {
        if self.grouped.lock().is_ok_and(|g| g.contains(tenant)) {
            return Ok(());
        }
        let mut conn = self.bus.redis().conn().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.bus.keys(tenant).outbox())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => {
                if let Ok(mut g) = self.grouped.lock() {
                    g.insert(tenant.clone());
                }
                Ok(())
            }
        }
    }

    async fn read(&self, tenant: &TenantId, id: &str) -> Result<Vec<StreamEntry>> {
        let mut conn = self.bus.redis().conn().await?;
        let value: redis::RedisResult<Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg("COUNT")
            .arg(self.options.batch)
            .arg("STREAMS")
            .arg(self.bus.keys(tenant).outbox())
            .arg(id)
            .query_async(&mut conn)
            .await;
        match value {
            Ok(v) => StreamEntry::from_read_reply(&v),
            Err(e) => {
                if e.code() == Some("NOGROUP")
                    && let Ok(mut g) = self.grouped.lock()
                {
                    // The outbox was deleted (or Redis lost it): create the group again.
                    g.remove(tenant);
                }
                Err(e.into())
            }
        }
    }

    /// Takes over entries another sink consumer left unacknowledged.
    async fn take_over(&self, tenant: &TenantId) -> Result<()> {
        let mut conn = self.bus.redis().conn().await?;
        let _: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.bus.keys(tenant).outbox())
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg(self.options.takeover_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.options.batch)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Mirrors one batch of `tenant`'s outbox (own pending entries first).
    /// Returns what it wrote; `events == 0` means the outbox is drained.
    pub async fn drain_once(&self, tenant: &TenantId) -> Result<Written> {
        let entries = self.read_batch(tenant, true).await?;
        self.process(tenant, entries).await
    }

    /// The next entries to mirror: this consumer's own unacknowledged ones
    /// first when `recover` (after a start or a failure), then new ones.
    async fn read_batch(&self, tenant: &TenantId, recover: bool) -> Result<Vec<StreamEntry>> {
        self.ensure_group(tenant).await?;
        if recover {
            let entries = self.read(tenant, "0").await?;
            // Pending entries whose data is gone cannot be mirrored: just release them.
            let (gone, kept): (Vec<_>, Vec<_>) =
                entries.into_iter().partition(|e| e.fields.is_empty());
            if !gone.is_empty() {
                self.ack(tenant, &gone).await?;
            }
            if !kept.is_empty() {
                return Ok(kept);
            }
        }
        self.read(tenant, ">").await
    }

    /// Writes one batch in one transaction, dead-letters what can never be
    /// written, then acknowledges the batch.
    #[tracing::instrument(name = "sink_batch", skip_all, fields(tenant = %tenant, events = entries.len()))]
    async fn process(&self, tenant: &TenantId, entries: Vec<StreamEntry>) -> Result<Written> {
        if entries.is_empty() {
            return Ok(Written::default());
        }
        self.hook(SinkStage::Read).await;
        let started = Instant::now();
        let mut batch = Batch::default();
        let mut poison: Vec<(StreamEntry, String)> = Vec::new();
        for e in &entries {
            match parse_event(e) {
                Ok(ev) => batch.add(ev),
                Err(err) => poison.push((e.clone(), err.to_string())),
            }
        }
        let ledger_rows = match self.write(tenant, &batch).await {
            Ok(n) => n,
            Err(Error::Postgres(e)) if is_data_error(&e) => {
                // Find the events Postgres refuses, one by one; write the rest.
                let (n, refused) = self.write_one_by_one(tenant, &entries, &poison).await?;
                poison.extend(refused);
                n
            }
            Err(e) => return Err(e),
        };
        self.hook(SinkStage::Committed).await;
        if !poison.is_empty() {
            self.bus.strand_events(tenant, &poison).await?;
        }
        self.ack(tenant, &entries).await?;
        let now = chrono::Utc::now().timestamp_millis();
        metrics::sink_batch(
            started.elapsed(),
            entries.len(),
            entries
                .iter()
                .filter_map(|e| entry_millis(&e.id))
                .map(|at| (now - at).max(0) as f64 / 1000.0),
        );
        Ok(Written {
            events: entries.len(),
            ledger_rows,
            dead_lettered: poison.len(),
            appended_at_ms: entries.iter().filter_map(|e| entry_millis(&e.id)).collect(),
        })
    }

    /// Mirrors up to `max_batches` batches of one tenant, reading the next
    /// batch from Redis while the current one is written to Postgres, and
    /// reading its own pending entries first when `recover`.
    pub async fn drain_tenant(
        &self,
        tenant: &TenantId,
        recover: bool,
        max_batches: usize,
    ) -> Result<Written> {
        let mut current = self.read_batch(tenant, recover).await?;
        let mut total = Written::default();
        for round in 0..max_batches {
            if current.is_empty() {
                break;
            }
            // Prefetch only when more is likely and another round will take it.
            let prefetch = current.len() >= self.options.batch && round + 1 < max_batches;
            let (written, next) = if prefetch {
                let (w, n) = tokio::join!(self.process(tenant, current), self.read(tenant, ">"));
                (w?, n?)
            } else {
                (self.process(tenant, current).await?, Vec::new())
            };
            total.events += written.events;
            total.ledger_rows += written.ledger_rows;
            total.dead_lettered += written.dead_lettered;
            total.appended_at_ms.extend(written.appended_at_ms);
            current = next;
        }
        Ok(total)
    }

    /// Writes one batch in one transaction. Returns the ledger rows inserted.
    async fn write(&self, tenant: &TenantId, batch: &Batch) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let inserted = write_batch(&mut tx, tenant.as_str(), batch).await?;
        self.hook(SinkStage::Written).await;
        tx.commit().await?;
        // Counted once committed, from the rows this batch really inserted.
        let mut rows = 0;
        for (op, count, amount) in &inserted {
            let minor = crate::money::to_minor("amount", *amount).unwrap_or(0);
            metrics::credits(op, *count as u64, minor as u64);
            rows += count;
        }
        Ok(rows)
    }

    async fn write_one_by_one(
        &self,
        tenant: &TenantId,
        entries: &[StreamEntry],
        already_poison: &[(StreamEntry, String)],
    ) -> Result<(i64, Vec<(StreamEntry, String)>)> {
        let mut written = 0;
        let mut refused = Vec::new();
        for e in entries {
            if already_poison.iter().any(|(p, _)| p.id == e.id) {
                continue;
            }
            let Ok(event) = parse_event(e) else { continue };
            let mut batch = Batch::default();
            batch.add(event);
            match self.write(tenant, &batch).await {
                Ok(n) => written += n,
                Err(Error::Postgres(err)) if is_data_error(&err) => {
                    refused.push((e.clone(), err.to_string()))
                }
                Err(other) => return Err(other),
            }
        }
        Ok((written, refused))
    }

    /// Acknowledges entries and trims the outbox below what any sink still holds.
    async fn ack(&self, tenant: &TenantId, entries: &[StreamEntry]) -> Result<()> {
        let mut conn = self.bus.redis().conn().await?;
        let mut call = scripts().outbox_ack.key(self.bus.keys(tenant).outbox());
        call.arg(GROUP);
        for e in entries {
            call.arg(&e.id);
        }
        call.invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }

    /// Runs until `shutdown`: every tenant, batch after batch, backing off
    /// while Postgres or Redis fail.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let takeover_every = self.options.takeover_idle / 2;
        let mut last_takeover = Instant::now() - takeover_every;
        // Tenants whose own pending entries must be read first (all, at start).
        let mut recovered: HashSet<TenantId> = HashSet::new();
        let mut last_lag_report = Instant::now() - LAG_REPORT_EVERY;
        while !shutdown.is_cancelled() {
            let tenants = match self.bus.tenants().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "sink: cannot list tenants");
                    sleep_or_stop(&shutdown, backoff).await;
                    continue;
                }
            };
            let takeover = last_takeover.elapsed() >= takeover_every;
            let mut busy = false;
            let mut failed = false;
            for tenant in &tenants {
                if takeover && let Err(e) = self.take_over(tenant).await {
                    tracing::warn!(error = %e, "sink: takeover failed");
                }
                // Take over and recover only now and then; prefetched batches
                // left pending are picked up by the recovery read.
                let recover = takeover || !recovered.contains(tenant);
                match self.drain_tenant(tenant, recover, 16).await {
                    Ok(written) => {
                        busy |= written.events > 0;
                        recovered.insert(tenant.clone());
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, error = %e, "sink: batch failed; will retry");
                        recovered.remove(tenant);
                        failed = true;
                    }
                }
            }
            if takeover {
                last_takeover = Instant::now();
            }
            if last_lag_report.elapsed() >= LAG_REPORT_EVERY {
                last_lag_report = Instant::now();
                if let Ok(status) = self.bus.outbox_status().await {
                    metrics::sink_lag(
                        status
                            .iter()
                            .map(|s| (s.tenant.as_str(), s.events, s.oldest_age_secs, s.stranded)),
                    );
                }
            }
            if failed {
                sleep_or_stop(&shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(100);
                if !busy {
                    sleep_or_stop(&shutdown, self.options.idle_sleep).await;
                }
            }
        }
    }
}

/// The millisecond part of a stream entry id.
pub fn entry_millis(id: &str) -> Option<i64> {
    id.split('-').next().and_then(|ms| ms.parse().ok())
}

async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// The state of one tenant's outbox, for `agentbus sink status`.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxStatus {
    pub tenant: String,
    /// Events in the outbox (not yet mirrored and deleted).
    pub events: u64,
    /// Events delivered to a sink and not yet acknowledged.
    pub in_flight: u64,
    /// Age of the oldest event, in seconds.
    pub oldest_age_secs: f64,
    /// Events Postgres refused, kept in `outbox:dead` (see [`crate::stranded`]).
    pub stranded: u64,
}

impl AgentBus {
    pub async fn outbox_status(&self) -> Result<Vec<OutboxStatus>> {
        let mut out = Vec::new();
        let now = chrono::Utc::now().timestamp_millis();
        for tenant in self.tenants().await? {
            let outbox = self.keys(&tenant).outbox();
            let mut conn = self.redis().conn().await?;
            let (len, stranded, first): (u64, u64, Value) = redis::pipe()
                .cmd("XLEN")
                .arg(&outbox)
                .cmd("XLEN")
                .arg(self.keys(&tenant).outbox_dead())
                .cmd("XRANGE")
                .arg(&outbox)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let in_flight: u64 = match redis::cmd("XPENDING")
                .arg(&outbox)
                .arg(GROUP)
                .query_async::<Value>(&mut conn)
                .await
            {
                Ok(Value::Array(v)) => match v.first() {
                    Some(Value::Int(n)) => *n as u64,
                    _ => 0,
                },
                _ => 0,
            };
            let oldest = match first {
                Value::Array(items) if !items.is_empty() => {
                    entry_millis(&StreamEntry::from_value(&items[0])?.id)
                }
                _ => None,
            };
            out.push(OutboxStatus {
                tenant: tenant.to_string(),
                events: len,
                in_flight,
                oldest_age_secs: oldest
                    .map(|ms| (now - ms).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0),
                stranded,
            });
        }
        Ok(out)
    }
}
