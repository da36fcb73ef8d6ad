//! Who is calling: every `/api/v1` request is authenticated here, once.
//!
//! The admin token (compared in constant time) marks an admin call; any
//! other bearer token must be a tenant's (`auth::authenticate`), and then
//! passes that token's rate limit (a GCRA in Redis, shared by every agentbus
//! process) and concurrency limit (in-flight requests, per process). Refusals
//! are 401 (no or unknown token) and 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, AppState};
use crate::auth::secure_eq;
use crate::error::Error;
use crate::keys::TenantId;

/// The authenticated caller, put in the request's extensions.
#[derive(Clone, Debug)]
pub enum Caller {
    Admin,
    Tenant(TenantId),
}

/// In-flight requests per token (this process).
#[derive(Default)]
pub struct ConcurrencyLimiter {
    per_token: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl ConcurrencyLimiter {
    fn try_acquire(&self, token_id: &str, limit: usize) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut map = self.per_token.lock().unwrap_or_else(|p| p.into_inner());
            // Forget idle tokens now and then, so the map stays as small as the active set.
            if map.len() > 10_000 {
                map.retain(|_, s| s.available_permits() < limit);
            }
            map.entry(token_id.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn too_many(message: &str, retry_after_secs: u64) -> Response {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        .retry_after(retry_after_secs.max(1))
        .into_response()
}

/// The authentication and limits middleware of `/api/v1`.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Some(token) = bearer(&parts).map(str::to_string) else {
        return ApiError::from(Error::Unauthorized("missing bearer token")).into_response();
    };
    let config = &state.config;
    if let Some(admin) = &config.admin_token
        && secure_eq(admin, &token)
    {
        parts.extensions.insert(Caller::Admin);
        return next.run(Request::from_parts(parts, body)).await;
    }
    let (tenant, token_id) = match state.bus.authenticate_with_id(&token).await {
        Ok(found) => found,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if config.rate_limit_per_sec > 0.0 {
        match state
            .bus
            .rate_limit(
                &token_id,
                config.rate_limit_per_sec,
                config.rate_limit_burst,
            )
            .await
        {
            Ok(None) => {}
            Ok(Some(wait)) => {
                return too_many(
                    "request rate limit of this token reached",
                    wait.as_secs_f64().ceil() as u64,
                );
            }
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let _permit = if config.concurrency_limit > 0 {
        match state
            .limiter
            .try_acquire(&token_id, config.concurrency_limit)
        {
            Some(p) => Some(p),
            None => return too_many("too many requests of this token in flight", 1),
        }
    } else {
        None
    };
    parts.extensions.insert(Caller::Tenant(tenant));
    next.run(Request::from_parts(parts, body)).await
}
