//! `/api/v1/tokens` (admin only): create, list, rotate and revoke tenant
//! tokens. A token's secret is shown once, at creation or rotation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{ApiJson, ApiPath};
use super::query::{Query, query};
use super::{Admin, ApiResult, AppState};
use crate::auth::{NewToken, TokenInfo};
use crate::keys::{self, TenantId};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    tenant: TenantId,
}

pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.bus.create_token(&body.tenant).await?),
    ))
}

query! {
    /// `GET /tokens`
    pub struct ListQuery {
        tenant: tenant(),
    }
}

pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let tenant = q.tenant;
    let tokens: Vec<TokenInfo> = state
        .bus
        .list_tokens(tenant.as_ref())
        .await?
        .into_iter()
        .map(TokenInfo::from)
        .collect();
    Ok(Json(json!({ "count": tokens.len(), "tokens": tokens })))
}

pub async fn rotate(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(token_id): ApiPath<String>,
) -> ApiResult<Json<NewToken>> {
    keys::validate_id("token_id", &token_id, 64)?;
    Ok(Json(state.bus.rotate_token(&token_id).await?))
}

pub async fn revoke(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(token_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    keys::validate_id("token_id", &token_id, 64)?;
    state.bus.revoke_token(&token_id).await?;
    Ok(Json(json!({ "revoked": true, "token_id": token_id })))
}
