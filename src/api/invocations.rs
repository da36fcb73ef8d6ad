//! `/api/v1/invocations`: invoke (long-poll), respond, and the audit trail.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;

use super::extract::ApiJson;
use super::{ApiResult, AppState, Tenant};
use crate::invoke::{Invocation, InvokeRequest, InvokeResult};
use crate::keys::Ident;

pub async fn invoke(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(req): ApiJson<InvokeRequest>,
) -> ApiResult<Json<InvokeResult>> {
    Ok(Json(state.bus.invoke(&tenant, &req).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondBody {
    invoke_id: String,
    #[serde(default)]
    response_payload: Value,
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

pub async fn get_one(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(invoke_id): Path<String>,
) -> ApiResult<Json<Invocation>> {
    Ok(Json(state.bus.invocation(&tenant, &invoke_id).await?))
}
