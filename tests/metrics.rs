//! /metrics after a real workload: every metric named in the observability
//! issue is exported with the right counts, and the Grafana dashboard only
//! asks for metrics that exist. (One test per process: the recorder is global.)

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use agentbus::agents::invoke::InvokeRequest;
use agentbus::agents::messages::OutgoingMessage;
use agentbus::agents::registry::Registration;
use agentbus::blackboard::LockAction;
use agentbus::bus::{AgentBus, Limits};
use agentbus::jobs::{FailOutcome, JobSpec, reclaim};
use agentbus::keys::Ident;
use agentbus::keys::Keyspace;
use agentbus::outbox::sink::{Sink, SinkOptions};
use agentbus::prices::Prices;
use agentbus::reaper;
use axum::http::StatusCode;
use common::{TestEnv, call, eventually};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Samples of the exposition text: `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum of the samples of `name` whose labels contain every `want` pair.
fn value(samples: &HashMap<String, f64>, name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            let (n, labels) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name
                && want
                    .iter()
                    .all(|(l, v)| labels.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_exported_with_the_right_counts_and_the_dashboard_uses_only_those() {
    let env = TestEnv::with_db().await;
    let app = env.app();
    // Per-tenant labels are opt-in (AGENTBUS_METRICS_TENANT_LABEL); this test turns them on.
    agentbus::metrics::set_tenant_label(true);
    let t = env.tenant("observed");
    let tl = [("tenant", "observed")];
    env.grant(&t, 10_000).await;
    let bus = &env.bus;

    // A job with a failure and its retry, and an item failed for good: 4 items, 5 deliveries.
    let job = bus
        .spawn_job(
            &t,
            &JobSpec::new(
                "orc",
                "w",
                "metered",
                vec![json!(1), json!(2), json!(3), json!(4)],
            ),
        )
        .await
        .unwrap();
    let first = bus
        .claim_items(&t, &job.id, "w1", 4, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        bus.fail_item(&t, &job.id, &first[0].item_id, "flaky", true)
            .await
            .unwrap(),
        FailOutcome::Retried { attempt: 1 }
    );
    assert_eq!(
        bus.fail_item(&t, &job.id, &first[3].item_id, "broken", false)
            .await
            .unwrap(),
        FailOutcome::Failed
    );
    let again = bus
        .claim_items(&t, &job.id, "w1", 3, Duration::ZERO)
        .await
        .unwrap();
    let outputs: Vec<_> = first[1..3]
        .iter()
        .chain(&again)
        .map(|c| (c.item_id.clone(), json!("ok")))
        .collect();
    bus.complete_items(&t, &job.id, &outputs).await.unwrap();
    // A second job, cancelled.
    let job2 = bus
        .spawn_job(&t, &JobSpec::new("orc", "w", "metered", vec![json!(1)]))
        .await
        .unwrap();
    bus.cancel_job(&t, &job2.id, "test", "").await.unwrap();

    // A message and an invoke between two agents.
    let a = Ident::new("i", "obs-a").unwrap();
    let b = Ident::new("i", "obs-b").unwrap();
    for who in [&a, &b] {
        bus.register_agent(
            &t,
            &Registration::new("x")
                .unwrap()
                .instance(who.as_str())
                .unwrap(),
        )
        .await
        .unwrap();
    }
    bus.send_message(&t, &OutgoingMessage::new(&a, &b, "request", json!("hello")))
        .await
        .unwrap();
    let responder = {
        let (bus, t, b) = (bus.clone(), t.clone(), b.clone());
        tokio::spawn(async move {
            let mut rx = bus.receiver(&t, &b);
            let mut seen = 0;
            while seen < 2 {
                for m in rx.recv(Duration::from_secs(2)).await.unwrap() {
                    seen += 1;
                    if let Some(id) = m.invoke_id.clone() {
                        bus.respond(&t, &id, &json!("pong"), None, Some(&b))
                            .await
                            .unwrap();
                    }
                    rx.ack(&[m.entry_id.as_str()]).await.unwrap();
                }
            }
        })
    };
    assert!(
        bus.invoke(&t, &InvokeRequest::new(&a, &b, json!("ping")))
            .await
            .unwrap()
            .success
    );
    responder.await.unwrap();

    // A message nobody acknowledges, dead-lettered after one delivery.
    let strict = AgentBus::new(
        env.redis.clone(),
        Keyspace::new(&env.prefix).unwrap(),
        Prices::default(),
        Limits {
            max_deliveries: 1,
            ..Limits::default()
        },
    );
    bus.send_message(
        &t,
        &OutgoingMessage::new(&b, &a, "request", json!("ignored")),
    )
    .await
    .unwrap();
    assert_eq!(
        strict
            .receiver(&t, &a)
            .recv(Duration::from_secs(1))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        strict
            .receiver(&t, &a)
            .recv(Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty()
    );

    // Blackboard writes and a lock.
    let board = bus.blackboard(&t, &Ident::new("ns", "obs").unwrap());
    board.set("x", &json!(1), None, None).await.unwrap();
    board.set("y", &json!(2), None, None).await.unwrap();
    board.increment("x", &json!(1), None).await.unwrap();
    board
        .lock(
            &Ident::new("l", "l").unwrap(),
            LockAction::Acquire,
            &a,
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    // Backend errors are counted where an operation failed: a missing inbox
    // is an outcome (NOGROUP → 404), not one...
    let backend_errors = || async {
        let (_, body) = call(&app, "GET", "/metrics", Some(common::ADMIN_TOKEN), None).await;
        value(
            &parse(body.as_str().unwrap_or_default()),
            "agentbus_backend_errors_total",
            &[("service", "redis")],
        )
    };
    let before = backend_errors().await;
    let mut ghost = bus.receiver(&t, &Ident::new("i", "ghost").unwrap());
    assert!(ghost.recv(Duration::from_millis(10)).await.is_err());
    let observer = env.token("observed").await;
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/agents/ghost/messages/receive",
        Some(&observer),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        backend_errors().await,
        before,
        "an outcome is not a failure"
    );
    // ...while a request Redis refuses is one, counted once: a tenant's
    // balance hash replaced by a string answers WRONGTYPE.
    let broken = env.tenant("broken");
    let mut conn = env.conn().await;
    redis::cmd("SET")
        .arg(bus.keys(&broken).credits())
        .arg("not a hash")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(bus.balance(&broken).await.is_err());
    assert_eq!(
        backend_errors().await,
        before,
        "a library call's error is its caller's to count"
    );
    let broken_token = env.token("broken").await;
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&broken_token), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend_errors().await, before + 1.0);
    // Mended, so the background passes below meet a sound tenant.
    redis::cmd("DEL")
        .arg(bus.keys(&broken).credits())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    // Background passes, then the sink mirrors everything.
    reclaim::reclaim_once(bus).await.unwrap();
    reaper::reap_once(bus).await.unwrap();
    let shutdown = CancellationToken::new();
    let sink = tokio::spawn(
        Sink::new(
            bus.clone(),
            env.pool().clone(),
            SinkOptions::new("obs-sink"),
        )
        .run(shutdown.clone()),
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            bus.outbox_status()
                .await
                .unwrap()
                .iter()
                .all(|s| s.events == 0)
        })
        .await
    );
    shutdown.cancel();
    sink.await.unwrap();

    let token = bus.create_token(&t).await.unwrap().token;
    let (status, _) = call(&app, "GET", "/api/v1/credits", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, "GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "/metrics needs a token");
    let (status, body) = call(&app, "GET", "/metrics", Some(common::ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("metrics are text").to_string();
    let m = parse(&text);

    assert_eq!(
        value(&m, "agentbus_job_spawn_duration_seconds_count", &tl),
        2.0
    );
    assert_eq!(value(&m, "agentbus_job_duration_seconds_count", &tl), 2.0);
    assert_eq!(
        value(
            &m,
            "agentbus_jobs_ended_total",
            &[("tenant", "observed"), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "agentbus_jobs_ended_total",
            &[("tenant", "observed"), ("status", "cancelled")]
        ),
        1.0
    );
    assert_eq!(value(&m, "agentbus_items_claimed_total", &tl), 5.0);
    assert_eq!(value(&m, "agentbus_items_completed_total", &tl), 3.0);
    assert_eq!(value(&m, "agentbus_items_failed_total", &tl), 2.0);
    assert_eq!(value(&m, "agentbus_items_retried_total", &tl), 1.0);
    assert_eq!(value(&m, "agentbus_items_dead_lettered_total", &tl), 1.0);
    assert_eq!(
        value(&m, "agentbus_item_claim_to_complete_seconds_count", &tl),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "agentbus_blackboard_op_duration_seconds_count",
            &[("op", "set")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "agentbus_blackboard_op_duration_seconds_count",
            &[("op", "increment")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "agentbus_blackboard_op_duration_seconds_count",
            &[("op", "lock")]
        ),
        1.0
    );
    // Ledger rows as mirrored: reserves for 2 spawns and the invoke; spends: 2 overheads, one
    // completion batch, the invoke; refunds: the dead-lettered item, the cancellation; charges:
    // 2 messages and the flushed blackboard meter (one event each for writes and locks).
    assert_eq!(
        value(&m, "agentbus_credit_operations_total", &[("op", "reserve")]),
        3.0
    );
    assert_eq!(
        value(&m, "agentbus_credit_operations_total", &[("op", "spend")]),
        4.0
    );
    assert_eq!(
        value(&m, "agentbus_credit_operations_total", &[("op", "refund")]),
        2.0
    );
    assert_eq!(
        value(&m, "agentbus_credit_operations_total", &[("op", "charge")]),
        4.0
    );
    assert_eq!(
        value(&m, "agentbus_credit_operations_total", &[("op", "grant")]),
        1.0
    );
    assert_eq!(
        value(&m, "agentbus_credit_amount_minor_total", &[("op", "grant")]),
        1_000_000.0
    );
    assert_eq!(
        value(
            &m,
            "agentbus_credit_amount_minor_total",
            &[("op", "refund")]
        ),
        400.0
    );
    assert_eq!(
        value(&m, "agentbus_invokes_total", &[("outcome", "success")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "agentbus_invoke_duration_seconds_count",
            &[("outcome", "success")]
        ),
        1.0
    );
    assert_eq!(value(&m, "agentbus_messages_sent_total", &tl), 2.0);
    assert_eq!(
        value(&m, "agentbus_messages_delivered_total", &tl),
        3.0,
        "2 messages and the invoke request"
    );
    assert_eq!(
        value(&m, "agentbus_message_latency_seconds_count", &tl),
        3.0
    );
    assert_eq!(value(&m, "agentbus_messages_dead_lettered_total", &tl), 1.0);
    assert!(value(&m, "agentbus_sink_rows_total", &[]) >= 15.0);
    assert!(value(&m, "agentbus_sink_batch_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(
        value(&m, "agentbus_sink_commit_lag_seconds_count", &[]),
        value(&m, "agentbus_sink_rows_total", &[])
    );
    assert!(
        text.contains("agentbus_sink_lag_events{tenant=\"observed\"}"),
        "lag gauge missing"
    );
    assert!(text.contains("agentbus_sink_lag_seconds{tenant=\"observed\"}"));
    assert!(value(&m, "agentbus_reclaimer_runs_total", &[]) >= 1.0);
    assert!(value(&m, "agentbus_reaper_runs_total", &[]) >= 1.0);
    assert!(value(&m, "agentbus_backend_errors_total", &[("service", "redis")]) >= 1.0);
    assert!(
        value(
            &m,
            "agentbus_http_request_duration_seconds_count",
            &[("status", "2xx")]
        ) >= 1.0
    );
    // No id ever becomes a label.
    for id in [job.id.to_string(), a.to_string()] {
        assert!(!text.contains(&id), "an id leaked into labels: {id}");
    }

    // Every panel of the dashboard queries metrics that exist.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("ops/grafana/dashboards/agentbus.json").unwrap(),
    )
    .unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("agentbus_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(
                    exported.contains(base),
                    "panel {} asks for {name}, not exported",
                    panel["title"]
                );
            }
        }
    }
    // Every exported agentbus metric is shown somewhere.
    let dashboard_text = dashboard.to_string();
    for name in exported.iter().filter(|n| n.starts_with("agentbus_")) {
        assert!(
            dashboard_text.contains(name.as_str()),
            "{name} has no panel"
        );
    }
}
