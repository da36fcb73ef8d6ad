//! A hostile or careless tenant, one class of attack per test: each proves
//! the answer is a 4xx naming the field (or the documented refusal), that
//! the server is still up, and that another tenant is still answered.

mod common;

use std::time::{Duration, Instant};

use agentbus::bus::Limits;
use agentbus::config::{Config, ServeConfig};
use agentbus::keys::Ident;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{TestEnv, call, call_raw};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Another tenant, with credit, whose `GET /credits` must still answer.
async fn bystander(env: &TestEnv, app: &axum::Router) {
    let token = env.token("bystander").await;
    let (status, body) = call(app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_default()
}

fn job(items: Value) -> Value {
    json!({"orchestrator_agent": "orc", "worker_agent": "w", "task": "t", "items": items})
}

#[tokio::test]
async fn deep_and_wide_stage_graphs_are_refused_without_recursion() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("attacker").await;
    // 8000 stages, each depending on the next: once aborted the process.
    let chain: Vec<Value> = (0..8000)
        .map(
            |i| json!({"name": format!("s{i}"), "items": 1, "depends_on": [format!("s{}", i + 1)]}),
        )
        .collect();
    let mut body = job(json!([1]));
    body["stages"] = json!(chain);
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert!(field(&resp).starts_with("stages"), "{resp}");

    // A chain at the cap is answered, in order, by a loop.
    let max = agentbus::simulate::MAX_STAGES;
    let chain: Vec<Value> = (0..max)
        .map(|i| {
            let dep = if i == 0 {
                "job".to_string()
            } else {
                format!("s{}", i - 1)
            };
            json!({"name": format!("s{i}"), "items": 1, "depends_on": [dep]})
        })
        .collect();
    let mut body = job(json!([1]));
    body["stages"] = json!(chain);
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        resp["graph"]["critical_path"].as_array().map(Vec::len),
        Some(max + 1)
    );

    // A cycle is named; fan-in and fan-out past their caps are refused.
    let mut body = job(json!([1]));
    body["stages"] = json!([
        {"name": "a", "items": 1, "depends_on": ["b"]},
        {"name": "b", "items": 1, "depends_on": ["a"]}
    ]);
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cycle"),
        "{resp}"
    );
    let fan_out: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("f{i}"), "items": 1, "depends_on": ["job"]}))
        .collect();
    let mut body = job(json!([1]));
    body["stages"] = json!(fan_out);
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(field(&resp), "stages");
    let names: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
    let mut stages: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "items": 1}))
        .collect();
    stages.push(json!({"name": "all", "items": 1, "depends_on": names}));
    let mut body = job(json!([1]));
    body["stages"] = json!(stages);
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert!(field(&resp).contains("depends_on"), "{resp}");
    bystander(&env, &app).await;
}

#[tokio::test]
async fn huge_counts_are_checked_before_anything_is_allocated() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("attacker").await;
    // Once a 32 TB allocation: now a 422 naming the stage's items.
    let mut body = job(json!([1]));
    body["stages"] = json!([{"name": "s", "items": 1_000_000_000_000u64}]);
    let started = Instant::now();
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(field(&resp), "stages[0].items", "{resp}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Counts past u64 are refused by the parser, naming the field.
    let mut body = job(json!([1]));
    body["stages"] = json!([{"name": "s", "items": 1e30}]);
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert!(field(&resp).starts_with("stages"), "{resp}");
    bystander(&env, &app).await;
}

