//! The outbox's events as rows: parsed from stream entries (text the
//! mirror cannot hold mended), and folded per batch so each key appears once.

use std::collections::HashMap;

use rust_decimal::Decimal;

use crate::codec::{self, StreamEntry};
use crate::error::{Error, Result};
use crate::money::from_minor;
use crate::text;

/// One outbox event, parsed.
#[derive(Clone, Debug)]
pub(super) enum Event {
    Ledger(LedgerRow),
    Cancel(CancelRow),
    Job(JobRow),
    Invoke(InvokeRow),
}

#[derive(Clone, Debug)]
pub(super) struct LedgerRow {
    pub(super) event_id: String,
    pub(super) job_id: String,
    pub(super) operation: String,
    pub(super) skill: String,
    pub(super) amount: Decimal,
    pub(super) context: String,
    pub(super) ts: i64,
}

#[derive(Clone, Debug)]
pub(super) struct CancelRow {
    pub(super) event_id: String,
    pub(super) job_id: String,
    pub(super) cancelled_by: String,
    pub(super) reason: String,
    pub(super) items_completed: i32,
    pub(super) items_cancelled: i32,
    pub(super) refunded: Decimal,
    pub(super) ts: i64,
}

#[derive(Clone, Debug)]
pub(super) struct JobRow {
    pub(super) job_id: String,
    pub(super) orchestrator: String,
    pub(super) worker_agent: String,
    pub(super) task: String,
    pub(super) config: String,
    pub(super) status: String,
    pub(super) total: i32,
    pub(super) completed: i32,
    pub(super) failed: i32,
    pub(super) reserved: Decimal,
    pub(super) spent: Decimal,
    pub(super) refunded: Decimal,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) completed_at: Option<i64>,
    pub(super) ts: i64,
}

#[derive(Clone, Debug)]
pub(super) struct InvokeRow {
    pub(super) invoke_id: String,
    pub(super) caller: String,
    pub(super) target: String,
    pub(super) job_id: String,
    pub(super) request: String,
    pub(super) response: Option<String>,
    pub(super) status: String,
    pub(super) credits_charged: Option<Decimal>,
    pub(super) started_at: i64,
    pub(super) completed_at: Option<i64>,
    pub(super) duration_ms: Option<i32>,
    pub(super) error: Option<String>,
}

fn status_rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "spawning" => 1,
        "running" => 2,
        _ => 3,
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

pub(super) fn parse_event(e: &StreamEntry) -> Result<Event> {
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
pub(super) struct Batch {
    pub(super) ledger: Vec<LedgerRow>,
    pub(super) cancels: Vec<CancelRow>,
    pub(super) jobs: HashMap<String, JobRow>,
    pub(super) invokes: HashMap<String, InvokeRow>,
}

impl Batch {
    pub(super) fn add(&mut self, event: Event) {
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
