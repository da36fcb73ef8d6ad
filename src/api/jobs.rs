//! `/api/v1/jobs`: spawn, inspect, claim, complete, fail, cancel, results.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{ApiJson, OptionalJson, Params, from_value, path_uuid};
use super::{ApiError, ApiResult, AppState, Tenant};
use crate::jobs::{
    CancelOutcome, ClaimedItem, CompleteOutcome, FailOutcome, ItemResult, Job, JobPage, JobSpec,
    validate_stream_id,
};
use crate::simulate::{Simulation, StageSpec};

/// Longest a claim may long-poll.
pub(super) const MAX_WAIT_MS: u64 = 30_000;
pub(super) const MAX_CLAIM_COUNT: usize = 100;

pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    // Parsed from a value, exactly as simulate parses the same body.
    let spec: JobSpec = from_value(body, "")?;
    let job = state.bus.spawn_job(&tenant, &spec).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// The body of `POST /jobs/simulate`: a job's spec plus optional further stages.
// Only documents the body: `simulate` splits `stages` off by hand so that
// errors in the rest read exactly as those of `POST /jobs`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SimulateRequest {
    #[serde(flatten)]
    job: JobSpec,
    /// Further stages of work to estimate with the job.
    #[serde(default)]
    stages: Vec<StageSpec>,
}

/// `POST /jobs/simulate`: the body of `POST /jobs`, plus optional `stages`.
pub async fn simulate(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(mut body): ApiJson<Value>,
) -> ApiResult<Json<Simulation>> {
    let stages: Vec<StageSpec> = match body.as_object_mut().and_then(|o| o.remove("stages")) {
        Some(v) => from_value(v, "stages")?,
        None => Vec::new(),
    };
    let spec: JobSpec = from_value(body, "")?;
    Ok(Json(state.bus.simulate(&tenant, &spec, &stages).await?))
}

pub async fn get_one(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Job>> {
    let job_id = path_uuid("job_id", &job_id)?;
    Ok(Json(state.bus.job(&tenant, &job_id).await?))
}

pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    params: Params,
) -> ApiResult<Json<JobPage>> {
    let offset = params.number("offset", 0usize, 0, 1_000_000)?;
    let limit = params.number("limit", 50usize, 1, 200)?;
    Ok(Json(state.bus.list_jobs(&tenant, offset, limit).await?))
}

#[derive(Serialize)]
pub struct ClaimResponse {
    claimed: bool,
    #[serde(flatten)]
    first: Option<ClaimedItem>,
    /// Every item claimed (more than one when `count` > 1).
    items: Vec<ClaimedItem>,
}

pub async fn claim(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(job_id): Path<String>,
    params: Params,
) -> ApiResult<Json<ClaimResponse>> {
    let job_id = path_uuid("job_id", &job_id)?;
    let worker = params.text("worker_instance_id").ok_or_else(|| {
        ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "worker_instance_id",
            "required query parameter",
        )
    })?;
    let wait_ms = params.number("wait_ms", 0u64, 0, MAX_WAIT_MS)?;
    let count = params.number("count", 1usize, 1, MAX_CLAIM_COUNT)?;
    let items = state
        .bus
        .claim_items(
            &tenant,
            &job_id,
            worker,
            count,
            Duration::from_millis(wait_ms),
        )
        .await?;
    Ok(Json(ClaimResponse {
        claimed: !items.is_empty(),
        first: items.first().cloned(),
        items,
    }))
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    #[serde(default)]
    output: Value,
}

#[derive(Serialize)]
pub struct CompleteResponse {
    completed: bool,
    item_id: String,
    outcome: CompleteOutcome,
}

pub async fn complete(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((job_id, item_id)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<CompleteBody>,
) -> ApiResult<Json<CompleteResponse>> {
    let job_id = path_uuid("job_id", &job_id)?;
    validate_stream_id("item_id", &item_id)?;
    let outcome = state
        .bus
        .complete_items(&tenant, &job_id, &[(item_id.clone(), body.output)])
        .await?
        .into_iter()
        .next()
        .unwrap_or(CompleteOutcome::Invalid);
    match outcome {
        CompleteOutcome::Completed | CompleteOutcome::Duplicate => Ok(Json(CompleteResponse {
            completed: outcome == CompleteOutcome::Completed,
            item_id,
            outcome,
        })),
        CompleteOutcome::Stale => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale",
            "this delivery is no longer held (it timed out and was re-delivered)",
        )),
        CompleteOutcome::Invalid => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("item {item_id} not found in job {job_id}"),
        )),
    }
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    #[serde(default)]
    error_message: String,
    #[serde(default = "default_true")]
    retry: bool,
}

impl Default for FailBody {
    fn default() -> Self {
        Self {
            error_message: String::new(),
            retry: true,
        }
    }
}

#[derive(Serialize)]
pub struct FailResponse {
    /// True when the item failed for good (no attempt left or no retry asked).
    failed: bool,
    item_id: String,
    #[serde(flatten)]
    outcome: FailOutcome,
}

/// Longest error message kept.
const MAX_ERROR_LEN: usize = 4096;

pub async fn fail(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((job_id, item_id)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<FailBody>,
) -> ApiResult<Json<FailResponse>> {
    let job_id = path_uuid("job_id", &job_id)?;
    validate_stream_id("item_id", &item_id)?;
    if body.error_message.len() > MAX_ERROR_LEN {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "error_message",
            format!("at most {MAX_ERROR_LEN} bytes"),
        ));
    }
    let outcome = state
        .bus
        .fail_item(&tenant, &job_id, &item_id, &body.error_message, body.retry)
        .await?;
    match outcome {
        FailOutcome::Stale => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale",
            "this delivery is no longer held (it timed out and was re-delivered)",
        )),
        FailOutcome::Invalid => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("item {item_id} not found in job {job_id}"),
        )),
        _ => Ok(Json(FailResponse {
            failed: outcome == FailOutcome::Failed,
            item_id,
            outcome,
        })),
    }
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    cancelled_by: Option<String>,
}

pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(job_id): Path<String>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> ApiResult<Json<CancelOutcome>> {
    let job_id = path_uuid("job_id", &job_id)?;
    let reason = body.reason.unwrap_or_default();
    let by = body.cancelled_by.unwrap_or_else(|| "api".into());
    for (field, value) in [("reason", &reason), ("cancelled_by", &by)] {
        if value.len() > 1024 {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                field,
                "at most 1024 bytes",
            ));
        }
    }
    Ok(Json(
        state.bus.cancel_job(&tenant, &job_id, &by, &reason).await?,
    ))
}

#[derive(Serialize)]
pub struct ResultsPage {
    results: Vec<ItemResult>,
    count: usize,
    /// Pass as `after` to get the next page.
    next: Option<String>,
}

pub async fn results(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(job_id): Path<String>,
    params: Params,
) -> ApiResult<Json<ResultsPage>> {
    let job_id = path_uuid("job_id", &job_id)?;
    let limit = params.number("limit", 100usize, 1, 1000)?;
    let results = state
        .bus
        .job_results(&tenant, &job_id, params.text("after"), limit)
        .await?;
    Ok(Json(ResultsPage {
        count: results.len(),
        next: (results.len() == limit)
            .then(|| results.last().map(|r| r.result_id.clone()))
            .flatten(),
        results,
    }))
}
