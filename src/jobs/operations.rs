//! The job operations on [`AgentBus`]: each one Lua script of
//! `lua/job_*.lua` (spawn, claim, complete, fail, cancel, reclaim), plus the
//! reads (a job, its results, the lists).

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use super::model::millis_to_time;
use super::spec::MAX_CLAIM_PER_CALL;
use super::*;
use crate::bus::{AgentBus, event_base};
use crate::error::{Error, Result};
use crate::keys::{Chore, TenantId, TenantKeys};
use crate::metrics;
use crate::money::{Credits, from_minor};
use crate::payload::{self, Encode};
use crate::scripts::{Answer, Call, Lua, scripts};
/// Prepares a job script call with the shared KEYS layout and first ARGVs.
pub(crate) fn job_call<'a>(
    script: &'a Lua,
    keys: &TenantKeys,
    tenant: &TenantId,
    job: &Uuid,
    retention: Duration,
) -> Call<'a> {
    let mut call = script.call();
    call.key("credits", keys.credits())
        .key("outbox", keys.outbox())
        .key("job", keys.job(job))
        .key("items", keys.job_items(job))
        .key("done", keys.job_done(job))
        .key("results", keys.job_results(job))
        .key("active", keys.active_jobs())
        .key("dlq", keys.dlq())
        .key("jobs", keys.jobs())
        .key("staging", keys.job_staging(job))
        .arg("event_base", event_base())
        .arg("tenant", tenant.as_str())
        .arg("job_id", job.to_string())
        .arg("retention", retention.as_secs().max(1));
    call
}

/// Records a job's end when a script reply says the call ended it: its
/// fields `ended` (how long the job lasted, ms) and `status`.
fn job_ended(tenant: &TenantId, reply: &Answer) -> Result<()> {
    let lasted = reply.int("ended")?;
    if lasted > 0 {
        let status = match reply.text("status")? {
            "failed" => "failed",
            _ => "completed",
        };
        metrics::job_ended(tenant, status, Duration::from_millis(lasted as u64));
    }
    Ok(())
}

/// Maps the status replies every job script shares.
pub(super) fn job_state_error(reply: &Answer, job: &Uuid) -> Result<Error> {
    Ok(match reply.tag() {
        "missing" => Error::not_found(format!("job {job}")),
        "not_running" => {
            let status = reply.text("status")?;
            Error::conflict_with(
                format!("job {job} is {status}"),
                &serde_json::json!({ "status": status }),
            )
        }
        other => Error::protocol(format!("job script answered {other}")),
    })
}

