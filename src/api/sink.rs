//! `/api/v1/sink`: what the sink has still to mirror into Postgres — a
//! tenant's own outbox, or (admin token) every tenant's, a page at a time.

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::caller::Caller;
use super::query::{Query, query};
use super::{ApiError, ApiResult, AppState};
use crate::keys::TenantId;

query! {
    /// `GET /sink`
    pub struct StatusQuery {
        after: text("admin: the `next` of the previous page (a tenant id)"),
        limit: int<usize>(50, 1, 200),
    }
}

/// Events not yet mirrored, in flight to a sink, the oldest one's age and
/// those Postgres refused: the caller's tenant, or for the admin every
/// tenant in id order, `limit` a page.
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Json<Value>> {
    match caller {
        Caller::Tenant(t) => {
            let row = state.bus.tenant(&t).outbox_status().await?;
            Ok(Json(json!({ "outboxes": [row], "next": null })))
        }
        Caller::Admin => {
            let mut tenants: Vec<TenantId> = state.bus.tenants().await?;
            tenants.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            let start = match &q.after {
                Some(after) => tenants.partition_point(|t| t.as_str() <= after.as_str()),
                None => 0,
            };
            let page: Vec<TenantId> = tenants.iter().skip(start).take(q.limit).cloned().collect();
            let next = (start + page.len() < tenants.len())
                .then(|| page.last().map(|t| t.as_str().to_string()))
                .flatten();
            let rows = state
                .bus
                .outbox_status_of(&page)
                .await
                .map_err(ApiError::from)?;
            Ok(Json(json!({ "outboxes": rows, "next": next })))
        }
    }
}
