//! Jobs over Redis Streams: spawn, claim, complete, fail, cancel, results.
//!
//! A job is a hash plus an items stream with the consumer group `workers`.
//! Every state change is one Lua script (`lua/job_*.lua`) that also writes its
//! ledger and summary events to the tenant's outbox, so an item is charged at
//! most once and a cancellation refunds exactly the uncompleted items.

pub mod reclaim;
pub mod worker;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::{Script, ScriptInvocation, Value};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::{AgentBus, event_base};
use crate::codec::{Reply, StreamEntry};
use crate::error::{Error, Result};
use crate::keys::{self, Ident, TenantId, TenantKeys};
use crate::metrics;
use crate::money::{self, from_minor};
use crate::payload::{self, Encode, Payload};
use crate::scripts::scripts;

/// Bounds of the original system, kept.
pub const PARALLELISM: (i64, i64) = (1, 100);
pub const TIMEOUT_PER_ITEM_SECS: (i64, i64) = (1, 3600);
pub const MAX_RETRIES: (i64, i64) = (0, 10);
/// Longest task description accepted.
pub const MAX_TASK_LEN: usize = 200;
/// Most items one claim or reclaim call takes (as the scripts check).
const MAX_CLAIM_PER_CALL: usize = 100_000;
/// Longest cancel reason or canceller name.
pub const MAX_CANCEL_TEXT: usize = 1024;

fn default_parallelism() -> i64 {
    10
}
fn default_timeout() -> i64 {
    60
}
fn default_retries() -> i64 {
    3
}

/// What a caller asks for: the body of `POST /jobs` (and of simulate).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[schemars(with = "keys::Ident")]
    pub orchestrator_agent: String,
    #[schemars(with = "keys::Ident")]
    pub worker_agent: String,
    #[schemars(length(min = 1, max = MAX_TASK_LEN))]
    pub task: String,
    /// One entry per item (any JSON, each at most `AGENTBUS_MAX_PAYLOAD_BYTES`);
    /// at most `AGENTBUS_MAX_ITEMS`, counted while the body is parsed.
    #[schemars(length(min = 1))]
    #[serde(deserialize_with = "crate::bounded::items")]
    pub items: Vec<Payload>,
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = PARALLELISM.0, max = PARALLELISM.1))]
    pub parallelism: i64,
    /// Seconds an item may stay with a worker before it is re-delivered.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = TIMEOUT_PER_ITEM_SECS.0, max = TIMEOUT_PER_ITEM_SECS.1))]
    pub timeout_per_item: i64,
    #[serde(default = "default_retries")]
    #[schemars(range(min = MAX_RETRIES.0, max = MAX_RETRIES.1))]
    pub max_retries: i64,
    /// Aggregate numeric outputs into a blackboard namespace as items complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateInto>,
}

/// Where a job's numeric outputs are aggregated: each completed item's
/// output (or the number at `field` of it) becomes the entry `<job>:<index>`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateInto {
    pub namespace: Ident,
    #[serde(default)]
    pub field: Option<String>,
}

impl JobSpec {
    /// A spec with the original's defaults.
    pub fn new(
        orchestrator_agent: &str,
        worker_agent: &str,
        task: &str,
        items: Vec<serde_json::Value>,
    ) -> Self {
        Self {
            orchestrator_agent: orchestrator_agent.into(),
            worker_agent: worker_agent.into(),
            task: task.into(),
            items: items.into_iter().map(Payload::from).collect(),
            parallelism: default_parallelism(),
            timeout_per_item: default_timeout(),
            max_retries: default_retries(),
            aggregate: None,
        }
    }

    /// Checks every field; the first violation names its field.
    pub fn validate(&self, max_items: usize) -> Result<()> {
        keys::validate_id(
            "orchestrator_agent",
            &self.orchestrator_agent,
            keys::MAX_ID_LEN,
        )?;
        check_settings(
            &Settings {
                worker_agent: &self.worker_agent,
                task: &self.task,
                items: self.items.len(),
                parallelism: self.parallelism,
                timeout_per_item: self.timeout_per_item,
                max_retries: self.max_retries,
            },
            max_items,
        )?;
        if let Some(field) = self.aggregate.as_ref().and_then(|a| a.field.as_ref()) {
            keys::validate_id("aggregate.field", field, keys::MAX_ID_LEN)?;
        }
        Ok(())
    }
}

