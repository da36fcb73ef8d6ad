//! Agents against real Redis: registry and liveness, messages (at-least-once,
//! ordered, capped, dead letters and replay), invoke with its audit events.

use crate::common;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbus::agents::invoke::{Answer, InvokeRequest};
use agentbus::agents::messages::{MessageFilter, MessageStatus, OutgoingMessage};
use agentbus::agents::registry::{AgentFilter, AgentStatus, Registration};
use agentbus::codec::StreamEntry;
use agentbus::keys::Ident;
use agentbus::{Error, Limits, TenantId};
use common::{TestEnv, assert_balance_matches_ledger, eventually};
use rust_decimal::Decimal;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> Ident {
    Ident::new("instance_id", s).unwrap()
}

async fn register(env: &TestEnv, tenant: &TenantId, agent: &str, instance: &str) -> Ident {
    let reg = Registration::new(agent)
        .unwrap()
        .instance(instance)
        .unwrap();
    let inst = env.bus.register_agent(tenant, &reg).await.unwrap();
    id(&inst.instance_id)
}

/// Outbox events of one type, in order.
async fn outbox_events(env: &TestEnv, tenant: &TenantId, kind: &str) -> Vec<StreamEntry> {
    let mut conn = env.conn().await;
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(env.bus.keys(tenant).outbox())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(items) = v else {
        return vec![];
    };
    items
        .iter()
        .map(|v| StreamEntry::from_value(v).unwrap())
        .filter(|e| e.text("type") == Some(kind))
        .collect()
}

