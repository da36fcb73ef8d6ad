//! `/api/v1/jobs`: spawn, inspect, claim, complete, fail, cancel, results.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::extract::{
    ApiJson, ApiPath, OptionalJson, RawJson, parse_json, parse_json_at, path_uuid,
};
use super::query::{Query, query};
use super::{ApiError, ApiResult, AppState, HEAVY_BODY_BYTES, Tenant};
use crate::bounded;
use crate::jobs::{
    CancelOutcome, ClaimedItem, CompleteOutcome, FailOutcome, ItemResult, Job, JobPage, JobSpec,
    validate_stream_id,
};
use crate::payload::Payload;
use crate::simulate::{MAX_STAGES, Simulation, StageSpec};
use crate::tenant::TenantBus;

/// Longest a claim may long-poll.
pub(super) const MAX_WAIT_MS: u64 = 30_000;
pub(super) const MAX_CLAIM_COUNT: usize = 100;

pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    RawJson(body): RawJson,
) -> Response {
    async fn spawn(state: AppState, tenant: TenantBus, body: Bytes) -> Response {
        let spawned = async {
            let spec = parse_spec(&state, &body)?;
            let job = tenant.jobs().spawn(&spec).await?;
            ApiResult::Ok((StatusCode::CREATED, Json(job)))
        };
        spawned.await.into_response()
    }
    if body.len() > HEAVY_BODY_BYTES {
        state.clone().heavy(spawn(state, tenant, body)).await
    } else {
        spawn(state, tenant, body).await
    }
}

/// A job's spec from JSON text, items counted while they are parsed.
fn parse_spec(state: &AppState, body: &[u8]) -> ApiResult<JobSpec> {
    bounded::with_item_limit(state.bus.limits().max_items, || parse_json(body))
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
    /// Further stages of work to estimate with the job (at most 200).
    #[serde(default)]
    #[schemars(length(max = MAX_STAGES))]
    stages: Vec<StageSpec>,
}

/// `POST /jobs/simulate`: the body of `POST /jobs`, plus optional `stages`.
pub async fn simulate(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    RawJson(body): RawJson,
) -> Response {
    let work = state.clone();
    state
        .heavy(async move { simulate_now(&work, &tenant, &body).await.into_response() })
        .await
}

async fn simulate_now(
    state: &AppState,
    tenant: &TenantBus,
    body: &[u8],
) -> ApiResult<Json<Simulation>> {
    // Top-level fields kept as text (no tree): `stages` is split off, the
    // rest is parsed exactly as `POST /jobs` parses it.
    let TopLevel(fields) = parse_json(body)?;
    let mut stages = Vec::new();
    let mut rest = String::from("{");
    for (name, raw) in &fields {
        if name == "stages" {
            stages = parse_stages(raw.get())?;
            continue;
        }
        if rest.len() > 1 {
            rest.push(',');
        }
        rest.push_str(
            &serde_json::to_string(name)
                .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "body", e.to_string()))?,
        );
        rest.push(':');
        rest.push_str(raw.get());
    }
    rest.push('}');
    let spec = parse_spec(state, rest.as_bytes())?;
    Ok(Json(tenant.jobs().simulate(&spec, &stages).await?))
}

/// The top-level fields of a JSON object as text, in order; a field given
/// twice is refused (as `POST /jobs` refuses it) instead of the last winning.
struct TopLevel(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = TopLevel;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel, A::Error> {
                let mut fields: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    // A job spec has a dozen fields: more is not one (and the
                    // duplicate check stays cheap).
                    if fields.len() == 64 {
                        return Err(serde::de::Error::custom("at most 64 top-level fields"));
                    }
                    if fields.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate field `{name}`"
                        )));
                    }
                    fields.push((name, map.next_value()?));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