/// The settings a job (or a simulated stage) is checked by, without its items.
pub struct Settings<'a> {
    pub worker_agent: &'a str,
    pub task: &'a str,
    pub items: usize,
    pub parallelism: i64,
    pub timeout_per_item: i64,
    pub max_retries: i64,
}

/// Checks a job's settings; the first violation names its field.
pub fn check_settings(s: &Settings<'_>, max_items: usize) -> Result<()> {
    keys::validate_id("worker_agent", s.worker_agent, keys::MAX_ID_LEN)?;
    if s.task.trim().is_empty() {
        return Err(Error::invalid("task", "must not be empty"));
    }
    if s.task.len() > MAX_TASK_LEN || s.task.chars().any(char::is_control) {
        return Err(Error::invalid(
            "task",
            format!("at most {MAX_TASK_LEN} characters, no control characters"),
        ));
    }
    if s.items == 0 {
        return Err(Error::invalid("items", "must hold at least one item"));
    }
    if s.items > max_items {
        return Err(Error::invalid(
            "items",
            format!("at most {max_items} items per job ({} given)", s.items),
        ));
    }
    in_range("parallelism", s.parallelism, PARALLELISM)?;
    in_range(
        "timeout_per_item",
        s.timeout_per_item,
        TIMEOUT_PER_ITEM_SECS,
    )?;
    in_range("max_retries", s.max_retries, MAX_RETRIES)?;
    Ok(())
}

