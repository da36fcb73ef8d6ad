//! The blackboard against real Redis: exact values and aggregates under
//! concurrency and random operation mixes, TTL, fenced locks, metering, and
//! the job aggregator.

use crate::common;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use agentbus::blackboard::{
    Aggregate, Bound, CasOutcome, Fence, LockAction, LockName, LockOutcome, micro_units,
};
use agentbus::jobs::{AggregateInto, JobSpec};
use agentbus::keys::Ident;
use agentbus::{Error, TenantId};
use axum::http::StatusCode;
use common::{TestEnv, assert_balance_matches_ledger, call};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn ns(name: &str) -> Ident {
    Ident::new("namespace", name).unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Aggregates recomputed from scratch over a model of the namespace.
fn recompute(model: &BTreeMap<String, Value>) -> Aggregate {
    let nums: Vec<(i64, &Value)> = model
        .values()
        .filter_map(|v| micro_units(v).map(|m| (m, v)))
        .collect();
    let sum_micro: i64 = nums.iter().map(|(m, _)| m).sum();
    let sum = Decimal::new(sum_micro, 6).normalize();
    let count = nums.len() as i64;
    let min = nums
        .iter()
        .min_by_key(|(m, _)| *m)
        .map(|(_, v)| (*v).clone());
    let max = nums
        .iter()
        .max_by_key(|(m, _)| *m)
        .map(|(_, v)| (*v).clone());
    Aggregate {
        keys: model.len() as i64,
        count,
        sum,
        min,
        max,
        mean: (count > 0).then(|| (sum / Decimal::from(count)).round_dp(6).normalize()),
    }
}

/// min/max may tie between different keys with equal values: compare by value.
fn assert_aggregates_equal(got: &Aggregate, want: &Aggregate) {
    assert_eq!(
        (got.keys, got.count, got.sum, got.mean),
        (want.keys, want.count, want.sum, want.mean)
    );
    let num = |v: &Option<Value>| v.as_ref().and_then(micro_units);
    assert_eq!(num(&got.min), num(&want.min));
    assert_eq!(num(&got.max), num(&want.max));
}

#[tokio::test]
async fn values_cas_increments_and_deletes() {
    let env = TestEnv::new().await;
    let t = env.tenant("bb");
    env.grant(&t, 1000).await;
    let bb = env.bus.blackboard(&t, &ns("facts"));
    assert_eq!(bb.get("a").await.unwrap(), None);
    assert!(
        !bb.set("a", &json!({"text": "hello"}), None, None)
            .await
            .unwrap()
    );
    assert!(
        bb.set("a", &json!({"text": "hi"}), None, None)
            .await
            .unwrap()
    );
    assert_eq!(bb.get("a").await.unwrap(), Some(json!({"text": "hi"})));

    // Compare-and-set: absent expected, mismatch, match.
    assert_eq!(
        bb.compare_and_set("b", None, &json!(1), None, None)
            .await
            .unwrap(),
        CasOutcome::Set
    );
    assert_eq!(
        bb.compare_and_set("b", None, &json!(2), None, None)
            .await
            .unwrap(),
        CasOutcome::Mismatch {
            current: Some(json!(1))
        }
    );
    assert_eq!(
        bb.compare_and_set("b", Some(&json!(1)), &json!(2), None, None)
            .await
            .unwrap(),
        CasOutcome::Set
    );

    // Increments are exact, integer and decimal.
    assert_eq!(
        bb.increment("c", &json!(0.1), None).await.unwrap(),
        json!(0.1)
    );
    assert_eq!(
        bb.increment("c", &json!(0.2), None).await.unwrap(),
        json!(0.3)
    );
    assert_eq!(
        bb.increment("c", &json!(-1), None).await.unwrap(),
        json!(-0.7)
    );
    assert_eq!(bb.increment("n", &json!(5), None).await.unwrap(), json!(5));
    assert!(matches!(
        bb.increment("a", &json!(1), None).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        bb.increment("c", &json!("x"), None).await,
        Err(Error::Invalid { .. })
    ));

    let agg = bb.aggregate().await.unwrap();
    assert_eq!((agg.keys, agg.count), (4, 3));
    assert_eq!(agg.sum, dec("6.3"));
    assert_eq!(agg.min, Some(json!(-0.7)));
    assert_eq!(agg.max, Some(json!(5)));
    assert_eq!(agg.mean, Some(dec("2.1")));

    assert!(bb.delete("n", None).await.unwrap());
    assert!(!bb.delete("n", None).await.unwrap());
    let agg = bb.aggregate().await.unwrap();
    assert_eq!((agg.keys, agg.count, agg.sum), (3, 2, dec("1.3")));

    let page = bb.keys_page(None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let page = bb.keys_page(Some("b"), 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    let range = bb
        .range(Bound::Inclusive(0.0), Bound::Unbounded, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        range.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let top = bb.top(1, false).await.unwrap();
    assert_eq!(top[0].value, json!(-0.7));

    // Namespaces are separate.
    assert_eq!(
        env.bus.blackboard(&t, &ns("other")).get("a").await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_writers_leave_exact_values_and_aggregates() {
    let env = TestEnv::new().await;
    let t = env.tenant("many");
    env.grant(&t, 100_000).await;
    let mut tasks = Vec::new();
    for w in 0..50 {
        let bb = env.bus.blackboard(&t, &ns("shared"));
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                // Ten shared counters, each bumped by 0.01 × (w + 1).
                let amount = Decimal::new((w + 1) as i64, 2);
                bb.increment(
                    &format!("counter-{}", i % 10),
                    &serde_json::to_value(amount.to_string().parse::<f64>().unwrap()).unwrap(),
                    None,
                )
                .await
                .unwrap();
                // And an entry of one's own, overwritten.
                bb.set(&format!("writer-{w}"), &json!(i), None, None)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let bb = env.bus.blackboard(&t, &ns("shared"));
    // Each counter got 4 increments from every writer: 4 × 0.01 × (1 + … + 50).
    let per_counter = Decimal::new(4 * (1..=50).sum::<i64>(), 2);
    let mut model = BTreeMap::new();
    for c in 0..10 {
        let v = bb.get(&format!("counter-{c}")).await.unwrap().unwrap();
        assert_eq!(
            Decimal::from_str(&v.to_string()).unwrap(),
            per_counter,
            "counter-{c}"
        );
        model.insert(format!("counter-{c}"), v);
    }
    for w in 0..50 {
        assert_eq!(
            bb.get(&format!("writer-{w}")).await.unwrap(),
            Some(json!(39))
        );
        model.insert(format!("writer-{w}"), json!(39));
    }
    assert_aggregates_equal(&bb.aggregate().await.unwrap(), &recompute(&model));
    // 50 × 40 × 2 writes, plus the reads above and the aggregate, all charged.
    env.bus.flush_metering(&t).await.unwrap();
    assert_balance_matches_ledger(&env, &t).await;
    let spent = env.bus.balance(&t).await.unwrap().spent;
    assert_eq!(spent, Decimal::from(50 * 40 * 2 + 10 + 50 + 1));
}

#[derive(Clone, Debug)]
enum Op {
    Set(u8, i32),
    SetText(u8),
    Incr(u8, i32),
    Delete(u8),
    Expire(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, -500i32..500).prop_map(|(k, v)| Op::Set(k, v)),
        1 => (0u8..8).prop_map(Op::SetText),
        3 => (0u8..8, -300i32..300).prop_map(|(k, v)| Op::Incr(k, v)),
        1 => (0u8..8).prop_map(Op::Delete),
        1 => (0u8..8).prop_map(Op::Expire),
    ]
}

async fn run_mix(ops: Vec<Op>) {
    let env = TestEnv::new().await;
    let t = env.tenant("mix");
    env.grant(&t, 100_000).await;
    let bb = env.bus.blackboard(&t, &ns("mix"));
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Set(k, v) => {
                // Values with two decimals: 1.23 etc.
                let value = serde_json::to_value(
                    Decimal::new(v as i64, 2)
                        .to_string()
                        .parse::<f64>()
                        .unwrap(),
                )
                .unwrap();
                bb.set(&format!("k{k}"), &value, None, None).await.unwrap();
                model.insert(format!("k{k}"), value);
            }
            Op::SetText(k) => {
                bb.set(&format!("k{k}"), &json!("text"), None, None)
                    .await
                    .unwrap();
                model.insert(format!("k{k}"), json!("text"));
            }
            Op::Incr(k, v) => {
                let key = format!("k{k}");
                let amount = serde_json::to_value(
                    Decimal::new(v as i64, 3)
                        .to_string()
                        .parse::<f64>()
                        .unwrap(),
                )
                .unwrap();
                match bb.increment(&key, &amount, None).await {
                    Ok(new) => {
                        let old = model.get(&key).and_then(micro_units).unwrap_or(0);
                        let want = Decimal::new(old + micro_units(&amount).unwrap(), 6);
                        assert_eq!(Decimal::from_str(&new.to_string()).unwrap(), want);
                        model.insert(key, new);
                    }
                    Err(Error::Conflict { .. }) => {
                        assert_eq!(model.get(&key), Some(&json!("text")))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Delete(k) => {
                bb.delete(&format!("k{k}"), None).await.unwrap();
                model.remove(&format!("k{k}"));
            }
            Op::Expire(k) => {
                let key = format!("k{k}");
                let value = json!(k as i64 * 10);
                bb.set(&key, &value, Some(Duration::from_millis(1)), None)
                    .await
                    .unwrap();
                model.remove(&key);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        assert_aggregates_equal(&bb.aggregate().await.unwrap(), &recompute(&model));
        let listed: Vec<String> = bb
            .keys_page(None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(listed, model.keys().cloned().collect::<Vec<_>>());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn aggregates_equal_a_recomputation_after_any_mix(ops in prop::collection::vec(op(), 1..30)) {
        common::block_on(run_mix(ops));
    }
}

#[tokio::test]
async fn expired_entries_leave_value_index_and_aggregates() {
    let env = TestEnv::new().await;
    let t = env.tenant("ttl");
    env.grant(&t, 1000).await;
    let bb = env.bus.blackboard(&t, &ns("cache"));
    bb.set("keep", &json!(1), None, None).await.unwrap();
    // A TTL long enough for 20 writes and a read on a busy machine.
    for i in 0..20 {
        bb.set(
            &format!("temp-{i}"),
            &json!(100),
            Some(Duration::from_secs(1)),
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(bb.aggregate().await.unwrap().count, 21);
    // The background sweep removes them from every structure once due.
    let swept = std::cell::Cell::new(0);
    let all_swept = common::eventually(Duration::from_secs(10), || {
        let (swept, env, t) = (&swept, &env, &t);
        async move {
            swept.set(swept.get() + env.bus.sweep_blackboards(t).await.unwrap());
            swept.get() == 20
        }
    })
    .await;
    assert!(all_swept, "swept {} of 20", swept.get());
    let agg = bb.aggregate().await.unwrap();
    assert_eq!((agg.keys, agg.count, agg.sum), (1, 1, Decimal::ONE));
    assert_eq!(bb.top(5, true).await.unwrap().len(), 1);
    let mut conn = env.conn().await;
    let keys = env.bus.keys(&t).blackboard(&ns("cache"));
    for k in [&keys.vals, &keys.nums] {
        let n: i64 = redis::cmd("HLEN")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 1, "{k}");
    }
    for k in [&keys.lex, &keys.score, &keys.exp] {
        let n: i64 = redis::cmd("ZCARD")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, if k == &keys.exp { 0 } else { 1 }, "{k}");
    }
    // An expired entry is gone on read even before a sweep.
    bb.set("flash", &json!(7), Some(Duration::from_millis(20)), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(bb.get("flash").await.unwrap(), None);
    assert_eq!(bb.aggregate().await.unwrap().count, 1);
}

#[tokio::test]
async fn a_stale_lock_holder_is_refused_by_fencing() {
    let env = TestEnv::new().await;
    let t = env.tenant("locks");
    env.grant(&t, 1000).await;
    let bb = env.bus.blackboard(&t, &ns("work"));
    let lock = LockName::new("report").unwrap();
    let (a, b) = (
        Ident::new("h", "agent-a").unwrap(),
        Ident::new("h", "agent-b").unwrap(),
    );

    // A second of TTL: B's first try below must find it held even on a busy machine.
    let LockOutcome::Ok { fencing_token: t1 } = bb
        .lock(&lock, LockAction::Acquire, &a, Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("a could not acquire")
    };
    assert!(matches!(
        bb.lock(&lock, LockAction::Acquire, &b, Duration::from_secs(10)).await.unwrap(),
        LockOutcome::Held { holder, .. } if holder == "agent-a"
    ));
    let fence_a = Fence {
        lock: lock.clone(),
        token: t1,
    };
    bb.set("report", &json!("by a"), None, Some(&fence_a))
        .await
        .unwrap();

    // A stalls past its TTL; B takes the lock with a higher token as soon
    // as it expires (waited for, not slept).
    let t2 = std::cell::Cell::new(None);
    let acquired = common::eventually(Duration::from_secs(10), || {
        let (bb, lock, b, t2) = (&bb, &lock, &b, &t2);
        async move {
            match bb
                .lock(lock, LockAction::Acquire, b, Duration::from_secs(10))
                .await
                .unwrap()
            {
                LockOutcome::Ok { fencing_token } => {
                    t2.set(Some(fencing_token));
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    assert!(acquired, "b could not acquire");
    let t2 = t2.get().expect("token");
    assert!(t2 > t1);
    let stale = bb
        .set("report", &json!("late a"), None, Some(&fence_a))
        .await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    assert!(matches!(
        bb.increment("n", &json!(1), Some(&fence_a)).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(bb.get("report").await.unwrap(), Some(json!("by a")));
    bb.set(
        "report",
        &json!("by b"),
        None,
        Some(&Fence {
            lock: lock.clone(),
            token: t2,
        }),
    )
    .await
    .unwrap();

    assert!(matches!(
        bb.lock(&lock, LockAction::Release, &a, Duration::from_secs(1))
            .await
            .unwrap(),
        LockOutcome::NotHolder { .. }
    ));
    assert!(
        matches!(bb.lock(&lock, LockAction::Extend, &b, Duration::from_secs(5)).await.unwrap(), LockOutcome::Ok { fencing_token } if fencing_token == t2)
    );
    assert!(matches!(
        bb.lock(&lock, LockAction::Release, &b, Duration::from_secs(1))
            .await
            .unwrap(),
        LockOutcome::Ok { .. }
    ));
    let LockOutcome::Ok { fencing_token: t3 } = bb
        .lock(&lock, LockAction::Acquire, &a, Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(t3, t2 + 1, "tokens are monotonic per lock");
}

#[tokio::test]
async fn operations_are_metered_and_refused_without_credit() {
    let env = TestEnv::new().await;
    let t = env.tenant("meter");
    env.grant(&t, 5).await;
    let bb = env.bus.blackboard(&t, &ns("m"));
    bb.set("a", &json!(1), None, None).await.unwrap(); // write 1
    bb.get("a").await.unwrap(); // read 1
    let lock = Ident::new("l", "l").unwrap();
    let holder = Ident::new("h", "h").unwrap();
    bb.lock(&lock, LockAction::Acquire, &holder, Duration::from_secs(5))
        .await
        .unwrap(); // lock 2
    assert_eq!(env.bus.balance(&t).await.unwrap().spent, Decimal::from(4));
    bb.get("a").await.unwrap(); // read 1: the last credit
    let before = env.bus.balance(&t).await.unwrap();
    assert!(matches!(
        bb.set("b", &json!(2), None, None).await,
        Err(Error::InsufficientCredits { .. })
    ));
    assert_eq!(
        bb.get("b").await.ok(),
        None,
        "refused read charged nothing either"
    );
    assert_eq!(env.bus.balance(&t).await.unwrap(), before);
    // The ledger learns of metered charges at the flush, one event per skill.
    let flushed = env.bus.flush_metering(&t).await.unwrap();
    assert_eq!(flushed, Decimal::from(5));
    assert_balance_matches_ledger(&env, &t).await;
    assert_eq!(env.bus.flush_metering(&t).await.unwrap(), Decimal::ZERO);
}

/// A call refused for credit writes nothing, not even the housekeeping of an
/// entry that expired meanwhile (the fuzzer saw a 402 that had removed one):
/// the charge is decided before anything is swept.
#[tokio::test]
async fn a_call_refused_for_credit_sweeps_nothing() {
    let env = TestEnv::new().await;
    let t = env.tenant("broke");
    env.grant(&t, 2).await;
    let bb = env.bus.blackboard(&t, &ns("e"));
    bb.set("x", &json!(1), Some(Duration::from_millis(1)), None)
        .await
        .unwrap();
    bb.set("n", &json!(5), Some(Duration::from_millis(1)), None)
        .await
        .unwrap(); // the last credit
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = env.snapshot().await;
    let refused = |r: Result<_, Error>| matches!(r, Err(Error::InsufficientCredits { .. }));
    assert!(refused(
        bb.set("x", &json!(2), None, None).await.map(|_| ())
    ));
    assert!(refused(
        bb.increment("n", &json!(1), None).await.map(|_| ())
    ));
    assert!(refused(bb.get("x").await.map(|_| ())));
    assert!(refused(bb.aggregate().await.map(|_| ())));
    assert_eq!(before, env.snapshot().await, "a refused call wrote");
    // With credit, the expired entries are gone as they should be.
    env.grant(&t, 5).await;
    assert_eq!(bb.get("x").await.unwrap(), None);
    assert_eq!(bb.increment("n", &json!(1), None).await.unwrap(), json!(1));
    assert_eq!(bb.aggregate().await.unwrap().count, 1);
}

#[tokio::test]
async fn a_jobs_results_are_aggregated_into_a_namespace_as_items_complete() {
    let env = TestEnv::new().await;
    let t: TenantId = env.tenant("agg");
    env.grant(&t, 1000).await;
    let mut spec = JobSpec::new("orc", "w", "score", (0..20).map(|i| json!(i)).collect());
    spec.parallelism = 20;
    spec.aggregate = Some(AggregateInto {
        namespace: ns("scores"),
        field: Some("score".into()),
    });
    let job = env.bus.spawn_job(&t, &spec).await.unwrap();
    let items = env
        .bus
        .claim_items(&t, &job.id, "w", 20, Duration::ZERO)
        .await
        .unwrap();
    let outputs: Vec<_> = items
        .iter()
        .map(|c| {
            (
                c.item_id.clone(),
                json!({ "score": c.item_index as f64 * 1.5, "note": "x" }),
            )
        })
        .collect();
    env.bus
        .complete_items(&t, &job.id, &outputs[..10])
        .await
        .unwrap();
    let bb = env.bus.blackboard(&t, &ns("scores"));
    assert_eq!(
        bb.aggregate().await.unwrap().count,
        10,
        "aggregated as items complete"
    );
    env.bus
        .complete_items(&t, &job.id, &outputs[10..])
        .await
        .unwrap();
    let agg = bb.aggregate().await.unwrap();
    assert_eq!(agg.count, 20);
    assert_eq!(
        agg.sum,
        Decimal::from_str(&(0..20).map(|i| i as f64 * 1.5).sum::<f64>().to_string()).unwrap()
    );
    assert_eq!(agg.max, Some(json!(28.5)));
    let top = bb.top(1, true).await.unwrap();
    assert_eq!(top[0].key, format!("{}:19", job.id));
}

#[tokio::test]
async fn the_blackboard_over_http() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("web").await;
    env.grant(&env.tenant("web"), 1000).await;
    let t = Some(token.as_str());

    let (status, put) = call(
        &app,
        "PUT",
        "/api/v1/blackboard/progress",
        t,
        Some(json!({"value": {"done": 3}, "ttl": 60})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["success"], true);
    let (_, got) = call(&app, "GET", "/api/v1/blackboard/progress", t, None).await;
    assert_eq!(
        got,
        json!({"key": "progress", "found": true, "value": {"done": 3}})
    );
    let (_, missing) = call(&app, "GET", "/api/v1/blackboard/nothing", t, None).await;
    assert_eq!(missing["found"], false);
    let (_, inc) = call(&app, "POST", "/api/v1/blackboard/hits/increment", t, None).await;
    assert_eq!(inc, json!({"key": "hits", "value": 1}));
    let (_, inc) = call(
        &app,
        "POST",
        "/api/v1/blackboard/hits/increment",
        t,
        Some(json!({"amount": 2.5})),
    )
    .await;
    assert_eq!(inc["value"], json!(3.5));
    let (status, lock) = call(
        &app,
        "POST",
        "/api/v1/blackboard/report/lock",
        t,
        Some(json!({"holder": "a", "action": "acquire"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lock["acquired"], true);
    let token_a = lock["fencing_token"].as_i64().unwrap();
    let (status, lock) = call(
        &app,
        "POST",
        "/api/v1/blackboard/report/lock",
        t,
        Some(json!({"holder": "b", "action": "acquire"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (lock["acquired"].clone(), lock["holder"].clone()),
        (json!(false), json!("a"))
    );

    // Locks (and their fencing tokens) belong to a namespace.
    let (status, _) = call(
        &app,
        "PUT",
        "/api/v1/namespaces/stats/entries/x",
        t,
        Some(json!({"value": 5, "fence": {"lock": "report", "token": token_a}})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the default namespace's token means nothing in another"
    );
    let (_, lock) = call(
        &app,
        "POST",
        "/api/v1/namespaces/stats/locks/report",
        t,
        Some(json!({"holder": "a", "action": "acquire"})),
    )
    .await;
    let token = lock["fencing_token"].as_i64().unwrap();
    // As the original: `action` defaults to acquire, and names may hold `:`.
    let (status, merge) = call(
        &app,
        "POST",
        "/api/v1/namespaces/merges/locks/job:42:merge",
        t,
        Some(json!({"holder": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{merge}");
    let (status, held) = call(
        &app,
        "POST",
        "/api/v1/namespaces/merges/locks/job:42:merge",
        t,
        Some(json!({"holder": "b"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "a second acquire: {held}");
    assert_eq!(held["holder"], "a", "{held}");
    let (status, fenced) = call(
        &app,
        "PUT",
        "/api/v1/namespaces/merges/entries/merged",
        t,
        Some(
            json!({"value": 1, "fence": {"lock": "job:42:merge", "token": merge["fencing_token"]}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{fenced}");
    let (status, bad) = call(
        &app,
        "POST",
        "/api/v1/namespaces/merges/locks/a%01b",
        t,
        Some(json!({"holder": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["error"]["field"], "lock", "{bad}");
    for (k, v) in [("x", 5), ("y", 1), ("z", 9)] {
        let (status, resp) = call(
            &app,
            "PUT",
            &format!("/api/v1/namespaces/stats/entries/{k}"),
            t,
            Some(json!({"value": v, "fence": {"lock": "report", "token": token}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
    }
    let (_, top) = call(&app, "GET", "/api/v1/namespaces/stats/top?k=2", t, None).await;
    assert_eq!(
        top["entries"],
        json!([{"key": "z", "value": 9}, {"key": "x", "value": 5}])
    );
    let (_, agg) = call(&app, "GET", "/api/v1/namespaces/stats/aggregate", t, None).await;
    assert_eq!(
        agg,
        json!({"keys": 3, "count": 3, "sum": 15, "min": 1, "max": 9, "mean": 5})
    );
    let (_, range) = call(
        &app,
        "GET",
        "/api/v1/namespaces/stats/range?min=(1&max=9",
        t,
        None,
    )
    .await;
    assert_eq!(range["count"], 2);
    let (_, page) = call(
        &app,
        "GET",
        "/api/v1/namespaces/stats/keys?limit=2",
        t,
        None,
    )
    .await;
    assert_eq!(page["next"], "y");
    let (status, cas) = call(
        &app,
        "POST",
        "/api/v1/namespaces/stats/entries/x/cas",
        t,
        Some(json!({"expected": 4, "value": 6})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(cas["current"], 5);
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/namespaces/stats/entries/x/cas",
        t,
        Some(json!({"expected": 5, "value": 6})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, del) = call(
        &app,
        "DELETE",
        "/api/v1/namespaces/stats/entries/y",
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, del["deleted"].clone()),
        (StatusCode::OK, json!(true))
    );

    for (method, uri, body, field) in [
        (
            "PUT",
            "/api/v1/blackboard/k",
            json!({"value": 1, "ttl": 0}),
            "ttl",
        ),
        ("PUT", "/api/v1/blackboard/k", json!({"ttl": 5}), "value"),
        (
            "POST",
            "/api/v1/blackboard/k/increment",
            json!({"amount": "one"}),
            "amount",
        ),
        (
            "POST",
            "/api/v1/blackboard/k/lock",
            json!({"holder": "a", "action": "steal"}),
            "action",
        ),
        (
            "GET",
            "/api/v1/namespaces/bad%20ns/aggregate",
            Value::Null,
            "namespace",
        ),
        (
            "GET",
            "/api/v1/namespaces/stats/range?min=abc",
            Value::Null,
            "min",
        ),
        (
            "GET",
            "/api/v1/namespaces/stats/top?order=sideways",
            Value::Null,
            "order",
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (status, resp) = call(&app, method, uri, t, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{uri}: {resp}");
    }
}

/// A range is found by rank (ZCOUNT of its ends, then ZRANGE), so a deep
/// offset costs no walk: it answers exactly what ZRANGEBYSCORE … LIMIT
/// would, for inclusive, exclusive and open bounds, ties and offsets past
/// the end.
#[tokio::test]
async fn a_range_by_rank_answers_what_zrangebyscore_would() {
    let env = TestEnv::new().await;
    let t = env.tenant("ranks");
    env.grant(&t, 1000).await;
    let name = ns("ranked");
    let bb = env.bus.blackboard(&t, &name);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..60 {
        // Few distinct values: many ties, broken by key as Redis does.
        let v = (next() % 13) as f64 / 2.0 - 3.0;
        bb.set(&format!("k{i:02}"), &json!(v), None, None)
            .await
            .unwrap();
    }
    let score_key = env.bus.keys(&t).blackboard(&name).score;
    let mut conn = env.conn().await;
    let bounds = [
        Bound::Unbounded,
        Bound::Inclusive(-1.0),
        Bound::Exclusive(-1.0),
        Bound::Inclusive(0.25),
        Bound::Exclusive(2.5),
        Bound::Inclusive(9.0),
    ];
    let text = |b: Bound, low: bool| match b {
        Bound::Unbounded if low => "-inf".to_string(),
        Bound::Unbounded => "+inf".to_string(),
        Bound::Inclusive(x) => format!("{x}"),
        Bound::Exclusive(x) => format!("({x}"),
    };
    for lo in bounds {
        for hi in bounds {
            for (offset, limit) in [(0, 1000), (0, 1), (3, 7), (59, 5), (100, 10)] {
                let got: Vec<String> = bb
                    .range(lo, hi, offset, limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.key)
                    .collect();
                let want: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&score_key)
                    .arg(text(lo, true))
                    .arg(text(hi, false))
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(
                    got, want,
                    "seed {seed}: {lo:?}..{hi:?} offset {offset} limit {limit}"
                );
            }
        }
    }
}

#[tokio::test]
async fn keys_by_prefix_match_a_byte_order_filter_of_every_key_page_by_page() {
    let env = TestEnv::new().await;
    let t = env.tenant("prefix");
    env.grant(&t, 1000).await;
    let bb = env
        .bus
        .blackboard(&t, &Ident::new("ns", "prefixes").unwrap());
    let keys = [
        "jo",
        "job:1",
        "job:1:a",
        "job:1:b",
        "job:10:a",
        "job:2:a",
        "joc",
        "job",
        "ü:1",
        "üx",
        "a",
        "job:1:a:deep",
    ];
    for k in keys {
        bb.set(k, &json!(1), None, None).await.unwrap();
    }
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for prefix in ["job:1", "job:1:", "jo", "ü", "zzz", "job:1:a:deep:more"] {
        let expected: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|k| k.starts_with(prefix))
            .collect();
        for limit in [1, 2, 100] {
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = bb
                    .keys_with_prefix(Some(prefix), after.as_deref(), limit)
                    .await
                    .unwrap();
                got.extend(page.iter().map(|e| e.key.clone()));
                if page.len() < limit {
                    break;
                }
                after = page.last().map(|e| e.key.clone());
            }
            assert_eq!(got, expected, "prefix {prefix:?}, pages of {limit}");
        }
        // A cursor before the prefix starts at the prefix.
        let from_a = bb
            .keys_with_prefix(Some(prefix), Some("a"), 100)
            .await
            .unwrap();
        let got: Vec<&str> = from_a.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(got, expected, "prefix {prefix:?} after \"a\"");
    }
    assert!(matches!(
        bb.keys_with_prefix(Some("a\u{1}"), None, 10).await,
        Err(Error::Invalid { field, .. }) if field == "prefix"
    ));
}