impl AgentBus {
    /// Reserves the job's credits and enqueues its items; with too little
    /// credit nothing is created and the error says how much. A job of more
    /// than one chunk ([`Limits::spawn_chunk`] items, or
    /// [`SPAWN_CHUNK_BYTES`] of inputs) is `spawning` until every chunk is
    /// in (see [`AgentBus::begin_spawn`]); this call returns once it is
    /// `running`, or already ended (cancelled meanwhile), or — when Redis
    /// failed mid-way — still `spawning` for the reclaimer to finish. The
    /// enqueuing runs as its own task: a caller that goes away mid-way
    /// leaves it running.
    #[tracing::instrument(name = "spawn_job", skip_all, fields(tenant = %tenant, task = %spec.task, items = spec.items.len()))]
    pub async fn spawn_job(&self, tenant: &TenantId, spec: &JobSpec) -> Result<Job> {
        let started = std::time::Instant::now();
        let (id, status) = self.begin_spawn(tenant, spec).await?;
        if status == JobStatus::Spawning {
            let (bus, t) = (self.clone(), tenant.clone());
            // The job exists and its credits are reserved: answering an
            // error would invite a second spawn. It is answered as it
            // stands (`spawning`), and the reclaimer finishes it.
            match tokio::spawn(async move { bus.enqueue_staged(&t, &id).await }).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn_enqueue_stopped(tenant, &id, &e),
                Err(e) => warn_enqueue_stopped(tenant, &id, &e),
            }
        }
        metrics::job_spawned(tenant, started.elapsed());
        self.job(tenant, &id).await
    }

    /// The first half of a spawn: stages the inputs past the first chunk
    /// (plain RPUSHes of a chunk each), then one script reserves the credits,
    /// creates the job and enqueues the first chunk. Answers the job's id and
    /// status: `Running` when every item is in, `Spawning` when staged ones
    /// remain for [`AgentBus::enqueue_staged`] (which the reclaimer also
    /// calls for a job whose spawner stopped: [`Limits::spawn_stall`]).
    pub async fn begin_spawn(
        &self,
        tenant: &TenantId,
        spec: &JobSpec,
    ) -> Result<(Uuid, JobStatus)> {
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
        let max_payload = self.limits().max_payload_bytes;
        let inputs = spec
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| item.encode_checked(&format!("items[{i}]"), max_payload))
            .collect::<Result<Vec<_>>>()?;
        let chunk = spawn_chunk(&inputs, self.limits().spawn_chunk);
        let (inline, staged) = inputs.split_at(inputs.len().min(chunk));
        let id = Uuid::new_v4();
        self.register_tenant(tenant).await?;
        let keys = self.keys(tenant);
        let staging = keys.job_staging(&id);
        let mut conn = self.redis().conn().await?;
        if !staged.is_empty() {
            stage(&mut conn, &staging, staged, chunk).await?;
        }
        let mut call = job_call(
            &scripts().job_spawn,
            &keys,
            tenant,
            &id,
            self.limits().job_retention,
        );
        call.arg("item_cost", prices.job_item)
            .arg("overhead", prices.agent_spawn)
            .arg("task", &spec.task)
            .arg("orchestrator", &spec.orchestrator_agent)
            .arg("worker", &spec.worker_agent)
            .arg("parallelism", spec.parallelism)
            .arg("item_timeout", spec.timeout_per_item * 1000)
            .arg("max_retries", spec.max_retries)
            .arg(
                "agg_ns",
                spec.aggregate
                    .as_ref()
                    .map(|a| a.namespace.as_str())
                    .unwrap_or(""),
            )
            .arg(
                "agg_field",
                spec.aggregate
                    .as_ref()
                    .and_then(|a| a.field.as_deref())
                    .unwrap_or(""),
            )
            .arg("task_history", keys.task_stats(&spec.task))
            .arg(
                "worker_history",
                keys.agent_task_stats(&spec.worker_agent, &spec.task),
            )
            .arg("staged", staged.len())
            .arg("chunk", chunk);
        for input in inline {
            call.arg("input", input.as_slice());
        }
        // The reclaimer looks after the tenant's jobs from now on.
        call.due(
            self.due_key(Chore::Reclaim, tenant),
            tenant.as_str(),
            crate::due::now_ms(),
        );
        let reply = call.invoke(&mut conn).await?;
        // Refused: nothing reserved, the staged inputs belong to no job. (On
        // an error the script may have run: they stay, for the job if it
        // exists, else until their TTL.)
        if !reply.is("ok") && !staged.is_empty() {
            redis::cmd("UNLINK")
                .arg(&staging)
                .query_async::<()>(&mut conn)
                .await?;
        }
        match reply.tag() {
            "ok" => Ok((id, JobStatus::parse(reply.text("status")?)?)),
            "insufficient" => Err(Error::InsufficientCredits {
                required: from_minor(reply.int("required")?),
                available: from_minor(reply.int("available")?),
            }),
            _ => Err(Error::conflict(format!("job {id} already exists"))),
        }
    }

    /// Moves a spawning job's staged inputs into its items stream, one
    /// bounded script call per chunk, until it is `running` (or ended:
    /// cancelled meanwhile). Safe to call from any number of processes at
    /// once. Answers how many chunks this call moved.
    pub async fn enqueue_staged(&self, tenant: &TenantId, job: &Uuid) -> Result<u64> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let mut calls = 0;
        loop {
            let reply = job_call(
                &scripts().job_enqueue,
                &keys,
                tenant,
                job,
                self.limits().job_retention,
            )
            .invoke(&mut conn)
            .await?;
            match reply.tag() {
                "ok" => {
                    calls += 1;
                    if reply.text("status")? != "spawning" {
                        return Ok(calls);
                    }
                }
                "not_spawning" => return Ok(calls),
                "missing" => return Err(Error::not_found(format!("job {job}"))),
                _ => {
                    return Err(Error::protocol(format!(
                        "job {job} is spawning but its staged inputs are gone ({} enqueued)",
                        reply.int("enqueued").unwrap_or(-1)
                    )));
                }
            }
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

    /// The current state of each of `ids` that Redis still holds, read with
    /// one pipelined round trip per 500 jobs.
    pub async fn jobs_by_id(&self, tenant: &TenantId, ids: &[Uuid]) -> Result<HashMap<Uuid, Job>> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL").arg(keys.job(id));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (id, h) in chunk.iter().zip(hashes) {
                if !h.is_empty() {
                    out.insert(*id, Job::from_hash(*id, &h)?);
                }
            }
        }
        Ok(out)
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

    /// Completes delivered items with their outputs, charging each once.
    pub async fn complete_items(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        outputs: &[(String, impl Encode)],
    ) -> Result<Vec<CompleteOutcome>> {
        self.complete_named(tenant, job, outputs, |_| "output".into())
            .await
    }

    /// As [`AgentBus::complete_items`], for a list given as `items`: an
    /// output refused is named by its place (`items[3].output`).
    pub async fn complete_batch(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        outputs: &[(String, impl Encode)],
    ) -> Result<Vec<CompleteOutcome>> {
        self.complete_named(tenant, job, outputs, |i| format!("items[{i}].output"))
            .await
    }

    async fn complete_named(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        outputs: &[(String, impl Encode)],
        field: impl Fn(usize) -> String,
    ) -> Result<Vec<CompleteOutcome>> {
        let max = self.limits().max_payload_bytes;
        let encoded = outputs
            .iter()
            .enumerate()
            .map(|(i, (id, out))| Ok((id.as_str(), out.encode_checked(&field(i), max)?)))
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
        let mut conn = self.redis().conn().await?;
        let mut outcomes = Vec::with_capacity(outputs.len());
        // A bounded script call per chunk of pairs.
        for chunk in outputs.chunks(COMPLETE_CHUNK) {
            let mut call = job_call(
                &scripts().job_complete,
                &keys,
                tenant,
                job,
                self.limits().job_retention,
            );
            // Where a job aggregating outputs finds its namespace's keys.
            call.arg("bb_root", keys.blackboard_root())
                .arg("bb_namespaces", keys.blackboard_namespaces())
                .arg("bb_names", keys.blackboard_names());
            for (id, out) in chunk {
                call.arg("entry", *id).arg("output", *out);
            }
            let reply = call.invoke(&mut conn).await?;
            if !reply.is("ok") {
                if outcomes.is_empty() {
                    return Err(job_state_error(&reply, job)?);
                }
                // An earlier chunk ended the job: the rest were not pending.
                outcomes.resize(outputs.len(), CompleteOutcome::Stale);
                break;
            }
            job_ended(tenant, &reply)?;
            outcomes.extend(reply.texts("outcomes")?.iter().map(|o| match o.as_str() {
                "completed" => CompleteOutcome::Completed,
                "duplicate" => CompleteOutcome::Duplicate,
                "stale" => CompleteOutcome::Stale,
                _ => CompleteOutcome::Invalid,
            }));
            let durations = reply.ints("durations")?;
            metrics::items(tenant, "completed", durations.len() as u64);
            for ms in durations {
                metrics::claim_to_complete(tenant, Duration::from_millis((*ms).max(0) as u64));
            }
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
        call.arg("entry", item_id)
            .arg("error", error_message)
            .arg("retry", if retry { "1" } else { "0" });
        let mut conn = self.redis().conn().await?;
        let reply = call.invoke(&mut conn).await?;
        let tag = reply.tag();
        if tag == "retried" || tag == "failed" {
            metrics::items(tenant, "failed", 1);
        }
        Ok(match tag {
            "retried" => {
                metrics::items(tenant, "retried", 1);
                FailOutcome::Retried {
                    attempt: reply.int("attempt")?,
                }
            }
            "failed" => {
                metrics::items(tenant, "dead_lettered", 1);
                job_ended(tenant, &reply)?;
                FailOutcome::Failed
            }
            "duplicate" => FailOutcome::Duplicate,
            "stale" => FailOutcome::Stale,
            "invalid" => FailOutcome::Invalid,
            _ => return Err(job_state_error(&reply, job)?),
        })
    }

    /// Gives back deliveries `worker` holds, so they go out again at once
    /// rather than after `timeout_per_item` (a worker shutting down):
    /// `item_ids`, or with none given every one it holds. A release is no
    /// failure: the item keeps its attempt count and nothing is charged.
    /// Answers the delivery ids released; one not held by `worker` (already
    /// completed, failed, timed out or another's) is left alone.
    pub async fn release_items(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        worker: &str,
        item_ids: &[String],
    ) -> Result<Vec<String>> {
        crate::keys::validate_id("worker_instance_id", worker, crate::keys::MAX_ID_LEN)?;
        for id in item_ids {
            validate_stream_id("item_id", id)?;
        }
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let mut released = Vec::new();
        let mut chunks = item_ids.chunks(RELEASE_CHUNK);
        loop {
            let chunk = if item_ids.is_empty() {
                &[][..]
            } else {
                match chunks.next() {
                    Some(c) => c,
                    None => break,
                }
            };
            let mut call = job_call(
                &scripts().job_release,
                &keys,
                tenant,
                job,
                self.limits().job_retention,
            );
            call.arg("consumer", worker).arg("most", RELEASE_CHUNK);
            for id in chunk {
                call.arg("entry", id.as_str());
            }
            let reply = call.invoke(&mut conn).await?;
            if !reply.is("ok") {
                return Err(job_state_error(&reply, job)?);
            }
            let now = reply.texts("released")?;
            let full = now.len() == RELEASE_CHUNK;
            released.extend_from_slice(now);
            // Everything it holds: again while a call released its most.
            if item_ids.is_empty() && !full {
                break;
            }
        }
        if !released.is_empty() {
            metrics::items(tenant, "released", released.len() as u64);
        }
        Ok(released)
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
        call.arg("cancelled_by", cancelled_by).arg("reason", reason);
        let mut conn = self.redis().conn().await?;
        let reply = call.invoke(&mut conn).await?;
        drop(conn);
        match reply.tag() {
            "ok" => {
                metrics::job_ended(
                    tenant,
                    "cancelled",
                    Duration::from_millis(reply.int("lasted_ms")?.max(0) as u64),
                );
                Ok(CancelOutcome {
                    job_id: *job,
                    status: JobStatus::Cancelled,
                    completed_items: reply.int("completed")?,
                    cancelled_items: reply.int("cancelled")?,
                    credits_refunded: Credits::from_minor(reply.int("refunded")?),
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
        call.arg("consumer", reclaim::RECLAIMER_CONSUMER).arg(
            "count",
            self.limits().reclaim_batch.clamp(1, MAX_CLAIM_PER_CALL),
        );
        let mut conn = self.redis().conn().await?;
        let reply = call.invoke(&mut conn).await?;
        match reply.tag() {
            "ok" => {
                let (requeued, failed) = (reply.int("requeued")?, reply.int("failed")?);
                metrics::items(tenant, "failed", (requeued + failed) as u64);
                metrics::items(tenant, "retried", requeued as u64);
                metrics::items(tenant, "dead_lettered", failed as u64);
                job_ended(tenant, &reply)?;
                // A spawn that made no progress for this long lost its
                // spawner: finish it here.
                let idle = reply.int("spawn_idle")?;
                // A failure here is this job's alone: the visit goes on to
                // the tenant's other jobs.
                if idle >= 0 && idle as u128 >= self.limits().spawn_stall.as_millis() {
                    drop(conn);
                    match self.enqueue_staged(tenant, job).await {
                        Ok(calls) => {
                            tracing::info!(%tenant, %job, idle_ms = idle, calls, "resumed a stalled spawn")
                        }
                        Err(e) => warn_enqueue_stopped(tenant, job, &e),
                    }
                }
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
        self.job_results_in(tenant, job, after, limit, false).await
    }

    /// A job's results in completion order, or newest first when
    /// `newest_first` (then `after` is where the previous page ended,
    /// going back).
    pub async fn job_results_in(
        &self,
        tenant: &TenantId,
        job: &Uuid,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
    ) -> Result<ResultPage> {
        let keys = self.keys(tenant);
        let start = match after {
            Some(id) => {
                validate_result_cursor(id)?;
                format!("({id}")
            }
            None if newest_first => "+".into(),
            None => "-".into(),
        };
        let page = self
            .stream_page_in(
                &keys.job_results(job),
                &keys.job(job),
                &start,
                limit,
                newest_first,
            )
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

fn warn_enqueue_stopped(tenant: &TenantId, job: &Uuid, error: &dyn std::fmt::Display) {
    tracing::warn!(%tenant, %job, %error, "spawn: enqueuing stopped; the reclaimer will try again");
}

/// Releases one `job_release` call makes (the script refuses more than 1,000).
const RELEASE_CHUNK: usize = 500;

/// Completions one `job_complete` call takes (the script refuses more than 1,000).
const COMPLETE_CHUNK: usize = 500;

/// Most input bytes one spawn chunk carries (one script call's worth).
pub const SPAWN_CHUNK_BYTES: usize = 1024 * 1024;

/// How long a staging list outlives a spawner that died before its job
/// script ran (afterwards the job owns it).
const STAGING_TTL_SECS: u64 = 3600;

/// Items per chunk: at most `most` (itself at most
/// [`crate::bus::defaults::MAX_SPAWN_CHUNK`]), and at most
/// [`SPAWN_CHUNK_BYTES`] of the largest input (at least one item).
fn spawn_chunk(inputs: &[Vec<u8>], most: usize) -> usize {
    let largest = inputs.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let most = most.clamp(1, crate::bus::defaults::MAX_SPAWN_CHUNK);
    (SPAWN_CHUNK_BYTES / largest).clamp(1, most)
}

/// Appends `inputs` to the staging list, a chunk per RPUSH, a few chunks
/// per round trip: every command stays as short as one chunk.
async fn stage(
    conn: &mut crate::conn::Conn,
    staging: &str,
    inputs: &[Vec<u8>],
    chunk: usize,
) -> Result<()> {
    for group in inputs.chunks(chunk * 16) {
        let mut pipe = redis::pipe();
        for part in group.chunks(chunk) {
            let mut cmd = redis::cmd("RPUSH");
            cmd.arg(staging);
            for input in part {
                cmd.arg(input.as_slice());
            }
            pipe.add_command(cmd).ignore();
        }
        pipe.cmd("EXPIRE")
            .arg(staging)
            .arg(STAGING_TTL_SECS)
            .ignore();
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// A results cursor is a result id: Redis's own `<ms>-<n>`, its first part
/// a time in ms. An item id (`<gen>-<index>`, e.g. `1-5`) is a stream id
/// too, and would silently restart from the first result: refused.
fn validate_result_cursor(id: &str) -> Result<()> {
    validate_stream_id("after", id)?;
    let ms = id.split('-').next().and_then(|ms| ms.parse::<u64>().ok());
    if ms.is_none_or(|ms| ms < 1_000_000_000_000) {
        return Err(Error::invalid(
            "after",
            format!("{id:?} is not a result id: pass the `next` of the previous page"),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_cursor_is_a_result_id_not_an_item_id() {
        assert!(validate_result_cursor("1764650000000-0").is_ok());
        for bad in ["1-5", "2-0", "999999999999-3", "abc", "1764650000000-x"] {
            assert!(validate_result_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_spawn_chunk_is_bounded_by_items_and_by_bytes() {
        let small = vec![vec![0u8; 10]; 3];
        assert_eq!(spawn_chunk(&small, 100), 100);
        assert_eq!(spawn_chunk(&small, 0), 1);
        assert_eq!(
            spawn_chunk(&small, usize::MAX),
            crate::bus::defaults::MAX_SPAWN_CHUNK
        );
        let big = vec![vec![0u8; 300 * 1024]; 3];
        assert_eq!(spawn_chunk(&big, 100), 3);
        assert_eq!(spawn_chunk(&[vec![0u8; SPAWN_CHUNK_BYTES]], 100), 1);
        assert_eq!(spawn_chunk(&[], 100), 100);
    }
}
