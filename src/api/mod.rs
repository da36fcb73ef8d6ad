//! The HTTP API (axum): routes, shared state, authentication, and the
//! mapping of library errors to JSON error responses.
//!
//! Every rejection is a JSON body `{"error": {"code", "message", "field"?}}`
//! with a 4xx status for bad input, so clients can tell which field to fix;
//! unknown routes and methods, bad paths and even a panicking handler answer
//! JSON too.

mod agents;
mod blackboard;
mod caller;
mod console;
mod credits;
mod dlq;
mod extract;
mod guard;
mod health;
mod invocations;
mod jobs;
mod openapi;
mod query;
mod routes;
mod settings;
mod sink;
mod tokens;

use std::sync::Arc;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use tracing::Instrument;

use crate::bus::AgentBus;
use crate::error::Error;
use crate::metrics;
use crate::money::Credits;

pub use extract::{Admin, Tenant};
pub use guard::Guard;
pub use routes::openapi_document;
use routes::v1_api;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Token allowed to grant credits and manage tokens; none disables admin calls.
    pub admin_token: Option<String>,
    /// Token that may read `/metrics` (besides the admin token).
    pub metrics_token: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Request bodies held at once across all requests; more wait their turn.
    pub max_inflight_body_bytes: usize,
    /// Time a client has to send a whole body.
    pub body_timeout: std::time::Duration,
    /// Requests per second per token (0: no limit), shared by all processes.
    pub rate_limit_per_sec: f64,
    /// Requests a token may send at once above its rate.
    pub rate_limit_burst: u32,
    /// Requests per token in flight at once in one process (0: no limit).
    pub concurrency_limit: usize,
    /// Failed authentications per minute from one client address (0: no limit).
    pub auth_failure_limit: u32,
    /// Heavy requests (see `guard`) handled at once; more wait their turn.
    pub max_heavy_requests: usize,
}

/// The default of every API limit, named once: `ApiConfig::default` and
/// the command line (`default_value_t`) both read these.
pub mod defaults {
    pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
    pub const MAX_INFLIGHT_BODY_BYTES: usize = 128 * 1024 * 1024;
    pub const BODY_TIMEOUT_SECS: u64 = 30;
    pub const RATE_LIMIT: f64 = 1000.0;
    pub const RATE_BURST: u32 = 2000;
    pub const CONCURRENCY_LIMIT: usize = 256;
    pub const AUTH_FAILURE_LIMIT: u32 = 30;
    pub const MAX_HEAVY_REQUESTS: usize = 16;
}

impl Default for ApiConfig {
    fn default() -> Self {
        use defaults as d;
        Self {
            admin_token: None,
            metrics_token: None,
            max_body_bytes: d::MAX_BODY_BYTES,
            max_inflight_body_bytes: d::MAX_INFLIGHT_BODY_BYTES,
            body_timeout: std::time::Duration::from_secs(d::BODY_TIMEOUT_SECS),
            rate_limit_per_sec: d::RATE_LIMIT,
            rate_limit_burst: d::RATE_BURST,
            concurrency_limit: d::CONCURRENCY_LIMIT,
            auth_failure_limit: d::AUTH_FAILURE_LIMIT,
            max_heavy_requests: d::MAX_HEAVY_REQUESTS,
        }
    }
}

/// What every handler shares, behind one reference count: the router
/// clones the state for each request (a route's layers and extractors), so
/// a clone is one atomic increment, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub bus: AgentBus,
    pub db: PgPool,
    pub config: Arc<ApiConfig>,
    /// Renders `/metrics` (none: the endpoint answers 404).
    pub metrics: Option<PrometheusHandle>,
    pub limiter: Arc<caller::ConcurrencyLimiter>,
    /// Failed authentications per client address.
    pub auth_failures: Arc<caller::FailureLimiter>,
    /// Bytes of request bodies in memory now (`max_inflight_body_bytes` permits, in KiB).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Heavy requests being handled now (`max_heavy_requests` permits).
    pub heavy: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(
        bus: AgentBus,
        db: PgPool,
        config: ApiConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let budget_kib =
            (config.max_inflight_body_bytes / 1024).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let config_heavy = config.max_heavy_requests;
        Self(Arc::new(Shared {
            bus,
            db,
            config: Arc::new(config),
            metrics,
            limiter: Arc::default(),
            auth_failures: Arc::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget_kib)),
            heavy: Arc::new(tokio::sync::Semaphore::new(
                config_heavy.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
        }))
    }
}