fn in_range(field: &str, value: i64, (lo, hi): (i64, i64)) -> Result<()> {
    if value < lo || value > hi {
        return Err(Error::invalid(
            field,
            format!("must be between {lo} and {hi} ({value} given)"),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(Error::protocol(format!("job status {other:?}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Progress {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    /// Items not yet in a terminal state (zero once the job has ended).
    pub pending: i64,
    /// Items stopped by a cancellation.
    pub cancelled: i64,
    /// Re-deliveries after a failure or timeout.
    pub retried: i64,
    pub progress_pct: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JobCredits {
    #[serde(with = "money::json")]
    pub reserved: Decimal,
    #[serde(with = "money::json")]
    pub spent: Decimal,
    #[serde(with = "money::json")]
    pub refunded: Decimal,
    /// Still held for items not yet finished: `reserved - spent - refunded`.
    #[serde(with = "money::json")]
    pub still_reserved: Decimal,
}

/// A job as `GET /jobs/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub status: JobStatus,
    pub task: String,
    pub orchestrator_agent: String,
    pub worker_agent: String,
    pub parallelism: i64,
    pub timeout_per_item: i64,
    pub max_retries: i64,
    pub progress: Progress,
    pub credits: JobCredits,
    #[serde(with = "money::json")]
    pub credits_per_item: Decimal,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

fn millis_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

impl Job {
    fn from_hash(id: Uuid, h: &HashMap<String, String>) -> Result<Self> {
        let int = |name: &str| -> Result<i64> {
            h.get(name)
                .ok_or_else(|| Error::protocol(format!("job field {name} missing")))?
                .parse()
                .map_err(|_| Error::protocol(format!("job field {name} not an integer")))
        };
        let opt_int = |name: &str| h.get(name).and_then(|v| v.parse::<i64>().ok());
        let text = |name: &str| h.get(name).cloned().unwrap_or_default();
        let status = JobStatus::parse(h.get("status").map(String::as_str).unwrap_or(""))?;
        let total = int("total")?;
        let completed = int("completed")?;
        let failed = int("failed")?;
        let cancelled = opt_int("cancelled").unwrap_or(0);
        let pending = if status.is_finished() {
            0
        } else {
            total - completed - failed
        };
        let progress_pct = if total > 0 {
            ((completed + failed) as f64 * 10000.0 / total as f64).round() / 100.0
        } else {
            0.0
        };
        let (reserved, spent, refunded) = (int("reserved")?, int("spent")?, int("refunded")?);
        Ok(Job {
            id,
            status,
            task: text("task"),
            orchestrator_agent: text("orchestrator"),
            worker_agent: text("worker_agent"),
            parallelism: int("parallelism")?,
            timeout_per_item: int("timeout_ms")? / 1000,
            max_retries: int("max_retries")?,
            progress: Progress {
                total,
                completed,
                failed,
                pending,
                cancelled,
                retried: opt_int("retried").unwrap_or(0),
                progress_pct,
            },
            credits: JobCredits {
                reserved: from_minor(reserved),
                spent: from_minor(spent),
                refunded: from_minor(refunded),
                still_reserved: from_minor(reserved - spent - refunded),
            },
            credits_per_item: from_minor(int("item_cost")?),
            created_at: millis_to_time(int("created_at")?)
                .ok_or_else(|| Error::protocol("job created_at out of range"))?,
            started_at: opt_int("started_at").and_then(millis_to_time),
            completed_at: opt_int("completed_at").and_then(millis_to_time),
        })
    }
}

/// An item handed to a worker.
#[derive(Clone, Debug, Serialize)]
pub struct ClaimedItem {
    /// The stream entry id; names both the item and this delivery.
    pub item_id: String,
    pub item_index: i64,
    pub input: Payload,
    /// Earlier attempts of this item (0 on the first delivery).
    pub retry_count: i64,
    /// Why the stored input could not be decoded (then `input` is null):
    /// the worker should fail the item rather than guess.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

impl ClaimedItem {
    pub(crate) fn from_entry(entry: &StreamEntry) -> Result<Self> {
        let (input, undecodable) = payload::from_stored(entry.get("input"), "item");
        Ok(ClaimedItem {
            item_id: entry.id.clone(),
            item_index: entry
                .int("idx")
                .ok_or_else(|| Error::protocol("item entry without idx"))?,
            input,
            retry_count: entry.int("attempt").unwrap_or(0),
            undecodable,
        })
    }
}

/// What happened to one completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompleteOutcome {
    /// Recorded and charged.
    Completed,
    /// The item was already in a terminal state: nothing charged.
    Duplicate,
    /// This delivery is no longer held (re-delivered after a timeout): refused.
    Stale,
    /// Not an item of this job.
    Invalid,
}

/// What happened to a failure report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome")]
pub enum FailOutcome {
    /// Re-queued for another attempt.
    Retried {
        attempt: i64,
    },
    /// Failed for good: dead-lettered, its credits released.
    Failed,
    Duplicate,
    Stale,
    Invalid,
}

/// The seed's cancel contract.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CancelOutcome {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub completed_items: i64,
    pub cancelled_items: i64,
    #[serde(with = "money::json")]
    pub credits_refunded: Decimal,
}

/// One output of a finished item.
#[derive(Clone, Debug, Serialize)]
pub struct ItemResult {
    pub result_id: String,
    pub item_index: i64,
    pub output: Payload,
    pub completed_at: Option<DateTime<Utc>>,
    /// Why the stored output could not be decoded (then `output` is null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

/// A page of a job's results, and where the next one starts.
#[derive(Clone, Debug, Serialize)]
pub struct ResultPage {
    pub results: Vec<ItemResult>,
    /// Pass as `after` for the next page (none at the end).
    pub next: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub count: usize,
    pub total: i64,
}

/// Prepares a job script call with the shared KEYS layout and first ARGVs.
fn job_call<'a>(
    script: &'a Script,
    keys: &TenantKeys,
    tenant: &TenantId,
    job: &Uuid,
    retention: Duration,
) -> ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    call.key(keys.credits())
        .key(keys.outbox())
        .key(keys.job(job))
        .key(keys.job_items(job))
        .key(keys.job_done(job))
        .key(keys.job_results(job))
        .key(keys.active_jobs())
        .key(keys.dlq())
        .key(keys.jobs())
        .arg(event_base())
        .arg(tenant.as_str())
        .arg(job.to_string())
        .arg(retention.as_secs().max(1));
    call
}

/// Records a job's end when a script reply says the call ended it: the
/// duration (ms) at `at`, the final status at `status_at`.
fn job_ended(tenant: &TenantId, reply: &Reply, at: usize, status_at: usize) -> Result<()> {
    let lasted = reply.i64(at)?;
    if lasted > 0 {
        let status = match reply.str(status_at)?.as_str() {
            "failed" => "failed",
            _ => "completed",
        };
        metrics::job_ended(tenant, status, Duration::from_millis(lasted as u64));
    }
    Ok(())
}

/// Maps the status replies every job script shares.
fn job_state_error(reply: &Reply, job: &Uuid) -> Result<Error> {
    Ok(match reply.tag()?.as_str() {
        "missing" => Error::not_found(format!("job {job}")),
        "not_running" => {
            let status = reply.str(1)?;
            Error::conflict_with(
                format!("job {job} is {status}"),
                &serde_json::json!({ "status": status }),
            )
        }
        other => Error::protocol(format!("job script answered {other}")),
    })
}

impl AgentBus {
    /// Reserves the job's credits and enqueues its items in one step; with
    /// too little credit nothing is created and the error says how much.
    #[tracing::instrument(name = "spawn_job", skip_all, fields(tenant = %tenant, task = %spec.task, items = spec.items.len()))]
    pub async fn spawn_job(&self, tenant: &TenantId, spec: &JobSpec) -> Result<Job> {
        spec.validate(self.limits().max_items)?;
        let prices = self.prices();
        // Past the largest balance no tenant could pay it; refused before Lua
        // adds it up in doubles.
        if prices.job_reservation_minor(spec.items.len()).is_none() {
            return Err(Error::invalid(
                "items",
                format!(
                    "this job would reserve {} credits, more than any balance can hold",
                    prices.job_reservation(spec.items.len())
                ),
            ));
        }
        let id = Uuid::new_v4();
        self.register_tenant(tenant).await?;
        let keys = self.keys(tenant);
        let mut call = job_call(
            &scripts().job_spawn,
            &keys,
            tenant,
            &id,
            self.limits().job_retention,
        );
        call.arg(prices.job_item)
            .arg(prices.agent_spawn)
            .arg(&spec.task)
            .arg(&spec.orchestrator_agent)
            .arg(&spec.worker_agent)
            .arg(spec.parallelism)
            .arg(spec.timeout_per_item * 1000)
            .arg(spec.max_retries)
            .arg(
                spec.aggregate
                    .as_ref()
                    .map(|a| a.namespace.as_str())
                    .unwrap_or(""),
            )
            .arg(
                spec.aggregate
                    .as_ref()
                    .and_then(|a| a.field.as_deref())
                    .unwrap_or(""),
            )
            .arg(keys.task_stats(&spec.task))
            .arg(keys.agent_task_stats(&spec.worker_agent, &spec.task));
        let max_payload = self.limits().max_payload_bytes;
        for (i, item) in spec.items.iter().enumerate() {
            call.arg(item.encode_checked(&format!("items[{i}]"), max_payload)?);
        }
        let started = std::time::Instant::now();
        let mut conn = self.redis().conn().await?;
        let reply = Reply::new(call.invoke_async(&mut conn).await?)?;
        match reply.tag()?.as_str() {
            "ok" => {
                metrics::job_spawned(tenant, started.elapsed());
                self.job(tenant, &id).await
            }
            "insufficient" => Err(Error::InsufficientCredits {
                required: from_minor(reply.i64(1)?),
                available: from_minor(reply.i64(2)?),
            }),
            "exists" => Err(Error::conflict(format!("job {id} already exists"))),
            other => Err(Error::protocol(format!("job_spawn answered {other}"))),
        }
    }

    /// Why a job cannot deliver any more: 409 with its state when it ended,
    /// else not found.
    async fn ended_job_error(&self, tenant: &TenantId, job: &Uuid) -> Error {
        match self.job(tenant, job).await {
            Ok(j) => {
                let status = j.status.as_str();
                Error::conflict_with(
                    format!("job {job} is {status}"),
                    &serde_json::json!({ "status": status }),
                )
            }
            Err(e) => e,
        }
    }

    /// The job's current state; `NotFound` for unknown (or expired, or
    /// another tenant's) jobs.
    pub async fn job(&self, tenant: &TenantId, id: &Uuid) -> Result<Job> {
        let mut conn = self.redis().conn().await?;
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys(tenant).job(id))
            .query_async(&mut conn)
            .await?;
        if h.is_empty() {
            return Err(Error::not_found(format!("job {id}")));
        }
        Job::from_hash(*id, &h)
    }

    /// Jobs newest first. Entries of jobs whose keys expired are dropped.
    pub async fn list_jobs(
        &self,
        tenant: &TenantId,
        offset: usize,
        limit: usize,
    ) -> Result<JobPage> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let (ids, total): (Vec<String>, i64) = redis::pipe()
            .cmd("ZREVRANGE")
            .arg(keys.jobs())
            .arg(offset)
            .arg(offset + limit.max(1) - 1)
            .cmd("ZCARD")
            .arg(keys.jobs())
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(keys.job(&parse_uuid(id)?));
        }
        let hashes: Vec<HashMap<String, String>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let mut jobs = Vec::new();
        let mut gone = Vec::new();
        for (id, h) in ids.iter().zip(hashes) {
            if h.is_empty() {
                gone.push(id.clone());
            } else {
                jobs.push(Job::from_hash(parse_uuid(id)?, &h)?);
            }
        }
        if !gone.is_empty() {
            redis::cmd("ZREM")
                .arg(keys.jobs())
                .arg(&gone)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(JobPage {
            count: jobs.len(),
            jobs,
            total: total - gone.len() as i64,
        })
    }

    /// Delivers up to `count` new items to `consumer`. With `wait` > 0 and
    /// nothing available, blocks on a dedicated connection for that long.
    pub async fn claim_items(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        consumer: &str,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<ClaimedItem>> {
        keys::validate_id("worker_instance_id", consumer, keys::MAX_ID_LEN)?;
        let keys = self.keys(tenant);
        let mut call = job_call(
            &scripts().job_claim,
            &keys,
            tenant,
            job,
            self.limits().job_retention,
        );
        call.arg(consumer).arg(count.clamp(1, MAX_CLAIM_PER_CALL));
        let mut conn = self.redis().conn().await?;
        let reply = Reply::new(call.invoke_async(&mut conn).await?)?;
        drop(conn);
        if reply.tag()? != "ok" {
            return Err(job_state_error(&reply, job)?);
        }
        let mut items = reply.values()[1..]
            .iter()
            .map(|v| StreamEntry::from_value(v).and_then(|e| ClaimedItem::from_entry(&e)))
            .collect::<Result<Vec<_>>>()?;
        if items.is_empty() && !wait.is_zero() {
            let mut blocking = self.redis().blocking();
            let read = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("workers")
                .arg(consumer)
                .arg("COUNT")
                .arg(count.max(1))
                .arg("BLOCK")
                .arg(wait.as_millis() as u64)
                .arg("STREAMS")
                .arg(keys.job_items(job))
                .arg(">")
                .to_owned();
            let value: Value = match blocking.query(&read, wait).await {
                Ok(v) => v,
                // The job ended while this claim waited (its stream is gone):
                // answer what a claim after the end gets.
                Err(Error::Redis(ref r)) if matches!(r.code(), Some("NOGROUP" | "UNBLOCKED")) => {
                    return Err(self.ended_job_error(tenant, job).await);
                }
                Err(other) => return Err(other),
            };
            items = StreamEntry::from_read_reply(&value)?
                .iter()
                .map(ClaimedItem::from_entry)
                .collect::<Result<_>>()?;
        }
        metrics::items(tenant, "claimed", items.len() as u64);
        Ok(items)
    }

    /// Completes delivered items with their outputs, charging each once.
    pub async fn complete_items(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        outputs: &[(String, impl Encode)],
    ) -> Result<Vec<CompleteOutcome>> {
        let max = self.limits().max_payload_bytes;
        let encoded = outputs
            .iter()
            .map(|(id, out)| Ok((id.as_str(), out.encode_checked("output", max)?)))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<(&str, &[u8])> = encoded.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        self.complete_encoded(tenant, job, &refs).await
    }

    pub(crate) async fn complete_encoded(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        outputs: &[(&str, &[u8])],
    ) -> Result<Vec<CompleteOutcome>> {
        // An id Redis would refuse must not reach the script (an error there
        // reads as "retry later"); nothing of the batch is applied.
        for (id, _) in outputs {
            validate_stream_id("item_id", id)?;
        }
        let keys = self.keys(tenant);
        let mut call = job_call(
            &scripts().job_complete,
            &keys,
            tenant,
            job,
            self.limits().job_retention,
        );
        for (id, out) in outputs {
            call.arg(*id).arg(*out);
        }
        let mut conn = self.redis().conn().await?;
        let reply = Reply::new(call.invoke_async(&mut conn).await?)?;
        if reply.tag()? != "ok" {
            return Err(job_state_error(&reply, job)?);
        }
        job_ended(tenant, &reply, 1, 2)?;
        let outcomes: Vec<CompleteOutcome> = reply
            .texts(3)?
            .iter()
            .map(|o| match o.as_str() {
                "completed" => CompleteOutcome::Completed,
                "duplicate" => CompleteOutcome::Duplicate,
                "stale" => CompleteOutcome::Stale,
                _ => CompleteOutcome::Invalid,
            })
            .collect();
        let durations = reply.texts(4)?;
        metrics::items(tenant, "completed", durations.len() as u64);
        for ms in durations.iter().filter_map(|d| d.parse::<u64>().ok()) {
            metrics::claim_to_complete(tenant, Duration::from_millis(ms));
        }
        Ok(outcomes)
    }

    /// Reports a delivered item as failed: re-queued while `retry` and
    /// attempts remain, otherwise failed for good with its credits released.
    pub async fn fail_item(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        item_id: &str,
        error_message: &str,
        retry: bool,
    ) -> Result<FailOutcome> {
        validate_stream_id("item_id", item_id)?;
        let keys = self.keys(tenant);
        let mut call = job_call(
            &scripts().job_fail,
            &keys,
            tenant,
            job,
            self.limits().job_retention,
        );
        call.arg(item_id)
            .arg(error_message)
            .arg(if retry { "1" } else { "0" });
        let mut conn = self.redis().conn().await?;
        let reply = Reply::new(call.invoke_async(&mut conn).await?)?;
        let tag = reply.tag()?;
        if tag == "retried" || tag == "failed" {
            metrics::items(tenant, "failed", 1);
        }
        Ok(match tag.as_str() {
            "retried" => {
                metrics::items(tenant, "retried", 1);
                FailOutcome::Retried {
                    attempt: reply.i64(1)?,
                }
            }
            "failed" => {
                metrics::items(tenant, "dead_lettered", 1);
                job_ended(tenant, &reply, 1, 2)?;
                FailOutcome::Failed
            }
            "duplicate" => FailOutcome::Duplicate,
            "stale" => FailOutcome::Stale,
            "invalid" => FailOutcome::Invalid,
            _ => return Err(job_state_error(&reply, job)?),
        })
    }

    /// Cancels a running job: no item is delivered or charged afterwards, and
    /// every uncompleted item's credits come back. A job that is not running
    /// is a `Conflict` carrying its current state.
    pub async fn cancel_job(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        cancelled_by: &str,
        reason: &str,
    ) -> Result<CancelOutcome> {
        crate::text::check("cancelled_by", cancelled_by, MAX_CANCEL_TEXT)?;
        crate::text::check("reason", reason, MAX_CANCEL_TEXT)?;
        let keys = self.keys(tenant);
        let mut call = job_call(
            &scripts().job_cancel,
            &keys,
            tenant,
            job,
            self.limits().job_retention,
        );
        call.arg(cancelled_by).arg(reason);
        let mut conn = self.redis().conn().await?;
        let reply = Reply::new(call.invoke_async(&mut conn).await?)?;
        drop(conn);
        match reply.tag()?.as_str() {
            "ok" => {
                metrics::job_ended(
                    tenant,
                    "cancelled",
                    Duration::from_millis(reply.i64(4)?.max(0) as u64),
                );
                Ok(CancelOutcome {
                    job_id: *job,
                    status: JobStatus::Cancelled,
                    completed_items: reply.i64(1)?,
                    cancelled_items: reply.i64(2)?,
                    credits_refunded: from_minor(reply.i64(3)?),
                })
            }
            "not_running" => {
                let current = self.job(tenant, job).await?;
                Err(Error::conflict_with(
                    format!("job {job} is already {}", current.status.as_str()),
                    &current,
                ))
            }
            _ => Err(job_state_error(&reply, job)?),
        }
    }

    /// Re-delivers (or fails for good) items idle past the job's timeout.
    /// Returns (re-queued, failed).
    pub async fn reclaim_job(&self, tenant: &TenantId, job: &Uuid) -> Result<(i64, i64)> {
        let keys = self.keys(tenant);
        let mut call = job_call(
            &scripts().job_reclaim,
            &keys,
            tenant,
            job,
            self.limits().job_retention,
        );
        call.arg(reclaim::RECLAIMER_CONSUMER)
            .arg(self.limits().reclaim_batch.clamp(1, MAX_CLAIM_PER_CALL));
        let mut conn = self.redis().conn().await?;
        let reply = Reply::new(call.invoke_async(&mut conn).await?)?;
        match reply.tag()?.as_str() {
            "ok" => {
                let (requeued, failed) = (reply.i64(1)?, reply.i64(2)?);
                metrics::items(tenant, "failed", (requeued + failed) as u64);
                metrics::items(tenant, "retried", requeued as u64);
                metrics::items(tenant, "dead_lettered", failed as u64);
                job_ended(tenant, &reply, 3, 4)?;
                Ok((requeued, failed))
            }
            _ => Ok((0, 0)),
        }
    }

    /// Outputs in completion order, after the result id `after`: a page of
    /// at most `limit` results and `Limits::max_page_bytes` of outputs.
    pub async fn job_results(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ResultPage> {
        let keys = self.keys(tenant);
        let start = match after {
            Some(id) => {
                validate_stream_id("after", id)?;
                format!("({id}")
            }
            None => "-".into(),
        };
        let page = self
            .stream_page(&keys.job_results(job), &keys.job(job), &start, limit)
            .await?
            .ok_or_else(|| Error::not_found(format!("job {job}")))?;
        let next = page.next();
        let results = page
            .entries
            .into_iter()
            .map(|e| {
                let (output, undecodable) = payload::from_stored(e.get("output"), "result");
                ItemResult {
                    item_index: e.int("idx").unwrap_or(-1),
                    output,
                    undecodable,
                    completed_at: e.int("ts").and_then(millis_to_time),
                    result_id: e.id,
                }
            })
            .collect();
        Ok(ResultPage { results, next })
    }

    /// Ids of the tenant's running jobs (what the reclaimer visits).
    pub async fn active_jobs(&self, tenant: &TenantId) -> Result<Vec<Uuid>> {
        let mut conn = self.redis().conn().await?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys(tenant).active_jobs())
            .query_async(&mut conn)
            .await?;
        Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
    }
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| Error::protocol(format!("job id {s:?} in index")))
}

/// Accepts `<ms>-<seq>` stream ids only, each part a u64 as Redis holds it
/// (past u64, Redis refuses the id and the caller would see a 503).
pub fn validate_stream_id(field: &str, id: &str) -> Result<()> {
    let part = |p: &str| {
        !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u64>().is_ok()
    };
    let ok = id.split_once('-').is_some_and(|(a, b)| part(a) && part(b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("{id:?} is not a stream id")))
    }
}