fn parse_stages(text: &str) -> ApiResult<Vec<StageSpec>> {
    #[derive(serde::Deserialize)]
    #[serde(transparent)]
    struct Stages(#[serde(deserialize_with = "bounded::vec::<_, _, MAX_STAGES>")] Vec<StageSpec>);
    parse_json_at::<Stages>(text.as_bytes(), "stages").map(|s| s.0)
}

pub async fn get_one(
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
) -> ApiResult<Json<Job>> {
    let job_id = path_uuid("job_id", &job_id)?;
    Ok(Json(tenant.jobs().get(&job_id).await?))
}

query! {
    /// `GET /jobs`
    pub struct ListQuery {
        offset: int<usize>(0, 0, 1_000_000),
        limit: int<usize>(50, 1, 200),
    }
}

pub async fn list(Tenant(tenant): Tenant, Query(q): Query<ListQuery>) -> ApiResult<Json<JobPage>> {
    Ok(Json(tenant.jobs().list(q.offset, q.limit).await?))
}

#[derive(Serialize)]
pub struct ClaimResponse {
    claimed: bool,
    #[serde(flatten)]
    first: Option<ClaimedItem>,
    /// Every item claimed (more than one when `count` > 1).
    items: Vec<ClaimedItem>,
}

query! {
    /// `POST /jobs/{job_id}/claim`
    pub struct ClaimQuery {
        worker_instance_id: required_ident("the claiming worker"),
        wait_ms: int<u64>(0, 0, MAX_WAIT_MS),
        count: int<usize>(1, 1, MAX_CLAIM_COUNT),
    }
}

pub async fn claim(
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
    Query(q): Query<ClaimQuery>,
) -> ApiResult<Json<ClaimResponse>> {
    let job_id = path_uuid("job_id", &job_id)?;
    let (worker, wait_ms, count) = (q.worker_instance_id.as_str(), q.wait_ms, q.count);
    let items = tenant
        .jobs()
        .claim(&job_id, worker, count, Duration::from_millis(wait_ms))
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
    output: Payload,
}

#[derive(Serialize)]
pub struct CompleteResponse {
    completed: bool,
    item_id: String,
    outcome: CompleteOutcome,
}

pub async fn complete(
    Tenant(tenant): Tenant,
    ApiPath((job_id, item_id)): ApiPath<(String, String)>,
    OptionalJson(body): OptionalJson<CompleteBody>,
) -> ApiResult<Json<CompleteResponse>> {
    let job_id = path_uuid("job_id", &job_id)?;
    validate_stream_id("item_id", &item_id)?;
    let outcome = tenant
        .jobs()
        .complete(&job_id, &[(item_id.clone(), body.output)])
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
            "this delivery is no longer held: it timed out, or failed and was retried, and the item was delivered again (its item_index stays; the new delivery has a new item_id)",
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

/// Most items one batch call completes or fails.
pub const MAX_BATCH_ITEMS: usize = 1000;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchComplete {
    item_id: String,
    #[serde(default)]
    output: Payload,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCompleteBody {
    /// At most 1,000 deliveries, each completed as by the one-item call.
    items: Vec<BatchComplete>,
}

/// Completes many deliveries of a job in one call (two calls per batch
/// for an HTTP worker: claim, then this). Each item's outcome is as the
/// one-item call's: `completed`, `duplicate` (nothing charged), `stale`
/// or `invalid` — per item, never failing the others.
pub async fn complete_batch(
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(body): ApiJson<BatchCompleteBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let job_id = path_uuid("job_id", &job_id)?;
    batch_size("items", body.items.len())?;
    for (i, item) in body.items.iter().enumerate() {
        validate_stream_id(&format!("items[{i}].item_id"), &item.item_id)?;
    }
    let (ids, outputs): (Vec<String>, Vec<(String, Payload)>) = body
        .items
        .into_iter()
        .map(|i| (i.item_id.clone(), (i.item_id, i.output)))
        .unzip();
    let outcomes = tenant.jobs().complete_batch(&job_id, &outputs).await?;
    let completed = outcomes
        .iter()
        .filter(|o| **o == CompleteOutcome::Completed)
        .count();
    let results: Vec<serde_json::Value> = ids
        .iter()
        .zip(&outcomes)
        .map(|(id, outcome)| serde_json::json!({ "item_id": id, "outcome": outcome }))
        .collect();
    Ok(Json(
        serde_json::json!({ "completed": completed, "results": results }),
    ))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchFail {
    item_id: String,
    #[serde(default)]
    error_message: String,
    #[serde(default = "default_true")]
    retry: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchFailBody {
    /// At most 1,000 deliveries, each failed as by the one-item call.
    items: Vec<BatchFail>,
}

/// Fails many deliveries of a job in one call; each item's outcome as the
/// one-item call's (`retried` with its attempt, `failed`, `duplicate`,
/// `stale`, `invalid`).
pub async fn fail_batch(
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(body): ApiJson<BatchFailBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let job_id = path_uuid("job_id", &job_id)?;
    batch_size("items", body.items.len())?;
    for (i, item) in body.items.iter().enumerate() {
        validate_stream_id(&format!("items[{i}].item_id"), &item.item_id)?;
        if item.error_message.len() > MAX_ERROR_LEN {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("items[{i}].error_message"),
                format!("at most {MAX_ERROR_LEN} bytes"),
            ));
        }
    }
    let mut results = Vec::with_capacity(body.items.len());
    for item in &body.items {
        let outcome = tenant
            .jobs()
            .fail(&job_id, &item.item_id, &item.error_message, item.retry)
            .await?;
        let mut v = serde_json::to_value(outcome).unwrap_or_default();
        v["item_id"] = serde_json::json!(item.item_id);
        results.push(v);
    }
    Ok(Json(serde_json::json!({ "results": results })))
}

fn batch_size(field: &str, n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_BATCH_ITEMS {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
            format!("1 to {MAX_BATCH_ITEMS} items"),
        ));
    }
    Ok(())
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

query! {
    /// `POST /jobs/{job_id}/release` and `…/items/{item_id}/release`
    pub struct ReleaseQuery {
        worker_instance_id: required_ident("the worker giving the items back"),
    }
}

/// Gives back one delivery the worker holds: it goes out again at once.
pub async fn release_one(
    Tenant(tenant): Tenant,
    ApiPath((job_id, item_id)): ApiPath<(String, String)>,
    Query(q): Query<ReleaseQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let job_id = path_uuid("job_id", &job_id)?;
    validate_stream_id("item_id", &item_id)?;
    let worker = q.worker_instance_id.as_str();
    let released = tenant
        .jobs()
        .release(&job_id, worker, std::slice::from_ref(&item_id))
        .await?;
    if released.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale",
            format!(
                "{worker} does not hold delivery {item_id}: it was completed, failed, timed out or is another worker's"
            ),
        ));
    }
    Ok(Json(
        serde_json::json!({ "released": true, "item_id": item_id }),
    ))
}

