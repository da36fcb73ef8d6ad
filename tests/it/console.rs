//! The console's server side: the page and its assets under a strict
//! Content-Security-Policy with no inline code, and the two listings it
//! reads (`/namespaces`, `/sink`), each scoped to the caller.

use crate::common;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{ADMIN_TOKEN, TestEnv, call};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

#[tokio::test]
async fn the_console_is_static_under_a_strict_policy() {
    let env = TestEnv::new().await;
    let app = env.app();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers();
        assert!(
            h[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        if path == "/console" {
            // Only external scripts and styles: nothing the policy would block.
            assert_eq!(body.matches("<script").count(), 1, "{body}");
            assert!(body.contains(r#"<script src="/console/app.js" defer></script>"#));
            assert!(
                !body.contains("<style") && !body.contains(" style="),
                "{body}"
            );
            for handler in [
                "onclick=",
                "onload=",
                "onerror=",
                "onsubmit=",
                "javascript:",
            ] {
                assert!(!body.contains(handler), "{handler} in {body}");
            }
        }
        if path == "/console/app.js" {
            // Text only: nothing from the server is ever parsed as HTML.
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!body.contains(sink), "app.js uses {sink}");
            }
            assert!(
                !body.contains("localStorage"),
                "the token stays in session storage"
            );
        }
    }
}

#[tokio::test]
async fn namespaces_and_the_sink_answer_for_the_caller_only() {
    let env = TestEnv::new().await;
    let app = env.app();
    let (a, b) = (env.token("cons-a").await, env.token("cons-b").await);
    env.grant(&env.tenant("cons-a"), 10).await;
    env.grant(&env.tenant("cons-b"), 10).await;
    for (token, ns) in [(&a, "alpha"), (&a, "beta"), (&b, "gamma")] {
        let (status, body) = call(
            &app,
            "PUT",
            &format!("/api/v1/namespaces/{ns}/entries/k"),
            Some(token),
            Some(json!({"value": 1})),
        )
        .await;
        assert!(status.is_success(), "{status} {body}");
    }
    let (status, listed) = call(&app, "GET", "/api/v1/namespaces", Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed, json!({"count": 2, "namespaces": ["alpha", "beta"]}));

    let (status, sink) = call(&app, "GET", "/api/v1/sink", Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{sink}");
    let rows = sink["outboxes"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{sink}");
    assert_eq!(rows[0]["tenant"], env.tenant("cons-a").as_str());
    assert!(
        rows[0]["events"].as_u64().unwrap() >= 1,
        "the grant's event at least (no sink runs here): {sink}"
    );

    // The admin pages through every tenant in id order.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/sink?limit=1".to_string();
    loop {
        let (status, page) = call(&app, "GET", &uri, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for row in page["outboxes"].as_array().unwrap() {
            seen.push(row["tenant"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => uri = format!("/api/v1/sink?limit=1&after={next}"),
            None => break,
        }
    }
    let mut want = vec![
        env.tenant("cons-a").as_str().to_string(),
        env.tenant("cons-b").as_str().to_string(),
    ];
    want.sort();
    assert_eq!(seen, want);
    // The admin token is no tenant: tenant listings refuse it.
    let (status, _) = call(&app, "GET", "/api/v1/namespaces", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_admin_reads_a_tenant_with_get_only() {
    let env = TestEnv::new().await;
    let app = env.app();
    let tenant = env.tenant("read-as");
    env.grant(&tenant, 50).await;
    let read_as = |method: &str, uri: &str, who: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("x-agentbus-tenant", who)
            .body(Body::empty())
            .unwrap()
    };
    let (status, balance) =
        common::call_raw(&app, read_as("GET", "/api/v1/credits", tenant.as_str())).await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(
        common::dec(&balance["total"]),
        rust_decimal::Decimal::from(50)
    );
    let before = env.snapshot().await;
    let (status, refused) = common::call_raw(
        &app,
        read_as(
            "POST",
            "/api/v1/jobs/00000000-0000-0000-0000-000000000000/cancel",
            tenant.as_str(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (status, refused) =
        common::call_raw(&app, read_as("GET", "/api/v1/credits", "no tenant!")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["field"], "x-agentbus-tenant");
    assert_eq!(before, env.snapshot().await, "refused reads wrote");
}
