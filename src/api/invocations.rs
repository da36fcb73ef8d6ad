//! `/api/v1/invocations`: invoke (long-poll), respond, and the audit trail.

use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{ApiJson, ApiPath};
use super::query::{Query, query};
use super::{ApiResult, AppState, Tenant};
use crate::agents::invoke::{Invocation, InvokeRequest, InvokeResult};
use crate::error::Error;
use crate::keys::Ident;
use crate::outbox::audit::{self, AuditFilter};
use crate::payload::Payload;

pub async fn invoke(
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<InvokeRequest>,
) -> ApiResult<Json<InvokeResult>> {
    Ok(Json(tenant.invocations().invoke(&req).await?))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondBody {
    invoke_id: String,
    #[serde(default)]
    response_payload: Payload,
    /// A target-reported error: the invocation ends as `failed`.
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    responder_instance_id: Option<Ident>,
}

pub async fn respond(
    Tenant(tenant): Tenant,
    ApiJson(body): ApiJson<RespondBody>,
) -> ApiResult<Json<Value>> {
    let (status, duration_ms) = tenant
        .invocations()
        .respond(
            &body.invoke_id,
            &body.response_payload,
            body.error.as_deref().filter(|e| !e.is_empty()),
            body.responder_instance_id.as_ref(),
        )
        .await?;
    Ok(Json(serde_json::json!({
        "responded": true,
        "invoke_id": body.invoke_id,
        "status": status,
        "duration_ms": duration_ms,
    })))
}

/// Live state from Redis while it is there, else the audit row in Postgres.
pub async fn get_one(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiPath(invoke_id): ApiPath<String>,
) -> ApiResult<Json<Invocation>> {
    match tenant.invocations().get(&invoke_id).await {
        Err(Error::NotFound(_)) => Ok(Json(
            audit::invocation(&state.db, tenant.id(), &invoke_id).await?,
        )),
        other => Ok(Json(other?)),
    }
}

#[derive(Serialize)]
pub struct InvocationPage {
    invocations: Vec<Invocation>,
    count: usize,
}

query! {
    /// `GET /invocations`
    pub struct ListQuery {
        status: one_of(&["pending", "completed", "timeout", "failed"]),
        job_id: uuid(),
        caller: ident(),
        limit: int<i64>(50, 1, 500),
        offset: int<i64>(0, 0, 10_000_000),
    }
}

pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<InvocationPage>> {
    let filter = AuditFilter {
        job_id: q.job_id,
        caller: q.caller.map(|c| c.to_string()),
        status: q.status,
    };
    let invocations = audit::list(&state.db, tenant.id(), &filter, q.limit, q.offset).await?;
    Ok(Json(InvocationPage {
        count: invocations.len(),
        invocations,
    }))
}

query! {
    /// `GET /invocations/stats`
    pub struct StatsQuery {
        since_hours: int<i64>(24, 1, 24 * 365),
    }
}

pub async fn stats(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(q): Query<StatsQuery>,
) -> ApiResult<Json<Value>> {
    let since_hours = q.since_hours;
    let by_status = audit::stats(&state.db, tenant.id(), since_hours).await?;
    Ok(Json(
        serde_json::json!({ "since_hours": since_hours, "by_status": by_status }),
    ))
}