impl AppState {
    /// Runs a heavy request's work — one whose CPU grows with what it reads
    /// or computes, up to its limits: a large body's parse, a simulation, a
    /// page of results or messages, with its serialization — on the blocking
    /// pool, so the async workers stay free for every other request and the
    /// OS shares the cores. Called once the body has arrived (a slow client
    /// holds no slot) and never around a long-poll. At most
    /// `max_heavy_requests` at once, bounding their memory and threads;
    /// others wait up to the body timeout, then 503 `busy`.
    pub(crate) async fn heavy<F>(&self, work: F) -> Response
    where
        F: std::future::Future<Output = Response> + Send + 'static,
    {
        let wait = self.heavy.clone().acquire_owned();
        let Ok(Ok(_slot)) = tokio::time::timeout(self.config.body_timeout, wait).await else {
            return guard::busy("too many heavy requests at once; retry later");
        };
        let runtime = tokio::runtime::Handle::current();
        match tokio::task::spawn_blocking(move || runtime.block_on(work)).await {
            Ok(response) => response,
            // Raised again here, for the guard to answer and count.
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
                .into_response(),
            },
        }
    }
}

/// Bodies larger than this are parsed as heavy work ([`AppState::heavy`]).
pub(crate) const HEAVY_BODY_BYTES: usize = 64 * 1024;

/// The whole application: `/healthz`, `/readyz`, `/metrics` and `/api/v1/...`.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let (v1, document) = v1_api().finish();
    // Serialized once; each request clones a reference-counted buffer.
    let document = axum::body::Bytes::from(document.to_string());
    let v1 = v1
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            caller::authenticate,
        ))
        .route_layer(middleware::from_fn(track_request));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/console", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route(
            "/metrics",
            get(render_metrics).route_layer(middleware::from_fn_with_state(
                state.clone(),
                caller::metrics_reader,
            )),
        )
        .route(
            openapi::PATH,
            get(move || {
                let body = document.clone();
                std::future::ready(([(header::CONTENT_TYPE, "application/json")], body))
            }),
        )
        .nest("/api/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Only `/metrics`, without a token: for a listener of its own
/// (`AGENTBUS_METRICS_BIND`), e.g. on a private address.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// A span per API request (method, route), so what a handler logs says
/// which request it served, and the request's duration metric. The status
/// goes in the closing debug event, not the span: recording it would format
/// the span's fields a second time for every request.
async fn track_request(req: axum::extract::Request, next: middleware::Next) -> Response {
    let method = req.method().clone();
    // Cloning a MatchedPath clones an Arc, not the text.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let span = tracing::info_span!(
        "request",
        %method,
        route = route.as_ref().map_or("", |p| p.as_str()),
    );
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let took = started.elapsed();
    metrics::http_request(method.as_str(), status, took);
    tracing::debug!(parent: &span, status, latency_ms = took.as_secs_f64() * 1000.0, "request done");
    response
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled",
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The JSON body of every error response.
#[derive(Debug, Default, Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    required: Option<Credits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    available: Option<Credits>,
    /// A refused invocation: its audited id and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    invoke_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
    /// The current state of the resource a conflict is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<Box<RawValue>>,
}

/// An error response: status plus JSON body (and when to retry, for 429).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Box<ErrorBody>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn with(status: StatusCode, error: ErrorDetail) -> Self {
        Self {
            status,
            body: Box::new(ErrorBody {
                error,
                current: None,
            }),
            retry_after_secs: None,
        }
    }

    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::with(
            status,
            ErrorDetail {
                code,
                message: message.into(),
                ..Default::default()
            },
        )
    }

    /// Bad input in `field`.
    pub fn field(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        Self::with(
            status,
            ErrorDetail {
                code: "invalid",
                message: message.into(),
                field: Some(field.to_string()),
                ..Default::default()
            },
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let err = match err {
            Error::InvokeRefused {
                invoke_id,
                reason,
                source,
            } => {
                let mut api = ApiError::plain(*source);
                api.body.error.invoke_id = Some(invoke_id);
                api.body.error.reason = Some(reason);
                return api;
            }
            other => other,
        };
        ApiError::plain(err)
    }
}

impl ApiError {
    /// The response of an error that carries no other error inside it.
    fn plain(err: Error) -> Self {
        match err {
            Error::Invalid { field, reason } => {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, &field, reason)
            }
            Error::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            Error::InsufficientCredits {
                required,
                available,
            } => ApiError::with(
                StatusCode::PAYMENT_REQUIRED,
                ErrorDetail {
                    code: "insufficient_credits",
                    message: format!(
                        "insufficient credits: required {required}, available {available}"
                    ),
                    required: Some(required.into()),
                    available: Some(available.into()),
                    ..Default::default()
                },
            ),
            Error::Conflict { message, state } => ApiError {
                status: StatusCode::CONFLICT,
                body: Box::new(ErrorBody {
                    error: ErrorDetail {
                        code: "conflict",
                        message,
                        ..Default::default()
                    },
                    current: state,
                }),
                retry_after_secs: None,
            },
            e @ Error::LimitReached { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "limit_reached",
                e.to_string(),
            )
            .retry_after(60),
            Error::Unauthorized(why) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why)
            }
            Error::Forbidden(why) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", why),
            e @ (Error::Redis(_) | Error::Postgres(_) | Error::Timeout(_)) => {
                e.count_failure();
                tracing::warn!(error = %e, "backing service unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a backing service is unavailable; retry later",
                )
            }
            e => {
                tracing::error!(error = %e, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(value) = header::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
