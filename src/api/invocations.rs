//! `/api/v1/invocations`: invoke (long-poll), respond, and the audit trail.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{ApiJson, ApiPath, Params, path_uuid};
use super::{ApiError, ApiResult, AppState, Tenant};
use crate::agents::invoke::{Invocation, InvokeRequest, InvokeResult};
use crate::error::Error;
use crate::keys::Ident;
use crate::outbox::audit::{self, AuditFilter};
use crate::payload::Payload;

pub async fn invoke(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<InvokeRequest>,
) -> ApiResult<Json<InvokeResult>> {
    Ok(Json(state.bus.invoke(&tenant, &req).await?))
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
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(body): ApiJson<RespondBody>,
) -> ApiResult<Json<Value>> {
    let (status, duration_ms) = state
        .bus
        .respond(
            &tenant,
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
    match state.bus.invocation(&tenant, &invoke_id).await {
        Err(Error::NotFound(_)) => Ok(Json(
            audit::invocation(&state.db, &tenant, &invoke_id).await?,
        )),
        other => Ok(Json(other?)),
    }
}

#[derive(Serialize)]
pub struct InvocationPage {
    invocations: Vec<Invocation>,
    count: usize,
}

pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    params: Params,
) -> ApiResult<Json<InvocationPage>> {
    let status = params.text("status").map(str::to_string);
    if let Some(s) = &status
        && !["pending", "completed", "timeout", "failed"].contains(&s.as_str())
    {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "status",
            "one of pending, completed, timeout, failed",
        ));
    }
    let filter = AuditFilter {
        job_id: params
            .text("job_id")
            .map(|j| path_uuid("job_id", j))
            .transpose()?,
        caller: params
            .text("caller")
            .map(|c| Ident::new("caller", c).map(|i| i.to_string()))
            .transpose()?,
        status,
    };
    let limit = params.number("limit", 50i64, 1, 500)?;
    let offset = params.number("offset", 0i64, 0, 10_000_000)?;
    let invocations = audit::list(&state.db, &tenant, &filter, limit, offset).await?;
    Ok(Json(InvocationPage {
        count: invocations.len(),
        invocations,
    }))
}

pub async fn stats(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    params: Params,
) -> ApiResult<Json<Value>> {
    let since_hours = params.number("since_hours", 24i64, 1, 24 * 365)?;
    let by_status = audit::stats(&state.db, &tenant, since_hours).await?;
    Ok(Json(
        serde_json::json!({ "since_hours": since_hours, "by_status": by_status }),
    ))
}
