//! `/api/v1/blackboard/{key}` (the original's flat endpoints, on the
//! `default` namespace) and `/api/v1/namespaces/{ns}/…` (everything else).

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{ApiJson, ApiPath, OptionalJson};
use super::query::{Query, query};
use super::{ApiError, ApiResult, Tenant};
use crate::blackboard::{
    Blackboard, Bound, CasOutcome, Fence, LockAction, LockOutcome, MAX_VALUE_BYTES,
};
use crate::keys::Ident;
use crate::payload::Payload;
use crate::tenant::TenantBus;

const DEFAULT_NAMESPACE: &str = "default";
/// Longest TTL accepted, in seconds (30 days).
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

fn board(tenant: &TenantBus, ns: &str) -> Result<Blackboard, ApiError> {
    let ns = Ident::new("namespace", ns)?;
    Ok(tenant.blackboard(&ns))
}

fn ttl(secs: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match secs {
        None => Ok(None),
        Some(s) if (1..=MAX_TTL_SECS).contains(&s) => Ok(Some(Duration::from_secs(s))),
        Some(_) => Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl",
            format!("seconds between 1 and {MAX_TTL_SECS}"),
        )),
    }
}

/// A value as the blackboard stores it: size checked on the text, before a
/// tree is built for it.
fn bb_value(field: &str, raw: &Payload) -> ApiResult<Value> {
    raw.check_size(field, MAX_VALUE_BYTES)?;
    Ok(raw.json())
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    value: Payload,
    /// Seconds until the entry expires.
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_TTL_SECS))]
    ttl: Option<u64>,
    #[serde(default)]
    fence: Option<Fence>,
}

async fn get_in(tenant: &TenantBus, ns: &str, key: String) -> ApiResult<Json<Value>> {
    let value = board(tenant, ns)?.get(&key).await?;
    Ok(Json(
        json!({ "key": key, "found": value.is_some(), "value": value }),
    ))
}

async fn put_in(
    tenant: &TenantBus,
    ns: &str,
    key: String,
    body: PutBody,
) -> ApiResult<Json<Value>> {
    let existed = board(tenant, ns)?
        .set(
            &key,
            &bb_value("value", &body.value)?,
            ttl(body.ttl)?,
            body.fence.as_ref(),
        )
        .await?;
    Ok(Json(
        json!({ "success": true, "key": key, "created": !existed }),
    ))
}

