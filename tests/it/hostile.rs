//! A hostile or careless tenant, one class of attack per test: each proves
//! the answer is a 4xx naming the field (or the documented refusal), that
//! the server is still up, and that another tenant is still answered.

use crate::common;
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

/// Simulates a one-item job with `stages`.
async fn simulate_stages(app: &axum::Router, token: &str, stages: Value) -> (StatusCode, Value) {
    let mut body = job(json!([1]));
    body["stages"] = stages;
    call(
        app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(token),
        Some(body),
    )
    .await
}

/// Spawns a job of `items` over HTTP; its id.
async fn spawn(app: &axum::Router, token: &str, items: Value) -> String {
    // Claimed in bulk here: no bound on items in flight to meet.
    let mut body = job(items);
    body["parallelism"] = json!(agentbus::jobs::PARALLELISM.1);
    let (status, resp) = call(app, "POST", "/api/v1/jobs", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    resp["id"].as_str().expect("job id").to_string()
}

/// Claims up to `count` items of `job` for `worker`.
async fn claim(app: &axum::Router, token: &str, job: &str, worker: &str, count: usize) -> Value {
    let uri = format!("/api/v1/jobs/{job}/claim?worker_instance_id={worker}&count={count}");
    let (status, resp) = call(app, "POST", &uri, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp
}

/// Registers `instance` (of agent `a`); the status answered.
async fn register(app: &axum::Router, token: &str, instance: &str) -> StatusCode {
    let body = json!({"agent_id": "a", "instance_id": instance});
    call(
        app,
        "POST",
        "/api/v1/agents/register",
        Some(token),
        Some(body),
    )
    .await
    .0
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
    let (status, resp) = simulate_stages(&app, &token, json!(chain)).await;
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
    let (status, resp) = simulate_stages(&app, &token, json!(chain)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        resp["graph"]["critical_path"].as_array().map(Vec::len),
        Some(max + 1)
    );

    // A cycle is named; fan-in and fan-out past their caps are refused.
    let (status, resp) = simulate_stages(
        &app,
        &token,
        json!([
            {"name": "a", "items": 1, "depends_on": ["b"]},
            {"name": "b", "items": 1, "depends_on": ["a"]}
        ]),
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
    let (status, resp) = simulate_stages(&app, &token, json!(fan_out)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(field(&resp), "stages");
    let names: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
    let mut stages: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "items": 1}))
        .collect();
    stages.push(json!({"name": "all", "items": 1, "depends_on": names}));
    let (status, resp) = simulate_stages(&app, &token, json!(stages)).await;
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
    let (status, resp) = simulate_stages(
        &app,
        &token,
        json!([{"name": "s", "items": 1_000_000_000_000u64}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(field(&resp), "stages[0].items", "{resp}");
    // Counts past u64 are refused by the parser, naming the field.
    let (status, resp) = simulate_stages(&app, &token, json!([{"name": "s", "items": 1e30}])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert!(field(&resp).starts_with("stages"), "{resp}");
    // A field given twice is refused, not "the last one wins" (as POST /jobs
    // refuses it); so is an object of 60,000 fields, at once.
    let twice = br#"{"orchestrator_agent":"o","worker_agent":"w","task":"t","items":1,"items":5}"#;
    let many: String = (0..60_000).map(|n| format!("\"f{n}\":0,")).collect();
    let many = format!("{{{many}\"items\":1}}");
    for (body, name) in [(twice.to_vec(), "items"), (many.into_bytes(), "body")] {
        for path in ["/api/v1/jobs/simulate", "/api/v1/jobs"] {
            let req = Request::post(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .expect("request");
            let (status, resp) = call_raw(&app, req).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {resp}");
            if path.ends_with("simulate") {
                assert_eq!(field(&resp), name, "{resp}");
            }
        }
    }
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

    let id = spawn(&app, &token, json!([1])).await;
    let claim = claim(&app, &token, &id, "w1", 1).await;
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
        assert_eq!(register(&app, &token, id).await, StatusCode::CREATED);
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
    let id = spawn(&app, &token, json!([1])).await;
    // Take the only item, so the next claim waits.
    claim(&app, &token, &id, "w1", 1).await;
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
    for id in ["i1", "i2", "i3"] {
        assert_eq!(register(&app, &token, id).await, StatusCode::CREATED);
    }
    let before = env.snapshot().await;
    let body = json!({"agent_id": "a", "instance_id": "i4"});
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/agents/register",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{resp}");
    assert_eq!(resp["error"]["code"], json!("limit_reached"));
    assert_eq!(before, env.snapshot().await);
    // Re-registering one already there is not a new instance.
    assert_eq!(register(&app, &token, "i2").await, StatusCode::CREATED);
    // Another tenant has its own quota.
    let other = env.token("other").await;
    assert_eq!(register(&app, &other, "i4").await, StatusCode::CREATED);
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
    assert!(with.starts_with("HTTP/1.1 200"), "{with}");
    let tenant = env.token("t").await;
    let wrong = http(
        running.addr,
        &get(&format!("authorization: Bearer {tenant}\r\n")),
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let own = running.metrics_addr.expect("metrics listener");
    let open = http(own, &get("")).await;
    assert!(open.starts_with("HTTP/1.1 200"), "{open}");
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

#[tokio::test]
async fn pages_stop_at_their_byte_bound_and_next_continues() {
    let env = TestEnv::with_limits(Limits {
        max_page_bytes: 10_000,
        redeliver_after: Duration::from_millis(1500),
        ..Limits::default()
    })
    .await;
    let app = env.app();
    let tenant = env.tenant("t");
    let token = env.token("t").await;
    env.grant(&tenant, 1000).await;
    let big = "x".repeat(2000);

    // Twenty results of ~2 KB each: no page holds more than ~10 KB.
    let id = spawn(&app, &token, json!(vec![0; 20])).await;
    let claimed = claim(&app, &token, &id, "w1", 20).await;
    for item in claimed["items"].as_array().expect("items") {
        let item_id = item["item_id"].as_str().expect("item id");
        let uri = format!("/api/v1/jobs/{id}/items/{item_id}/complete");
        let (status, resp) = call(
            &app,
            "POST",
            &uri,
            Some(&token),
            Some(json!({"output": big})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..20 {
        let uri = format!("/api/v1/jobs/{id}/results?limit=1000{after}");
        let (status, page) = call(&app, "GET", &uri, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let results = page["results"].as_array().cloned().unwrap_or_default();
        assert!(
            (1..=6).contains(&results.len()),
            "{} results in a page",
            results.len()
        );
        seen.extend(results.iter().filter_map(|r| r["item_index"].as_i64()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "every result once");

    // The same for an inbox listing.
    for instance in ["rx", "tx"] {
        assert_eq!(register(&app, &token, instance).await, StatusCode::CREATED);
    }
    for n in 0..20 {
        let body =
            json!({"from_instance_id": "tx", "message_type": "m", "payload": {"n": n, "pad": big}});
        let (status, _) = call(
            &app,
            "POST",
            "/api/v1/agents/rx/messages",
            Some(&token),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..20 {
        let uri = format!("/api/v1/agents/rx/messages?limit=500{after}");
        let (status, page) = call(&app, "GET", &uri, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        assert!(messages.len() <= 6, "{} messages in a page", messages.len());
        seen.extend(messages.iter().filter_map(|m| m["payload"]["n"].as_i64()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..20).collect::<Vec<_>>(),
        "every message once, in order"
    );

    // Receiving: new messages, then (unacknowledged) the same handed back,
    // each batch within the byte bound whatever the count asked.
    for pass in ["new", "handed back"] {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let (status, got) = call(
                &app,
                "POST",
                "/api/v1/agents/rx/messages/receive?count=500",
                Some(&token),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{got}");
            let messages = got["messages"].as_array().cloned().unwrap_or_default();
            assert!(messages.len() <= 6, "{pass}: {} in a batch", messages.len());
            if messages.is_empty() {
                break;
            }
            seen.extend(messages.iter().filter_map(|m| m["payload"]["n"].as_i64()));
        }
        assert_eq!(
            seen,
            (0..20).collect::<Vec<_>>(),
            "{pass}: each once, in order"
        );
        tokio::time::sleep(Duration::from_millis(1600)).await;
    }
    let (status, resp) = call(
        &app,
        "GET",
        "/api/v1/agents/rx/messages?after=nope",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(field(&resp), "after");
}

#[tokio::test]
async fn scripts_refuse_bad_arguments_before_writing() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("t");
    let token = env.token("t").await;
    let app = env.app();
    assert_eq!(register(&app, &token, "rx").await, StatusCode::CREATED);
    let keys = env.bus.keys(&tenant);
    let rx = Ident::new("i", "rx").expect("ident");
    let mut conn = env.conn().await;
    let entry: String = redis::cmd("XADD")
        .arg(keys.inbox(&rx))
        .arg("*")
        .arg("payload")
        .arg(&b"\xc1"[..])
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let scripts = agentbus::scripts::scripts();
    let before = env.snapshot().await;
    // inbox_poison: a good pair first, then a bad one: nothing is moved.
    for args in [
        vec![
            entry.clone(),
            "why".into(),
            "not-an-id".into(),
            "why".into(),
        ],
        vec![entry.clone()],
        vec![entry.clone(), "x".repeat(2000)],
    ] {
        let mut call = scripts.inbox_poison.script().prepare_invoke();
        call.key(keys.inbox(&rx)).key(keys.dlq());
        for a in &args {
            call.arg(a);
        }
        let answer: redis::RedisResult<i64> = call.invoke_async(&mut conn).await;
        assert!(answer.is_err(), "{args:?} accepted");
        assert_eq!(before, env.snapshot().await, "{args:?} wrote");
    }
    // agent_register: an instance limit that is not a number, then an
    // index prefix missing.
    for (max, prefix) in [
        ("many", keys.agents_with_status_prefix()),
        ("5", String::new()),
    ] {
        let answer: redis::RedisResult<redis::Value> = scripts
            .agent_register
            .script()
            .key(keys.agents())
            .key(keys.agent(&Ident::new("i", "new").expect("ident")))
            .key(keys.inbox(&Ident::new("i", "new").expect("ident")))
            .arg("new")
            .arg("a")
            .arg("")
            .arg("[]")
            .arg("running")
            .arg(max)
            .arg(keys.agents_of_type_prefix())
            .arg(keys.agents_of_job_prefix())
            .arg(prefix)
            .invoke_async(&mut conn)
            .await;
        assert!(answer.is_err(), "{max} accepted");
        assert_eq!(before, env.snapshot().await, "{max} wrote");
    }
    // The registry scripts: an unknown status, an empty id, a retention or
    // cutoff that is not a number.
    let rx_agent = keys.agent(&rx);
    let prefixes = [
        keys.agents_of_type_prefix(),
        keys.agents_of_job_prefix(),
        keys.agents_with_status_prefix(),
    ];
    for (instance, agent, status) in [
        ("new", "a", "dancing"),
        ("", "a", "running"),
        ("new", "", "running"),
    ] {
        let answer: redis::RedisResult<redis::Value> = scripts
            .agent_register
            .script()
            .key(keys.agents())
            .key(keys.agent(&Ident::new("i", "new").expect("ident")))
            .key(keys.inbox(&Ident::new("i", "new").expect("ident")))
            .arg(instance)
            .arg(agent)
            .arg("")
            .arg("[]")
            .arg(status)
            .arg(5)
            .arg(&prefixes)
            .invoke_async(&mut conn)
            .await;
        assert!(
            answer.is_err(),
            "register {instance:?} {agent:?} {status} accepted"
        );
        assert_eq!(before, env.snapshot().await, "register {status} wrote");
    }
    let answer: redis::RedisResult<redis::Value> = scripts
        .agent_heartbeat
        .script()
        .key(keys.agents())
        .key(&rx_agent)
        .arg("rx")
        .arg("dancing")
        .arg(&prefixes)
        .invoke_async(&mut conn)
        .await;
    assert!(answer.is_err(), "heartbeat with an unknown status accepted");
    assert_eq!(before, env.snapshot().await, "heartbeat wrote");
    let answer: redis::RedisResult<redis::Value> = scripts
        .agent_deregister
        .script()
        .key(keys.agents())
        .key(&rx_agent)
        .key(keys.inbox(&rx))
        .key(keys.agent_stopped(&rx))
        .key(keys.agents_stopped())
        .arg("rx")
        .arg("forever")
        .arg(&prefixes)
        .invoke_async(&mut conn)
        .await;
    assert!(answer.is_err(), "deregister with a bad retention accepted");
    assert_eq!(before, env.snapshot().await, "deregister wrote");
    let answer: redis::RedisResult<redis::Value> = scripts
        .agent_reap
        .script()
        .key(keys.agents())
        .arg("soon")
        .arg(500)
        .arg(keys.agent_prefix())
        .arg(&prefixes)
        .invoke_async(&mut conn)
        .await;
    assert!(answer.is_err(), "reap with a bad cutoff accepted");
    assert_eq!(before, env.snapshot().await, "reap wrote");
    // inbox_redeliver: every argument out of range; the poison entry is
    // pending for nobody, so a good call would not move it either — the
    // point is that none of these gets as far as a write.
    for args in [
        ["", "0", "3", "10", ""],
        ["rx", "-1", "3", "10", ""],
        ["rx", "0", "0", "10", ""],
        ["rx", "0", "3", "0", ""],
        ["rx", "0", "3", "20000", ""],
        ["rx", "0", "3", "10", "0"],
    ] {
        let mut call = scripts.inbox_redeliver.script().prepare_invoke();
        call.key(keys.inbox(&rx)).key(keys.dlq());
        for a in args {
            call.arg(a);
        }
        let answer: redis::RedisResult<redis::Value> = call.invoke_async(&mut conn).await;
        assert!(answer.is_err(), "redeliver {args:?} accepted");
        assert_eq!(before, env.snapshot().await, "redeliver {args:?} wrote");
    }
    // inbox_take: counts and bounds out of range.
    for (count, bytes) in [("0", "10"), ("20000", "10"), ("5", "0"), ("5", "lots")] {
        let answer: redis::RedisResult<redis::Value> = scripts
            .inbox_take
            .script()
            .key(keys.inbox(&rx))
            .arg("rx")
            .arg(count)
            .arg(bytes)
            .invoke_async(&mut conn)
            .await;
        assert!(answer.is_err(), "{count} {bytes} accepted");
        assert_eq!(before, env.snapshot().await, "{count} {bytes} wrote");
    }
    // And the good call moves the one entry, alone.
    let moved: i64 = scripts
        .inbox_poison
        .script()
        .key(keys.inbox(&rx))
        .key(keys.dlq())
        .arg(&entry)
        .arg("undecodable payload: test")
        .invoke_async(&mut conn)
        .await
        .expect("inbox_poison");
    assert_eq!(moved, 1);
    assert_ne!(before, env.snapshot().await);
}

#[tokio::test]
async fn request_bodies_in_memory_stay_within_the_budget() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("t");
    let token = env.token("t").await;
    env.grant(&tenant, 100).await;
    let job = env
        .bus
        .spawn_job(
            &tenant,
            &agentbus::jobs::JobSpec::new("o", "w", "t", vec![json!(1)]),
        )
        .await
        .expect("spawn");
    let running = serve(&env, |s| {
        s.max_body_bytes = 64 * 1024;
        s.max_inflight_body_bytes = 64 * 1024;
        s.body_timeout_secs = 1;
    })
    .await;
    let addr = running.addr;
    let id = job.id;
    // Take the only item, so the next claim long-polls.
    let take = format!(
        "POST /api/v1/jobs/{id}/claim?worker_instance_id=w1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    assert!(http(addr, &take).await.starts_with("HTTP/1.1 200"));
    // A long-poll carrying a 60 KB body holds 60 of the 64 KB for 4 s.
    let body = "x".repeat(60_000);
    let hold = format!(
        "POST /api/v1/jobs/{id}/claim?worker_instance_id=w2&wait_ms=4000 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let holder = tokio::spawn(async move { http(addr, &hold).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another body of 10 KB does not fit: refused after the body timeout, not held.
    let small = "y".repeat(10_000);
    let other = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{small}",
        small.len()
    );
    let answer = http(addr, &other).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    // A request without a body needs no share.
    let get = format!(
        "GET /api/v1/credits HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    assert!(http(addr, &get).await.starts_with("HTTP/1.1 200"));
    assert!(holder.await.expect("holder").starts_with("HTTP/1.1 200"));
    // Once the long-poll ended, the budget is back.
    let answer = http(addr, &other).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    running.stop().await;
}

#[tokio::test]
async fn heavy_requests_are_bounded_and_a_slow_body_holds_no_slot() {
    let env = TestEnv::new().await;
    let running = serve(&env, |s| {
        s.max_heavy_requests = 1;
        s.body_timeout_secs = 5;
    })
    .await;
    let addr = running.addr;
    let attacker = env.token("attacker").await;
    let other = env.token("other").await;
    // Simulations announced and trickled: none may take the one heavy slot
    // while its body is in transit.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!(
                "POST /api/v1/jobs/simulate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {attacker}\r\ncontent-type: application/json\r\ncontent-length: 200000\r\n\r\n{{\"items\":["
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another tenant's heavy request (a simulation) is answered at once.
    let body = job(json!([1, 2, 3])).to_string();
    let started = Instant::now();
    let answer = http(
        addr,
        &format!(
            "POST /api/v1/jobs/simulate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {other}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?} behind bodies in transit",
        started.elapsed()
    );
    // Many heavy requests at once share the one slot: each is answered.
    let mut all = Vec::new();
    for _ in 0..6 {
        let (body, other) = (body.clone(), other.clone());
        all.push(tokio::spawn(async move {
            http(
                addr,
                &format!(
                    "POST /api/v1/jobs/simulate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {other}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                ),
            )
            .await
        }));
    }
    for answer in all {
        let answer = answer.await.expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    drop(slow);
    running.stop().await;
}
