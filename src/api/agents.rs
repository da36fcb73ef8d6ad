//! `/api/v1/agents`: registry and messages, and `/jobs/{id}/broadcast`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::extract::{ApiJson, ApiPath, OptionalJson, path_uuid};
use super::query::{Query, query};
use super::{ApiError, ApiResult, AppState, Tenant};
use crate::agents::messages::{Message, MessageFilter, MessageStatus, OutgoingMessage};
use crate::agents::registry::{AgentFilter, AgentStatus, Instance, Registration};
use crate::error::Error;
use crate::keys::Ident;
use crate::payload::Payload;

pub(super) const MAX_WAIT_MS: u64 = 30_000;

fn instance(raw: &str) -> Result<Ident, ApiError> {
    Ok(Ident::new("instance_id", raw)?)
}

#[derive(Serialize)]
pub struct Registered {
    registered: bool,
    #[serde(flatten)]
    instance: Instance,
}

pub async fn register(
    Tenant(tenant): Tenant,
    ApiJson(reg): ApiJson<Registration>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    let instance = tenant.agents().register(&reg).await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            registered: true,
            instance,
        }),
    ))
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    #[serde(default)]
    status: Option<AgentStatus>,
}

pub async fn heartbeat(
    Tenant(tenant): Tenant,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<HeartbeatBody>,
) -> ApiResult<Json<Value>> {
    let id = instance(&id)?;
    let status = tenant.agents().heartbeat(&id, body.status).await?;
    Ok(Json(
        serde_json::json!({ "heartbeat": true, "instance_id": id, "status": status }),
    ))
}

pub async fn get_one(
    Tenant(tenant): Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(tenant.agents().get(&instance(&id)?).await?))
}

pub async fn deregister(
    Tenant(tenant): Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id = instance(&id)?;
    tenant.agents().deregister(&id).await?;
    Ok(Json(
        serde_json::json!({ "deregistered": true, "instance_id": id }),
    ))
}

/// The statuses an instance can be listed by.
pub const AGENT_STATUSES: &[&str] = &["starting", "running", "idle", "stopped", "stale"];

query! {
    /// `GET /agents`
    pub struct ListQuery {
        agent_id: ident(),
        job_id: uuid(),
        status: one_of(AGENT_STATUSES),
        inbox: one_of(&["true", "false"]),
        limit: int<usize>(100, 1, 1000),
    }
}

/// Instances, and with `inbox=true` each one's inbox depth (`inbox`:
/// messages kept, delivered but unread).
pub async fn list(Tenant(tenant): Tenant, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let filter = AgentFilter {
        agent_id: q.agent_id,
        job_id: q.job_id,
        status: q.status.as_deref().and_then(AgentStatus::parse),
    };
    let instances = tenant.agents().list(&filter, q.limit).await?;
    let mut listed = serde_json::to_value(&instances).map_err(|e| Error::Codec(e.to_string()))?;
    if q.inbox.as_deref() == Some("true") {
        let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
        let depths = tenant.messages().inbox_depths(&ids).await?;
        if let Value::Array(rows) = &mut listed {
            for (row, depth) in rows.iter_mut().zip(depths) {
                row["inbox"] = serde_json::json!(depth);
            }
        }
    }
    Ok(Json(
        serde_json::json!({ "count": instances.len(), "instances": listed }),
    ))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    from_instance_id: Ident,
    message_type: String,
    #[serde(default)]
    payload: Payload,
    #[serde(default)]
    job_id: Option<Uuid>,
    #[serde(default)]
    reply_to_id: Option<String>,
}

pub async fn send(
    Tenant(tenant): Tenant,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SendBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let to = instance(&id)?;
    let mut msg = OutgoingMessage::new(
        &body.from_instance_id,
        &to,
        &body.message_type,
        body.payload,
    );
    msg.job_id = body.job_id;
    msg.reply_to = body.reply_to_id;
    let sent = tenant.messages().send(&msg).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "sent": true,
            "message_id": sent.message_id,
            "entry_id": sent.entry_id,
        })),
    ))
}

/// Messages delivered by one receive.
#[derive(Serialize)]
pub struct Received {
    messages: Vec<Message>,
    count: usize,
}

#[derive(Serialize)]
pub struct MessagePage {
    messages: Vec<Message>,
    count: usize,
    /// Pass as `after` for the next page (a page also stops at
    /// `AGENTBUS_MAX_PAGE_BYTES` of entries).
    next: Option<String>,
}

query! {
    /// `GET /agents/{instance_id}/messages`
    pub struct MessagesQuery {
        status: one_of(&["pending", "delivered", "read"]),
        message_type: text("only messages of this type"),
        job_id: uuid(),
        since: time(),
        reply_to_id: text("only replies to this message (its message_id)"),
        after: text("the `next` of the previous page (an entry id)"),
        limit: int<usize>(100, 1, 500),
    }
}

pub async fn list_messages(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiPath(id): ApiPath<String>,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<Response> {
    let id = instance(&id)?;
    let filter = MessageFilter {
        status: q.status.as_deref().and_then(MessageStatus::parse),
        message_type: q.message_type,
        job_id: q.job_id,
        since: q.since,
        reply_to_id: q.reply_to_id,
    };
    let (limit, after) = (q.limit, q.after);
    Ok(state
        .heavy(async move {
            tenant
                .messages()
                .list(&id, &filter, after.as_deref(), limit)
                .await
                .map(|page| {
                    Json(MessagePage {
                        count: page.messages.len(),
                        messages: page.messages,
                        next: page.next,
                    })
                })
                .map_err(ApiError::from)
                .into_response()
        })
        .await)
}

query! {
    /// `POST /agents/{instance_id}/messages/receive`
    pub struct ReceiveQuery {
        count: int<usize>(10, 1, 500),
        wait_ms: int<u64>(0, 0, MAX_WAIT_MS),
    }
}

pub async fn receive(
    Tenant(tenant): Tenant,
    ApiPath(id): ApiPath<String>,
    Query(q): Query<ReceiveQuery>,
) -> ApiResult<Json<Received>> {
    let id = instance(&id)?;
    let (count, wait) = (q.count, q.wait_ms);
    let messages = tenant
        .messages()
        .receive(&id, count, Duration::from_millis(wait))
        .await?;
    Ok(Json(Received {
        count: messages.len(),
        messages,
    }))
}

pub async fn read(
    Tenant(tenant): Tenant,
    ApiPath((id, message_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = instance(&id)?;
    let acked = tenant.messages().ack(&id, &[message_id.as_str()]).await?;
    if acked == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no unread message {message_id} for {id}"),
        ));
    }
    Ok(Json(
        serde_json::json!({ "read": true, "message_id": message_id }),
    ))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    from_instance_id: Ident,
    #[serde(default = "broadcast_type")]
    message_type: String,
    #[serde(default)]
    payload: Payload,
}

fn broadcast_type() -> String {
    "broadcast".into()
}

pub async fn broadcast(
    Tenant(tenant): Tenant,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(body): ApiJson<BroadcastBody>,
) -> ApiResult<Json<Value>> {
    let job_id = path_uuid("job_id", &job_id)?;
    let sent = tenant
        .messages()
        .broadcast(
            &job_id,
            &body.from_instance_id,
            &body.message_type,
            body.payload,
        )
        .await?;
    Ok(Json(serde_json::json!({
        "sent": sent.recipients.len(),
        "recipients": sent.recipients,
        "broadcast_id": sent.id,
        "complete": sent.complete,
    })))
}
