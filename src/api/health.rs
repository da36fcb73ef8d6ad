//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`:
//! Redis and Postgres answer, else 503 with the reason).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::db;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (redis, postgres) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.bus.redis().ping()),
        tokio::time::timeout(CHECK_TIMEOUT, db::ping(&state.db)),
    );
    let describe = |r: Result<crate::error::Result<()>, _>| match r {
        Ok(Ok(())) => (true, "ok".to_string()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, "timed out".to_string()),
    };
    let (redis_ok, redis_msg) = describe(redis);
    let (pg_ok, pg_msg) = describe(postgres);
    let ready = redis_ok && pg_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "redis": redis_msg,
            "postgres": pg_msg,
        })),
    )
}
