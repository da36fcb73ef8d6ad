//! The sink against real Redis and Postgres: exactly-once mirroring across
//! crashes at every stage, Postgres outages, out-of-order and repeated
//! events, poison events, several sinks at once, and `verify`.

use crate::common;
use std::sync::Arc;
use std::time::Duration;

use agentbus::TenantId;
use agentbus::agents::invoke::InvokeRequest;
use agentbus::agents::messages::OutgoingMessage;
use agentbus::agents::registry::Registration;
use agentbus::jobs::JobSpec;
use agentbus::jobs::worker::Worker;
use agentbus::keys::Ident;
use agentbus::outbox::sink::{Sink, SinkHook, SinkOptions, SinkStage};
use agentbus::outbox::verify::verify;
use axum::http::StatusCode;
use common::{TestEnv, call, eventually};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

fn spec(items: usize) -> JobSpec {
    JobSpec::new(
        "orc",
        "w",
        "sink-test",
        (0..items).map(|i| json!(i)).collect(),
    )
}

/// A mixed workload: a grant, a completed job, a cancelled job, messages and invokes.
async fn workload(env: &TestEnv, tenant: &TenantId) {
    env.grant(tenant, 1000).await;
    let bus = &env.bus;
    let job = bus.spawn_job(tenant, &spec(20)).await.unwrap();
    Worker::new(bus.clone(), tenant.clone(), job.id, "w1")
        .unwrap()
        .concurrency(4)
        .run(|_| async { Ok(json!("ok")) })
        .await
        .unwrap();
    let job2 = bus.spawn_job(tenant, &spec(10)).await.unwrap();
    let got = bus
        .claim_items(tenant, &job2.id, "w2", 4, Duration::ZERO)
        .await
        .unwrap();
    let outputs: Vec<_> = got.iter().map(|c| (c.item_id.clone(), json!(1))).collect();
    bus.complete_items(tenant, &job2.id, &outputs)
        .await
        .unwrap();
    bus.cancel_job(tenant, &job2.id, "test", "half")
        .await
        .unwrap();

    let a = Ident::new("i", "agent-a").unwrap();
    let b = Ident::new("i", "agent-b").unwrap();
    for who in [&a, &b] {
        let reg = Registration::new("x")
            .unwrap()
            .instance(who.as_str())
            .unwrap();
        bus.register_agent(tenant, &reg).await.unwrap();
    }
    for i in 0..3 {
        bus.send_message(tenant, &OutgoingMessage::new(&a, &b, "request", json!(i)))
            .await
            .unwrap();
    }
    // One invoke answered, one timed out.
    let bus2 = bus.clone();
    let t2 = tenant.clone();
    let b2 = b.clone();
    let responder = tokio::spawn(async move {
        loop {
            let Some(m) = bus2
                .wait_for_message(&t2, &b2, Duration::from_secs(3))
                .await
                .unwrap()
            else {
                return;
            };
            if let Some(id) = m.invoke_id
                && m.payload == json!("answer me")
            {
                bus2.respond(&t2, &id, &json!({"ok": true}), None, None)
                    .await
                    .unwrap();
            }
        }
    });
    let mut req = InvokeRequest::new(&a, &b, json!("answer me"));
    req.job_id = Some(job.id);
    assert!(bus.invoke(tenant, &req).await.unwrap().success);
    let mut req = InvokeRequest::new(&a, &b, json!("ignore me"));
    req.timeout_seconds = 1;
    assert!(bus.invoke(tenant, &req).await.unwrap().timeout);
    responder.abort();
}

/// Ledger events waiting in the tenant's outbox.
async fn ledger_events_in_outbox(env: &TestEnv, tenant: &TenantId) -> usize {
    let mut conn = env.conn().await;
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(env.bus.keys(tenant).outbox())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(items) = v else {
        return 0;
    };
    items
        .iter()
        .filter(|v| {
            agentbus::codec::StreamEntry::from_value(v)
                .unwrap()
                .text("type")
                == Some("ledger")
        })
        .count()
}

