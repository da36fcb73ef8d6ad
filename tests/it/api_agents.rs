//! The agents, messages and invocations REST API.

use crate::common;
use axum::http::StatusCode;
use common::{TestEnv, call, dec};
use rust_decimal::Decimal;
use serde_json::json;

#[tokio::test]
async fn registry_and_messages_over_http() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("web").await;
    env.grant(&env.tenant("web"), 100).await;
    let t = Some(token.as_str());

    let (status, reg) = call(
        &app,
        "POST",
        "/api/v1/agents/register",
        t,
        Some(json!({"agent_id": "scraper", "capabilities": ["http"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    assert_eq!(reg["registered"], true);
    let a = reg["instance_id"].as_str().unwrap().to_string();
    let (_, reg) = call(
        &app,
        "POST",
        "/api/v1/agents/register",
        t,
        Some(json!({"agent_id": "writer", "instance_id": "writer-1"})),
    )
    .await;
    assert_eq!(reg["instance_id"], "writer-1");

    let (status, hb) = call(
        &app,
        "POST",
        &format!("/api/v1/agents/{a}/heartbeat"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hb,
        json!({"heartbeat": true, "instance_id": a, "status": "running"})
    );
    let (_, one) = call(&app, "GET", &format!("/api/v1/agents/{a}"), t, None).await;
    assert_eq!(one["capabilities"], json!(["http"]));
    let (_, list) = call(&app, "GET", "/api/v1/agents?agent_id=scraper", t, None).await;
    assert_eq!(list["count"], 1);

    let (status, sent) = call(
        &app,
        "POST",
        "/api/v1/agents/writer-1/messages",
        t,
        Some(json!({"from_instance_id": a, "message_type": "request", "payload": {"text": "hi"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let message_id = sent["message_id"].as_str().unwrap().to_string();

    let (_, listed) = call(
        &app,
        "GET",
        "/api/v1/agents/writer-1/messages?status=pending",
        t,
        None,
    )
    .await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["messages"][0]["payload"]["text"], "hi");
    let (_, got) = call(
        &app,
        "POST",
        "/api/v1/agents/writer-1/messages/receive?wait_ms=100",
        t,
        None,
    )
    .await;
    assert_eq!(got["count"], 1);
    assert_eq!(got["messages"][0]["message_id"], message_id.as_str());
    let (_, listed) = call(
        &app,
        "GET",
        "/api/v1/agents/writer-1/messages?status=delivered",
        t,
        None,
    )
    .await;
    assert_eq!(listed["count"], 1);
    // The listing with inbox depths (the console's agents view).
    let (status, agents) = call(&app, "GET", "/api/v1/agents?inbox=true", t, None).await;
    assert_eq!(status, StatusCode::OK, "{agents}");
    let depth = |id: &str| {
        agents["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance_id"] == id)
            .map(|i| i["inbox"].clone())
            .unwrap()
    };
    assert_eq!(
        depth("writer-1"),
        json!({"messages": 1, "delivered_unread": 1})
    );
    assert_eq!(depth(&a), json!({"messages": 0, "delivered_unread": 0}));
    let (_, plain) = call(&app, "GET", "/api/v1/agents", t, None).await;
    assert!(plain["instances"][0].get("inbox").is_none(), "{plain}");
    let (status, read) = call(
        &app,
        "POST",
        &format!("/api/v1/agents/writer-1/messages/{message_id}/read"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/agents/writer-1/messages/{message_id}/read"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "second read");
    let (_, listed) = call(
        &app,
        "GET",
        "/api/v1/agents/writer-1/messages?status=read",
        t,
        None,
    )
    .await;
    assert_eq!(listed["count"], 1);

    // The replies to one message, by its id (as the original looked them up).
    for reply_to in [Some(message_id.as_str()), None] {
        let mut body = json!({"from_instance_id": a, "message_type": "response", "payload": 1});
        if let Some(r) = reply_to {
            body["reply_to_id"] = json!(r);
        }
        let (status, sent) = call(
            &app,
            "POST",
            "/api/v1/agents/writer-1/messages",
            t,
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{sent}");
    }
    let (_, replies) = call(
        &app,
        "GET",
        &format!("/api/v1/agents/writer-1/messages?reply_to_id={message_id}"),
        t,
        None,
    )
    .await;
    assert_eq!(replies["count"], 1, "{replies}");
    assert_eq!(replies["messages"][0]["reply_to_id"], message_id.as_str());

    // Bad input names its field.
    for (uri, body, field) in [
        (
            "/api/v1/agents/register",
            json!({"agent_id": "bad id"}),
            "agent_id",
        ),
        (
            "/api/v1/agents/register",
            json!({"agent_id": "x", "job_id": "nope"}),
            "job_id",
        ),
        (
            "/api/v1/agents/writer-1/messages",
            json!({"from_instance_id": a, "message_type": "a b"}),
            "message_type",
        ),
        (
            "/api/v1/agents/writer-1/messages",
            json!({"message_type": "x"}),
            "from_instance_id",
        ),
    ] {
        let (status, resp) = call(&app, "POST", uri, t, Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{resp}");
    }
    let long = "r".repeat(129);
    for (query, field) in [
        ("limit=501", "limit"),
        (&*format!("reply_to_id={long}"), "reply_to_id"),
    ] {
        let (status, resp) = call(
            &app,
            "GET",
            &format!("/api/v1/agents/writer-1/messages?{query}"),
            t,
            None,
        )
        .await;
        assert_eq!(
            (status, resp["error"]["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!(field))
        );
    }
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/agents/nobody/messages",
        t,
        Some(json!({"from_instance_id": a, "message_type": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = call(&app, "DELETE", "/api/v1/agents/writer-1", t, None).await;
    assert_eq!(status, StatusCode::OK);
    // Kept as stopped for the retention period, listable as such.
    let (status, gone) = call(&app, "GET", "/api/v1/agents/writer-1", t, None).await;
    assert_eq!(
        (status, gone["status"].as_str()),
        (StatusCode::OK, Some("stopped")),
        "{gone}"
    );
    let (_, stopped) = call(&app, "GET", "/api/v1/agents?status=stopped", t, None).await;
    assert_eq!(stopped["count"], 1, "{stopped}");
    assert_eq!(
        stopped["instances"][0]["instance_id"], "writer-1",
        "{stopped}"
    );
    let (status, _) = call(&app, "DELETE", "/api/v1/agents/writer-1", t, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deregistered once");

    // Another tenant sees nothing of it.
    let other = env.token("other").await;
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/v1/agents/{a}"),
        Some(&other),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&app, "GET", "/api/v1/agents", Some(&other), None).await;
    assert_eq!(list["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_and_respond_over_http() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("iv").await;
    env.grant(&env.tenant("iv"), 100).await;
    for instance in ["orc-1", "spec-1"] {
        let (status, _) = call(
            &app,
            "POST",
            "/api/v1/agents/register",
            Some(&token),
            Some(json!({"agent_id": "x", "instance_id": instance})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // The specialist answers over HTTP: receive, then respond.
    let responder = {
        let app = app.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let (_, got) = call(
                &app,
                "POST",
                "/api/v1/agents/spec-1/messages/receive?wait_ms=5000",
                Some(&token),
                None,
            )
            .await;
            let msg = &got["messages"][0];
            assert_eq!(msg["message_type"], "invoke_request");
            let invoke_id = msg["invoke_id"].as_str().unwrap().to_string();
            let x = msg["payload"]["x"].as_i64().unwrap();
            let (status, resp) = call(
                &app,
                "POST",
                "/api/v1/invocations/respond",
                Some(&token),
                Some(json!({"invoke_id": invoke_id, "response_payload": {"y": x + 1}})),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{resp}");
            invoke_id
        })
    };
    let (status, result) = call(
        &app,
        "POST",
        "/api/v1/invocations",
        Some(&token),
        Some(json!({"caller_instance_id": "orc-1", "target_instance_id": "spec-1", "request_payload": {"x": 1}, "timeout_seconds": 10})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let invoke_id = responder.await.unwrap();
    assert_eq!(result["success"], true);
    assert_eq!(result["invoke_id"], invoke_id.as_str());
    assert_eq!(result["response_payload"], json!({"y": 2}));
    assert_eq!(result["timeout"], false);

    let (status, trace) = call(
        &app,
        "GET",
        &format!("/api/v1/invocations/{invoke_id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(trace["status"], "completed");
    assert_eq!(dec(&trace["credits_charged"]), Decimal::from(10));
    assert_eq!(trace["request_payload"], json!({"x": 1}));

    // A second response is refused.
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/invocations/respond",
        Some(&token),
        Some(json!({"invoke_id": invoke_id, "response_payload": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (body, field) in [
        (
            json!({"caller_instance_id": "orc-1", "target_instance_id": "spec-1", "timeout_seconds": 0}),
            "timeout_seconds",
        ),
        (
            json!({"caller_instance_id": "orc-1", "target_instance_id": "spec-1", "timeout_seconds": 301}),
            "timeout_seconds",
        ),
        (
            json!({"caller_instance_id": "orc 1", "target_instance_id": "spec-1"}),
            "caller_instance_id",
        ),
    ] {
        let (status, resp) = call(
            &app,
            "POST",
            "/api/v1/invocations",
            Some(&token),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
        assert_eq!(resp["error"]["field"], field);
    }
    let (status, resp) = call(
        &app,
        "GET",
        "/api/v1/invocations/inv_123",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invoke_id"))
    );
}

/// The original's flow: list the inbox, mark a message read without
/// receiving it. Marked by message id or entry id, it is never delivered —
/// not by the REST receive, not by a blocking Receiver — and both leave
/// no mark behind once they have passed it.
#[tokio::test]
async fn a_listed_message_marked_read_is_never_delivered() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("web").await;
    let tenant = env.tenant("web");
    env.grant(&tenant, 100).await;
    let t = Some(token.as_str());
    for (agent, instance) in [("writer", "w-1"), ("reader", "r-1")] {
        let (status, body) = call(
            &app,
            "POST",
            "/api/v1/agents/register",
            t,
            Some(json!({"agent_id": agent, "instance_id": instance})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let send = |n: u32| {
        let app = app.clone();
        let token = token.clone();
        async move {
            let (status, sent) = call(
                &app,
                "POST",
                "/api/v1/agents/r-1/messages",
                Some(token.as_str()),
                Some(
                    json!({"from_instance_id": "w-1", "message_type": "note", "payload": {"n": n}}),
                ),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{sent}");
        }
    };
    for n in 0..4 {
        send(n).await;
    }
    let (_, listed) = call(&app, "GET", "/api/v1/agents/r-1/messages", t, None).await;
    assert_eq!(listed["count"], 4, "{listed}");
    let by_message_id = listed["messages"][1]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let by_entry_id = listed["messages"][2]["entry_id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [&by_message_id, &by_entry_id] {
        let (status, body) = call(
            &app,
            "POST",
            &format!("/api/v1/agents/r-1/messages/{id}/read"),
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/agents/r-1/messages/{by_message_id}/read"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "marked twice");
    let count = |status: &'static str| {
        let app = app.clone();
        let token = token.clone();
        async move {
            let (_, listed) = call(
                &app,
                "GET",
                &format!("/api/v1/agents/r-1/messages?status={status}"),
                Some(token.as_str()),
                None,
            )
            .await;
            listed["count"].as_u64().unwrap()
        }
    };
    assert_eq!((count("read").await, count("pending").await), (2, 2));

    // The REST receive hands out the other two only.
    let (_, got) = call(
        &app,
        "POST",
        "/api/v1/agents/r-1/messages/receive?count=10",
        t,
        None,
    )
    .await;
    let got = got["messages"].as_array().unwrap();
    let ns: Vec<u64> = got
        .iter()
        .map(|m| m["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![0, 3]);
    for m in got {
        let id = m["message_id"].as_str().unwrap();
        let (status, _) = call(
            &app,
            "POST",
            &format!("/api/v1/agents/r-1/messages/{id}/read"),
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "a delivered one is acknowledged");
    }
    let early = env
        .bus
        .keys(&tenant)
        .inbox_read_early(&agentbus::keys::Ident::new("instance", "r-1").unwrap());
    let mut conn = env.conn().await;
    let marks: u64 = redis::cmd("ZCARD")
        .arg(&early)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(marks, 0, "the receive settled the marks it passed");

    // A blocking reader (the library's Receiver) likewise.
    for n in 4..7 {
        send(n).await;
    }
    let (_, listed) = call(
        &app,
        "GET",
        "/api/v1/agents/r-1/messages?status=pending",
        t,
        None,
    )
    .await;
    let skip = listed["messages"][1]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/agents/r-1/messages/{skip}/read"),
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let me = agentbus::keys::Ident::new("instance", "r-1").unwrap();
    let mut rx = env.bus.receiver(&tenant, &me);
    let mut got = Vec::new();
    for _ in 0..3 {
        for m in rx
            .recv(std::time::Duration::from_millis(100))
            .await
            .unwrap()
        {
            got.push(m.payload.json()["n"].as_u64().unwrap());
            rx.ack(&[m.entry_id.as_str()]).await.unwrap();
        }
    }
    assert_eq!(got, vec![4, 6]);
    let marks: u64 = redis::cmd("ZCARD")
        .arg(&early)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(marks, 0);
    assert_eq!((count("read").await, count("pending").await), (7, 0));
}