#[tokio::test]
async fn registry_registers_lists_and_marks_silent_instances_stale() {
    let env = TestEnv::with_limits(Limits {
        stale_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let t = env.tenant("reg");
    let job = uuid::Uuid::new_v4();
    let a = env
        .bus
        .register_agent(&t, &Registration::new("scraper").unwrap().job(job))
        .await
        .unwrap();
    assert!(a.instance_id.starts_with("scraper-"), "{}", a.instance_id);
    assert_eq!(a.status, AgentStatus::Running);
    let b = register(&env, &t, "scraper", "scraper-b").await;
    let c = register(&env, &t, "writer", "writer-c").await;

    let by_type = env
        .bus
        .list_agents(
            &t,
            &AgentFilter {
                agent_id: Some(Ident::new("agent_id", "scraper").unwrap()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(by_type.len(), 2);
    let by_job = env
        .bus
        .list_agents(
            &t,
            &AgentFilter {
                job_id: Some(job),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(
        by_job
            .iter()
            .map(|i| i.instance_id.clone())
            .collect::<Vec<_>>(),
        vec![a.instance_id.clone()]
    );

    // Silence makes an instance stale at once on read, and the reaper marks it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.bus
        .heartbeat(&t, &b, Some(AgentStatus::Idle))
        .await
        .unwrap();
    assert_eq!(
        env.bus.agent(&t, &c).await.unwrap().status,
        AgentStatus::Stale
    );
    assert_eq!(
        env.bus.agent(&t, &b).await.unwrap().status,
        AgentStatus::Idle
    );
    assert_eq!(env.bus.reap_agents(&t).await.unwrap(), 2);
    let stale = env
        .bus
        .list_agents(
            &t,
            &AgentFilter {
                status: Some(AgentStatus::Stale),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(stale.len(), 2);
    // A heartbeat brings it back.
    assert_eq!(
        env.bus.heartbeat(&t, &c, None).await.unwrap(),
        AgentStatus::Running
    );
    assert_eq!(
        env.bus.agent(&t, &c).await.unwrap().status,
        AgentStatus::Running
    );

    env.bus.deregister_agent(&t, &b).await.unwrap();
    // Kept as `stopped` (as the original did), but gone from the registry:
    // no heartbeat, no message, listed only with status=stopped.
    let kept = env.bus.agent(&t, &b).await.unwrap();
    assert_eq!(
        (kept.status, kept.agent_id.as_str()),
        (AgentStatus::Stopped, "scraper")
    );
    assert!(matches!(
        env.bus.heartbeat(&t, &b, None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        env.bus
            .send_message(&t, &OutgoingMessage::new(&c, &b, "x", json!(1)))
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        env.bus.deregister_agent(&t, &b).await,
        Err(Error::NotFound(_))
    ));
    let stopped = env
        .bus
        .list_agents(
            &t,
            &AgentFilter {
                status: Some(AgentStatus::Stopped),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(
        stopped
            .iter()
            .map(|i| i.instance_id.as_str())
            .collect::<Vec<_>>(),
        [b.as_str()]
    );
    // Registering it again starts a new record; the kept one is over.
    let reg = Registration::new("scraper")
        .unwrap()
        .instance(b.as_str())
        .unwrap();
    env.bus.register_agent(&t, &reg).await.unwrap();
    assert_eq!(
        env.bus.agent(&t, &b).await.unwrap().status,
        AgentStatus::Running
    );
    let stopped = env
        .bus
        .list_agents(
            &t,
            &AgentFilter {
                status: Some(AgentStatus::Stopped),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert!(stopped.is_empty(), "{stopped:?}");
    env.bus.deregister_agent(&t, &b).await.unwrap();
    let by_type = env
        .bus
        .list_agents(
            &t,
            &AgentFilter {
                agent_id: Some(Ident::new("agent_id", "scraper").unwrap()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(by_type.len(), 1, "deregistered instance left its type set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_agents_exchange_messages_none_lost_none_twice_in_order() {
    let env = TestEnv::new().await;
    let t = env.tenant("chat");
    env.grant(&t, 100_000).await;
    const AGENTS: usize = 100;
    const PER_AGENT: usize = 30;
    let mut ids = Vec::new();
    for i in 0..AGENTS {
        ids.push(register(&env, &t, "peer", &format!("peer-{i}")).await);
    }
    /// Per recipient: (sender, sequence number) in arrival order.
    type Arrivals = HashMap<String, Vec<(String, u64)>>;
    let received: Arc<Mutex<Arrivals>> = Arc::default();
    let shutdown = CancellationToken::new();
    let mut receivers = Vec::new();
    for me in &ids {
        let received = received.clone();
        let me_name = me.to_string();
        let rx = env.bus.receiver(&t, me);
        receivers.push(tokio::spawn(rx.run(shutdown.clone(), move |m| {
            let received = received.clone();
            let me_name = me_name.clone();
            async move {
                let seq = m.payload.json()["seq"].as_u64().ok_or("no seq")?;
                received
                    .lock()
                    .unwrap()
                    .entry(me_name)
                    .or_default()
                    .push((m.from_instance_id, seq));
                Ok(())
            }
        })));
    }
    let mut senders = Vec::new();
    for (i, from) in ids.iter().enumerate() {
        let bus = env.bus.clone();
        let t = t.clone();
        let from = from.clone();
        let ids = ids.clone();
        senders.push(tokio::spawn(async move {
            for seq in 0..PER_AGENT {
                let to = &ids[(i + 1 + seq * 7) % AGENTS];
                let msg = OutgoingMessage::new(&from, to, "request", json!({ "seq": seq }));
                bus.send_message(&t, &msg).await.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let total = AGENTS * PER_AGENT;
    let all_in = eventually(Duration::from_secs(20), || async {
        received
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= total
    })
    .await;
    shutdown.cancel();
    for r in receivers {
        r.await.unwrap().unwrap();
    }
    assert!(all_in, "messages lost");
    let received = received.lock().unwrap().clone();
    let mut seen = HashSet::new();
    for (to, msgs) in &received {
        let mut last_seq_from: HashMap<&str, u64> = HashMap::new();
        for (from, seq) in msgs {
            assert!(
                seen.insert((to.clone(), from.clone(), *seq)),
                "duplicate {from}->{to} #{seq}"
            );
            if let Some(prev) = last_seq_from.insert(from, *seq) {
                assert!(prev < *seq, "out of order {from}->{to}: {prev} then {seq}");
            }
        }
    }
    assert_eq!(seen.len(), total);
    let balance = env.bus.balance(&t).await.unwrap();
    assert_eq!(
        balance.spent,
        Decimal::from(2 * total as i64),
        "each message charged once"
    );
    assert_balance_matches_ledger(&env, &t).await;
    // None twice, for good: a message comes back only while it is delivered
    // and unacknowledged (after the redelivery idle time). Every inbox has
    // nothing pending, so nothing can come back, however long one waits.
    let mut conn = env.conn().await;
    for id in &ids {
        let pending: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(env.bus.keys(&t).inbox(id))
            .arg("inbox")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(pending.0, 0, "{id} holds unacknowledged messages");
        let unread = env
            .bus
            .list_messages(
                &t,
                id,
                &MessageFilter {
                    status: Some(MessageStatus::Delivered),
                    ..Default::default()
                },
                None,
                500,
            )
            .await
            .unwrap()
            .messages;
        assert!(unread.is_empty(), "{id}: {unread:?}");
    }
}

#[tokio::test]
async fn unacked_messages_come_back_then_dead_letter_and_replay() {
    let env = TestEnv::with_limits(Limits {
        max_deliveries: 3,
        ..Default::default()
    })
    .await;
    let t = env.tenant("dlq");
    env.grant(&t, 100).await;
    let sender = register(&env, &t, "a", "sender").await;
    let me = register(&env, &t, "b", "crashy").await;
    let msg = OutgoingMessage::new(&sender, &me, "request", json!({"task": "x"}));
    let sent = env.bus.send_message(&t, &msg).await.unwrap();

    // Deliveries 1..3: each "process" receives and dies before acknowledging.
    for delivery in 1..=3 {
        let mut rx = env.bus.receiver(&t, &me);
        let got = rx.recv(Duration::from_millis(200)).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {delivery}");
        assert_eq!(got[0].message_id, sent.message_id);
        let listed = env
            .bus
            .list_messages(&t, &me, &MessageFilter::default(), None, 10)
            .await
            .unwrap()
            .messages;
        assert_eq!(listed[0].status, Some(MessageStatus::Delivered));
        drop(rx);
    }
    // The fourth start finds it past its deliveries: dead-lettered, not delivered.
    let mut rx = env.bus.receiver(&t, &me);
    assert!(
        rx.recv(Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    let dead = env.bus.dead_letters(&t, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, "message");
    assert_eq!(dead[0].attempts, Some(3));
    assert!(dead[0].reason.contains("3 times"), "{}", dead[0].reason);
    assert_eq!(dead[0].payload, json!({"task": "x"}));

    // Replay puts it back with its message id; this time it is acknowledged.
    env.bus
        .replay_dead_letter(&t, &dead[0].entry_id)
        .await
        .unwrap();
    assert!(env.bus.dead_letters(&t, None, 10).await.unwrap().is_empty());
    let got = rx.recv(Duration::from_millis(500)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, sent.message_id);
    assert_eq!(rx.ack(&[got[0].message_id.as_str()]).await.unwrap(), 1);
    let listed = env
        .bus
        .list_messages(&t, &me, &MessageFilter::default(), None, 10)
        .await
        .unwrap()
        .messages;
    assert_eq!(listed.last().unwrap().status, Some(MessageStatus::Read));
    drop(rx);
    let mut rx = env.bus.receiver(&t, &me);
    assert!(
        rx.recv(Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty(),
        "acked message came back"
    );
}

#[tokio::test]
async fn inboxes_are_capped_and_messages_to_unknown_instances_refused() {
    let env = TestEnv::with_limits(Limits {
        inbox_cap: 100,
        ..Default::default()
    })
    .await;
    let t = env.tenant("cap");
    env.grant(&t, 10_000).await;
    let a = register(&env, &t, "a", "a1").await;
    let dead = register(&env, &t, "b", "never-reads").await;
    for i in 0..1000 {
        env.bus
            .send_message(&t, &OutgoingMessage::new(&a, &dead, "request", json!(i)))
            .await
            .unwrap();
    }
    let mut conn = env.conn().await;
    let len: usize = redis::cmd("XLEN")
        .arg(env.bus.keys(&t).inbox(&dead))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(len <= 300, "inbox grew to {len} with a cap of 100");
    let before = env.bus.balance(&t).await.unwrap();
    let msg = OutgoingMessage::new(&a, &id("nobody"), "request", json!(1));
    assert!(matches!(
        env.bus.send_message(&t, &msg).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        env.bus.balance(&t).await.unwrap(),
        before,
        "refused message charged"
    );
}

#[tokio::test]
async fn request_reply_wait_for_message_and_broadcast() {
    let env = TestEnv::new().await;
    let t = env.tenant("rr");
    env.grant(&t, 1000).await;
    let job = uuid::Uuid::new_v4();
    let asker = register(&env, &t, "a", "asker").await;
    let reg = Registration::new("b")
        .unwrap()
        .instance("answerer")
        .unwrap()
        .job(job);
    let answerer = id(&env.bus.register_agent(&t, &reg).await.unwrap().instance_id);
    let reg = Registration::new("b")
        .unwrap()
        .instance("listener")
        .unwrap()
        .job(job);
    let listener = id(&env.bus.register_agent(&t, &reg).await.unwrap().instance_id);

    let bus = env.bus.clone();
    let t2 = t.clone();
    let answerer2 = answerer.clone();
    let responder = tokio::spawn(async move {
        let m = bus
            .wait_for_message(&t2, &answerer2, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        bus.reply(
            &t2,
            &m,
            &answerer2,
            json!({"answer": m.payload.json()["q"].as_i64().unwrap() * 2}),
        )
        .await
        .unwrap();
    });
    let sent = env
        .bus
        .request(
            &t,
            &OutgoingMessage::new(&asker, &answerer, "request", json!({"q": 21})),
        )
        .await
        .unwrap();
    let message_id = sent.message_id.clone();
    let reply = sent
        .wait_for_reply(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    responder.await.unwrap();
    assert_eq!(reply.payload, json!({"answer": 42}));
    assert_eq!(reply.reply_to_id.as_deref(), Some(message_id.as_str()));
    assert_eq!(reply.from_instance_id, "answerer");

    let reached = env
        .bus
        .broadcast(&t, &job, &asker, "broadcast", json!({"stop": true}))
        .await
        .unwrap();
    assert_eq!(reached.recipients.len(), 2);
    assert_eq!((reached.id, reached.complete), (None, true));
    for who in [&answerer, &listener] {
        let m = env
            .bus
            .wait_for_message(&t, who, Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.message_type, "broadcast");
        assert_eq!(m.job_id, Some(job));
    }
    assert!(
        env.bus
            .wait_for_message(&t, &listener, Duration::from_millis(50))
            .await
            .unwrap()
            .is_none()
    );
}

/// A target that answers invoke requests until shut down: doubles `x`,
/// fails when asked, and never answers a request to sleep.
fn spawn_target(
    env: &TestEnv,
    t: &TenantId,
    me: &Ident,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (bus, t, me) = (env.bus.clone(), t.clone(), me.clone());
    tokio::spawn(async move {
        bus.serve_invocations(&t, &me, shutdown, |payload| async move {
            let request = payload.json();
            if request["sleep_ms"].is_u64() {
                Answer::Silence
            } else if request["fail"] == json!(true) {
                Answer::Error("cannot do that".into())
            } else {
                let x = request["x"].as_i64().unwrap_or(0);
                Answer::Response(json!({"y": x * 2}).into())
            }
        })
        .await
        .unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_success_error_timeout_and_bad_targets_keep_credits_exact() {
    let env = TestEnv::with_limits(Limits {
        stale_after: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let t = env.tenant("inv");
    env.grant(&t, 100).await;
    let caller = register(&env, &t, "orc", "caller").await;
    let target = register(&env, &t, "spec", "specialist").await;
    let shutdown = CancellationToken::new();
    let target_task = spawn_target(&env, &t, &target, shutdown.clone());

    // Success: charged the invoke price once.
    let ok = env
        .bus
        .invoke(&t, &InvokeRequest::new(&caller, &target, json!({"x": 21})))
        .await
        .unwrap();
    assert!(ok.success, "{ok:?}");
    assert!(ok.invoke_id.starts_with("inv_") && ok.invoke_id.len() == 20);
    assert_eq!(
        ok.response_payload.map(|p| p.json()),
        Some(json!({"y": 42}))
    );
    assert!(!ok.timeout);
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(
        (b.spent.decimal(), b.reserved.decimal()),
        (Decimal::from(10), Decimal::ZERO)
    );

    // Target-reported error: failed, nothing charged.
    let failed = env
        .bus
        .invoke(
            &t,
            &InvokeRequest::new(&caller, &target, json!({"fail": true})),
        )
        .await
        .unwrap();
    assert!(!failed.success);
    assert_eq!(failed.error.as_deref(), Some("cannot do that"));
    assert_eq!(
        env.bus
            .invocation(&t, &failed.invoke_id)
            .await
            .unwrap()
            .status,
        "failed"
    );
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(
        (b.spent.decimal(), b.reserved.decimal()),
        (Decimal::from(10), Decimal::ZERO)
    );

    // Timeout: released; a late response is refused and charges nothing.
    let mut slow = InvokeRequest::new(&caller, &target, json!({"sleep_ms": 5000}));
    slow.timeout_seconds = 1;
    let timed_out = env.bus.invoke(&t, &slow).await.unwrap();
    assert!(timed_out.timeout && !timed_out.success, "{timed_out:?}");
    assert!(timed_out.latency_ms >= 1000);
    let late = env
        .bus
        .respond(&t, &timed_out.invoke_id, &json!(1), None, Some(&target))
        .await;
    assert!(matches!(late, Err(Error::Conflict { .. })), "{late:?}");
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(
        (b.spent.decimal(), b.reserved.decimal()),
        (Decimal::from(10), Decimal::ZERO)
    );

    // Unknown and stale targets, and too little credit: clear errors naming
    // the audited invocation, nothing reserved, one refused event each.
    let refused_before = outbox_events(&env, &t, "invoke_refused").await.len();
    let unknown = env
        .bus
        .invoke(&t, &InvokeRequest::new(&caller, &id("ghost"), json!({})))
        .await;
    let Err(Error::InvokeRefused {
        invoke_id: unknown_id,
        reason: "unknown_target",
        source,
    }) = unknown
    else {
        panic!("{unknown:?}")
    };
    assert!(matches!(*source, Error::NotFound(_)), "{source:?}");
    let sleeper = register(&env, &t, "spec", "sleeper").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    env.bus.heartbeat(&t, &caller, None).await.unwrap();
    let stale = env
        .bus
        .invoke(&t, &InvokeRequest::new(&caller, &sleeper, json!({})))
        .await;
    let Err(Error::InvokeRefused {
        invoke_id: stale_id,
        reason: "target_stopped",
        source,
    }) = stale
    else {
        panic!("{stale:?}")
    };
    assert!(matches!(*source, Error::Conflict { .. }), "{source:?}");
    let refused = outbox_events(&env, &t, "invoke_refused").await;
    assert_eq!(refused.len(), refused_before + 2);
    for (invoke_id, reason) in [
        (&unknown_id, "unknown_target"),
        (&stale_id, "target_stopped"),
    ] {
        let inv = env.bus.invocation(&t, invoke_id).await.unwrap();
        assert_eq!(inv.status, "failed");
        assert!(
            inv.error_message
                .as_deref()
                .unwrap_or_default()
                .starts_with(reason),
            "{inv:?}"
        );
        let event = refused
            .iter()
            .find(|e| e.text("invoke_id") == Some(invoke_id.as_str()))
            .expect("refused event");
        assert_eq!(event.text("status"), Some("failed"));
        assert_eq!(event.int("credits_charged"), Some(0));
    }
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(
        (b.spent.decimal(), b.reserved.decimal()),
        (Decimal::from(10), Decimal::ZERO)
    );

    // The audit trail: a start and an end event per invocation, with durations.
    let ends = outbox_events(&env, &t, "invoke_end").await;
    assert_eq!(outbox_events(&env, &t, "invoke_start").await.len(), 3);
    assert_eq!(ends.len(), 3);
    let by_id: HashMap<String, &StreamEntry> = ends
        .iter()
        .map(|e| (e.text("invoke_id").unwrap().to_string(), e))
        .collect();
    let end = by_id[&ok.invoke_id];
    assert_eq!(end.text("status"), Some("completed"));
    assert_eq!(end.int("credits_charged"), Some(1000));
    assert!(end.int("duration_ms").unwrap() <= ok.latency_ms as i64 + 5);
    let end = by_id[&timed_out.invoke_id];
    assert_eq!(end.text("status"), Some("timeout"));
    assert_eq!(end.int("credits_charged"), Some(0));
    assert!(
        end.int("duration_ms").unwrap() >= 1000,
        "{:?}",
        end.int("duration_ms")
    );
    assert_eq!(by_id[&failed.invoke_id].text("status"), Some("failed"));
    assert_balance_matches_ledger(&env, &t).await;

    shutdown.cancel();
    target_task.await.unwrap();
}

#[tokio::test]
async fn a_caller_that_vanishes_has_its_invocation_expired_by_the_sweeper() {
    let env = TestEnv::new().await;
    let t = env.tenant("vanish");
    env.grant(&t, 100).await;
    let caller = register(&env, &t, "orc", "caller").await;
    let target = register(&env, &t, "spec", "mute").await;
    let mut req = InvokeRequest::new(&caller, &target, json!({}));
    // Long enough that "not due yet" holds on a busy machine.
    req.timeout_seconds = 3;
    let bus = env.bus.clone();
    let t2 = t.clone();
    let call = tokio::spawn(async move { bus.invoke(&t2, &req).await });
    let reserved = eventually(Duration::from_secs(2), || async {
        env.bus.balance(&t).await.unwrap().reserved == Decimal::from(10)
    })
    .await;
    assert!(reserved);
    call.abort(); // the caller process dies while waiting
    assert_eq!(
        env.bus.expire_due_invokes(&t).await.unwrap(),
        0,
        "not due yet"
    );
    let expired = eventually(Duration::from_secs(10), || async {
        env.bus.expire_due_invokes(&t).await.unwrap() == 1
    })
    .await;
    assert!(expired);
    let b = env.bus.balance(&t).await.unwrap();
    assert_eq!(
        (b.spent.decimal(), b.reserved.decimal()),
        (Decimal::ZERO, Decimal::ZERO)
    );
    let ends = outbox_events(&env, &t, "invoke_end").await;
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].text("status"), Some("timeout"));
}

/// Members of one registry index, sorted.
async fn index(env: &TestEnv, key: String) -> Vec<String> {
    let mut conn = env.conn().await;
    let mut v: Vec<String> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    v.sort();
    v
}

#[tokio::test]
async fn registry_indexes_follow_type_job_and_status_and_listing_stops_at_the_limit() {
    let env = TestEnv::with_limits(Limits {
        stale_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let t = env.tenant("idx");
    let keys = env.bus.keys(&t);
    let (j1, j2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let reg = |agent: &str, instance: &str| {
        Registration::new(agent)
            .unwrap()
            .instance(instance)
            .unwrap()
    };
    for n in 0..300 {
        let r = reg("bulk", &format!("b{n:03}")).job(j1);
        env.bus.register_agent(&t, &r).await.unwrap();
    }
    let x = env
        .bus
        .register_agent(&t, &reg("bulk", "x").job(j1))
        .await
        .unwrap();
    assert_eq!(
        index(&env, keys.agents_of_type(&id("bulk"))).await.len(),
        301
    );

    // Re-registered as another type on another job: it leaves the old indexes.
    env.bus
        .register_agent(&t, &reg("rare", "x").job(j2))
        .await
        .unwrap();
    assert_eq!(
        index(&env, keys.agents_of_type(&id("bulk"))).await.len(),
        300
    );
    assert_eq!(index(&env, keys.agents_of_type(&id("rare"))).await, ["x"]);
    assert_eq!(index(&env, keys.agents_of_job(&j1)).await.len(), 300);
    assert_eq!(index(&env, keys.agents_of_job(&j2)).await, ["x"]);
    let filter =
        |agent: Option<&str>, job: Option<uuid::Uuid>, status: Option<AgentStatus>| AgentFilter {
            agent_id: agent.map(id),
            job_id: job,
            status,
        };
    // The newest heartbeat comes first and the limit is honoured.
    let one = env
        .bus
        .list_agents(&t, &filter(Some("bulk"), None, None), 1)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].instance_id, "b299");
    let page = env
        .bus
        .list_agents(&t, &filter(None, Some(j1), None), 250)
        .await
        .unwrap();
    assert_eq!(page.len(), 250, "a listing past one index page continues");

    // A status change moves it between status indexes.
    env.bus
        .heartbeat(&t, &id("x"), Some(AgentStatus::Idle))
        .await
        .unwrap();
    assert_eq!(index(&env, keys.agents_with_status("idle")).await, ["x"]);
    assert_eq!(
        index(&env, keys.agents_with_status("running")).await.len(),
        300
    );
    let idle = env
        .bus
        .list_agents(&t, &filter(None, None, Some(AgentStatus::Idle)), 10)
        .await
        .unwrap();
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0].instance_id, x.instance_id);
    // A combined filter reads one index until the limit matches.
    let both = env
        .bus
        .list_agents(
            &t,
            &filter(Some("bulk"), Some(j1), Some(AgentStatus::Running)),
            5,
        )
        .await
        .unwrap();
    assert_eq!(both.len(), 5);

    // Silent: stale on read (before the reaper), then moved by the reaper.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.bus.heartbeat(&t, &id("b000"), None).await.unwrap();
    let stale = env
        .bus
        .list_agents(&t, &filter(None, None, Some(AgentStatus::Stale)), 1000)
        .await
        .unwrap();
    assert_eq!(
        stale.len(),
        300,
        "silent instances read as stale before reaping"
    );
    let running = env
        .bus
        .list_agents(&t, &filter(None, None, Some(AgentStatus::Running)), 1000)
        .await
        .unwrap();
    assert_eq!(
        running
            .iter()
            .map(|i| i.instance_id.as_str())
            .collect::<Vec<_>>(),
        ["b000"]
    );
    env.bus.reap_agents(&t).await.unwrap();
    assert_eq!(
        index(&env, keys.agents_with_status("stale")).await.len(),
        300
    );
    assert_eq!(
        index(&env, keys.agents_with_status("running")).await,
        ["b000"]
    );
    assert!(
        index(&env, keys.agents_with_status("idle"))
            .await
            .is_empty()
    );

    // Deregistered: gone from every index.
    env.bus.deregister_agent(&t, &id("x")).await.unwrap();
    env.bus.deregister_agent(&t, &id("b000")).await.unwrap();
    assert!(
        index(&env, keys.agents_of_type(&id("rare")))
            .await
            .is_empty()
    );
    assert!(index(&env, keys.agents_of_job(&j2)).await.is_empty());
    assert!(
        index(&env, keys.agents_with_status("running"))
            .await
            .is_empty()
    );
    assert_eq!(index(&env, keys.agents_of_job(&j1)).await.len(), 299);
}

/// Stale instances stay listed (as stale); however many there are, a
/// newly silent instance is still found and marked.
#[tokio::test]
async fn many_stale_instances_do_not_hide_a_newly_silent_one() {
    let env = TestEnv::with_limits(Limits {
        stale_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let t = env.tenant("crowd");
    let most = agentbus::agents::registry::REAP_MOST as usize;
    for i in 0..most + 20 {
        register(&env, &t, "w", &format!("w-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut marked = 0;
    for _ in 0..5 {
        marked += env.bus.reap_agents(&t).await.unwrap();
    }
    assert_eq!(marked, (most + 20) as i64);
    let late = register(&env, &t, "w", "late-1").await;
    assert_eq!(env.bus.reap_agents(&t).await.unwrap(), 0, "not silent yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(env.bus.reap_agents(&t).await.unwrap(), 1);
    let inst = env.bus.agent(&t, &late).await.unwrap();
    assert_eq!(inst.status, AgentStatus::Stale);
}

#[tokio::test]
async fn a_deregistered_instance_is_kept_as_stopped_only_for_the_retention() {
    let env = TestEnv::with_limits(Limits {
        inbox_retention: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let t = env.tenant("kept");
    let gone = register(&env, &t, "w", "gone-1").await;
    env.bus.deregister_agent(&t, &gone).await.unwrap();
    assert_eq!(
        env.bus.agent(&t, &gone).await.unwrap().status,
        AgentStatus::Stopped
    );
    let stopped = AgentFilter {
        status: Some(AgentStatus::Stopped),
        ..Default::default()
    };
    assert_eq!(
        env.bus.list_agents(&t, &stopped, 10).await.unwrap().len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(matches!(
        env.bus.agent(&t, &gone).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        env.bus
            .list_agents(&t, &stopped, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The next deregistration drops the expired record's index entry.
    let other = register(&env, &t, "w", "gone-2").await;
    env.bus.deregister_agent(&t, &other).await.unwrap();
    let mut conn = env.conn().await;
    let kept: Vec<String> = redis::cmd("ZRANGE")
        .arg(env.bus.keys(&t).agents_stopped())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, ["gone-2"]);
}
