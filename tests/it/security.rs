//! Tokens and limits: rate and concurrency limits answer 429 with
//! Retry-After; tokens are created, listed, rotated and revoked by the admin
//! only; and one tenant's token never reaches another tenant's state, over
//! every endpoint.

use crate::common;
use std::collections::BTreeMap;
use std::time::Duration;

use agentbus::agents::invoke::InvokeRequest;
use agentbus::agents::messages::OutgoingMessage;
use agentbus::agents::registry::Registration;
use agentbus::api::ApiConfig;
use agentbus::jobs::JobSpec;
use agentbus::keys::Ident;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{ADMIN_TOKEN, TestEnv, call};
use serde_json::{Value, json};
use tower::ServiceExt;

#[tokio::test]
async fn a_token_past_its_rate_gets_429_with_retry_after_then_recovers() {
    let env = TestEnv::new().await;
    let app = env.app_with(ApiConfig {
        rate_limit_per_sec: 5.0,
        rate_limit_burst: 3,
        ..ApiConfig::default()
    });
    let token = env.token("rl").await;
    let other = env.token("rl2").await;
    let mut limited = None;
    for _ in 0..20 {
        let req = Request::builder()
            .uri("/api/v1/credits")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = limited.expect("never limited");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // Another token is not affected.
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&other), None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_too_many_requests_in_flight_gets_429() {
    let env = TestEnv::new().await;
    let app = env.app_with(ApiConfig {
        concurrency_limit: 1,
        ..ApiConfig::default()
    });
    let t = env.tenant("busy");
    env.grant(&t, 100).await;
    let token = env.bus.create_token(&t).await.unwrap().token;
    let job = env
        .bus
        .spawn_job(&t, &JobSpec::new("o", "w", "t", vec![json!(1)]))
        .await
        .unwrap();
    env.bus
        .claim_items(&t, &job.id, "w1", 1, Duration::ZERO)
        .await
        .unwrap();
    // A long poll holds the token's only slot.
    let poll = {
        let (app, token) = (app.clone(), token.clone());
        let uri = format!(
            "/api/v1/jobs/{}/claim?worker_instance_id=w2&wait_ms=1000",
            job.id
        );
        tokio::spawn(async move { call(&app, "POST", &uri, Some(&token), None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let req = Request::builder()
        .uri("/api/v1/credits")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(poll.await.unwrap().0, StatusCode::OK);
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "the slot is free again");
}

#[tokio::test]
async fn tokens_are_managed_by_the_admin_and_revocation_is_immediate() {
    let env = TestEnv::new().await;
    let app = env.app();
    let a = Some(ADMIN_TOKEN);
    let (status, created) = call(
        &app,
        "POST",
        "/api/v1/tokens",
        a,
        Some(json!({"tenant": "acme"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);

    let (_, list) = call(&app, "GET", "/api/v1/tokens?tenant=acme", a, None).await;
    assert_eq!(list["count"], 1);
    let listed = list.to_string();
    assert!(
        !listed.contains(&token[20..]) && !listed.contains("hash"),
        "a secret leaked: {listed}"
    );

    // Only the admin manages tokens; the admin token is not a tenant's.
    let (status, _) = call(&app, "GET", "/api/v1/tokens", Some(&token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&app, "GET", "/api/v1/jobs", a, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, rotated) = call(
        &app,
        "POST",
        &format!("/api/v1/tokens/{id}/rotate"),
        a,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let new_token = rotated["token"].as_str().unwrap().to_string();
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the rotated-out token still works"
    );
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&new_token), None).await;
    assert_eq!(status, StatusCode::OK);

    let new_id = rotated["id"].as_str().unwrap();
    let (status, _) = call(&app, "DELETE", &format!("/api/v1/tokens/{new_id}"), a, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&new_token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked, yet accepted");
    let (status, _) = call(&app, "DELETE", &format!("/api/v1/tokens/{new_id}"), a, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/tokens/{id}/rotate"),
        a,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a revoked token cannot be rotated back"
    );
}

/// Every key of one tenant, serialized, with its TTL.
async fn tenant_state(env: &TestEnv, tenant: &str) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut conn = env.conn().await;
    let mut out = BTreeMap::new();
    for key in env
        .keys()
        .await
        .into_iter()
        .filter(|k| k.contains(&format!("{{{tenant}}}")))
    {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.insert(key, dump);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_token_never_reaches_another_tenants_state_on_any_endpoint() {
    // Its own database: the invocation audit is read from Postgres.
    let env = TestEnv::with_db().await;
    let app = env.app();
    let b = env.tenant("tenant-b");
    env.grant(&b, 1000).await;
    env.grant(&env.tenant("tenant-a"), 1000).await;
    let token_a = env.token("tenant-a").await;

    // Tenant B's world: a job with a held item, agents, a message, an invocation, blackboard entries.
    let job = env
        .bus
        .spawn_job(
            &b,
            &JobSpec::new("o", "w", "secret-task-b", vec![json!("x"), json!("y")]),
        )
        .await
        .unwrap();
    let item = env
        .bus
        .claim_items(&b, &job.id, "wb", 1, Duration::ZERO)
        .await
        .unwrap()
        .remove(0)
        .item_id;
    // And a dead-lettered item of another job.
    let dead_job = env
        .bus
        .spawn_job(
            &b,
            &JobSpec::new("o", "w", "t", vec![json!("secret-dead-b"), json!(1)]),
        )
        .await
        .unwrap();
    let doomed = env
        .bus
        .claim_items(&b, &dead_job.id, "wb", 1, Duration::ZERO)
        .await
        .unwrap()
        .remove(0)
        .item_id;
    env.bus
        .fail_item(&b, &dead_job.id, &doomed, "gave up", false)
        .await
        .unwrap();
    let dead = env.bus.dead_letters(&b, None, 10).await.unwrap()[0]
        .entry_id
        .clone();
    let (b1, b2) = (
        Ident::new("i", "b-agent-1").unwrap(),
        Ident::new("i", "b-agent-2").unwrap(),
    );
    for who in [&b1, &b2] {
        env.bus
            .register_agent(
                &b,
                &Registration::new("x")
                    .unwrap()
                    .instance(who.as_str())
                    .unwrap()
                    .job(job.id),
            )
            .await
            .unwrap();
    }
    let msg = env
        .bus
        .send_message(
            &b,
            &OutgoingMessage::new(&b1, &b2, "request", json!("secret-msg-b")),
        )
        .await
        .unwrap();
    let inv = {
        let bus = env.bus.clone();
        let (b, b1, b2) = (b.clone(), b1.clone(), b2.clone());
        let mut req = InvokeRequest::new(&b1, &b2, json!("secret-inv-b"));
        req.timeout_seconds = 1;
        tokio::spawn(async move { bus.invoke(&b, &req).await })
    };
    let board = env.bus.blackboard(&b, &Ident::new("n", "b-ns").unwrap());
    board
        .set("b-key", &json!("secret-value-b"), None, None)
        .await
        .unwrap();
    env.bus
        .blackboard(&b, &Ident::new("n", "default").unwrap())
        .set("b-key", &json!("secret-value-b"), None, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let invoke_id = {
        let mut conn = env.conn().await;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(env.bus.keys(&b).pending_invokes())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids[0].clone()
    };
    let inv_result = inv.await.unwrap().unwrap();
    assert!(inv_result.timeout);
    let before = tenant_state(&env, "tenant-b").await;

    let token_b = env.bus.create_token(&b).await.unwrap();
    let j = job.id;
    let m = &msg.message_id;
    let tb = &token_b.id;
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/api/v1/jobs/{j}"), None),
        ("GET", format!("/api/v1/jobs/{j}/results"), None),
        (
            "POST",
            format!("/api/v1/jobs/{j}/claim?worker_instance_id=wa"),
            None,
        ),
        (
            "POST",
            format!("/api/v1/jobs/{j}/items/{item}/complete"),
            Some(json!({"output": 1})),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{j}/items/{item}/fail"),
            Some(json!({"error_message": "x", "retry": false})),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{j}/items/complete"),
            Some(json!({"items": [{"item_id": item, "output": 1}]})),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{j}/items/fail"),
            Some(json!({"items": [{"item_id": item, "error_message": "x", "retry": false}]})),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{j}/items/{item}/release?worker_instance_id=wb"),
            None,
        ),
        (
            "POST",
            format!("/api/v1/jobs/{j}/release?worker_instance_id=wb"),
            None,
        ),
        ("POST", format!("/api/v1/jobs/{j}/cancel"), None),
        (
            "POST",
            format!("/api/v1/jobs/{j}/broadcast"),
            Some(json!({"from_instance_id": "a1", "payload": 1})),
        ),
        ("GET", "/api/v1/jobs".into(), None),
        (
            "POST",
            "/api/v1/jobs".into(),
            Some(
                json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "a-task", "items": [1]}),
            ),
        ),
        (
            "POST",
            "/api/v1/jobs/simulate".into(),
            Some(
                json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "secret-task-b", "items": [1]}),
            ),
        ),
        (
            "POST",
            "/api/v1/agents/register".into(),
            Some(json!({"agent_id": "x", "instance_id": "b-agent-1"})),
        ),
        ("GET", "/api/v1/agents/b-agent-1".into(), None),
        ("GET", format!("/api/v1/agents?job_id={j}"), None),
        ("POST", "/api/v1/agents/b-agent-1/heartbeat".into(), None),
        ("DELETE", "/api/v1/agents/b-agent-1".into(), None),
        (
            "POST",
            "/api/v1/agents/b-agent-2/messages".into(),
            Some(json!({"from_instance_id": "a1", "message_type": "request", "payload": 1})),
        ),
        ("GET", "/api/v1/agents/b-agent-2/messages".into(), None),
        (
            "POST",
            "/api/v1/agents/b-agent-2/messages/receive".into(),
            None,
        ),
        (
            "POST",
            format!("/api/v1/agents/b-agent-2/messages/{m}/read"),
            None,
        ),
        (
            "POST",
            "/api/v1/invocations".into(),
            Some(
                json!({"caller_instance_id": "a1", "target_instance_id": "b-agent-2", "request_payload": 1}),
            ),
        ),
        (
            "POST",
            "/api/v1/invocations/respond".into(),
            Some(json!({"invoke_id": invoke_id, "response_payload": 1})),
        ),
        ("GET", format!("/api/v1/invocations/{invoke_id}"), None),
        ("GET", "/api/v1/invocations".into(), None),
        ("GET", "/api/v1/invocations/stats".into(), None),
        ("GET", "/api/v1/blackboard/b-key".into(), None),
        (
            "PUT",
            "/api/v1/blackboard/b-key".into(),
            Some(json!({"value": "overwritten"})),
        ),
        ("POST", "/api/v1/blackboard/b-key/increment".into(), None),
        (
            "POST",
            "/api/v1/blackboard/b-key/lock".into(),
            Some(json!({"holder": "a", "action": "acquire"})),
        ),
        ("GET", "/api/v1/namespaces/b-ns/entries/b-key".into(), None),
        (
            "PUT",
            "/api/v1/namespaces/b-ns/entries/b-key".into(),
            Some(json!({"value": "overwritten"})),
        ),
        (
            "POST",
            "/api/v1/namespaces/b-ns/entries/b-key/cas".into(),
            Some(json!({"expected": "secret-value-b", "value": 1})),
        ),
        (
            "POST",
            "/api/v1/namespaces/b-ns/entries/b-key/increment".into(),
            None,
        ),
        (
            "DELETE",
            "/api/v1/namespaces/b-ns/entries/b-key".into(),
            None,
        ),
        (
            "POST",
            "/api/v1/namespaces/b-ns/locks/l".into(),
            Some(json!({"holder": "a", "action": "acquire"})),
        ),
        ("GET", "/api/v1/namespaces/b-ns/keys".into(), None),
        ("GET", "/api/v1/namespaces/b-ns/range".into(), None),
        ("GET", "/api/v1/namespaces/b-ns/top".into(), None),
        ("GET", "/api/v1/namespaces/b-ns/aggregate".into(), None),
        ("GET", "/api/v1/namespaces".into(), None),
        ("GET", "/api/v1/sink".into(), None),
        ("GET", "/api/v1/credits".into(), None),
        ("GET", "/api/v1/settings".into(), None),
        ("GET", "/api/v1/dlq".into(), None),
        ("POST", format!("/api/v1/dlq/{dead}/replay"), None),
        (
            "POST",
            "/api/v1/credits/grant".into(),
            Some(json!({"tenant": "tenant-b", "amount": 1})),
        ),
        ("GET", "/api/v1/tokens".into(), None),
        ("POST", format!("/api/v1/tokens/{tb}/rotate"), None),
        ("DELETE", format!("/api/v1/tokens/{tb}"), None),
        (
            "POST",
            "/api/v1/tokens".into(),
            Some(json!({"tenant": "tenant-b"})),
        ),
    ];
    // The list covers every operation of the API document.
    let document = agentbus::api::openapi_document();
    for (path, ops) in document["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op["security"] == json!([]) {
                continue;
            }
            let method = method.to_uppercase();
            assert!(
                calls
                    .iter()
                    .any(|(m, uri, _)| *m == method && matches_template(path, uri)),
                "{method} {path} is not checked here"
            );
        }
    }
    for (method, uri, body) in &calls {
        let (status, resp) = call(&app, method, uri, Some(&token_a), body.clone()).await;
        assert!(status.as_u16() < 500, "{method} {uri}: {status} {resp}");
        let text = resp.to_string();
        for secret in [
            "secret-task-b",
            "secret-msg-b",
            "secret-inv-b",
            "secret-value-b",
            "secret-dead-b",
            "tenant-b",
        ] {
            // The simulate body itself names the task: only B's data would leak it elsewhere.
            if uri.ends_with("/simulate") {
                continue;
            }
            assert!(
                !text.contains(secret),
                "{method} {uri} revealed {secret}: {text}"
            );
        }
    }
    assert_eq!(
        tenant_state(&env, "tenant-b").await,
        before,
        "tenant A's token changed tenant B's state"
    );
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token_b.token), None).await;
    assert_eq!(status, StatusCode::OK, "B's token survived A's attempts");
}

/// Whether `uri` (query aside) is an instance of the template `path`.
fn matches_template(path: &str, uri: &str) -> bool {
    let uri = uri.split('?').next().unwrap_or(uri);
    let (mut want, mut got) = (path.split('/'), uri.split('/'));
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w == g || (w.starts_with('{') && !g.is_empty()) => {}
            _ => return false,
        }
    }
}
