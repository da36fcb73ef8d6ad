//! `/api/v1/credits`: a tenant's balance, and grants by the admin.

use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;

use super::extract::ApiJson;
use super::{Admin, ApiResult, AppState, Tenant};
use crate::credits::{Balance, grant_context};
use crate::keys::TenantId;
use crate::money::Credits;

/// Served from the process's balance cache while Redis has not said the
/// balance changed (see [`crate::balance_cache`]).
pub async fn show(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
) -> ApiResult<Json<Balance>> {
    Ok(Json(state.bus.balance_cached(tenant.id()).await?))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    tenant: TenantId,
    amount: Credits,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn grant(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<GrantBody>,
) -> ApiResult<Json<Balance>> {
    let context = grant_context(&body.reason.unwrap_or_default(), "admin")?;
    // The admin names the tenant: the handle is scoped to it from here.
    let tenant = state.bus.tenant(&body.tenant);
    let balance = tenant.credits().grant(body.amount, context).await?;
    state.bus.forget_balance(&body.tenant);
    Ok(Json(balance))
}
