//! Money stays exact whatever the input: text the mirror cannot hold is
//! refused where it enters, no reservation depends on a TTL, refused
//! invocations are audited, a blackboard sum cannot overflow, a broadcast
//! is all or nothing, every money script checks its arguments before its
//! first write, and `verify` sees what it used to miss.

use crate::common;
use std::time::Duration;

use agentbus::agents::invoke::InvokeRequest;
use agentbus::agents::registry::Registration;
use agentbus::blackboard::Fence;
use agentbus::jobs::{AggregateInto, CompleteOutcome, JobSpec};
use agentbus::keys::Ident;
use agentbus::{Error, TenantId};
use axum::http::StatusCode;
use common::{ADMIN_TOKEN, TestEnv, call, dec, drain, pending_invoke, verify_now};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

fn id(s: &str) -> Ident {
    Ident::new("instance_id", s).unwrap()
}

async fn register(env: &TestEnv, t: &TenantId, agent: &str, instance: &str) -> Ident {
    register_in(env, t, agent, instance, None).await
}

async fn register_in(
    env: &TestEnv,
    t: &TenantId,
    agent: &str,
    instance: &str,
    job: Option<Uuid>,
) -> Ident {
    let mut reg = Registration::new(agent)
        .unwrap()
        .instance(instance)
        .unwrap();
    reg.job_id = job;
    id(&env.bus.register_agent(t, &reg).await.unwrap().instance_id)
}

