//! Broadcasts past one chunk: the price of every recipient reserved at once
//! (all or nothing), delivered a bounded chunk per call, each recipient
//! exactly once even with racing deliverers, settled exactly (one spend for
//! the deliveries, one refund for those that left), and finished by the
//! reaper when the sender stops.

use crate::common;
use std::collections::HashSet;
use std::time::Duration;

use agentbus::agents::messages::BROADCAST_CHUNK;
use agentbus::agents::registry::Registration;
use agentbus::keys::{Chore, Ident};
use agentbus::money::Credits;
use agentbus::{Error, Limits, TenantId};
use common::{TestEnv, assert_balance_matches_ledger, ledger_sums};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

/// Registers `n` instances `r0`… for `job`, and the sender `sender` too
/// (a broadcast skips its sender).
async fn crowd(env: &TestEnv, t: &TenantId, job: &Uuid, n: usize) -> (Ident, Vec<Ident>) {
    let mut out = Vec::new();
    for name in std::iter::once("sender".to_string()).chain((0..n).map(|i| format!("r{i}"))) {
        let reg = Registration::new("crowd")
            .unwrap()
            .instance(&name)
            .unwrap()
            .job(*job);
        let inst = env.bus.register_agent(t, &reg).await.unwrap();
        out.push(Ident::new("instance_id", &inst.instance_id).unwrap());
    }
    let sender = out.remove(0);
    (sender, out)
}

/// The message ids in `who`'s inbox.
async fn inbox(env: &TestEnv, t: &TenantId, who: &Ident) -> Vec<String> {
    let mut conn = env.conn().await;
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(env.bus.keys(t).inbox(who))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| {
            let e = agentbus::codec::StreamEntry::from_value(e).unwrap();
            e.text("id").unwrap().to_string()
        })
        .collect()
}

/// Each of `who` holds exactly one message, all with distinct ids.
async fn each_got_one(env: &TestEnv, t: &TenantId, who: &[Ident]) {
    let mut ids = HashSet::new();
    for w in who {
        let got = inbox(env, t, w).await;
        assert_eq!(got.len(), 1, "{w} holds {got:?}");
        assert!(ids.insert(got[0].clone()), "a message id twice: {}", got[0]);
    }
}