/// Gives back every delivery the worker holds (a worker shutting down).
pub async fn release_all(
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
    Query(q): Query<ReleaseQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let job_id = path_uuid("job_id", &job_id)?;
    let released = tenant
        .jobs()
        .release(&job_id, q.worker_instance_id.as_str(), &[])
        .await?;
    Ok(Json(
        serde_json::json!({ "released": released.len(), "item_ids": released }),
    ))
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
    Tenant(tenant): Tenant,
    ApiPath((job_id, item_id)): ApiPath<(String, String)>,
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
    let outcome = tenant
        .jobs()
        .fail(&job_id, &item_id, &body.error_message, body.retry)
        .await?;
    match outcome {
        FailOutcome::Stale => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale",
            "this delivery is no longer held: it timed out, or failed and was retried, and the item was delivered again (its item_index stays; the new delivery has a new item_id)",
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
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> ApiResult<Json<CancelOutcome>> {
    let job_id = path_uuid("job_id", &job_id)?;
    let reason = body.reason.unwrap_or_default();
    let by = body.cancelled_by.unwrap_or_else(|| "api".into());
    Ok(Json(tenant.jobs().cancel(&job_id, &by, &reason).await?))
}

#[derive(Serialize)]
pub struct ResultsPage {
    results: Vec<ItemResult>,
    count: usize,
    /// Pass as `after` to get the next page (absent at the end; a page also
    /// stops at `AGENTBUS_MAX_PAGE_BYTES` of outputs).
    next: Option<String>,
}

query! {
    /// `GET /jobs/{job_id}/results`
    pub struct ResultsQuery {
        after: text("the `next` of the previous page: a result id (`<ms>-<n>`); an item id is refused"),
        limit: int<usize>(100, 1, 1000),
        order: one_of(&["asc", "desc"]),
    }
}

pub async fn results(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
    Query(q): Query<ResultsQuery>,
) -> ApiResult<Response> {
    let job_id = path_uuid("job_id", &job_id)?;
    let (limit, after) = (q.limit, q.after);
    // `desc`: newest first (the most recent results), `next` going back.
    let newest_first = q.order.as_deref() == Some("desc");
    Ok(state
        .heavy(async move {
            let page = tenant
                .jobs()
                .results_in(&job_id, after.as_deref(), limit, newest_first)
                .await;
            page.map(|page| {
                Json(ResultsPage {
                    count: page.results.len(),
                    next: page.next,
                    results: page.results,
                })
            })
            .map_err(ApiError::from)
            .into_response()
        })
        .await)
}