#[tokio::test]
async fn items_past_the_limit_stop_the_parse_and_change_nothing() {
    let env = TestEnv::with_limits(Limits {
        max_items: 10,
        ..Limits::default()
    })
    .await;
    let app = env.app();
    let tenant = env.tenant("attacker");
    let token = env.token("attacker").await;
    env.grant(&tenant, 1_000_000).await;
    let before = env.snapshot().await;
    // 300,000 items against a limit of ten: refused naming `items`.
    let zeros = vec![0u8; 300_000];
    for path in ["/api/v1/jobs", "/api/v1/jobs/simulate"] {
        let (status, resp) = call(&app, "POST", path, Some(&token), Some(job(json!(zeros)))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {resp}");
        assert!(field(&resp).starts_with("items"), "{path}: {resp}");
    }
    assert_eq!(
        before,
        env.snapshot().await,
        "a refused spawn wrote to Redis"
    );
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(job(json!(vec![0; 10]))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    bystander(&env, &app).await;
}

#[tokio::test]
async fn payloads_past_their_limit_are_refused_naming_the_field() {
    let env = TestEnv::with_limits(Limits {
        max_payload_bytes: 1024,
        ..Limits::default()
    })
    .await;
    let app = env.app();
    let tenant = env.tenant("attacker");
    let token = env.token("attacker").await;
    env.grant(&tenant, 1000).await;
    let big = "x".repeat(2000);
    let before = env.snapshot().await;
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(job(json!([1, big]))),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(field(&resp), "items[1]", "{resp}");
    assert_eq!(before, env.snapshot().await);

    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(job(json!([1]))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    let id = resp["job_id"]
        .as_str()
        .or(resp["id"].as_str())
        .unwrap_or_default()
        .to_string();
    let (status, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w1"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let item = claim["item_id"].as_str().unwrap_or_default();
    let before = env.snapshot().await;
    let (status, resp) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{item}/complete"),
        Some(&token),
        Some(json!({"output": big})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(field(&resp), "output", "{resp}");
    assert_eq!(before, env.snapshot().await);

    for (path, body, name) in [
        (
            "/api/v1/agents/a1/messages",
            json!({"from_instance_id": "a2", "message_type": "m", "payload": big}),
            "payload",
        ),
        (
            "/api/v1/invocations",
            json!({"caller_instance_id": "a2", "target_instance_id": "a1", "request_payload": big}),
            "request_payload",
        ),
    ] {
        let (status, resp) = call(&app, "POST", path, Some(&token), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {resp}");
        assert_eq!(field(&resp), name, "{resp}");
    }
    bystander(&env, &app).await;
}

#[tokio::test]
async fn an_undecodable_inbox_entry_is_dead_lettered_alone() {
    let env = TestEnv::new().await;
    let app = env.app();
    let tenant = env.tenant("t");
    let token = env.token("t").await;
    env.grant(&tenant, 100).await;
    for id in ["rx", "tx"] {
        let (status, resp) = call(
            &app,
            "POST",
            "/api/v1/agents/register",
            Some(&token),
            Some(json!({"agent_id": "a", "instance_id": id})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{resp}");
    }
    let send = |n: i64| json!({"from_instance_id": "tx", "message_type": "m", "payload": {"n": n}});
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/agents/rx/messages",
        Some(&token),
        Some(send(1)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // What a buggy agent in another language writes: not MessagePack.
    let inbox = env
        .bus
        .keys(&tenant)
        .inbox(&Ident::new("i", "rx").unwrap_or_else(|e| panic!("{e}")));
    let mut conn = env.conn().await;
    let poison: String = redis::cmd("XADD")
        .arg(&inbox)
        .arg("*")
        .arg("id")
        .arg("poison-1")
        .arg("from")
        .arg("tx")
        .arg("type")
        .arg("m")
        .arg("payload")
        .arg(&b"\xc1\xc1 not msgpack"[..])
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/agents/rx/messages",
        Some(&token),
        Some(send(2)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // The listing shows it as undecodable instead of failing.
    let (status, list) = call(
        &app,
        "GET",
        "/api/v1/agents/rx/messages",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let messages = list["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 3, "{list}");
    assert!(
        messages
            .iter()
            .any(|m| m["undecodable"].is_string() && m["entry_id"] == json!(poison)),
        "{list}"
    );

    // Receiving delivers the two good ones; the poison goes to the DLQ alone, with a reason.
    let (status, got) = call(
        &app,
        "POST",
        "/api/v1/agents/rx/messages/receive?count=10",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let got = got["messages"].as_array().cloned().unwrap_or_default();
    let ns: Vec<i64> = got
        .iter()
        .filter_map(|m| m["payload"]["n"].as_i64())
        .collect();
    assert_eq!(ns, vec![1, 2], "{got:?}");
    let dead = env.bus.dead_letters(&tenant, None, 100).await.expect("dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("undecodable"), "{dead:?}");
    bystander(&env, &app).await;
}

#[tokio::test]
async fn a_claim_waiting_on_a_job_that_ends_gets_its_state() {
    let env = TestEnv::new().await;
    let app = env.app();
    let tenant = env.tenant("t");
    let token = env.token("t").await;
    env.grant(&tenant, 100).await;
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(job(json!([1]))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    let id = resp["job_id"]
        .as_str()
        .or(resp["id"].as_str())
        .unwrap_or_default()
        .to_string();
    // Take the only item, so the next claim waits.
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w1"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let waiting = {
        let app = app.clone();
        let token = token.clone();
        let id = id.clone();
        tokio::spawn(async move {
            call(
                &app,
                "POST",
                &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w2&wait_ms=20000"),
                Some(&token),
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, resp) = waiting.await.expect("claim task");
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(resp["current"]["status"], json!("cancelled"), "{resp}");
}

#[tokio::test]
async fn every_error_is_json() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("t").await;
    // Invalid UTF-8 in a path parameter.
    let req = Request::builder()
        .method("GET")
        .uri("/api/v1/jobs/%FF%FE")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let (status, body) = call_raw(&app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(field(&body), "path", "{body}");
    // A method the route does not take.
    let (status, body) = call(&app, "PATCH", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], json!("method_not_allowed"), "{body}");
    let (status, body) = call(&app, "GET", "/nowhere", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], json!("not_found"), "{body}");
}

#[tokio::test]
async fn registration_stops_at_the_tenant_instance_limit() {
    let env = TestEnv::with_limits(Limits {
        max_instances: 3,
        ..Limits::default()
    })
    .await;
    let app = env.app();
    let token = env.token("t").await;
    let register = |id: &str| json!({"agent_id": "a", "instance_id": id});
    for id in ["i1", "i2", "i3"] {
        let (status, _) = call(
            &app,
            "POST",
            "/api/v1/agents/register",
            Some(&token),
            Some(register(id)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let before = env.snapshot().await;
    let (status, body) = call(
        &app,
        "POST",
        "/api/v1/agents/register",
        Some(&token),
        Some(register("i4")),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], json!("limit_reached"));
    assert_eq!(before, env.snapshot().await);
    // Re-registering one already there is not a new instance.
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/agents/register",
        Some(&token),
        Some(register("i2")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // Another tenant has its own quota.
    let other = env.token("other").await;
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/agents/register",
        Some(&other),
        Some(register("i4")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

/// A real `agentbus serve` (no sink) over this test's key prefix.
async fn serve(env: &TestEnv, tweak: impl FnOnce(&mut ServeConfig)) -> agentbus::server::Running {
    let mut config = Config::defaults();
    config.redis_url = common::redis_url();
    config.database_url = common::admin_database_url();
    config.prefix = env.prefix.clone();
    let mut serve = ServeConfig::defaults();
    serve.bind = "127.0.0.1:0".parse().expect("addr");
    serve.no_sink = true;
    serve.admin_token = Some("a".repeat(40));
    tweak(&mut serve);
    agentbus::server::start(&config, &serve)
        .await
        .expect("server starts")
}

async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_short_admin_token_is_refused_at_startup() {
    let env = TestEnv::new().await;
    let mut config = Config::defaults();
    config.prefix = env.prefix.clone();
    let mut serve = ServeConfig::defaults();
    serve.bind = "127.0.0.1:0".parse().expect("addr");
    serve.admin_token = Some("short-secret".into());
    let err = agentbus::server::start(&config, &serve)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.starts_with("AGENTBUS_ADMIN_TOKEN"), "{err}");
}

#[tokio::test]
async fn failed_authentication_is_limited_per_address() {
    let env = TestEnv::new().await;
    let running = serve(&env, |s| s.auth_failure_limit = 5).await;
    let addr = running.addr;
    let get = |token: &str| {
        format!(
            "GET /api/v1/credits HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        )
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = http(addr, &get("abt_nope_guess")).await;
        statuses.push(answer.split(' ').nth(1).unwrap_or_default().to_string());
        if statuses.last().is_some_and(|s| s == "429") {
            assert!(
                answer.to_ascii_lowercase().contains("retry-after"),
                "{answer}"
            );
        }
    }
    assert_eq!(&statuses[..5], ["401"; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| s == "429"), "{statuses:?}");
    // Even a right token waits out the address's limit.
    let token = env.token("t").await;
    assert!(http(addr, &get(&token)).await.starts_with("HTTP/1.1 429"));
    running.stop().await;
}

#[tokio::test]
async fn metrics_need_their_token_or_their_own_listener() {
    let env = TestEnv::new().await;
    let metrics_token = "m".repeat(32);
    let running = serve(&env, |s| {
        s.metrics_token = Some(metrics_token.clone());
        s.metrics_bind = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let get =
        |auth: &str| format!("GET /metrics HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n");
    let none = http(running.addr, &get("")).await;
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    let with = http(
        running.addr,
        &get(&format!("authorization: Bearer {metrics_token}\r\n")),
    )
    .await;
    assert!(
        with.starts_with("HTTP/1.1 200") || with.starts_with("HTTP/1.1 404"),
        "{with}"
    );
    let tenant = env.token("t").await;
    let wrong = http(
        running.addr,
        &get(&format!("authorization: Bearer {tenant}\r\n")),
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let own = running.metrics_addr.expect("metrics listener");
    let open = http(own, &get("")).await;
    assert!(
        open.starts_with("HTTP/1.1 200") || open.starts_with("HTTP/1.1 404"),
        "{open}"
    );
    let api = http(
        own,
        "GET /api/v1/credits HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        api.starts_with("HTTP/1.1 404"),
        "the metrics listener serves only /metrics: {api}"
    );
    running.stop().await;
}

#[tokio::test]
async fn half_sent_and_idle_connections_are_closed() {
    let env = TestEnv::new().await;
    let running = serve(&env, |s| {
        s.header_timeout_secs = 1;
        s.body_timeout_secs = 1;
    })
    .await;
    let addr = running.addr;
    // Headers never finished.
    let mut half = tokio::net::TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    // A body announced and never sent.
    let token = env.token("t").await;
    let mut trickle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    trickle
        .write_all(
            format!(
                "POST /api/v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    // Kept alive and then idle.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    for (name, conn) in [
        ("half", &mut half),
        ("trickle", &mut trickle),
        ("idle", &mut idle),
    ] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{name}: still open after 15 s");
        if name == "trickle" {
            let text = String::from_utf8_lossy(&buf);
            assert!(text.starts_with("HTTP/1.1 408"), "{name}: {text}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    // The server still answers.
    assert!(
        http(
            addr,
            "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .await
        .starts_with("HTTP/1.1 200")
    );
    running.stop().await;
}