fn default_amount() -> Value {
    json!(1)
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IncrementBody {
    #[serde(default = "default_amount")]
    amount: Value,
    #[serde(default)]
    fence: Option<Fence>,
}

async fn increment_in(
    tenant: &TenantBus,
    ns: &str,
    key: String,
    body: IncrementBody,
) -> ApiResult<Json<Value>> {
    let amount = if body.amount.is_null() {
        json!(1)
    } else {
        body.amount
    };
    let value = board(tenant, ns)?
        .increment(&key, &amount, body.fence.as_ref())
        .await?;
    Ok(Json(json!({ "key": key, "value": value })))
}

fn default_lock_ttl() -> u64 {
    30
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockBody {
    holder: Ident,
    #[serde(default)]
    action: LockAction,
    #[serde(default = "default_lock_ttl")]
    ttl: u64,
}

async fn lock_in(
    tenant: &TenantBus,
    ns: &str,
    name: String,
    body: LockBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ttl = ttl(Some(body.ttl))?.unwrap_or(Duration::from_secs(30));
    let outcome = board(tenant, ns)?
        .lock(&name, body.action, &body.holder, ttl)
        .await?;
    let verb = match body.action {
        LockAction::Acquire => "acquired",
        LockAction::Release => "released",
        LockAction::Extend => "extended",
    };
    Ok(match outcome {
        LockOutcome::Ok { fencing_token } => (
            StatusCode::OK,
            Json(
                json!({ "action": body.action, verb: true, "holder": body.holder, "lock": name, "fencing_token": fencing_token }),
            ),
        ),
        LockOutcome::Held {
            holder,
            fencing_token,
        } => (
            StatusCode::CONFLICT,
            Json(
                json!({ "action": body.action, verb: false, "holder": holder, "lock": name, "fencing_token": fencing_token }),
            ),
        ),
        LockOutcome::NotHolder { holder } => (
            StatusCode::CONFLICT,
            Json(json!({ "action": body.action, verb: false, "holder": holder, "lock": name })),
        ),
    })
}

// The original flat endpoints, on the default namespace.

pub async fn get(Tenant(tenant): Tenant, ApiPath(key): ApiPath<String>) -> ApiResult<Json<Value>> {
    get_in(&tenant, DEFAULT_NAMESPACE, key).await
}

pub async fn put(
    Tenant(tenant): Tenant,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<PutBody>,
) -> ApiResult<Json<Value>> {
    put_in(&tenant, DEFAULT_NAMESPACE, key, body).await
}

pub async fn increment(
    Tenant(tenant): Tenant,
    ApiPath(key): ApiPath<String>,
    OptionalJson(body): OptionalJson<IncrementBody>,
) -> ApiResult<Json<Value>> {
    increment_in(&tenant, DEFAULT_NAMESPACE, key, body).await
}

pub async fn lock(
    Tenant(tenant): Tenant,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<LockBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    lock_in(&tenant, DEFAULT_NAMESPACE, name, body).await
}

// Namespaced endpoints.

pub async fn ns_get(
    Tenant(tenant): Tenant,
    ApiPath((ns, key)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    get_in(&tenant, &ns, key).await
}

pub async fn ns_put(
    Tenant(tenant): Tenant,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<PutBody>,
) -> ApiResult<Json<Value>> {
    put_in(&tenant, &ns, key, body).await
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    #[serde(default)]
    fence: Option<Fence>,
}

pub async fn ns_delete(
    Tenant(tenant): Tenant,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    OptionalJson(body): OptionalJson<DeleteBody>,
) -> ApiResult<Json<Value>> {
    let existed = board(&tenant, &ns)?
        .delete(&key, body.fence.as_ref())
        .await?;
    Ok(Json(json!({ "deleted": existed, "key": key })))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CasBody {
    /// The value expected now; `null` or absent means "no entry".
    #[serde(default)]
    expected: Option<Payload>,
    value: Payload,
    /// Seconds until the entry expires.
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_TTL_SECS))]
    ttl: Option<u64>,
    #[serde(default)]
    fence: Option<Fence>,
}

pub async fn ns_cas(
    Tenant(tenant): Tenant,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<CasBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let expected = match &body.expected {
        Some(e) => Some(bb_value("expected", e)?).filter(|v| !v.is_null()),
        None => None,
    };
    let value = bb_value("value", &body.value)?;
    let outcome = board(&tenant, &ns)?
        .compare_and_set(
            &key,
            expected.as_ref(),
            &value,
            ttl(body.ttl)?,
            body.fence.as_ref(),
        )
        .await?;
    Ok(match outcome {
        CasOutcome::Set => (StatusCode::OK, Json(json!({ "success": true, "key": key }))),
        CasOutcome::Mismatch { current } => (
            StatusCode::CONFLICT,
            Json(json!({ "success": false, "key": key, "current": current })),
        ),
    })
}

pub async fn ns_increment(
    Tenant(tenant): Tenant,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    OptionalJson(body): OptionalJson<IncrementBody>,
) -> ApiResult<Json<Value>> {
    increment_in(&tenant, &ns, key, body).await
}

pub async fn ns_lock(
    Tenant(tenant): Tenant,
    ApiPath((ns, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<LockBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    lock_in(&tenant, &ns, name, body).await
}

query! {
    /// `GET /namespaces/{ns}/keys`
    pub struct KeysQuery {
        prefix: text("only keys starting with this (the original's glob patterns, for a prefix)"),
        after: text("the key to continue after"),
        limit: int<usize>(100, 1, 1000),
    }
}

pub async fn ns_keys(
    Tenant(tenant): Tenant,
    ApiPath(ns): ApiPath<String>,
    Query(q): Query<KeysQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit;
    let entries = board(&tenant, &ns)?
        .keys_with_prefix(q.prefix.as_deref(), q.after.as_deref(), limit)
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.key.clone()))
        .flatten();
    Ok(Json(
        json!({ "count": entries.len(), "entries": entries, "next": next }),
    ))
}

query! {
    /// `GET /namespaces/{ns}/range`
    pub struct RangeQuery {
        min: text("lower bound: a number, `(number` for exclusive, or -inf"),
        max: text("upper bound: a number, `(number` for exclusive, or +inf"),
        offset: int<usize>(0, 0, 10_000_000),
        limit: int<usize>(100, 1, 1000),
    }
}

pub async fn ns_range(
    Tenant(tenant): Tenant,
    ApiPath(ns): ApiPath<String>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<Value>> {
    let min = Bound::parse("min", q.min.as_deref().unwrap_or("-inf"))?;
    let max = Bound::parse("max", q.max.as_deref().unwrap_or("+inf"))?;
    let (offset, limit) = (q.offset, q.limit);
    let entries = board(&tenant, &ns)?.range(min, max, offset, limit).await?;
    Ok(Json(json!({ "count": entries.len(), "entries": entries })))
}

query! {
    /// `GET /namespaces/{ns}/top`
    pub struct TopQuery {
        k: int<usize>(10, 1, 1000),
        order: one_of(&["desc", "asc"]),
    }
}

pub async fn ns_top(
    Tenant(tenant): Tenant,
    ApiPath(ns): ApiPath<String>,
    Query(q): Query<TopQuery>,
) -> ApiResult<Json<Value>> {
    let (k, descending) = (q.k, q.order.as_deref() != Some("asc"));
    let entries = board(&tenant, &ns)?.top(k, descending).await?;
    Ok(Json(json!({ "count": entries.len(), "entries": entries })))
}

pub async fn ns_aggregate(
    Tenant(tenant): Tenant,
    ApiPath(ns): ApiPath<String>,
) -> ApiResult<Json<crate::blackboard::Aggregate>> {
    Ok(Json(board(&tenant, &ns)?.aggregate().await?))
}

/// Most namespaces one listing names.
const MAX_NAMESPACES: usize = 1000;

/// The tenant's namespaces, in name order (the first 1,000).
pub async fn namespaces(Tenant(tenant): Tenant) -> ApiResult<Json<Value>> {
    let names = tenant.namespaces(MAX_NAMESPACES).await?;
    Ok(Json(json!({ "count": names.len(), "namespaces": names })))
}