/// No broadcast keys are left for the tenant.
async fn nothing_left(env: &TestEnv, t: &TenantId, id: &Uuid) {
    let k = env.bus.keys(t);
    let mut conn = env.conn().await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(k.broadcasts())
        .arg(k.broadcast(id))
        .arg(k.broadcast_recipients(id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "broadcast {id} left keys");
}

fn credits(minor: i64) -> Credits {
    Credits::from_minor(minor)
}

#[tokio::test]
async fn a_broadcast_past_one_chunk_reaches_each_instance_once_and_charges_once() {
    let env = TestEnv::new().await;
    let t = env.tenant("wide");
    env.grant(&t, 1000).await;
    let job = Uuid::new_v4();
    let n = 2 * BROADCAST_CHUNK + 50;
    let (sender, all) = crowd(&env, &t, &job, n).await;
    let sent = env
        .bus
        .broadcast(&t, &job, &sender, "note", json!({"hello": "all"}))
        .await
        .unwrap();
    let id = sent.id.expect("delivered in chunks");
    assert!(sent.complete);
    let reached: HashSet<&String> = sent.recipients.iter().collect();
    assert_eq!((sent.recipients.len(), reached.len()), (n, n));
    assert!(!reached.contains(&sender.as_str().to_string()));
    each_got_one(&env, &t, &all).await;
    assert!(inbox(&env, &t, &sender).await.is_empty());
    nothing_left(&env, &t, &id).await;

    // Reserved once for everyone, spent once for the deliveries.
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!((b.reserved, b.spent), (credits(0), credits(200 * n as i64)));
    let sums = ledger_sums(&env, &t).await;
    assert_eq!(sums.get("reserve"), Some(&(200 * n as i64)));
    assert_eq!(sums.get("spend"), Some(&(200 * n as i64)));
    assert_eq!(sums.get("refund"), None, "nothing to refund: {sums:?}");
    assert_balance_matches_ledger(&env, &t).await;
}

#[tokio::test]
async fn a_large_payload_makes_smaller_chunks() {
    let env = TestEnv::new().await;
    let t = env.tenant("heavy");
    env.grant(&t, 1000).await;
    let job = Uuid::new_v4();
    // 300 KB: three copies per call, so 10 recipients take four calls.
    let (sender, all) = crowd(&env, &t, &job, 10).await;
    let big = "x".repeat(300_000);
    let sent = env
        .bus
        .broadcast(&t, &job, &sender, "note", json!({ "big": big }))
        .await
        .unwrap();
    assert!(sent.id.is_some(), "ten copies of 300 KB are past one call");
    assert_eq!(sent.recipients.len(), 10);
    each_got_one(&env, &t, &all).await;
    assert_balance_matches_ledger(&env, &t).await;
}

#[tokio::test]
async fn without_credit_for_every_recipient_nothing_is_written() {
    let env = TestEnv::new().await;
    let t = env.tenant("short");
    env.grant(&t, 100).await;
    let job = Uuid::new_v4();
    let n = BROADCAST_CHUNK + 1;
    let (sender, _) = crowd(&env, &t, &job, n).await;
    let before = env.snapshot().await;
    let got = env.bus.broadcast(&t, &job, &sender, "note", json!(1)).await;
    match got {
        Err(Error::InsufficientCredits {
            required,
            available,
        }) => {
            assert_eq!(required, Decimal::new(200 * n as i64, 2));
            assert_eq!(available, Decimal::from(100));
        }
        other => panic!("expected 402, got {other:?}"),
    }
    assert_eq!(before, env.snapshot().await, "a refused broadcast wrote");
}

#[tokio::test]
async fn one_that_leaves_before_its_delivery_is_skipped_and_refunded() {
    let mut env = TestEnv::new().await;
    env.db = Some(common::create_database().await);
    let t = env.tenant("leaving");
    env.grant(&t, 1000).await;
    let job = Uuid::new_v4();
    let (sender, all) = crowd(&env, &t, &job, 5).await;
    let id = env
        .bus
        .begin_broadcast(&t, &job, &sender, "note", json!("hi"))
        .await
        .unwrap();
    // Reserved for all five, and verify accounts for the reservation.
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!((b.reserved, b.spent), (credits(1000), credits(0)));
    common::drain(&env, &t).await;
    let report = common::verify_now(&env).await;
    assert!(report.ok, "verify mid-broadcast: {report:?}");

    env.bus.deregister_agent(&t, &all[1]).await.unwrap();
    let reached = env.bus.deliver_broadcast(&t, &id).await.unwrap();
    let expected: Vec<String> = all
        .iter()
        .filter(|w| *w != &all[1])
        .map(|w| w.as_str().to_string())
        .collect();
    assert_eq!(reached, expected);
    assert!(inbox(&env, &t, &all[1]).await.is_empty());
    nothing_left(&env, &t, &id).await;
    // Another deliverer finds it over.
    assert!(env.bus.deliver_broadcast(&t, &id).await.unwrap().is_empty());

    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!((b.reserved, b.spent), (credits(0), credits(800)));
    common::drain(&env, &t).await;
    let report = common::verify_now(&env).await;
    assert!(report.ok, "verify after: {report:?}");
    // In the Postgres ledger: reserved for five, spent for four, one refunded,
    // each row naming the broadcast and the job.
    let rows: Vec<(String, Decimal, Option<Uuid>)> = sqlx::query_as(
        "SELECT operation, amount, job_id FROM agents.credit_ledger
          WHERE tenant_id = $1 AND context->>'broadcast' = $2 ORDER BY id",
    )
    .bind(t.as_str())
    .bind(id.to_string())
    .fetch_all(env.pool())
    .await
    .unwrap();
    let expect = |op: &str, amount: i64| (op.to_string(), Decimal::new(amount, 2), Some(job));
    assert_eq!(
        rows,
        [
            expect("reserve", 1000),
            expect("spend", 800),
            expect("refund", 200)
        ]
    );
}

#[tokio::test]
async fn racing_deliverers_deliver_each_recipient_once() {
    let env = TestEnv::new().await;
    let t = env.tenant("race");
    env.grant(&t, 10_000).await;
    let job = Uuid::new_v4();
    let n = 4 * BROADCAST_CHUNK + 50;
    let (sender, all) = crowd(&env, &t, &job, n).await;
    let id = env
        .bus
        .begin_broadcast(&t, &job, &sender, "note", json!({"race": true}))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (bus, t) = (env.bus.clone(), t.clone());
            tokio::spawn(async move { bus.deliver_broadcast(&t, &id).await.unwrap() })
        })
        .collect();
    let mut reached = Vec::new();
    for task in tasks {
        reached.extend(task.await.unwrap());
    }
    let unique: HashSet<&String> = reached.iter().collect();
    assert_eq!((reached.len(), unique.len()), (n, n));
    each_got_one(&env, &t, &all).await;
    nothing_left(&env, &t, &id).await;
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!((b.reserved, b.spent), (credits(0), credits(200 * n as i64)));
    assert_balance_matches_ledger(&env, &t).await;
}