/// Every control character, plus a few ordinary ones around them.
fn control_characters() -> impl Iterator<Item = char> {
    (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_bound_for_postgres_is_checked_where_it_enters() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("text");
    let token = env.token("text").await;
    let app = env.app();
    env.grant(&t, 1000).await;
    let caller = register(&env, &t, "orc", "caller").await;
    let target = register(&env, &t, "spec", "target").await;
    let spec = JobSpec::new("orc", "w", "task", vec![json!(1), json!(2)]);
    let job = env.bus.spawn_job(&t, &spec).await.unwrap().id;

    let mut accepted_reasons = Vec::new();
    for c in control_characters() {
        let text = format!("a{c}b");
        let whitespace = matches!(c, '\t' | '\n' | '\r');
        // Cancel reason and canceller; admin grant reason.
        for (field, body) in [
            ("reason", json!({ "reason": text })),
            ("cancelled_by", json!({ "cancelled_by": text })),
        ] {
            if whitespace {
                continue;
            }
            let before = env.snapshot().await;
            let (status, answer) = call(
                &app,
                "POST",
                &format!("/api/v1/jobs/{job}/cancel"),
                Some(&token),
                Some(body),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "U+{:04X}",
                c as u32
            );
            assert_eq!(answer["error"]["field"], field, "{answer}");
            assert_eq!(
                before,
                env.snapshot().await,
                "{field} U+{:04X} wrote",
                c as u32
            );
        }
        let before = env.snapshot().await;
        let (status, answer) = call(
            &app,
            "POST",
            "/api/v1/credits/grant",
            Some(ADMIN_TOKEN),
            Some(json!({ "tenant": "text", "amount": "1", "reason": text })),
        )
        .await;
        if whitespace {
            assert_eq!(status, StatusCode::OK, "{answer}");
            accepted_reasons.push(text.clone());
        } else {
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "U+{:04X}",
                c as u32
            );
            assert_eq!(answer["error"]["field"], "reason", "{answer}");
            assert_eq!(
                before,
                env.snapshot().await,
                "grant U+{:04X} wrote",
                c as u32
            );
        }
        // An invocation's error text (plain text) and payloads (JSON, where
        // only U+0000 is refused).
        let err = env
            .bus
            .respond(&t, "inv_0000000000000000", &json!({}), Some(&text), None)
            .await;
        if whitespace {
            assert!(matches!(err, Err(Error::NotFound(_))), "{err:?}");
        } else {
            assert!(
                matches!(&err, Err(Error::Invalid { field, .. }) if field == "error"),
                "U+{:04X}: {err:?}",
                c as u32
            );
        }
        let payload = json!({ "k": text });
        let refused = env
            .bus
            .invoke(
                &t,
                &InvokeRequest::new(&caller, &id("ghost"), payload.clone()),
            )
            .await;
        if c == '\0' {
            assert!(
                matches!(&refused, Err(Error::Invalid { field, .. }) if field == "request_payload"),
                "{refused:?}"
            );
        } else {
            assert!(
                matches!(refused, Err(Error::InvokeRefused { .. })),
                "{refused:?}"
            );
        }
        let nul_key = json!({ "k\u{0}": 1 });
        let answered = env
            .bus
            .respond(&t, "inv_0000000000000000", &nul_key, None, None)
            .await;
        assert!(
            matches!(&answered, Err(Error::Invalid { field, .. }) if field == "response_payload"),
            "{answered:?}"
        );
    }
    // A pending invocation cannot be answered with U+0000 in any form, and
    // the refusals leave it pending; a proper answer then ends it.
    let (task, invoke_id) = pending_invoke(&env, &t, &caller, &target, 10)
        .await
        .expect("pending");
    let before = env.snapshot().await;
    for (response, error) in [
        (json!({"a": "x\u{0}"}), None),
        (json!(["\u{0}"]), None),
        (json!({}), Some("boom\u{0}")),
    ] {
        let r = env
            .bus
            .respond(&t, &invoke_id, &response, error, Some(&target))
            .await;
        assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
        assert_eq!(before, env.snapshot().await);
    }
    env.bus
        .respond(
            &t,
            &invoke_id,
            &json!({"ok": "tab\there"}),
            None,
            Some(&target),
        )
        .await
        .unwrap();
    assert!(task.await.unwrap().unwrap().success);
    // A text with a newline is mirrored exactly.
    env.bus
        .cancel_job(&t, &job, "ops\tteam", "line one\nline two\r")
        .await
        .unwrap();
    drain(&env, &t).await;
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());
    let (by, reason): (String, String) = sqlx::query_as(
        "SELECT cancelled_by, reason FROM agents.job_cancellations WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(
        (by.as_str(), reason.as_str()),
        ("ops\tteam", "line one\nline two\r")
    );
    let mirrored: Vec<String> = sqlx::query_scalar(
        "SELECT context->>'reason' FROM agents.credit_ledger
          WHERE operation = 'grant' AND context->>'by' = 'admin' ORDER BY id",
    )
    .fetch_all(env.pool())
    .await
    .unwrap();
    assert_eq!(mirrored, accepted_reasons);
    let response: serde_json::Value =
        sqlx::query_scalar("SELECT response_payload FROM agents.invoke_audit WHERE invoke_id = $1")
            .bind(&invoke_id)
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!(response, json!({"ok": "tab\there"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoke_reservation_never_depends_on_a_ttl() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("ttl");
    env.grant(&t, 100).await;
    let caller = register(&env, &t, "orc", "caller").await;
    let target = register(&env, &t, "spec", "target").await;
    let (task, invoke_id) = pending_invoke(&env, &t, &caller, &target, 1)
        .await
        .expect("pending");
    // The caller vanishes before its own timer ends the invocation.
    task.abort();
    let key = env.bus.keys(&t).invoke(&invoke_id);
    let mut conn = env.conn().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "a pending invocation's hash must not expire");
    assert_eq!(
        env.bus.balance(&t).await.unwrap().reserved,
        Decimal::from(10)
    );
    drain(&env, &t).await;
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());
    assert_eq!(report.tenants[0].live_reservations, Decimal::from(10));
    // Whenever a sweeper runs again — however late — it releases it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(env.bus.expire_due_invokes(&t).await.unwrap(), 1);
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(
        (b.reserved.decimal(), b.spent.decimal()),
        (Decimal::ZERO, Decimal::ZERO)
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0,
        "an ended invocation is kept for its retention only"
    );
    drain(&env, &t).await;
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_invocations_are_audited_with_their_reason() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("refused");
    let token = env.token("refused").await;
    let app = env.app();
    env.grant(&t, 5).await;
    register(&env, &t, "orc", "caller").await;
    register(&env, &t, "spec", "target").await;
    let before = env.bus.balance(&t).await.unwrap();
    let mut refused = Vec::new();
    for (target, status, reason) in [
        ("ghost", StatusCode::NOT_FOUND, "unknown_target"),
        // The invoke price (10) is more than the 5 granted.
        (
            "target",
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
        ),
    ] {
        let (got, body) = call(
            &app,
            "POST",
            "/api/v1/invocations",
            Some(&token),
            Some(json!({
                "caller_instance_id": "caller",
                "target_instance_id": target,
                "request_payload": {"q": 1},
            })),
        )
        .await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["reason"], reason, "{body}");
        let invoke_id = body["error"]["invoke_id"].as_str().unwrap().to_string();
        let (got, one) = call(
            &app,
            "GET",
            &format!("/api/v1/invocations/{invoke_id}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(got, StatusCode::OK, "{one}");
        assert_eq!(one["status"], "failed");
        refused.push((invoke_id, reason));
    }
    assert_eq!(env.bus.balance(&t).await.unwrap(), before);
    drain(&env, &t).await;
    for (invoke_id, reason) in &refused {
        let (status, error, charged): (String, String, Option<Decimal>) = sqlx::query_as(
            "SELECT status, error_message, credits_charged FROM agents.invoke_audit WHERE invoke_id = $1",
        )
        .bind(invoke_id)
        .fetch_one(env.pool())
        .await
        .unwrap();
        assert_eq!(status, "failed");
        assert!(error.starts_with(reason), "{error}");
        assert_eq!(charged, Some(Decimal::ZERO));
    }
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackboard_sum_past_i64_stays_exact_and_jobs_aggregating_into_it_complete() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("bbsum");
    env.grant(&t, 10_000).await;
    let ns = Ident::new("namespace", "totals").unwrap();
    let bb = env.bus.blackboard(&t, &ns);
    // 1100 values of 9e9 (9e15 micro-units each): past i64 (~9.22e18) from
    // the 1025th on, where HINCRBY used to overflow after charging.
    let n: i64 = 1100;
    for i in 0..n {
        bb.set(
            &format!("k{i}"),
            &json!(9_000_000_000i64),
            None,
            None::<&Fence>,
        )
        .await
        .unwrap();
    }
    let agg = bb.aggregate().await.unwrap();
    assert_eq!(agg.count, n);
    assert_eq!(agg.sum, Decimal::from(9_000_000_000i64 * n));
    // A job aggregating into the same namespace completes, charges and ends.
    let mut spec = JobSpec::new("orc", "w", "task", vec![json!(1), json!(2)]);
    spec.aggregate = Some(AggregateInto {
        namespace: ns.clone(),
        field: None,
    });
    let job = env.bus.spawn_job(&t, &spec).await.unwrap().id;
    let items = env
        .bus
        .claim_items(&t, &job, "w1", 2, Duration::ZERO)
        .await
        .unwrap();
    let outputs: Vec<(String, serde_json::Value)> = items
        .iter()
        .map(|i| (i.item_id.clone(), json!(-8_999_999_999.5)))
        .collect();
    let outcomes = env.bus.complete_items(&t, &job, &outputs).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == CompleteOutcome::Completed));
    let j = env.bus.job(&t, &job).await.unwrap();
    assert_eq!(j.status.as_str(), "completed");
    let agg = bb.aggregate().await.unwrap();
    assert_eq!(agg.count, n + 2);
    let expected = Decimal::from(9_000_000_000i64 * n) - Decimal::new(17_999_999_999, 0);
    assert_eq!(agg.sum, expected);
    // Removing every value brings the sum back to exactly zero.
    for i in 0..n {
        bb.delete(&format!("k{i}"), None).await.unwrap();
    }
    let agg = bb.aggregate().await.unwrap();
    assert_eq!(agg.sum, Decimal::new(-17_999_999_999, 0));
    // Every write and read was charged, exactly once each.
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(b.spent, Decimal::from(2 * n + 3 + 5 + 2 * 2));
    env.bus.flush_metering(&t).await.unwrap();
    drain(&env, &t).await;
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_everyone_or_nobody() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("bcast");
    let token = env.token("bcast").await;
    let app = env.app();
    let job = Uuid::new_v4();
    let sender = register_in(&env, &t, "orc", "sender", Some(job)).await;
    for name in ["r1", "r2", "r3"] {
        register_in(&env, &t, "w", name, Some(job)).await;
    }
    // Credit for two messages (2.00 each), not three.
    env.grant(&t, 4).await;
    let before = env.snapshot().await;
    let (status, body) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{job}/broadcast"),
        Some(&token),
        Some(json!({ "from_instance_id": "sender", "payload": {"go": 1} })),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(dec(&body["error"]["required"]), Decimal::from(6), "{body}");
    assert_eq!(before, env.snapshot().await, "a refused broadcast wrote");
    env.grant(&t, 2).await;
    let (status, body) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{job}/broadcast"),
        Some(&token),
        Some(json!({ "from_instance_id": "sender", "payload": {"go": 1} })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sent"], 3);
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(b.spent, Decimal::from(6));
    for name in ["r1", "r2", "r3"] {
        let m = env
            .bus
            .wait_for_message(&t, &id(name), Duration::from_secs(1))
            .await
            .unwrap()
            .expect("delivered");
        assert_eq!(m.payload.json(), json!({"go": 1}));
        assert_eq!(m.from_instance_id, sender.as_str());
    }
    drain(&env, &t).await;
    let charges: Vec<Decimal> =
        sqlx::query_scalar("SELECT amount FROM agents.credit_ledger WHERE skill = 'agent_message'")
            .fetch_all(env.pool())
            .await
            .unwrap();
    assert_eq!(charges, [Decimal::from(6)], "one charge for the broadcast");
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sees_job_status_live_reservations_and_jobs_past_retention() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("blind");
    env.grant(&t, 100).await;
    let caller = register(&env, &t, "orc", "caller").await;
    let target = register(&env, &t, "spec", "target").await;
    let spec = JobSpec::new("orc", "w", "task", vec![json!(1), json!(2), json!(3)]);
    let cancelled = env.bus.spawn_job(&t, &spec).await.unwrap().id;
    let expired = env.bus.spawn_job(&t, &spec).await.unwrap().id;
    env.bus
        .cancel_job(&t, &cancelled, "ops", "enough")
        .await
        .unwrap();
    drain(&env, &t).await;
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());
    assert!(report.jobs.iter().any(|j| j.job_id == expired));

    // 1. Postgres says running while Redis says cancelled.
    sqlx::query("UPDATE agents.jobs SET status = 'running' WHERE id = $1")
        .bind(cancelled)
        .execute(env.pool())
        .await
        .unwrap();
    let report = verify_now(&env).await;
    assert!(!report.ok);
    let bad: Vec<_> = report.jobs.iter().filter(|j| !j.ok).collect();
    assert_eq!(bad.len(), 1, "{}", report.to_table());
    assert_eq!(bad[0].job_id, cancelled);
    assert!(
        bad[0]
            .problem
            .contains("status cancelled in Redis but running in Postgres")
    );
    sqlx::query("UPDATE agents.jobs SET status = 'cancelled' WHERE id = $1")
        .bind(cancelled)
        .execute(env.pool())
        .await
        .unwrap();

    // 2. A pending invocation's record vanishes: the sweeper can release
    // nothing, and every balance still agrees with every other — only the
    // live reservations show the stranded 10.00.
    let (task, invoke_id) = pending_invoke(&env, &t, &caller, &target, 1)
        .await
        .expect("pending");
    task.abort();
    let mut conn = env.conn().await;
    let _: i64 = redis::cmd("DEL")
        .arg(env.bus.keys(&t).invoke(&invoke_id))
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.bus.expire_due_invokes(&t).await.unwrap();
    drain(&env, &t).await;
    let report = verify_now(&env).await;
    let tc = &report.tenants[0];
    assert_eq!(tc.redis, tc.postgres);
    assert_eq!(tc.postgres, tc.ledger);
    assert_eq!(tc.redis.reserved - tc.live_reservations, Decimal::from(10));
    assert!(!report.ok && !tc.ok, "{}", report.to_table());
    // Put the record's money back the way an operator would: refund it.
    env.bus
        .move_credits(
            &t,
            agentbus::credits::CreditOp::Refund,
            "agent_invoke",
            1000,
            None,
            json!({"invoke_id": invoke_id, "reason": "operator"}),
        )
        .await
        .unwrap();
    drain(&env, &t).await;
    let report = verify_now(&env).await;
    assert!(report.ok, "{}", report.to_table());

    // 3. A running job's keys are gone from Redis (as after retention) while
    // Postgres still has it running: its end never reached the mirror.
    let job_keys = [
        env.bus.keys(&t).job(&expired),
        env.bus.keys(&t).job_items(&expired),
    ];
    let _: i64 = redis::cmd("DEL")
        .arg(&job_keys[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZREM")
        .arg(env.bus.keys(&t).jobs())
        .arg(expired.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let report = verify_now(&env).await;
    let bad: Vec<_> = report.jobs.iter().filter(|j| !j.ok).collect();
    assert_eq!(bad.len(), 1, "{}", report.to_table());
    assert_eq!((bad[0].job_id, bad[0].source), (expired, "postgres"));
    assert!(
        bad[0].problem.contains("gone from Redis"),
        "{}",
        bad[0].problem
    );
}

/// One script call with its keys and arguments, bad at one place.
struct Case {
    name: &'static str,
    script: &'static redis::Script,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

fn b(s: impl AsRef<[u8]>) -> Vec<u8> {
    s.as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_scripts_check_every_argument_before_their_first_write() {
    let env = TestEnv::new().await;
    let t = env.tenant("args");
    env.grant(&t, 1000).await;
    let caller = register(&env, &t, "orc", "caller").await;
    let target = register(&env, &t, "spec", "target").await;
    let spec = JobSpec::new("orc", "w", "task", vec![json!(1), json!(2)]);
    let job = env.bus.spawn_job(&t, &spec).await.unwrap().id;
    let claimed = env
        .bus
        .claim_items(&t, &job, "w1", 1, Duration::ZERO)
        .await
        .unwrap();
    let item = claimed[0].item_id.clone();
    let ns = Ident::new("namespace", "n").unwrap();
    let bb = env.bus.blackboard(&t, &ns);
    bb.set("x", &json!(5), None, None::<&Fence>).await.unwrap();
    let (task, invoke_id) = pending_invoke(&env, &t, &caller, &target, 30)
        .await
        .expect("pending");

    let s = agentbus::scripts::scripts();
    let k = env.bus.keys(&t);
    let (bb_root, bb_set, bb_names) = (
        k.blackboard_root(),
        k.blackboard_namespaces(),
        k.blackboard_names(),
    );
    // A stranded event, and a dead-lettered message for an inbox that does
    // not exist yet: what the replays would move (or create) if they wrote
    // before checking.
    let ghost_inbox = k.inbox(&id("ghost"));
    let mut conn = env.conn().await;
    let stranded: String = redis::cmd("XADD")
        .arg(k.outbox_dead())
        .arg("*")
        .arg(&[
            "entry", "1-1", "reason", "r", "ts", "1", "m.type", "ledger", "m.id", "x.1",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    // The invocation's request, not yet delivered: what a mark would record.
    let unread: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(k.inbox(&target))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let unread = unread
        .ids
        .last()
        .expect("the request in the target's inbox")
        .id
        .clone();
    let dead: String = redis::cmd("XADD")
        .arg(k.dlq())
        .arg("*")
        .arg(&[
            "type",
            "message",
            "stream",
            ghost_inbox.as_str(),
            "m.id",
            "m1",
            "m.type",
            "note",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    // Two staged inputs for the job's staging list: what job_spawn's
    // `staged` is checked against.
    redis::cmd("RPUSH")
        .arg(k.job_staging(&job))
        .arg("x")
        .arg("y")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let job_keys = vec![
        k.credits(),
        k.outbox(),
        k.job(&job),
        k.job_items(&job),
        k.job_done(&job),
        k.job_results(&job),
        k.active_jobs(),
        k.dlq(),
        k.jobs(),
        k.job_staging(&job),
    ];
    let job_args = |rest: &[&str]| -> Vec<Vec<u8>> {
        let mut a = vec![b("ev"), b("args"), b(job.to_string()), b("3600")];
        a.extend(rest.iter().map(b));
        a
    };
    let spawn_args = |staged: &str, chunk: &str, inline: usize| -> Vec<Vec<u8>> {
        let mut a = job_args(&[
            "200", "500", "task", "orc", "w", "1", "1000", "3", "", "", "h1", "h2", staged, chunk,
        ]);
        a.extend((0..inline).map(|_| b("\u{1}")));
        a
    };
    let bbk = k.blackboard(&ns);
    let bb_keys = vec![
        k.credits(),
        bbk.vals.clone(),
        bbk.nums.clone(),
        bbk.lex.clone(),
        bbk.score.clone(),
        bbk.agg.clone(),
        bbk.exp.clone(),
        bbk.fence.clone(),
        bbk.namespaces.clone(),
        bbk.names.clone(),
    ];
    let bb_args = |rest: &[&str]| -> Vec<Vec<u8>> {
        let mut a = vec![b("n"), b("100")];
        a.extend(rest.iter().map(b));
        a
    };
    let inv_keys = vec![
        k.credits(),
        k.outbox(),
        k.invoke(&invoke_id),
        k.pending_invokes(),
    ];
    let ctx = agentbus::codec::encode(&json!({})).unwrap();
    let payload = agentbus::codec::encode(&json!({"p": 1})).unwrap();
    let new_invoke = "inv_00000000000000ff";
    let mut start_keys = vec![
        k.credits(),
        k.outbox(),
        k.invoke(new_invoke),
        k.pending_invokes(),
        k.agents(),
        k.agent(&target),
        k.inbox(&target),
    ];
    let start_args = |price: &str, timeout: &str| -> Vec<Vec<u8>> {
        [
            "ev", "args", new_invoke, price, "100", "m1", "caller", "target", "", "\u{80}",
            timeout, "replies", "60000", "3600",
        ]
        .iter()
        .map(b)
        .collect()
    };
    let send_args = |price: &str, require: &str| -> Vec<Vec<u8>> {
        let mut a: Vec<Vec<u8>> = ["ev", "args", price, "100", "m1", "caller", "note", "", ""]
            .iter()
            .map(b)
            .collect();
        a.push(payload.clone());
        a.push(b(""));
        a.push(b(require));
        a
    };
    let broadcast = Uuid::new_v4();
    let begin_keys = vec![
        k.credits(),
        k.outbox(),
        k.broadcasts(),
        k.broadcast(&broadcast),
        k.broadcast_recipients(&broadcast),
    ];
    let begin_args = |count: &str, chunk: &str| -> Vec<Vec<u8>> {
        let id = broadcast.to_string();
        let job = job.to_string();
        let mut a: Vec<Vec<u8>> = [
            "ev",
            "args",
            id.as_str(),
            "200",
            count,
            chunk,
            "caller",
            "note",
            job.as_str(),
        ]
        .iter()
        .map(b)
        .collect();
        a.push(payload.clone());
        a
    };
    let mut deliver_keys = begin_keys.clone();
    deliver_keys.push(k.agent(&target));
    deliver_keys.push(k.inbox(&target));
    let deliver_args = |cursor: &str, ids: usize| -> Vec<Vec<u8>> {
        let mut a: Vec<Vec<u8>> = vec![
            b("ev"),
            b("args"),
            b(broadcast.to_string()),
            b("100"),
            b(cursor),
        ];
        a.extend((0..ids).map(|i| b(format!("m{i}"))));
        a
    };
    let credits_args = |op: &str, amount: &str, ctx: &[u8], ceiling: &str| -> Vec<Vec<u8>> {
        vec![
            b("ev"),
            b("args"),
            b(op),
            b("grant"),
            b(amount),
            b(""),
            b(ctx),
            b(ceiling),
        ]
    };
    let mut lock_keys = bb_keys.clone();
    lock_keys.push(bbk.lock("l"));
    let case = |name, script, keys, args| Case {
        name,
        script,
        keys,
        args,
    };
    let cases = vec![
        case(
            "credits_move: unknown operation",
            s.credits_move.script(),
            vec![k.credits(), k.outbox()],
            credits_args("steal", "100", &ctx, "1000000"),
        ),
        case(
            "credits_move: amount not a number",
            s.credits_move.script(),
            vec![k.credits(), k.outbox()],
            credits_args("grant", "1e3", &ctx, "1000000"),
        ),
        case(
            "credits_move: amount past MAX_MINOR",
            s.credits_move.script(),
            vec![k.credits(), k.outbox()],
            credits_args("grant", "9223372036854775807", &ctx, "1000000"),
        ),
        case(
            "credits_move: context not MessagePack",
            s.credits_move.script(),
            vec![k.credits(), k.outbox()],
            credits_args("grant", "100", b"\xc1", "1000000"),
        ),
        case(
            "credits_move: ceiling missing",
            s.credits_move.script(),
            vec![k.credits(), k.outbox()],
            credits_args("grant", "100", &ctx, ""),
        ),
        case(
            "job_spawn: cost not a number",
            s.job_spawn.script(),
            job_keys.clone(),
            job_args(&[
                "x", "500", "task", "orc", "w", "1", "1000", "3", "", "", "h1", "h2", "0", "100",
                "\u{1}",
            ]),
        ),
        case(
            "job_spawn: no items",
            s.job_spawn.script(),
            job_keys.clone(),
            job_args(&[
                "200", "500", "task", "orc", "w", "1", "1000", "3", "", "", "h1", "h2", "0", "100",
            ]),
        ),
        case(
            "job_spawn: reservation past any balance",
            s.job_spawn.script(),
            job_keys.clone(),
            job_args(&[
                "1000000000000000",
                "500",
                "task",
                "orc",
                "w",
                "1",
                "1000",
                "3",
                "",
                "",
                "h1",
                "h2",
                "0",
                "100",
                "\u{1}",
            ]),
        ),
        case(
            "job_spawn: the staging list does not hold `staged` inputs",
            s.job_spawn.script(),
            job_keys.clone(),
            spawn_args("3", "10", 1),
        ),
        case(
            "job_spawn: chunk 0",
            s.job_spawn.script(),
            job_keys.clone(),
            spawn_args("2", "0", 1),
        ),
        case(
            "job_spawn: more inline inputs than a chunk",
            s.job_spawn.script(),
            job_keys.clone(),
            spawn_args("2", "1", 2),
        ),
        case(
            "job_complete: more than 1,000 pairs",
            s.job_complete.script(),
            job_keys.clone(),
            {
                let mut a = job_args(&[&bb_root, &bb_set, &bb_names]);
                for _ in 0..1001 {
                    a.push(b(&item));
                    a.push(b("\u{1}"));
                }
                a
            },
        ),
        case(
            "job_claim: count past 1,000",
            s.job_claim.script(),
            vec![k.job(&job), k.job_items(&job)],
            vec![b("w1"), b("1001")],
        ),
        case(
            "job_reclaim: count past 1,000",
            s.job_reclaim.script(),
            job_keys.clone(),
            job_args(&["r", "1001"]),
        ),
        case(
            "job_complete: odd pairs",
            s.job_complete.script(),
            job_keys.clone(),
            job_args(&[&bb_root, &bb_set, &bb_names, &item]),
        ),
        case(
            "job_complete: retention not a number",
            s.job_complete.script(),
            job_keys.clone(),
            {
                let mut a = job_args(&[&bb_root, &bb_set, &bb_names, &item, "\u{1}"]);
                a[3] = b("soon");
                a
            },
        ),
        case(
            "job_fail: retry flag",
            s.job_fail.script(),
            job_keys.clone(),
            job_args(&[&item, "err", "maybe"]),
        ),
        case(
            "job_claim: count",
            s.job_claim.script(),
            vec![k.job(&job), k.job_items(&job)],
            vec![b("w1"), b("-1")],
        ),
        case(
            "job_release: most",
            s.job_release.script(),
            job_keys.clone(),
            job_args(&["w1", "0"]),
        ),
        case(
            "job_release: an entry that is no delivery id",
            s.job_release.script(),
            job_keys.clone(),
            job_args(&["w1", "10", "1-0", "nope"]),
        ),
        case(
            "dlq_replay_item: empty entry",
            s.dlq_replay_item.script(),
            job_keys.clone(),
            job_args(&[""]),
        ),
        case(
            "job_reclaim: consumer",
            s.job_reclaim.script(),
            job_keys.clone(),
            job_args(&["", "10"]),
        ),
        case(
            "job_cancel: empty job id",
            s.job_cancel.script(),
            job_keys.clone(),
            {
                let mut a = job_args(&["ops", "why"]);
                a[2] = b("");
                a
            },
        ),
        case(
            "invoke_start: price",
            s.invoke_start.script(),
            start_keys.clone(),
            start_args("ten", "1000"),
        ),
        case(
            "invoke_start: timeout",
            s.invoke_start.script(),
            start_keys.clone(),
            start_args("1000", "0"),
        ),
        case(
            "invoke_respond: empty invoke id",
            s.invoke_respond.script(),
            inv_keys.clone(),
            vec![b("ev"), b("args"), b(""), payload.clone(), b(""), b("")],
        ),
        case(
            "invoke_expire: force flag",
            s.invoke_expire.script(),
            inv_keys.clone(),
            vec![b("ev"), b("args"), b(&invoke_id), b("yes")],
        ),
        case(
            "message_send: price",
            s.message_send.script(),
            vec![k.credits(), k.outbox(), k.agent(&target), k.inbox(&target)],
            send_args("-5", "1"),
        ),
        case(
            "message_send: recipient flag",
            s.message_send.script(),
            vec![k.credits(), k.outbox(), k.agent(&target), k.inbox(&target)],
            send_args("200", "2"),
        ),
        case(
            "message_broadcast: ids do not match recipients",
            s.message_broadcast.script(),
            vec![k.credits(), k.outbox(), k.agent(&target), k.inbox(&target)],
            vec![
                b("ev"),
                b("args"),
                b("200"),
                b("100"),
                b("caller"),
                b("note"),
                b(job.to_string()),
                payload.clone(),
            ],
        ),
        case(
            "broadcast_begin: no recipients",
            s.broadcast_begin.script(),
            begin_keys.clone(),
            begin_args("0", "100"),
        ),
        case(
            "broadcast_begin: chunk past 1,000",
            s.broadcast_begin.script(),
            begin_keys.clone(),
            begin_args("1", "1001"),
        ),
        case(
            "broadcast_deliver: cursor",
            s.broadcast_deliver.script(),
            deliver_keys.clone(),
            deliver_args("-1", 1),
        ),
        case(
            "broadcast_deliver: ids do not match recipients",
            s.broadcast_deliver.script(),
            deliver_keys.clone(),
            deliver_args("0", 0),
        ),
        case(
            "broadcast_deliver: more than 1,000 recipients",
            s.broadcast_deliver.script(),
            {
                let mut keys = deliver_keys[..5].to_vec();
                for _ in 0..1001 {
                    keys.push(k.agent(&target));
                    keys.push(k.inbox(&target));
                }
                keys
            },
            deliver_args("0", 1001),
        ),
        case(
            "bb_write: mode",
            s.bb_write.script(),
            bb_keys.clone(),
            bb_args(&["upsert", "y", "1", "1000000", "0", "", "", ""]),
        ),
        case(
            "bb_write: micro-units past the bound",
            s.bb_write.script(),
            bb_keys.clone(),
            bb_args(&["set", "y", "1", "9000000000000001", "0", "", "", ""]),
        ),
        case(
            "bb_write: ttl",
            s.bb_write.script(),
            bb_keys.clone(),
            bb_args(&["set", "y", "1", "1000000", "-1", "", "", ""]),
        ),
        case("bb_write: price", s.bb_write.script(), bb_keys.clone(), {
            let mut a = bb_args(&["set", "y", "1", "1000000", "0", "", "", ""]);
            a[1] = b("free");
            a
        }),
        case(
            "bb_increment: amount",
            s.bb_increment.script(),
            bb_keys.clone(),
            bb_args(&["x", "1.5", "", ""]),
        ),
        case(
            "bb_increment: fencing token",
            s.bb_increment.script(),
            bb_keys.clone(),
            bb_args(&["x", "1", "lock", "t"]),
        ),
        case(
            "bb_read: unknown mode (was charged, then failed)",
            s.bb_read.script(),
            bb_keys.clone(),
            bb_args(&["peek"]),
        ),
        case(
            "bb_read: range bound",
            s.bb_read.script(),
            bb_keys.clone(),
            bb_args(&["range", "low", "+inf", "0", "10"]),
        ),
        case(
            "bb_read: keys past 1,000",
            s.bb_read.script(),
            bb_keys.clone(),
            bb_args(&["keys", "", "1001"]),
        ),
        case(
            "bb_read: keys prefix past 256 bytes",
            s.bb_read.script(),
            bb_keys.clone(),
            bb_args(&["keys", "", "10", &"p".repeat(257)]),
        ),
        case(
            "bb_read: range limit past 1,000",
            s.bb_read.script(),
            bb_keys.clone(),
            bb_args(&["range", "-inf", "+inf", "0", "1001"]),
        ),
        case(
            "bb_read: top past 1,000",
            s.bb_read.script(),
            bb_keys.clone(),
            bb_args(&["top", "1001", "desc"]),
        ),
        case(
            "bb_read: top order",
            s.bb_read.script(),
            bb_keys.clone(),
            bb_args(&["top", "3", "sideways"]),
        ),
        case(
            "bb_lock: action",
            s.bb_lock.script(),
            lock_keys.clone(),
            bb_args(&["l", "grab", "me", "1000"]),
        ),
        case(
            "bb_lock: ttl",
            s.bb_lock.script(),
            lock_keys.clone(),
            bb_args(&["l", "acquire", "me", "0"]),
        ),
        case(
            "bb_sweep: limit",
            s.bb_sweep.script(),
            bb_keys.clone(),
            bb_args(&["0"]),
        ),
        case(
            "outbox_replay: a bad id after a good one",
            s.outbox_replay.script(),
            vec![k.outbox_dead(), k.outbox()],
            vec![b(&stranded), b("not-an-id")],
        ),
        case(
            "outbox_replay: more than 1,000 ids",
            s.outbox_replay.script(),
            vec![k.outbox_dead(), k.outbox()],
            vec![b(&stranded); 1001],
        ),
        case(
            "dlq_replay: inbox cap",
            s.dlq_replay.script(),
            vec![k.dlq(), ghost_inbox.clone()],
            vec![b(&dead), b("many")],
        ),
        case(
            "inbox_mark_read: a bad id after a good one",
            s.inbox_mark_read.script(),
            vec![k.inbox(&target), k.inbox_read_early(&target)],
            vec![b(&unread), b("not-an-id")],
        ),
        case(
            "inbox_mark_read: more than 1,000 ids",
            s.inbox_mark_read.script(),
            vec![k.inbox(&target), k.inbox_read_early(&target)],
            vec![b(&unread); 1001],
        ),
        case(
            "inbox_mark_read: no id",
            s.inbox_mark_read.script(),
            vec![k.inbox(&target), k.inbox_read_early(&target)],
            vec![],
        ),
        case(
            "inbox_settle_read: a bad id after a good one",
            s.inbox_settle_read.script(),
            vec![k.inbox(&target), k.inbox_read_early(&target)],
            vec![b(&unread), b("1-x")],
        ),
        case(
            "inbox_settle_read: more than 10,000 ids",
            s.inbox_settle_read.script(),
            vec![k.inbox(&target), k.inbox_read_early(&target)],
            vec![b(&unread); 10_001],
        ),
        case(
            "credits_flush: empty tenant",
            s.credits_flush.script(),
            vec![k.credits(), k.outbox()],
            vec![b("ev"), b("")],
        ),
    ];
    start_keys.clear();
    let before = env.snapshot().await;
    for case in &cases {
        let mut call = case.script.prepare_invoke();
        for key in &case.keys {
            call.key(key);
        }
        for arg in &case.args {
            call.arg(arg.as_slice());
        }
        let answer: redis::RedisResult<redis::Value> = call.invoke_async(&mut conn).await;
        let err = answer.expect_err(case.name);
        assert!(
            err.to_string().contains("ARGV") || err.to_string().contains("KEYS"),
            "{}: {err}",
            case.name
        );
        assert_eq!(before, env.snapshot().await, "{} wrote", case.name);
    }
    // The state they were refused against still works.
    env.bus
        .respond(&t, &invoke_id, &json!(1), None, Some(&target))
        .await
        .unwrap();
    assert!(task.await.unwrap().unwrap().success);
    let done = env
        .bus
        .complete_items(&t, &job, &[(item, json!(1))])
        .await
        .unwrap();
    assert_eq!(done, [CompleteOutcome::Completed]);
}

#[tokio::test]
async fn any_number_a_client_may_pass_is_judged_not_refused_by_redis() {
    let env = TestEnv::new().await;
    let t = env.tenant("extremes");
    env.grant(&t, 100).await;
    let ns = Ident::new("namespace", "n").unwrap();
    let bb = env.bus.blackboard(&t, &ns);
    // Fencing tokens at the ends of i64 are stale tokens (409), not a
    // script error (503).
    for token in [i64::MAX, i64::MIN, -1] {
        let fence = Fence {
            lock: agentbus::blackboard::LockName::new("l").unwrap(),
            token,
        };
        let set = bb.set("k", &json!(1), None, Some(&fence)).await;
        assert!(
            matches!(set, Err(Error::Conflict { .. })),
            "{token}: {set:?}"
        );
        let inc = bb.increment("k", &json!(1), Some(&fence)).await;
        assert!(
            matches!(inc, Err(Error::Conflict { .. })),
            "{token}: {inc:?}"
        );
    }
    // Counts past what one script call takes are clamped, not refused.
    assert!(bb.top(usize::MAX, true).await.unwrap().is_empty());
    assert!(bb.keys_page(None, usize::MAX).await.unwrap().is_empty());
    let spec = JobSpec::new("orc", "w", "task", vec![json!(1)]);
    let job = env.bus.spawn_job(&t, &spec).await.unwrap().id;
    let got = env
        .bus
        .claim_items(&t, &job, "w1", usize::MAX, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}
