//! The guard every served request passes, awaited by the connection loop
//! around the router (no middleware layer or boxed future: it sits on the
//! path of every request):
//! - its share of the process-wide budget of body bytes
//!   (`max_inflight_body_bytes`), held until it is answered — while its
//!   body is read, parsed and handled — so the bodies in memory at once stay
//!   under the budget. A request announcing no length reserves the largest
//!   body allowed; one without a body reserves nothing. Past the body
//!   timeout without a share: 503 with `Retry-After`;
//! - a panic in a handler answers a JSON 500 and is counted; the process and
//!   every other request go on.

use std::sync::Arc;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::{ApiConfig, ApiError, AppState, extract};
use crate::metrics;

/// What the guard needs of the application's state.
#[derive(Clone)]
pub struct Guard {
    config: Arc<ApiConfig>,
    budget: Arc<Semaphore>,
}

impl Guard {
    pub fn new(state: &AppState) -> Self {
        Self {
            config: state.config.clone(),
            budget: state.body_budget.clone(),
        }
    }

    /// KiB of the body budget a request needs (0: it has no body).
    fn share_kib(&self, req: &Request) -> u32 {
        if req.body().size_hint().exact() == Some(0) {
            return 0;
        }
        let max = self.config.max_body_bytes;
        let bytes = extract::declared_length(req).unwrap_or(max).min(max);
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
    }

    /// Serves `req` with `app` inside the guard.
    pub async fn serve(&self, app: Router, req: Request) -> Response {
        let kib = self.share_kib(&req);
        let _share = if kib == 0 {
            None
        } else {
            let wait = self.budget.clone().acquire_many_owned(kib);
            match tokio::time::timeout(self.config.body_timeout, wait).await {
                Ok(Ok(share)) => Some(share),
                _ => return busy("too many request bodies in memory; retry later"),
            }
        };
        // Cheap to keep (reference-counted): only read when a handler panicked.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        match std::panic::AssertUnwindSafe(app.oneshot(req))
            .catch_unwind()
            .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => {
                metrics::http_panic();
                tracing::error!(%method, path = uri.path(), "handler panicked");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
                .into_response()
            }
        }
    }
}

pub(super) fn busy(message: &str) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        .retry_after(1)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_json_500_and_the_router_goes_on() {
        let state = AppState::new(
            crate::AgentBus::new(
                crate::conn::Redis::open("redis://127.0.0.1:1", Default::default())
                    .expect("a URL is enough; nothing connects"),
                crate::Keyspace::new("guard-test").expect("prefix"),
                Default::default(),
                Default::default(),
            ),
            crate::db::connect_lazy("postgres://nobody@127.0.0.1:1/none", 1).expect("lazy pool"),
            ApiConfig::default(),
            None,
        );
        let guard = Guard::new(&state);
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("handler bug");
                    }
                    "unreachable"
                }),
            )
            .route("/ok", get(|| async { "fine" }));
        let get_it = |uri: &str| {
            axum::http::Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let resp = guard.serve(app.clone(), get_it("/boom")).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(json["error"]["code"], "internal");
        let resp = guard.serve(app, get_it("/ok")).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