#[tokio::test]
async fn the_reaper_finishes_a_broadcast_whose_sender_stopped() {
    let stall = Duration::from_millis(300);
    let env = TestEnv::with_limits(Limits {
        spawn_stall: stall,
        ..Limits::default()
    })
    .await;
    let t = env.tenant("orphan");
    env.grant(&t, 1000).await;
    let job = Uuid::new_v4();
    let n = BROADCAST_CHUNK + 30;
    let (sender, all) = crowd(&env, &t, &job, n).await;
    // The sender stops right after the reservation.
    let id = env
        .bus
        .begin_broadcast(&t, &job, &sender, "note", json!("later"))
        .await
        .unwrap();
    // It asked the reaper to come back once the broadcast would count as stalled.
    let mut conn = env.conn().await;
    let due: Option<i64> = redis::cmd("ZSCORE")
        .arg(env.bus.due_key(Chore::Reap, &t))
        .arg(t.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    let now = agentbus::due::now_ms();
    let due = due.expect("a reaper deadline");
    assert!(
        due > now && due <= now + stall.as_millis() as i64 + 1,
        "{due} vs {now}"
    );

    // Before the stall, a visit leaves it to its sender.
    let visited = agentbus::reaper::visit(env.bus.clone(), t.clone())
        .await
        .unwrap();
    assert!(inbox(&env, &t, &all[0]).await.is_empty());
    assert!(visited.next.is_some_and(|at| at >= now), "{visited:?}");

    tokio::time::sleep(stall + Duration::from_millis(50)).await;
    let visited = agentbus::reaper::visit(env.bus.clone(), t.clone())
        .await
        .unwrap();
    each_got_one(&env, &t, &all).await;
    nothing_left(&env, &t, &id).await;
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!((b.reserved, b.spent), (credits(0), credits(200 * n as i64)));
    assert_balance_matches_ledger(&env, &t).await;
    // Nothing of the broadcast is due any more (the agents' staleness may be).
    assert!(
        visited
            .next
            .is_none_or(|at| at > agentbus::due::now_ms() + 1000),
        "{visited:?}"
    );
}

#[tokio::test]
async fn a_deliver_call_from_a_stale_position_writes_nothing() {
    let env = TestEnv::new().await;
    let t = env.tenant("stale");
    env.grant(&t, 1000).await;
    let job = Uuid::new_v4();
    let (sender, all) = crowd(&env, &t, &job, 3).await;
    let id = env
        .bus
        .begin_broadcast(&t, &job, &sender, "note", json!("x"))
        .await
        .unwrap();
    let k = env.bus.keys(&t);
    let call = |cursor: usize, who: &[Ident]| {
        let s = agentbus::scripts::scripts();
        let mut call = s.broadcast_deliver.key("credits", k.credits());
        call.key("outbox", k.outbox())
            .key("broadcasts", k.broadcasts())
            .key("record", k.broadcast(&id))
            .key("recipients", k.broadcast_recipients(&id));
        for w in who {
            call.key("agent", k.agent(w)).key("inbox", k.inbox(w));
        }
        call.arg("event_base", "ev")
            .arg("tenant", t.as_str())
            .arg("id", id.to_string())
            .arg("inbox_cap", 100)
            .arg("cursor", cursor);
        for (i, _) in who.iter().enumerate() {
            call.arg("message_id", format!("m{i}"));
        }
        call
    };
    let mut conn = env.conn().await;
    let before = env.snapshot().await;
    // Not where it stands: moved, nothing written.
    let reply = call(1, &all[1..2]).invoke(&mut conn).await.unwrap();
    assert_eq!((reply.tag(), reply.int("cursor").unwrap()), ("moved", 0));
    assert_eq!(before, env.snapshot().await);
    // Past the list's end: refused before any write.
    let refused = call(
        0,
        &[
            all[0].clone(),
            all[1].clone(),
            all[2].clone(),
            sender.clone(),
        ],
    )
    .invoke(&mut conn)
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(before, env.snapshot().await);
    // Keys that name other instances than the list: they are skipped.
    let reply = call(0, std::slice::from_ref(&sender))
        .invoke(&mut conn)
        .await
        .unwrap();
    assert_eq!(reply.tag(), "ok");
    assert!(reply.texts("recipients").unwrap().is_empty());
    assert!(inbox(&env, &t, &sender).await.is_empty());
    let rest = env.bus.deliver_broadcast(&t, &id).await.unwrap();
    assert_eq!(rest, ["r1", "r2"]);
    // r0's turn was taken by the wrong key: skipped and refunded.
    let sums = ledger_sums(&env, &t).await;
    assert_eq!(
        (sums["reserve"], sums["spend"], sums["refund"]),
        (600, 400, 200)
    );
    assert_balance_matches_ledger(&env, &t).await;
}

#[tokio::test]
async fn over_rest_a_chunked_broadcast_answers_its_id_and_completeness() {
    let env = TestEnv::new().await;
    let t = env.tenant("rest");
    let token = env.token("rest").await;
    env.grant(&t, 1000).await;
    let job = Uuid::new_v4();
    let n = BROADCAST_CHUNK + 20;
    crowd(&env, &t, &job, n).await;
    let (status, body) = common::call(
        &env.app(),
        "POST",
        &format!("/api/v1/jobs/{job}/broadcast"),
        Some(&token),
        Some(json!({ "from_instance_id": "sender", "payload": {"go": 1} })),
    )
    .await;
    assert_eq!(status, axum::http::StatusCode::OK, "{body}");
    assert_eq!(
        (body["sent"].as_u64(), body["complete"].as_bool()),
        (Some(n as u64), Some(true))
    );
    assert_eq!(body["recipients"].as_array().map(Vec::len), Some(n));
    let id: Uuid = body["broadcast_id"].as_str().unwrap().parse().unwrap();
    nothing_left(&env, &t, &id).await;
}