async fn drain(env: &TestEnv, consumer: &str, tenant: &TenantId) {
    let sink = Sink::new(
        env.bus.clone(),
        env.pool().clone(),
        SinkOptions::new(consumer),
    );
    while sink.drain_once(tenant).await.unwrap().events > 0 {}
}

async fn ledger_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM agents.credit_ledger")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_at_any_stage_leaves_every_event_exactly_once() {
    for stage in [SinkStage::Read, SinkStage::Written, SinkStage::Committed] {
        let env = TestEnv::with_db().await;
        let tenant = env.tenant("crash");
        workload(&env, &tenant).await;
        let produced = ledger_events_in_outbox(&env, &tenant).await;
        assert!(produced > 10);

        // The sink hangs at `stage` in its first batch; then it is killed.
        let (reached_tx, mut reached) = tokio::sync::mpsc::channel::<()>(1);
        let hook: SinkHook = Arc::new(move |s| {
            let reached_tx = reached_tx.clone();
            Box::pin(async move {
                if s == stage {
                    let _ = reached_tx.send(()).await;
                    std::future::pending::<()>().await;
                }
            })
        });
        let mut options = SinkOptions::new("sink-a");
        options.batch = 7;
        options.hook = Some(hook);
        let sink = Sink::new(env.bus.clone(), env.pool().clone(), options);
        let task = tokio::spawn(sink.run(CancellationToken::new()));
        reached.recv().await.unwrap();
        task.abort();
        let _ = task.await;

        // Restarted under the same name, it finishes the job.
        drain(&env, "sink-a", &tenant).await;
        assert_eq!(
            ledger_rows(env.pool()).await as usize,
            produced,
            "stage {stage:?}"
        );
        let report = verify(&env.bus, env.pool(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(report.ok, "stage {stage:?}: {}", report.to_table());
        let audit: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM agents.invoke_audit WHERE status <> 'pending'",
        )
        .fetch_one(env.pool())
        .await
        .unwrap();
        assert_eq!(audit, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unavailable_then_restored_loses_and_doubles_nothing() {
    let mut env = TestEnv::new().await;
    // The sink's database does not exist yet: every connection is refused.
    let name = format!(
        "agentbus_test_late_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let url = common::database_url_for(&name);
    let pool = agentbus::db::connect_lazy(&url, 2).unwrap();
    let shutdown = CancellationToken::new();
    let sink = Sink::new(env.bus.clone(), pool.clone(), SinkOptions::new("sink-late"));
    let task = tokio::spawn(sink.run(shutdown.clone()));

    let tenant = env.tenant("outage");
    workload(&env, &tenant).await;
    let produced = ledger_events_in_outbox(&env, &tenant).await;
    let status = env.bus.outbox_status().await.unwrap();
    assert!(
        status.iter().any(|s| s.events > 0),
        "lag must be visible: {status:?}"
    );

    // Restore Postgres (create and migrate the database): everything arrives.
    let admin = PgPool::connect(&common::admin_database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let direct = PgPool::connect(&url).await.unwrap();
    agentbus::db::migrate_up(&direct).await.unwrap();
    env.db = Some(common::TestDb {
        name,
        url,
        pool: direct,
    });

    let caught_up = eventually(Duration::from_secs(30), || async {
        env.bus
            .outbox_status()
            .await
            .unwrap()
            .iter()
            .all(|s| s.events == 0)
    })
    .await;
    assert!(caught_up, "sink did not catch up");
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(ledger_rows(env.pool()).await as usize, produced);
    let report = verify(&env.bus, env.pool(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(report.ok, "{}", report.to_table());
}

/// Appends a raw event to the outbox.
async fn xadd(env: &TestEnv, tenant: &TenantId, fields: &[(&str, Vec<u8>)]) {
    let mut conn = env.conn().await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(env.bus.keys(tenant).outbox()).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(v.as_slice());
    }
    let _: String = cmd.query_async(&mut conn).await.unwrap();
}

fn s(v: &str) -> Vec<u8> {
    v.as_bytes().to_vec()
}

#[tokio::test]
async fn repeated_and_out_of_order_events_converge() {
    let env = TestEnv::with_db().await;
    let tenant = env.tenant("order");
    env.bus.register_tenant(&tenant).await.unwrap();
    let request = agentbus::codec::encode(&json!({"q": 1})).unwrap();
    let response = agentbus::codec::encode(&json!({"a": 2})).unwrap();
    let invoke = |kind: &str, status: &str, id: &str| -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![
            ("type", s(kind)),
            ("id", s(id)),
            ("ts", s("1700000001000")),
            ("tenant", s("order")),
            ("invoke_id", s("inv_00000000000000aa")),
            ("caller", s("c1")),
            ("target", s("t1")),
            ("job", s("")),
            ("request", request.clone()),
            ("status", s(status)),
            ("started_at", s("1700000000000")),
        ];
        if status != "pending" {
            f.push(("response", response.clone()));
            f.push(("completed_at", s("1700000075000")));
            f.push(("duration_ms", s("75000")));
            f.push(("credits_charged", s("1000")));
        }
        f
    };
    // The end arrives first, twice, then the start.
    xadd(&env, &tenant, &invoke("invoke_end", "completed", "e1.2")).await;
    xadd(&env, &tenant, &invoke("invoke_end", "completed", "e1.2")).await;
    drain(&env, "s1", &tenant).await;
    xadd(&env, &tenant, &invoke("invoke_start", "pending", "e1.1")).await;
    // A ledger event delivered twice counts once.
    let grant = vec![
        ("type", s("ledger")),
        ("id", s("g1.1")),
        ("ts", s("1700000000000")),
        ("tenant", s("order")),
        ("job", s("")),
        ("op", s("grant")),
        ("skill", s("grant")),
        ("amount", s("12345")),
        ("ctx", agentbus::codec::encode(&json!({})).unwrap()),
    ];
    xadd(&env, &tenant, &grant).await;
    xadd(&env, &tenant, &grant).await;
    drain(&env, "s2", &tenant).await;
    xadd(&env, &tenant, &grant).await;
    drain(&env, "s1", &tenant).await;

    let row: (String, Option<serde_json::Value>, Option<i32>, Option<Decimal>, serde_json::Value) = sqlx::query_as(
        "SELECT status, response_payload, duration_ms, credits_charged, request_payload FROM agents.invoke_audit",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(row.0, "completed");
    assert_eq!(row.1, Some(json!({"a": 2})));
    assert_eq!(row.2, Some(75_000), "duration past 60 s kept exactly");
    assert_eq!(row.3, Some(Decimal::from(10)));
    assert_eq!(row.4, json!({"q": 1}));
    let (rows, total): (i64, Decimal) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM agents.credit_ledger), total_credits FROM agents.credit_balances WHERE tenant_id = 'order'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(total, "123.45".parse::<Decimal>().unwrap());
}

#[tokio::test]
async fn u0000_in_events_of_an_older_version_is_mended_not_stranded() {
    let env = TestEnv::with_db().await;
    let tenant = env.tenant("older");
    env.bus.register_tenant(&tenant).await.unwrap();
    let job = uuid::Uuid::new_v4().to_string();
    // What a version that did not check text at the edge could append.
    xadd(
        &env,
        &tenant,
        &[
            ("type", s("cancel")),
            ("id", s("c1.1")),
            ("ts", s("1700000000000")),
            ("job", s(&job)),
            ("cancelled_by", s("ops\u{0}")),
            ("reason", s("bad\u{0}reason")),
            ("items_completed", s("0")),
            ("items_cancelled", s("2")),
            ("refunded", s("400")),
        ],
    )
    .await;
    xadd(
        &env,
        &tenant,
        &[
            ("type", s("ledger")),
            ("id", s("g1.1")),
            ("ts", s("1700000000000")),
            ("job", s("")),
            ("op", s("grant")),
            ("skill", s("grant")),
            ("amount", s("5000")),
            (
                "ctx",
                agentbus::codec::encode(&json!({"reason": "promo\u{0}", "k\u{0}": 1})).unwrap(),
            ),
        ],
    )
    .await;
    drain(&env, "s1", &tenant).await;
    assert!(
        env.bus
            .stranded_events(&tenant, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (by, reason): (String, String) =
        sqlx::query_as("SELECT cancelled_by, reason FROM agents.job_cancellations")
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!(
        (by.as_str(), reason.as_str()),
        ("ops\u{FFFD}", "bad\u{FFFD}reason")
    );
    let context: serde_json::Value =
        sqlx::query_scalar("SELECT context FROM agents.credit_ledger WHERE event_id = 'g1.1'")
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!(context, json!({"reason": "promo\u{FFFD}", "k\u{FFFD}": 1}));
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_does_not_block_the_stream() {
    let env = TestEnv::with_db().await;
    let tenant = env.tenant("poison");
    env.grant(&tenant, 5).await;
    xadd(
        &env,
        &tenant,
        &[
            ("type", s("ledger")),
            ("id", s("bad.1")),
            ("ts", s("1")),
            ("op", s("grant")),
            ("skill", s("x")),
            ("amount", s("abc")),
        ],
    )
    .await;
    // Parses, but Postgres refuses it (operation outside the CHECK constraint).
    xadd(
        &env,
        &tenant,
        &[
            ("type", s("ledger")),
            ("id", s("bad.2")),
            ("ts", s("1")),
            ("job", s("")),
            ("op", s("steal")),
            ("skill", s("x")),
            ("amount", s("100")),
            ("ctx", agentbus::codec::encode(&json!({})).unwrap()),
        ],
    )
    .await;
    env.grant(&tenant, 7).await;
    drain(&env, "s1", &tenant).await;
    let rows: Vec<(String, Decimal)> =
        sqlx::query_as("SELECT skill, amount FROM agents.credit_ledger ORDER BY id")
            .fetch_all(env.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "both good grants written: {rows:?}");
    // Both are stranded, visibly: listed with their reasons, counted by the
    // status and the metric's source, and verify fails naming the tenant.
    let stranded = env.bus.stranded_events(&tenant, None, 10).await.unwrap();
    let ids: Vec<&str> = stranded
        .iter()
        .map(|e| e.event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bad.1", "bad.2"], "{stranded:?}");
    assert!(stranded[0].reason.contains("amount"), "{stranded:?}");
    assert!(stranded[1].reason.contains("check"), "{stranded:?}");
    assert!(
        env.bus
            .dead_letters(&tenant, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let status = env.bus.outbox_status().await.unwrap();
    let mine = status.iter().find(|s| s.tenant == tenant.as_str()).unwrap();
    assert_eq!((mine.events, mine.stranded), (0, 2));
    let report = verify(&env.bus, env.pool(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!report.ok);
    let table = report.to_table();
    assert!(
        table.contains("poison: 2 outbox event(s) refused by Postgres"),
        "{table}"
    );
    // Junk that can never be written: discarded on purpose, verify is clean.
    let entry_ids: Vec<String> = stranded.iter().map(|e| e.entry_id.clone()).collect();
    assert_eq!(
        env.bus.discard_stranded(&tenant, &entry_ids).await.unwrap(),
        2
    );
    let report = verify(&env.bus, env.pool(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(report.ok, "{}", report.to_table());
}

#[tokio::test]
async fn an_event_postgres_refuses_is_replayed_once_the_cause_is_fixed() {
    let env = TestEnv::with_db().await;
    let tenant = env.tenant("repair");
    // A constraint an operator added by mistake refuses grants above 100.
    sqlx::query("ALTER TABLE agents.credit_ledger ADD CONSTRAINT too_strict CHECK (amount <= 100)")
        .execute(env.pool())
        .await
        .unwrap();
    env.grant(&tenant, 5).await;
    env.grant(&tenant, 500).await;
    env.grant(&tenant, 7).await;
    drain(&env, "s1", &tenant).await;
    let stranded = env.bus.stranded_events(&tenant, None, 10).await.unwrap();
    assert_eq!(stranded.len(), 1, "{stranded:?}");
    assert_eq!(stranded[0].event["amount"], "50000");
    let report = verify(&env.bus, env.pool(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!report.ok, "a stranded grant must fail verify");
    assert_eq!(report.tenants[0].stranded_events, 1);
    assert_ne!(report.tenants[0].redis, report.tenants[0].ledger);

    sqlx::query("ALTER TABLE agents.credit_ledger DROP CONSTRAINT too_strict")
        .execute(env.pool())
        .await
        .unwrap();
    let ids = vec![stranded[0].entry_id.clone()];
    let done = env.bus.replay_stranded(&tenant, &ids).await.unwrap();
    assert_eq!((done.replayed, done.missing), (1, 0));
    // A second replay of the same entry finds nothing to do.
    let again = env.bus.replay_stranded(&tenant, &ids).await.unwrap();
    assert_eq!((again.replayed, again.missing), (0, 1));
    drain(&env, "s1", &tenant).await;
    // Writing the same event twice (an operator replaying a copy) adds nothing.
    let mut conn = env.conn().await;
    let _: String = redis::cmd("XADD")
        .arg(env.bus.keys(&tenant).outbox())
        .arg("*")
        .arg(
            stranded[0]
                .event
                .iter()
                .filter(|(k, _)| k.as_str() != "ctx")
                .flat_map(|(k, v)| [k.clone(), v.as_str().unwrap().to_string()])
                .collect::<Vec<_>>(),
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    drain(&env, "s1", &tenant).await;
    let report = verify(&env.bus, env.pool(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(report.ok, "{}", report.to_table());
    assert_eq!(report.tenants[0].ledger.total, Decimal::from(512));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents.credit_ledger")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(rows, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_is_clean_after_a_thousand_by_fifty_job_with_cancellations_and_invokes_and_finds_tampering()
 {
    let env = TestEnv::with_db().await;
    let shutdown = CancellationToken::new();
    // Three sinks at once, each its own consumer.
    let mut sinks = Vec::new();
    for i in 0..3 {
        let mut options = SinkOptions::new(&format!("sink-{i}"));
        options.batch = 50;
        let sink = Sink::new(env.bus.clone(), env.pool().clone(), options);
        sinks.push(tokio::spawn(sink.run(shutdown.clone())));
    }
    let tenant = env.tenant("big");
    env.grant(&tenant, 10_000).await;
    let job = env.bus.spawn_job(&tenant, &spec(1000)).await.unwrap();
    let mut workers = Vec::new();
    for w in 0..50 {
        let worker =
            Worker::new(env.bus.clone(), tenant.clone(), job.id, &format!("w{w}")).unwrap();
        workers.push(tokio::spawn(worker.run(|_| async { Ok(json!(1)) })));
    }
    for w in workers {
        w.await.unwrap().unwrap();
    }
    workload(&env, &tenant).await;
    let other = env.tenant("other");
    workload(&env, &other).await;

    let caught_up = eventually(Duration::from_secs(30), || async {
        env.bus
            .outbox_status()
            .await
            .unwrap()
            .iter()
            .all(|s| s.events == 0)
    })
    .await;
    assert!(caught_up);
    shutdown.cancel();
    for s in sinks {
        s.await.unwrap();
    }
    let report = verify(&env.bus, env.pool(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(report.ok, "{}", report.to_table());
    assert_eq!(report.tenants.len(), 2);
    assert!(report.jobs.len() >= 5, "{}", report.to_table());
    let dupes: i64 =
        sqlx::query_scalar("SELECT COUNT(*) - COUNT(DISTINCT event_id) FROM agents.credit_ledger")
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!(dupes, 0);
    let job_row: (String, i32) =
        sqlx::query_as("SELECT status, completed_items FROM agents.jobs WHERE id = $1")
            .bind(job.id)
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!(job_row, ("completed".to_string(), 1000));
    let cancels: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents.job_cancellations")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(cancels, 2);

    // verify notices a difference.
    sqlx::query("UPDATE agents.credit_balances SET spent_credits = spent_credits + 0.01 WHERE tenant_id = 'big'")
        .execute(env.pool())
        .await
        .unwrap();
    let report = verify(&env.bus, env.pool(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!report.ok);
    assert!(report.to_table().contains("NO"));

    // The CLI agrees and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentbus"))
        .env("REDIS_URL", common::redis_url())
        .env("DATABASE_URL", &env.db.as_ref().unwrap().url)
        .env("AGENTBUS_PREFIX", &env.prefix)
        .args(["verify", "--wait-secs", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("DIFFERENCES"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_queryable_over_http_once_mirrored() {
    let env = TestEnv::with_db().await;
    let tenant = env.tenant("audit");
    workload(&env, &tenant).await;
    drain(&env, "s1", &tenant).await;
    let token = env.bus.create_token(&tenant).await.unwrap().token;
    let app = env.app();

    let (status, list) = call(&app, "GET", "/api/v1/invocations", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["count"], 2);
    let (_, timeouts) = call(
        &app,
        "GET",
        "/api/v1/invocations?status=timeout",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(timeouts["count"], 1);
    assert!(timeouts["invocations"][0]["duration_ms"].as_i64().unwrap() >= 1000);
    let (_, stats) = call(
        &app,
        "GET",
        "/api/v1/invocations/stats?since_hours=1",
        Some(&token),
        None,
    )
    .await;
    let by_status = stats["by_status"].as_array().unwrap();
    assert_eq!(by_status.len(), 2, "{stats}");

    // Once Redis forgot it, the trace comes from Postgres.
    let id = list["invocations"][0]["invoke_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut conn = env.conn().await;
    let _: () = redis::cmd("DEL")
        .arg(env.bus.keys(&tenant).invoke(&id))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (status, trace) = call(
        &app,
        "GET",
        &format!("/api/v1/invocations/{id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{trace}");
    assert_eq!(trace["invoke_id"], id.as_str());
    // Another tenant cannot see it.
    let other = env.token("someone").await;
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/v1/invocations/{id}"),
        Some(&other),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&app, "GET", "/api/v1/invocations", Some(&other), None).await;
    assert_eq!(list["count"], 0);
}

/// A replay of more stranded events than one script call moves (100) goes
/// in chunks: each event back in the outbox once, ids already gone counted
/// as missing, the stranded stream left empty.
#[tokio::test]
async fn a_large_replay_moves_each_stranded_event_once_in_chunks() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("replay");
    let keys = env.bus.keys(&tenant);
    let mut conn = env.conn().await;
    let mut ids = Vec::new();
    for i in 0..250 {
        let id: String = redis::cmd("XADD")
            .arg(keys.outbox_dead())
            .arg("*")
            .arg("m.type")
            .arg("ledger")
            .arg("m.id")
            .arg(format!("stranded.{i}"))
            .arg("reason")
            .arg("test")
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(id);
    }
    ids.extend(["1-1".to_string(), "2-2".to_string()]);
    let out = env.bus.replay_stranded(&tenant, &ids).await.unwrap();
    assert_eq!((out.replayed, out.missing), (250, 2));
    let left: i64 = redis::cmd("XLEN")
        .arg(keys.outbox_dead())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let back: redis::Value = redis::cmd("XRANGE")
        .arg(keys.outbox())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(back) = back else {
        panic!("{back:?}")
    };
    let mut seen: Vec<String> = back
        .iter()
        .map(|v| {
            let e = agentbus::codec::StreamEntry::from_value(v).unwrap();
            String::from_utf8(e.get("id").unwrap().to_vec()).unwrap()
        })
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..250).map(|i| format!("stranded.{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
}
