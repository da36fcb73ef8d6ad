//! Who is calling: every `/api/v1` request is authenticated here, once.
//!
//! The admin token (compared in constant time) marks an admin call; any
//! other bearer token must be a tenant's (`auth::authenticate`), and then
//! passes that token's rate limit (a GCRA in Redis, shared by every agentbus
//! process) and concurrency limit (in-flight requests, per process). Refusals
//! are 401 (no or unknown token) and 429 with `Retry-After`. Failed
//! authentications are limited per client address, and `/metrics` has its
//! own token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
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

/// Failed authentications per client address (this process): a token
/// bucket of `limit` per minute. Past it, the address gets 429 before its
/// token is even looked at, so guessing costs a minute per `limit` tries.
#[derive(Default)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Addresses remembered at most; full buckets are forgotten first.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl FailureLimiter {
    fn refill(entry: &mut (f64, Instant), limit: u32, now: Instant) {
        let per_sec = f64::from(limit) / 60.0;
        entry.0 =
            (entry.0 + now.duration_since(entry.1).as_secs_f64() * per_sec).min(f64::from(limit));
        entry.1 = now;
    }

    /// Seconds until `ip` may try again, when it has used up its failures.
    pub fn blocked_for(&self, ip: IpAddr, limit: u32) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get_mut(&ip)?;
        Self::refill(entry, limit, now);
        (entry.0 < 1.0).then(|| ((1.0 - entry.0) * 60.0 / f64::from(limit)).ceil() as u64)
    }

    /// Counts one failed authentication of `ip`.
    pub fn failed(&self, ip: IpAddr, limit: u32) {
        if limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, e| {
                Self::refill(e, limit, now);
                e.0 < f64::from(limit)
            });
            if map.len() >= MAX_TRACKED_ADDRESSES {
                // Every tracked address is failing: keep the newest half.
                let cut = map.len() / 2;
                let mut ages: Vec<Instant> = map.values().map(|e| e.1).collect();
                ages.sort_unstable();
                let before = ages[cut];
                map.retain(|_, e| e.1 >= before);
            }
        }
        let entry = map.entry(ip).or_insert((f64::from(limit), now));
        Self::refill(entry, limit, now);
        entry.0 -= 1.0;
    }
}

/// The client's address, when the request came over a real connection.
fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// The header with which the admin token reads one tenant's data (the
/// console's view of every tenant): `GET` requests only, as that tenant.
pub const READ_AS_HEADER: &str = "x-agentbus-tenant";

/// The tenant an admin request reads as, if it names one: refused for
/// anything but `GET` (writes need the tenant's own token) and for a
/// malformed tenant id.
fn admin_reading_as(parts: &Parts) -> Result<Option<TenantId>, ApiError> {
    let Some(value) = parts.headers.get(READ_AS_HEADER) else {
        return Ok(None);
    };
    if parts.method != axum::http::Method::GET {
        return Err(Error::Forbidden(
            "the admin token reads as a tenant (X-Agentbus-Tenant) with GET only; writes need the tenant's token",
        )
        .into());
    }
    let name = value.to_str().map_err(|_| {
        ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            READ_AS_HEADER,
            "must be a tenant id",
        )
    })?;
    TenantId::new(name).map(Some).map_err(|e| {
        ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            READ_AS_HEADER,
            e.to_string(),
        )
    })
}

fn too_many(message: &str, retry_after_secs: u64) -> Response {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        .retry_after(retry_after_secs.max(1))
        .into_response()
}

/// Refuses (401, counted against the address) or, past the address's
/// failure limit, 429 before looking at the token.
fn refuse(state: &AppState, ip: Option<IpAddr>, err: Error) -> Response {
    if let Error::Unauthorized(_) = err {
        crate::metrics::auth_failed();
        if let Some(ip) = ip {
            state
                .auth_failures
                .failed(ip, state.config.auth_failure_limit);
        }
    }
    ApiError::from(err).into_response()
}

fn check_address(state: &AppState, ip: Option<IpAddr>) -> Option<Response> {
    let wait = state
        .auth_failures
        .blocked_for(ip?, state.config.auth_failure_limit)?;
    Some(too_many(
        "too many failed authentications from this address",
        wait,
    ))
}

/// `/metrics` on the API listener: the metrics token or the admin token.
pub async fn metrics_reader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let ip = client_ip(&parts);
    if let Some(refused) = check_address(&state, ip) {
        return refused;
    }
    let config = &state.config;
    let allowed = bearer(&parts).is_some_and(|token| {
        [&config.metrics_token, &config.admin_token]
            .into_iter()
            .flatten()
            .any(|secret| secure_eq(secret, token))
    });
    if !allowed {
        return refuse(
            &state,
            ip,
            Error::Unauthorized("metrics need AGENTBUS_METRICS_TOKEN (or the admin token)"),
        );
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The authentication and limits middleware of `/api/v1`.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let ip = client_ip(&parts);
    if let Some(refused) = check_address(&state, ip) {
        return refused;
    }
    let Some(token) = bearer(&parts).map(str::to_string) else {
        return refuse(&state, ip, Error::Unauthorized("missing bearer token"));
    };
    let config = &state.config;
    if let Some(admin) = &config.admin_token
        && secure_eq(admin, &token)
    {
        let caller = match admin_reading_as(&parts) {
            Ok(Some(tenant)) => Caller::Tenant(tenant),
            Ok(None) => Caller::Admin,
            Err(e) => return e.into_response(),
        };
        parts.extensions.insert(caller);
        return next.run(Request::from_parts(parts, body)).await;
    }
    let (tenant, token_id) = match state.bus.authenticate_with_id(&token).await {
        Ok(found) => found,
        Err(e) => return refuse(&state, ip, e),
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
    // A request that may move credits drops the tenant's cached balance
    // before it answers: its client reads its own change next.
    let writes = !matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let forget = writes.then(|| tenant.clone());
    parts.extensions.insert(Caller::Tenant(tenant));
    let response = next.run(Request::from_parts(parts, body)).await;
    if let Some(tenant) = forget {
        state.bus.forget_balance(&tenant);
    }
    response
}
