//! `/api/v1/dlq`: the tenant's dead letters, and their replay.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::ApiPath;
use super::query::{Query, query};
use super::{ApiError, ApiResult, AppState, Tenant};
use crate::jobs::validate_stream_id;

/// Most dead letters one page carries: each may hold a payload of up to
/// `AGENTBUS_MAX_PAYLOAD_BYTES`, so pages stay short (and are heavy work).
const MAX_DLQ_PAGE: usize = 50;

query! {
    /// `GET /dlq`
    pub struct ListQuery {
        after: text("the `next` of the previous page (a dead letter's entry_id)"),
        limit: int<usize>(20, 1, MAX_DLQ_PAGE),
    }
}

/// Dead letters, oldest first: items past their retries and messages
/// delivered too often, with the reason and the attempts.
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let (after, limit) = (q.after, q.limit);
    Ok(state
        .heavy(async move {
            match tenant
                .messages()
                .dead_letters(after.as_deref(), limit)
                .await
            {
                Ok(letters) => {
                    let next = (letters.len() == limit)
                        .then(|| letters.last().map(|l| l.entry_id.clone()))
                        .flatten();
                    Json(json!({ "count": letters.len(), "dead_letters": letters, "next": next }))
                        .into_response()
                }
                Err(e) => ApiError::from(e).into_response(),
            }
        })
        .await)
}

/// Replays one dead letter, once: a message back to its inbox, an item of
/// a live job as a new attempt (its price reserved again).
pub async fn replay(
    Tenant(tenant): Tenant,
    ApiPath(entry_id): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    validate_stream_id("entry_id", &entry_id)?;
    let new_id = tenant.messages().replay_dead_letter(&entry_id).await?;
    Ok(Json(
        json!({ "replayed": true, "entry_id": entry_id, "new_entry_id": new_id }),
    ))
}
