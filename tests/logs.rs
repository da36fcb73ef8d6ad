//! Logs, checked in a process of their own: a `tracing` subscriber scoped
//! to one thread sees every request's events only when no other test in the
//! process has touched the same callsites first (tracing caches interest
//! per callsite, process-wide).

mod common;

use axum::http::StatusCode;
use common::{ADMIN_TOKEN, TestEnv, call};
use serde_json::json;

/// Collects everything a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tokens_never_reach_the_logs_even_at_trace_level() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This runtime has one thread: every request below runs under it.
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = TestEnv::new().await;
    let app = env.app();
    let (status, created) = call(
        &app,
        "POST",
        "/api/v1/tokens",
        Some(ADMIN_TOKEN),
        Some(json!({ "tenant": env.tenant("logs").as_str() })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().expect("token").to_string();
    let id = created["id"].as_str().expect("id").to_string();
    let mut secrets = vec![token.clone(), ADMIN_TOKEN.to_string()];
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    let wrong = format!("{token}x");
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&wrong), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, rotated) = call(
        &app,
        "POST",
        &format!("/api/v1/tokens/{id}/rotate"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_token = rotated["token"].as_str().expect("token").to_string();
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old secret is refused"
    );
    let (status, _) = call(&app, "GET", "/api/v1/jobs/nope", Some(&new_token), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    secrets.push(new_token);

    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8 logs");
    assert!(
        text.contains("request done"),
        "the requests were logged at all: {text}"
    );
    for secret in &secrets {
        // The part after the id is the secret itself.
        let tail = secret.rsplit('_').next().expect("secret");
        assert!(!text.contains(tail), "a token secret reached the logs");
    }
}
