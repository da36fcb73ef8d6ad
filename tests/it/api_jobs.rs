//! The jobs REST API: the original's contract, auth, tenant isolation and
//! JSON errors that name the field.

use crate::common;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{ADMIN_TOKEN, TestEnv, call, call_raw, dec};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn job_body(items: usize) -> Value {
    json!({
        "orchestrator_agent": "orc",
        "worker_agent": "scraper",
        "task": "scrape pages",
        "items": (0..items).map(|i| json!({"url": format!("https://example.com/{i}")})).collect::<Vec<_>>(),
        "parallelism": 5,
        "timeout_per_item": 30,
        "max_retries": 1
    })
}

#[tokio::test]
async fn the_job_lifecycle_over_http_keeps_the_original_contract() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("acme").await;
    let t = Some(token.as_str());

    // Credits are granted by the admin only.
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/credits/grant",
        t,
        Some(json!({"tenant": "acme", "amount": 100})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, balance) = call(
        &app,
        "POST",
        "/api/v1/credits/grant",
        Some(ADMIN_TOKEN),
        Some(json!({"tenant": "acme", "amount": "100.50"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(
        dec(&balance["available"]),
        "100.50".parse::<Decimal>().unwrap()
    );

    let (status, job) = call(&app, "POST", "/api/v1/jobs", t, Some(job_body(4))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    for field in [
        "id",
        "status",
        "task",
        "progress",
        "credits",
        "created_at",
        "started_at",
        "completed_at",
    ] {
        assert!(job.get(field).is_some(), "{field} missing in {job}");
    }
    assert_eq!(job["status"], "running");
    assert_eq!(job["progress"]["total"], 4);
    assert_eq!(job["progress"]["pending"], 4);
    assert_eq!(dec(&job["credits"]["reserved"]), Decimal::from(5 + 2 * 4));
    let id = job["id"].as_str().unwrap().to_string();

    let (status, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w1"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(claim["claimed"], true);
    for field in ["item_id", "item_index", "input", "retry_count"] {
        assert!(claim.get(field).is_some(), "{field} missing in {claim}");
    }
    let item = claim["item_id"].as_str().unwrap().to_string();
    let (status, done) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{item}/complete"),
        t,
        Some(json!({"output": {"title": "Example"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        done,
        json!({"completed": true, "item_id": item, "outcome": "completed"})
    );
    let (status, again) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{item}/complete"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["outcome"], "duplicate");

    // A failure with retry comes back as the next attempt.
    let (_, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w1&count=3"),
        t,
        None,
    )
    .await;
    assert_eq!(claim["items"].as_array().unwrap().len(), 3);
    let failing = claim["items"][0]["item_id"].as_str().unwrap().to_string();
    let (status, failed) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{failing}/fail"),
        t,
        Some(json!({"error_message": "timeout fetching", "retry": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["failed"], false);
    assert_eq!(failed["outcome"], "retried");

    let (status, results) = call(&app, "GET", &format!("/api/v1/jobs/{id}/results"), t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(results["count"], 1);
    assert_eq!(results["results"][0]["output"]["title"], "Example");
    // The cursor is a result id; an item id would restart at the first result.
    let (status, refused) = call(
        &app,
        "GET",
        &format!("/api/v1/jobs/{id}/results?after={item}"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["field"], "after");
    let result_id = results["results"][0]["result_id"].as_str().unwrap();
    let (status, after) = call(
        &app,
        "GET",
        &format!("/api/v1/jobs/{id}/results?after={result_id}"),
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, after["count"].as_u64()),
        (StatusCode::OK, Some(0)),
        "{after}"
    );

    // Giving work back: one delivery, then all the worker holds.
    let kept = claim["items"][1]["item_id"].as_str().unwrap().to_string();
    let release = |worker: &str, item: Option<&str>| match item {
        Some(item) => format!("/api/v1/jobs/{id}/items/{item}/release?worker_instance_id={worker}"),
        None => format!("/api/v1/jobs/{id}/release?worker_instance_id={worker}"),
    };
    let (status, other) = call(&app, "POST", &release("w2", Some(&kept)), t, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "not w2's: {other}");
    assert_eq!(other["error"]["code"], "stale");
    let (status, one) = call(&app, "POST", &release("w1", Some(&kept)), t, None).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["released"], true);
    let (status, all) = call(&app, "POST", &release("w1", None), t, None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["released"], 1, "{all}");

    let (status, list) = call(&app, "GET", "/api/v1/jobs?limit=10", t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 1);

    let (status, cancel) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        t,
        Some(json!({"reason": "done early"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cancel}");
    assert_eq!(cancel["job_id"], id);
    assert_eq!(cancel["status"], "cancelled");
    assert_eq!(cancel["completed_items"], 1);
    assert_eq!(cancel["cancelled_items"], 3);
    assert_eq!(dec(&cancel["credits_refunded"]), Decimal::from(6));

    let (status, conflict) =
        call(&app, "POST", &format!("/api/v1/jobs/{id}/cancel"), t, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["current"]["status"], "cancelled");
    assert_eq!(conflict["current"]["progress"]["cancelled"], 3);

    let (status, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w1"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{claim}");

    let (_, balance) = call(&app, "GET", "/api/v1/credits", t, None).await;
    assert_eq!(dec(&balance["reserved"]), Decimal::ZERO);
    assert_eq!(dec(&balance["spent"]), Decimal::from(7));
    assert_eq!(
        dec(&balance["available"]),
        "93.50".parse::<Decimal>().unwrap()
    );
}

#[tokio::test]
async fn no_token_or_a_bad_token_is_401() {
    let env = TestEnv::new().await;
    let app = env.app();
    for token in [
        None,
        Some("nope"),
        Some("abt_000000000000_0000000000000000000000000000000000000000000000000000000000000000"),
    ] {
        let (status, body) = call(&app, "GET", "/api/v1/jobs", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // A revoked token stops working at once.
    let created = env.bus.create_token(&env.tenant("t")).await.unwrap();
    let (status, _) = call(&app, "GET", "/api/v1/jobs", Some(&created.token), None).await;
    assert_eq!(status, StatusCode::OK);
    env.bus.revoke_token(&created.id).await.unwrap();
    let (status, _) = call(&app, "GET", "/api/v1/jobs", Some(&created.token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_tenants_job_is_404_for_every_operation() {
    let env = TestEnv::new().await;
    let app = env.app();
    let a = env.token("tenant-a").await;
    let b = env.token("tenant-b").await;
    env.grant(&env.tenant("tenant-b"), 100).await;
    let (_, job) = call(&app, "POST", "/api/v1/jobs", Some(&b), Some(job_body(2))).await;
    let id = job["id"].as_str().unwrap().to_string();
    let (_, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=wb"),
        Some(&b),
        None,
    )
    .await;
    let item = claim["item_id"].as_str().unwrap().to_string();

    let attempts = [
        ("GET", format!("/api/v1/jobs/{id}")),
        ("GET", format!("/api/v1/jobs/{id}/results")),
        (
            "POST",
            format!("/api/v1/jobs/{id}/claim?worker_instance_id=wa"),
        ),
        ("POST", format!("/api/v1/jobs/{id}/items/{item}/complete")),
        ("POST", format!("/api/v1/jobs/{id}/items/{item}/fail")),
        ("POST", format!("/api/v1/jobs/{id}/cancel")),
    ];
    for (method, uri) in &attempts {
        let (status, body) = call(&app, method, uri, Some(&a), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
        assert!(!body.to_string().contains("scrape"), "leaked data: {body}");
    }
    let (_, list) = call(&app, "GET", "/api/v1/jobs", Some(&a), None).await;
    assert_eq!(list["count"], 0);
    // Tenant B's job is untouched.
    let (_, job) = call(&app, "GET", &format!("/api/v1/jobs/{id}"), Some(&b), None).await;
    assert_eq!(job["status"], "running");
    assert_eq!(job["progress"]["completed"], 0);
}

#[tokio::test]
async fn bad_input_is_a_4xx_json_error_naming_the_field_and_changes_nothing() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("strict").await;
    env.grant(&env.tenant("strict"), 1000).await;
    let t = Some(token.as_str());
    // Byte for byte: every key of the test, its value and whether it expires.
    let before = env.snapshot().await;

    let mut cases: Vec<(Value, StatusCode, &str)> = Vec::new();
    let with = |field: &str, value: Value| {
        let mut b = job_body(2);
        b[field] = value;
        b
    };
    cases.push((
        with("parallelism", json!(-1)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "parallelism",
    ));
    cases.push((
        with("parallelism", json!("ten")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "parallelism",
    ));
    cases.push((
        with("timeout_per_item", json!(0)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "timeout_per_item",
    ));
    cases.push((
        with("max_retries", json!(-1)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "max_retries",
    ));
    cases.push((
        with("items", json!([])),
        StatusCode::UNPROCESSABLE_ENTITY,
        "items",
    ));
    cases.push((
        with("items", json!("x")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "items",
    ));
    cases.push((
        with("worker_agent", json!("bad agent")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "worker_agent",
    ));
    cases.push((
        with("surprise", json!(1)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "surprise",
    ));
    let mut missing = job_body(2);
    missing.as_object_mut().unwrap().remove("task");
    cases.push((missing, StatusCode::UNPROCESSABLE_ENTITY, "task"));
    for (body, expected, field) in cases {
        let (status, resp) = call(&app, "POST", "/api/v1/jobs", t, Some(body)).await;
        assert_eq!(status, expected, "{field}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{resp}");
    }

    // Syntax errors and oversized bodies.
    let raw = Request::builder()
        .method("POST")
        .uri("/api/v1/jobs")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from("{\"task\": "))
        .unwrap();
    let (status, resp) = call_raw(&app, raw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(resp["error"]["message"].is_string());
    let huge = "x".repeat(2 * 1024 * 1024);
    let raw = Request::builder()
        .method("POST")
        .uri("/api/v1/jobs")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(format!("{{\"task\": \"{huge}\"}}")))
        .unwrap();
    let (status, resp) = call_raw(&app, raw).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(resp["error"]["field"], "body");

    // Bad path and query parameters.
    let (status, resp) = call(&app, "GET", "/api/v1/jobs/not-a-uuid", t, None).await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("job_id"))
    );
    let (status, resp) = call(&app, "GET", "/api/v1/jobs?limit=100000", t, None).await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("limit"))
    );
    let some_id = uuid::Uuid::new_v4();
    let (status, resp) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{some_id}/claim"),
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("worker_instance_id")
        )
    );
    let (status, resp) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{some_id}/claim?worker_instance_id=w&wait_ms=99999999"),
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("wait_ms"))
    );
    let (status, resp) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{some_id}/items/notanid/complete"),
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("item_id"))
    );
    // An id past u64 is refused here, not by Redis as a 503 (issue 16).
    for uri in [
        format!("/api/v1/jobs/{some_id}/items/99999999999999999999-0/complete"),
        format!("/api/v1/jobs/{some_id}/items/1-18446744073709551616/fail"),
    ] {
        let (status, resp) = call(&app, "POST", &uri, t, None).await;
        assert_eq!(
            (status, resp["error"]["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!("item_id")),
            "{uri}: {resp}"
        );
    }
    let (status, resp) = call(
        &app,
        "GET",
        &format!("/api/v1/jobs/{some_id}/results?after=99999999999999999999-0"),
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("after")),
        "{resp}"
    );
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/credits/grant",
        Some(ADMIN_TOKEN),
        Some(json!({"tenant": "strict", "amount": 0.001})),
    )
    .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("amount"))
    );
    // Amounts are parsed exactly as documented or refused: nothing rounded
    // (past 28 digits or otherwise), no panic on the largest decimal, no
    // `+`, `_` or exponent (issue 16).
    for amount in [
        "79228162514264337593543950335",
        "\"79228162514264337593543950335\"",
        "1.000000000000000000000000000001",
        "0.00999999999999999999999999999999",
        "\"0.00999999999999999999999999999999\"",
        "\"1_0\"",
        "\"+5\"",
        "1e2",
        "\"1e2\"",
        "-1",
        "1E400",
    ] {
        let req = axum::http::Request::post("/api/v1/credits/grant")
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(format!(
                r#"{{"tenant": "strict", "amount": {amount}}}"#
            )))
            .unwrap();
        let (status, resp) = common::call_raw(&app, req).await;
        assert_eq!(
            (status, resp["error"]["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!("amount")),
            "{amount}: {resp}"
        );
    }
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/credits/grant",
        Some(ADMIN_TOKEN),
        Some(json!({"tenant": "a{b}", "amount": 1})),
    )
    .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("tenant"))
    );

    assert!(
        env.snapshot().await == before,
        "a rejected request changed Redis"
    );
}

#[tokio::test]
async fn insufficient_credit_is_402_with_required_and_available() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("broke").await;
    env.grant(&env.tenant("broke"), 3).await;
    let (status, resp) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(job_body(10)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{resp}");
    assert_eq!(resp["error"]["code"], "insufficient_credits");
    assert_eq!(dec(&resp["error"]["required"]), Decimal::from(25));
    assert_eq!(dec(&resp["error"]["available"]), Decimal::from(3));
}

#[tokio::test]
async fn a_claim_can_long_poll_until_an_item_is_retried() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("poll").await;
    env.grant(&env.tenant("poll"), 100).await;
    let (_, job) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(job_body(1)),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let (_, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w1"),
        Some(&token),
        None,
    )
    .await;
    let item = claim["item_id"].as_str().unwrap().to_string();

    let waiter = {
        let app = app.clone();
        let token = token.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = call(
                &app,
                "POST",
                &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w2&wait_ms=5000"),
                Some(&token),
                None,
            )
            .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{item}/fail"),
        Some(&token),
        Some(json!({"error_message": "again"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ((status, claim), waited) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["claimed"], true, "{claim}");
    assert_eq!(claim["retry_count"], 1);
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "did not wait: {waited:?}"
    );
}

#[tokio::test]
async fn a_dead_lettered_item_is_listed_and_replayed_once_as_a_new_attempt() {
    let env = TestEnv::with_db().await;
    let app = env.app();
    let tenant = env.tenant("replays");
    let token = env.token("replays").await;
    let t = Some(token.as_str());
    env.grant(&tenant, 100).await;
    let (status, job) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        t,
        Some(json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [1, 2], "max_retries": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let claim = |worker: &'static str| {
        let (app, id) = (app.clone(), id.clone());
        async move {
            let (_, c) = call(
                &app,
                "POST",
                &format!("/api/v1/jobs/{id}/claim?worker_instance_id={worker}&count=2"),
                t,
                None,
            )
            .await;
            c
        }
    };
    let first = claim("w1").await;
    let failing = first["items"][0]["item_id"].as_str().unwrap().to_string();
    let index = first["items"][0]["item_index"].as_i64().unwrap();
    let (status, failed) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{failing}/fail"),
        t,
        Some(json!({"error_message": "bad page", "retry": false})),
    )
    .await;
    assert_eq!(
        (status, failed["failed"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{failed}"
    );

    let (status, page) = call(&app, "GET", "/api/v1/dlq", t, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["count"], 1, "{page}");
    let letter = &page["dead_letters"][0];
    assert_eq!(
        (letter["kind"].as_str(), letter["item_index"].as_i64()),
        (Some("item"), Some(index))
    );
    assert_eq!(letter["reason"], "bad page");
    let entry = letter["entry_id"].as_str().unwrap().to_string();
    let (_, before) = call(&app, "GET", "/api/v1/credits", t, None).await;

    let (status, replayed) = call(
        &app,
        "POST",
        &format!("/api/v1/dlq/{entry}/replay"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    let (status, again) = call(
        &app,
        "POST",
        &format!("/api/v1/dlq/{entry}/replay"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "replayed once: {again}");
    let (_, after) = call(&app, "GET", "/api/v1/credits", t, None).await;
    assert_eq!(
        dec(&after["reserved"]) - dec(&before["reserved"]),
        Decimal::from(2),
        "its price reserved again"
    );
    let (_, page) = call(&app, "GET", "/api/v1/dlq", t, None).await;
    assert_eq!(page["count"], 0, "{page}");

    // It goes out as a new attempt of the same item, and the job completes.
    let second = claim("w2").await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["items"][0]["item_index"].as_i64(), Some(index));
    assert_eq!(second["items"][0]["item_id"], replayed["new_entry_id"]);
    assert_eq!(second["items"][0]["retry_count"], 1);
    for item in [&first["items"][1], &second["items"][0]] {
        let item_id = item["item_id"].as_str().unwrap();
        let (status, done) = call(
            &app,
            "POST",
            &format!("/api/v1/jobs/{id}/items/{item_id}/complete"),
            t,
            Some(json!({"output": "ok"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{done}");
    }
    let (_, job) = call(&app, "GET", &format!("/api/v1/jobs/{id}"), t, None).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        (
            job["progress"]["completed"].as_i64(),
            job["progress"]["failed"].as_i64()
        ),
        (Some(2), Some(0))
    );
    let (_, balance) = call(&app, "GET", "/api/v1/credits", t, None).await;
    assert_eq!(dec(&balance["reserved"]), Decimal::ZERO);
    assert_eq!(dec(&balance["spent"]), Decimal::from(5 + 2 * 2));
    common::drain(&env, &tenant).await;
    let report = common::verify_now(&env).await;
    assert!(report.ok, "{report:?}");

    // An item of a job that has ended is not replayed (its accounting is closed).
    let (_, job2) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        t,
        Some(json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [1], "max_retries": 0})),
    )
    .await;
    let id2 = job2["id"].as_str().unwrap();
    let (_, c) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id2}/claim?worker_instance_id=w1"),
        t,
        None,
    )
    .await;
    let item = c["items"][0]["item_id"].as_str().unwrap();
    call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id2}/items/{item}/fail"),
        t,
        Some(json!({"error_message": "x", "retry": false})),
    )
    .await;
    let (_, page) = call(&app, "GET", "/api/v1/dlq", t, None).await;
    let entry = page["dead_letters"][0]["entry_id"].as_str().unwrap();
    let (status, refused) = call(
        &app,
        "POST",
        &format!("/api/v1/dlq/{entry}/replay"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
}

#[tokio::test]
async fn batch_completions_and_failures_answer_an_outcome_per_item() {
    // Outputs of at most 1,000 bytes: one past it fits in a request.
    let env = TestEnv::with_limits(agentbus::Limits {
        max_payload_bytes: 1000,
        ..Default::default()
    })
    .await;
    let app = env.app();
    let tenant = env.tenant("batches");
    let token = env.token("batches").await;
    let t = Some(token.as_str());
    env.grant(&tenant, 100).await;
    let (_, job) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        t,
        Some(json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [1, 2, 3, 4, 5], "max_retries": 1})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let (_, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w1&count=5"),
        t,
        None,
    )
    .await;
    let ids: Vec<String> = claim["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    let before = env.snapshot().await;
    // Refused as a whole, naming the field: nothing written.
    for (body, field) in [
        (json!({"items": []}), "items"),
        (
            json!({"items": [{"item_id": ids[0]}, {"item_id": "nope"}]}),
            "items[1].item_id",
        ),
        (
            json!({"items": vec![json!({"item_id": ids[0]}); 1001]}),
            "items",
        ),
        (
            json!({"items": [{"item_id": ids[0], "output": 1},
                             {"item_id": ids[1], "output": "x".repeat(2000)}]}),
            "items[1].output",
        ),
    ] {
        let (status, refused) = call(
            &app,
            "POST",
            &format!("/api/v1/jobs/{id}/items/complete"),
            t,
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert_eq!(refused["error"]["field"], field, "{refused}");
    }
    assert_eq!(before, env.snapshot().await, "a refused batch wrote");

    let (status, done) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/complete"),
        t,
        Some(json!({"items": [
            {"item_id": ids[0], "output": "a"},
            {"item_id": ids[1], "output": "b"},
            {"item_id": ids[0], "output": "again"},
            {"item_id": "9-99"},
        ]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["completed"], 2, "{done}");
    let outcomes: Vec<&str> = done["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["completed", "completed", "duplicate", "invalid"]);

    let (status, failed) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/fail"),
        t,
        Some(json!({"items": [
            {"item_id": ids[2], "error_message": "flaky", "retry": true},
            {"item_id": ids[3], "error_message": "broken", "retry": false},
            {"item_id": ids[0], "error_message": "late"},
        ]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    let outcomes: Vec<(&str, &str)> = failed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["item_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (ids[2].as_str(), "retried"),
            (ids[3].as_str(), "failed"),
            (ids[0].as_str(), "duplicate")
        ]
    );
    let (_, job) = call(&app, "GET", &format!("/api/v1/jobs/{id}"), t, None).await;
    assert_eq!(
        (
            job["progress"]["completed"].as_i64(),
            job["progress"]["failed"].as_i64()
        ),
        (Some(2), Some(1)),
        "{job}"
    );
}

#[tokio::test]
async fn results_newest_first_page_back_to_the_first() {
    let env = TestEnv::new().await;
    let app = env.app();
    let tenant = env.tenant("recent");
    let token = env.token("recent").await;
    let t = Some(token.as_str());
    env.grant(&tenant, 100).await;
    let (_, job) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        t,
        Some(json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [0, 1, 2, 3, 4]})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let (_, claim) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/claim?worker_instance_id=w&count=5"),
        t,
        None,
    )
    .await;
    // Completed one at a time, in index order: completion order is index order.
    for item in claim["items"].as_array().unwrap() {
        let item_id = item["item_id"].as_str().unwrap();
        let (status, done) = call(
            &app,
            "POST",
            &format!("/api/v1/jobs/{id}/items/{item_id}/complete"),
            t,
            Some(json!({"output": item["input"]})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{done}");
    }
    let mut seen = Vec::new();
    let mut uri = format!("/api/v1/jobs/{id}/results?order=desc&limit=2");
    for _ in 0..5 {
        let (status, page) = call(&app, "GET", &uri, t, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.push(
            page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["item_index"].as_i64().unwrap())
                .collect::<Vec<_>>(),
        );
        match page["next"].as_str() {
            Some(next) => {
                uri = format!("/api/v1/jobs/{id}/results?order=desc&limit=2&after={next}")
            }
            None => break,
        }
    }
    assert_eq!(seen, vec![vec![4, 3], vec![2, 1], vec![0]]);
    let (status, refused) = call(
        &app,
        "GET",
        &format!("/api/v1/jobs/{id}/results?order=sideways"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["field"], "order");
}
