//! Jobs against real Redis: exactly-once charging under concurrency, exact
//! refunds on cancel, re-delivery after a worker dies, retries and dead letters.

use crate::common;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbus::Error;
use agentbus::jobs::worker::{ItemError, Worker};
use agentbus::jobs::{CompleteOutcome, FailOutcome, JobSpec, JobStatus, reclaim};
use common::{TestEnv, assert_balance_matches_ledger, assert_job_credits, eventually, ledger_sums};
use rust_decimal::Decimal;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A job whose tests claim in bulk: no bound on items in flight that they
/// would meet (the bound has tests of its own).
fn spec(items: usize) -> JobSpec {
    let mut s = JobSpec::new(
        "orchestrator-1",
        "worker",
        "test-task",
        (0..items).map(|i| json!({ "n": i })).collect(),
    );
    s.parallelism = agentbus::jobs::PARALLELISM.1;
    s
}

fn credits(n: i64) -> Decimal {
    Decimal::from(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_items_fifty_workers_each_item_completed_and_charged_exactly_once() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("load");
    env.grant(&tenant, 10_000).await;
    // A one-second timeout per item, and ten items whose first handler
    // stalls past it: the reclaimer hands them to another worker while the
    // first is still busy, and both complete them.
    let mut s = spec(1000);
    s.timeout_per_item = 1;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap();
    assert_eq!(job.credits.reserved, credits(5 + 2 * 1000));
    let stalls = |idx: i64| idx % 100 == 7;

    let handled: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..50 {
        let handled = handled.clone();
        let worker =
            Worker::new(env.bus.clone(), tenant.clone(), job.id, &format!("w{w}")).unwrap();
        workers.push(tokio::spawn(worker.run(move |item| {
            let handled = handled.clone();
            async move {
                let first = {
                    let mut h = handled.lock().unwrap();
                    let n = h.entry(item.item_index).or_default();
                    *n += 1;
                    *n == 1
                };
                // 100 ms of work per item keeps the job running (about two
                // seconds in all) past the stalled handlers' return at 1.5 s,
                // so their late completions meet a running job: stale.
                if first && stalls(item.item_index) {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(json!({ "doubled": item.input.json()["n"].as_i64().unwrap_or(-1) * 2 }))
            }
        })));
    }
    let reclaiming = CancellationToken::new();
    let reclaimer = {
        let (bus, tenant, stop, id) = (env.bus.clone(), tenant.clone(), reclaiming.clone(), job.id);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = bus.reclaim_job(&tenant, &id).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut completed = 0;
    let mut refused = 0;
    for w in workers {
        let report = w.await.unwrap().unwrap();
        completed += report.completed;
        refused += report.duplicates + report.stale + report.rejected;
    }
    reclaiming.cancel();
    reclaimer.await.unwrap();
    assert_eq!(completed, 1000);
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 1000, "every item handled");
    let deliveries: u32 = handled.values().sum();
    // Every delivery past the first of an item was refused when it completed.
    assert_eq!(refused as u32, deliveries - 1000, "{handled:?}");
    for (idx, n) in &handled {
        if stalls(*idx) {
            assert!(*n >= 2, "stalled item {idx} was never redelivered");
        }
    }

    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.progress.completed, 1000);
    assert_job_credits(&job);
    assert_eq!(job.credits.spent, credits(2005));
    let results = env
        .bus
        .job_results(&tenant, &job.id, None, 2000)
        .await
        .unwrap()
        .results;
    let mut seen: Vec<i64> = results.iter().map(|r| r.item_index).collect();
    seen.sort();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    assert!(
        results
            .iter()
            .all(|r| r.output.json()["doubled"] == json!(r.item_index * 2))
    );

    let balance = env.bus.balance(&tenant).await.unwrap();
    assert_eq!(balance.reserved, Decimal::ZERO);
    assert_eq!(balance.spent, credits(2005));
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn a_redelivered_item_completed_by_both_workers_is_charged_once() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("redeliver");
    env.grant(&tenant, 1000).await;
    let mut s = spec(20);
    s.timeout_per_item = 1;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap().id;
    // Worker A takes every item, finishes half, and stalls on the rest.
    let first = env
        .bus
        .claim_items(&tenant, &job, "a", 20, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.len(), 20);
    let (quick, stalled) = first.split_at(10);
    let out =
        |items: &[agentbus::jobs::ClaimedItem], tag: &str| -> Vec<(String, serde_json::Value)> {
            items
                .iter()
                .map(|i| (i.item_id.clone(), json!({ "by": tag, "idx": i.item_index })))
                .collect()
        };
    let done = env
        .bus
        .complete_items(&tenant, &job, &out(quick, "a"))
        .await
        .unwrap();
    assert!(done.iter().all(|o| *o == CompleteOutcome::Completed));
    // Its deliveries time out; the reclaimer hands them to worker B.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (requeued, _) = env.bus.reclaim_job(&tenant, &job).await.unwrap();
            requeued > 0
        })
        .await
    );
    // All ten went idle together, so one reclaim call re-queued them all.
    let second = env
        .bus
        .claim_items(&tenant, &job, "b", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(second.len(), 10);
    assert!(second.iter().all(|i| i.retry_count == 1), "redelivered");
    let mut redelivered: Vec<i64> = second.iter().map(|i| i.item_index).collect();
    redelivered.sort();
    let mut expected: Vec<i64> = stalled.iter().map(|i| i.item_index).collect();
    expected.sort();
    assert_eq!(redelivered, expected);
    // A wakes up and completes its old deliveries: no longer held, refused.
    let late = env
        .bus
        .complete_items(&tenant, &job, &out(stalled, "a"))
        .await
        .unwrap();
    assert!(
        late.iter().all(|o| *o == CompleteOutcome::Stale),
        "{late:?}"
    );
    // B completes nine, one of them twice, then the last.
    let done = env
        .bus
        .complete_items(&tenant, &job, &out(&second[..9], "b"))
        .await
        .unwrap();
    assert!(
        done.iter().all(|o| *o == CompleteOutcome::Completed),
        "{done:?}"
    );
    let again = env
        .bus
        .complete_items(&tenant, &job, &out(&second[..1], "b"))
        .await
        .unwrap();
    assert_eq!(again, [CompleteOutcome::Duplicate]);
    let last = env
        .bus
        .complete_items(&tenant, &job, &out(&second[9..], "b"))
        .await
        .unwrap();
    assert_eq!(last, [CompleteOutcome::Completed]);
    // Once the job ended, any completion is refused.
    let after = env
        .bus
        .complete_items(&tenant, &job, &out(stalled, "a"))
        .await;
    assert!(matches!(after, Err(Error::Conflict { .. })), "{after:?}");

    // Charged once per item, from the test's own count: 5.00 + 20 × 2.00.
    let j = env.bus.job(&tenant, &job).await.unwrap();
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(
        env.bus.balance(&tenant).await.unwrap().spent,
        credits(5 + 2 * 20)
    );
    let results = env
        .bus
        .job_results(&tenant, &job, None, 100)
        .await
        .unwrap()
        .results;
    let mut idx: Vec<i64> = results.iter().map(|r| r.item_index).collect();
    idx.sort();
    assert_eq!(idx, (0..20).collect::<Vec<_>>(), "one result per item");
    for r in &results {
        let by = r.output.json()["by"].clone();
        let stalled_item = expected.contains(&r.item_index);
        assert_eq!(by, json!(if stalled_item { "b" } else { "a" }));
    }
    assert_job_credits(&j);
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn cancel_with_half_completed_refunds_exactly_the_rest() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("cancel");
    env.grant(&tenant, 1000).await;
    let job = env.bus.spawn_job(&tenant, &spec(100)).await.unwrap();
    let claimed = env
        .bus
        .claim_items(&tenant, &job.id, "w1", 50, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 50);
    let outputs: Vec<_> = claimed
        .iter()
        .map(|c| (c.item_id.clone(), json!("ok")))
        .collect();
    let outcomes = env
        .bus
        .complete_items(&tenant, &job.id, &outputs)
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| *o == CompleteOutcome::Completed));

    let cancel = env
        .bus
        .cancel_job(&tenant, &job.id, "tester", "enough")
        .await
        .unwrap();
    assert_eq!(cancel.completed_items, 50);
    assert_eq!(cancel.cancelled_items, 50);
    assert_eq!(cancel.credits_refunded, credits(50 * 2));
    assert_eq!(cancel.status, JobStatus::Cancelled);

    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_job_credits(&job);
    assert_eq!(job.credits.refunded, credits(100));
    let balance = env.bus.balance(&tenant).await.unwrap();
    assert_eq!(balance.reserved, Decimal::ZERO);
    assert_eq!(balance.spent, credits(5 + 100));
    assert_eq!(balance.available, credits(1000 - 105));
    assert_balance_matches_ledger(&env, &tenant).await;

    // A second cancel is a conflict that shows the current state.
    match env
        .bus
        .cancel_job(&tenant, &job.id, "tester", "again")
        .await
    {
        Err(Error::Conflict {
            state: Some(state), ..
        }) => {
            assert!(state.get().contains("\"cancelled\""), "{state}");
        }
        other => panic!("expected conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn in_flight_items_at_cancel_are_refused_and_nothing_is_delivered_after() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("inflight");
    env.grant(&tenant, 1000).await;
    let job = env.bus.spawn_job(&tenant, &spec(20)).await.unwrap();
    let done = env
        .bus
        .claim_items(&tenant, &job.id, "w1", 5, Duration::ZERO)
        .await
        .unwrap();
    let outputs: Vec<_> = done.iter().map(|c| (c.item_id.clone(), json!(1))).collect();
    env.bus
        .complete_items(&tenant, &job.id, &outputs)
        .await
        .unwrap();
    let in_flight = env
        .bus
        .claim_items(&tenant, &job.id, "w2", 5, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(in_flight.len(), 5);

    let cancel = env
        .bus
        .cancel_job(&tenant, &job.id, "tester", "")
        .await
        .unwrap();
    assert_eq!(cancel.completed_items, 5);
    assert_eq!(
        cancel.cancelled_items, 15,
        "in-flight items count as cancelled"
    );
    assert_eq!(cancel.credits_refunded, credits(30));
    let before = env.bus.balance(&tenant).await.unwrap();

    // Late completions and failures are refused and charge nothing.
    let late: Vec<_> = in_flight
        .iter()
        .map(|c| (c.item_id.clone(), json!(1)))
        .collect();
    assert!(matches!(
        env.bus.complete_items(&tenant, &job.id, &late).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        env.bus
            .fail_item(&tenant, &job.id, &in_flight[0].item_id, "x", true)
            .await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(env.bus.balance(&tenant).await.unwrap(), before);

    // Nothing is delivered any more, through the API or straight from the stream.
    assert!(matches!(
        env.bus
            .claim_items(&tenant, &job.id, "w3", 10, Duration::ZERO)
            .await,
        Err(Error::Conflict { .. })
    ));
    let mut conn = env.conn().await;
    let direct: Result<redis::Value, _> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("w4")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(env.bus.keys(&tenant).job_items(&job.id))
        .arg(">")
        .query_async(&mut conn)
        .await;
    match direct {
        Ok(v) => assert_eq!(v, redis::Value::Nil),
        Err(e) => assert_eq!(e.code(), Some("NOGROUP"), "{e}"),
    }
    // Nor does the reclaimer bring anything back.
    assert_eq!(env.bus.reclaim_job(&tenant, &job.id).await.unwrap(), (0, 0));
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.progress.completed, 5);
    assert_job_credits(&job);
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_of_an_aborted_worker_is_redelivered_after_its_timeout_and_completed_once() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("abort");
    env.grant(&tenant, 1000).await;
    let mut s = spec(5);
    s.timeout_per_item = 1;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap();

    // Worker A takes one item and hangs on it; then its task is aborted.
    let (held_tx, mut held_rx) = tokio::sync::mpsc::channel(1);
    let a = Worker::new(env.bus.clone(), tenant.clone(), job.id, "dies").unwrap();
    let a = tokio::spawn(a.run(move |item| {
        let held_tx = held_tx.clone();
        async move {
            let _ = held_tx.send(item.item_index).await;
            std::future::pending::<()>().await;
            Ok(json!(null))
        }
    }));
    let held = held_rx.recv().await.unwrap();
    a.abort();

    let shutdown = CancellationToken::new();
    let reclaimer = tokio::spawn(reclaim::run(
        env.bus.clone(),
        agentbus::due::Schedule {
            interval: Duration::from_millis(100),
            sweep_every: Duration::from_secs(3600),
        },
        shutdown.clone(),
    ));
    let seen: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let b = Worker::new(env.bus.clone(), tenant.clone(), job.id, "survivor").unwrap();
    let seen2 = seen.clone();
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        b.run(move |item| {
            seen2
                .lock()
                .unwrap()
                .push((item.item_index, item.retry_count));
            async move { Ok(json!("done")) }
        }),
    )
    .await
    .expect("job finishes")
    .unwrap();
    shutdown.cancel();
    reclaimer.await.unwrap();

    assert_eq!(report.completed, 5);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(held, 1)),
        "held item re-delivered as attempt 1: {seen:?}"
    );
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.progress.completed, 5);
    assert_eq!(job.progress.retried, 1);
    assert_job_credits(&job);
    assert_eq!(job.credits.spent, credits(5 + 10));
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn insufficient_credit_creates_nothing_at_all() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("poor");
    env.grant(&tenant, 10).await;
    let keys_before = env.keys().await;
    let outbox_before = ledger_sums(&env, &tenant).await;
    match env.bus.spawn_job(&tenant, &spec(100)).await {
        Err(Error::InsufficientCredits {
            required,
            available,
        }) => {
            assert_eq!(required, credits(205));
            assert_eq!(available, credits(10));
        }
        other => panic!("expected insufficient credits, got {other:?}"),
    }
    assert_eq!(env.keys().await, keys_before, "no job key, no stream");
    assert_eq!(
        ledger_sums(&env, &tenant).await,
        outbox_before,
        "no ledger event"
    );
    let balance = env.bus.balance(&tenant).await.unwrap();
    assert_eq!(balance.reserved, Decimal::ZERO);
    assert_eq!(balance.available, credits(10));
}

#[tokio::test]
async fn a_second_completion_is_a_duplicate_and_charged_nothing() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("dup");
    env.grant(&tenant, 100).await;
    let job = env.bus.spawn_job(&tenant, &spec(2)).await.unwrap();
    let items = env
        .bus
        .claim_items(&tenant, &job.id, "w", 1, Duration::ZERO)
        .await
        .unwrap();
    let out = vec![(items[0].item_id.clone(), json!("a"))];
    assert_eq!(
        env.bus
            .complete_items(&tenant, &job.id, &out)
            .await
            .unwrap(),
        vec![CompleteOutcome::Completed]
    );
    let after_first = env.bus.balance(&tenant).await.unwrap();
    assert_eq!(
        env.bus
            .complete_items(&tenant, &job.id, &out)
            .await
            .unwrap(),
        vec![CompleteOutcome::Duplicate]
    );
    assert_eq!(env.bus.balance(&tenant).await.unwrap(), after_first);
    // An id that was never delivered, or is not an item id at all.
    let bogus = vec![
        ("1-1".to_string(), json!(1)),
        ("1-999".to_string(), json!(1)),
    ];
    assert_eq!(
        env.bus
            .complete_items(&tenant, &job.id, &bogus)
            .await
            .unwrap(),
        vec![CompleteOutcome::Stale, CompleteOutcome::Invalid]
    );
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.progress.completed, 1);
    assert_job_credits(&job);
}

#[tokio::test]
async fn failures_retry_up_to_max_then_dead_letter_and_release_credits() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("fails");
    env.grant(&tenant, 100).await;
    let mut s = spec(1);
    s.max_retries = 2;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap();
    for attempt in 0..3 {
        let items = env
            .bus
            .claim_items(&tenant, &job.id, "w", 1, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].retry_count, attempt);
        let outcome = env
            .bus
            .fail_item(&tenant, &job.id, &items[0].item_id, "boom", true)
            .await
            .unwrap();
        if attempt < 2 {
            assert_eq!(
                outcome,
                FailOutcome::Retried {
                    attempt: attempt + 1
                }
            );
        } else {
            assert_eq!(outcome, FailOutcome::Failed);
        }
    }
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.progress.failed, 1);
    assert_eq!(job.progress.retried, 2);
    assert_eq!(job.credits.refunded, credits(2));
    assert_job_credits(&job);
    let mut conn = env.conn().await;
    let dlq: redis::Value = redis::cmd("XRANGE")
        .arg(env.bus.keys(&tenant).dlq())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(dlq) = dlq else {
        panic!("dlq")
    };
    assert_eq!(dlq.len(), 1);
    let entry = agentbus::codec::StreamEntry::from_value(&dlq[0]).unwrap();
    assert_eq!(entry.text("reason"), Some("boom"));
    assert_eq!(entry.text("job"), Some(job.id.to_string().as_str()));
    let balance = env.bus.balance(&tenant).await.unwrap();
    assert_eq!(balance.reserved, Decimal::ZERO);
    assert_eq!(balance.spent, credits(5));
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn a_fail_without_retry_ends_the_item_at_once() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("noretry");
    env.grant(&tenant, 100).await;
    let job = env.bus.spawn_job(&tenant, &spec(2)).await.unwrap();
    let items = env
        .bus
        .claim_items(&tenant, &job.id, "w", 2, Duration::ZERO)
        .await
        .unwrap();
    let outcome = env
        .bus
        .fail_item(&tenant, &job.id, &items[0].item_id, "bad input", false)
        .await
        .unwrap();
    assert_eq!(outcome, FailOutcome::Failed);
    env.bus
        .complete_items(&tenant, &job.id, &[(items[1].item_id.clone(), json!(1))])
        .await
        .unwrap();
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!((job.progress.completed, job.progress.failed), (1, 1));
    assert_job_credits(&job);
}

#[tokio::test]
async fn reclaim_past_max_retries_fails_the_item_for_good() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("timeouts");
    env.grant(&tenant, 100).await;
    let mut s = spec(1);
    s.max_retries = 0;
    s.timeout_per_item = 1;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap();
    let items = env
        .bus
        .claim_items(&tenant, &job.id, "sleepy", 1, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        env.bus.reclaim_job(&tenant, &job.id).await.unwrap(),
        (0, 0),
        "not idle yet"
    );
    let reclaimed = eventually(Duration::from_secs(5), || async {
        env.bus.reclaim_job(&tenant, &job.id).await.unwrap() == (0, 1)
    })
    .await;
    assert!(reclaimed);
    let job_now = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job_now.status, JobStatus::Failed);
    assert_job_credits(&job_now);
    // The sleepy worker's late completion is refused.
    assert!(matches!(
        env.bus
            .complete_items(&tenant, &job.id, &[(items[0].item_id.clone(), json!(1))])
            .await,
        Err(Error::Conflict { .. })
    ));
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn finished_jobs_expire_after_the_retention() {
    let env = TestEnv::with_limits(agentbus::Limits {
        job_retention: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let tenant = env.tenant("expiry");
    env.grant(&tenant, 100).await;
    let job = env.bus.spawn_job(&tenant, &spec(1)).await.unwrap();
    let items = env
        .bus
        .claim_items(&tenant, &job.id, "w", 1, Duration::ZERO)
        .await
        .unwrap();
    env.bus
        .complete_items(&tenant, &job.id, &[(items[0].item_id.clone(), json!(1))])
        .await
        .unwrap();
    assert_eq!(env.bus.list_jobs(&tenant, 0, 10).await.unwrap().count, 1);
    let gone = eventually(Duration::from_secs(5), || async {
        matches!(env.bus.job(&tenant, &job.id).await, Err(Error::NotFound(_)))
    })
    .await;
    assert!(gone, "job keys did not expire");
    let page = env.bus.list_jobs(&tenant, 0, 10).await.unwrap();
    assert_eq!((page.count, page.total), (0, 0), "index entry dropped");
    let job_keys: Vec<String> = env
        .keys()
        .await
        .into_iter()
        .filter(|k| k.contains(&job.id.to_string()))
        .collect();
    assert!(job_keys.is_empty(), "{job_keys:?}");
}

#[tokio::test]
async fn a_restarted_worker_resumes_its_own_pending_items_first() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("resume");
    env.grant(&tenant, 100).await;
    let job = env.bus.spawn_job(&tenant, &spec(3)).await.unwrap();
    // "w" claimed two items and died before completing them.
    let held = env
        .bus
        .claim_items(&tenant, &job.id, "w", 2, Duration::ZERO)
        .await
        .unwrap();
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let order2 = order.clone();
    let report = Worker::new(env.bus.clone(), tenant.clone(), job.id, "w")
        .unwrap()
        .run(move |item| {
            order2.lock().unwrap().push(item.item_id.clone());
            async move { Ok(json!(1)) }
        })
        .await
        .unwrap();
    assert_eq!(report.completed, 3);
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order[..2],
        [held[0].item_id.clone(), held[1].item_id.clone()]
    );
}

#[tokio::test]
async fn worker_failures_go_through_retry_and_the_report_counts_them() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("flaky");
    env.grant(&tenant, 100).await;
    let mut s = spec(10);
    s.max_retries = 1;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap();
    // Even items fail once then succeed; item 1 always fails.
    let report = Worker::new(env.bus.clone(), tenant.clone(), job.id, "flaky")
        .unwrap()
        .concurrency(4)
        .run(|item| async move {
            match (item.item_index, item.retry_count) {
                (1, _) => Err(ItemError::retry("always")),
                (i, 0) if i % 2 == 0 => Err(ItemError::retry("first try")),
                _ => Ok(json!("ok")),
            }
        })
        .await
        .unwrap();
    assert_eq!(report.completed, 9);
    assert_eq!(report.failed, 1);
    assert_eq!(report.retried, 5 + 1);
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_job_credits(&job);
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn validation_errors_name_the_field_and_change_nothing() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("valid");
    env.grant(&tenant, 100).await;
    // Byte for byte: every key of the test, its value and whether it expires.
    let before = env.snapshot().await;
    type Mutation = Box<dyn Fn(&mut JobSpec)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("parallelism", Box::new(|s| s.parallelism = -1)),
        ("parallelism", Box::new(|s| s.parallelism = 10_001)),
        ("timeout_per_item", Box::new(|s| s.timeout_per_item = 3601)),
        ("max_retries", Box::new(|s| s.max_retries = 11)),
        ("items", Box::new(|s| s.items.clear())),
        ("task", Box::new(|s| s.task = " ".into())),
        ("worker_agent", Box::new(|s| s.worker_agent = "a b".into())),
    ];
    for (field, mutate) in cases {
        let mut s = spec(3);
        mutate(&mut s);
        match env.bus.spawn_job(&tenant, &s).await {
            Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected invalid, got {other:?}"),
        }
    }
    let small = TestEnv::with_limits(agentbus::Limits {
        max_items: 5,
        ..Default::default()
    })
    .await;
    small.grant(&tenant, 100).await;
    let small_before = small.snapshot().await;
    match small.bus.spawn_job(&tenant, &spec(6)).await {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "items"),
        other => panic!("expected invalid items, got {other:?}"),
    }
    assert!(small.snapshot().await == small_before, "max_items wrote");
    assert!(env.snapshot().await == before, "a rejected spawn wrote");
}

#[tokio::test]
async fn unknown_jobs_are_not_found() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("nobody");
    let id = Uuid::new_v4();
    assert!(matches!(
        env.bus.job(&tenant, &id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        env.bus
            .claim_items(&tenant, &id, "w", 1, Duration::ZERO)
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        env.bus.cancel_job(&tenant, &id, "x", "y").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        env.bus
            .complete_items(&tenant, &id, &[("1-0".into(), json!(1))])
            .await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn a_worker_fails_an_undecodable_item_for_good_without_calling_its_handler() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("poison-item");
    env.grant(&tenant, 100).await;
    let job = env.bus.spawn_job(&tenant, &spec(3)).await.unwrap();
    // Another process rewrites item 1 with bytes that are not MessagePack.
    let items = env.bus.keys(&tenant).job_items(&job.id);
    let mut conn = env.conn().await;
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(&items)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (id, fields) = entries
        .iter()
        .find(|(_, f)| f.iter().any(|(k, v)| k == "idx" && v == b"1"))
        .unwrap();
    let _: i64 = redis::cmd("XDEL")
        .arg(&items)
        .arg(id)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Same item index (an entry id's sequence names it), a later time.
    let last_ms: u64 = entries
        .last()
        .and_then(|(id, _)| id.split('-').next()?.parse().ok())
        .unwrap();
    let mut add = redis::cmd("XADD");
    add.arg(&items).arg(format!("{}-1", last_ms + 1));
    for (k, v) in fields {
        add.arg(k);
        if k == "input" {
            add.arg(&b"\xc1\x00"[..]);
        } else {
            add.arg(v);
        }
    }
    let _: String = add.query_async(&mut conn).await.unwrap();

    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let seen = handled.clone();
    let worker = Worker::new(env.bus.clone(), tenant.clone(), job.id, "w").unwrap();
    let report = worker
        .run(move |item| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(item.item_index);
                Ok(json!({"ok": true}))
            }
        })
        .await
        .unwrap();
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    assert_eq!(handled, [0, 2], "the undecodable item reached the handler");
    assert_eq!((report.completed, report.failed, report.retried), (2, 1, 0));
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.progress.failed, 1);
    assert_job_credits(&job);
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn a_released_item_goes_out_again_at_once_with_its_attempt_and_no_charge() {
    let env = TestEnv::new().await;
    let t = env.tenant("release");
    env.grant(&t, 100).await;
    let spec = JobSpec::new("o", "w", "give-back", (0..5).map(|i| json!(i)).collect());
    let job = env.bus.spawn_job(&t, &spec).await.unwrap();
    let held = env
        .bus
        .claim_items(&t, &job.id, "w1", 3, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(held.len(), 3);
    let before = env.bus.balance(&t).await.unwrap();

    // Another worker cannot give back what w1 holds.
    let none = env
        .bus
        .release_items(&t, &job.id, "w2", &[held[0].item_id.clone()])
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    // w1 gives one back: it goes out again at once, same item, same attempt.
    let one = env
        .bus
        .release_items(&t, &job.id, "w1", &[held[0].item_id.clone()])
        .await
        .unwrap();
    assert_eq!(one, [held[0].item_id.clone()]);
    let again = env
        .bus
        .claim_items(&t, &job.id, "w2", 10, Duration::ZERO)
        .await
        .unwrap();
    let mut indexes: Vec<i64> = again.iter().map(|c| c.item_index).collect();
    indexes.sort();
    let mut expected = vec![held[0].item_index];
    expected.extend((0..5).filter(|i| !held.iter().any(|h| h.item_index == *i)));
    expected.sort();
    assert_eq!(indexes, expected);
    let redelivered = again
        .iter()
        .find(|c| c.item_index == held[0].item_index)
        .unwrap();
    assert_ne!(redelivered.item_id, held[0].item_id, "a new delivery id");
    assert_eq!(
        redelivered.retry_count, held[0].retry_count,
        "no attempt counted"
    );
    // The old delivery is stale now.
    let old = env
        .bus
        .complete_items(&t, &job.id, &[(held[0].item_id.clone(), json!("late"))])
        .await
        .unwrap();
    assert_eq!(old, [CompleteOutcome::Stale]);

    // Everything w1 still holds (two), at once.
    let rest = env.bus.release_items(&t, &job.id, "w1", &[]).await.unwrap();
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(
        env.bus
            .release_items(&t, &job.id, "w1", &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.bus.balance(&t).await.unwrap(),
        before,
        "a release moves no credit"
    );
    let last = env
        .bus
        .claim_items(&t, &job.id, "w3", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(last.len(), 2);
    let mut done: Vec<(String, serde_json::Value)> = again
        .iter()
        .map(|c| (c.item_id.clone(), json!("ok")))
        .collect();
    done.extend(last.iter().map(|c| (c.item_id.clone(), json!("ok"))));
    env.bus.complete_items(&t, &job.id, &done).await.unwrap();
    let job = env.bus.job(&t, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_job_credits(&job);
    assert_balance_matches_ledger(&env, &t).await;
    // A job that ended releases nothing: 409 with its state.
    assert!(matches!(
        env.bus.release_items(&t, &job.id, "w1", &[]).await,
        Err(Error::Conflict { .. })
    ));
}

#[tokio::test]
async fn a_completion_batch_spanning_many_other_pending_entries_is_judged_per_entry() {
    // job_complete reads pending-ness for the range a batch spans in one
    // XPENDING of a bounded size; entries past what it returned are asked
    // one by one. Two entries 200 apart, others pending between them.
    let env = TestEnv::new().await;
    let t = env.tenant("span");
    env.grant(&t, 1000).await;
    let mut spec = JobSpec::new("o", "w", "span", (0..210).map(|i| json!(i)).collect());
    spec.parallelism = 210;
    let job = env.bus.spawn_job(&t, &spec).await.unwrap();
    let held = env
        .bus
        .claim_items(&t, &job.id, "w1", 205, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(held.len(), 205);
    let (first, last) = (held[0].item_id.clone(), held[204].item_id.clone());
    // One of them is no longer held: completed once already.
    let once = env
        .bus
        .complete_items(&t, &job.id, &[(held[150].item_id.clone(), json!("x"))])
        .await
        .unwrap();
    assert_eq!(once, [CompleteOutcome::Completed]);
    let outcomes = env
        .bus
        .complete_items(
            &t,
            &job.id,
            &[
                (first.clone(), json!(1)),
                (held[150].item_id.clone(), json!("again")),
                (last.clone(), json!(2)),
                (first, json!("twice in one batch")),
                ("1-209".to_string(), json!("never delivered")),
                ("1-999".to_string(), json!("no such item")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            CompleteOutcome::Completed,
            CompleteOutcome::Duplicate,
            CompleteOutcome::Completed,
            CompleteOutcome::Duplicate,
            CompleteOutcome::Stale,
            CompleteOutcome::Invalid,
        ]
    );
    let job = env.bus.job(&t, &job.id).await.unwrap();
    assert_eq!(job.progress.completed, 3);
    assert_balance_matches_ledger(&env, &t).await;
}

#[tokio::test]
async fn a_worker_that_stops_gives_back_what_it_holds_unhandled() {
    // Entries delivered to the worker's consumer that no handler took (a
    // read answered as the shutdown cut it short) go out again at once.
    let env = TestEnv::new().await;
    let t = env.tenant("stopping");
    env.grant(&t, 100).await;
    let spec = JobSpec::new("o", "w", "stop", (0..4).map(|i| json!(i)).collect());
    let job = env.bus.spawn_job(&t, &spec).await.unwrap();
    let held = env
        .bus
        .claim_items(&t, &job.id, "w-stop", 3, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(held.len(), 3);
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let report = Worker::new(env.bus.clone(), t.clone(), job.id, "w-stop")
        .unwrap()
        .shutdown_token(shutdown)
        .run(|_item| async { Ok(json!("never")) })
        .await
        .unwrap();
    assert_eq!(report.completed, 0, "{report:?}");
    let again = env
        .bus
        .claim_items(&t, &job.id, "w-other", 10, Duration::ZERO)
        .await
        .unwrap();
    let mut indexes: Vec<i64> = again.iter().map(|c| c.item_index).collect();
    indexes.sort();
    assert_eq!(
        indexes,
        [0, 1, 2, 3],
        "given back at once, with the one never claimed"
    );
}

#[tokio::test]
async fn a_thousand_completions_in_one_call_are_each_charged_once() {
    // The most one job_complete call takes: its done bits go in one
    // BITFIELD of 4,000 arguments, its acknowledgements in one XACK.
    let env = TestEnv::new().await;
    let t = env.tenant("thousand");
    env.grant(&t, 10_000).await;
    let job = env.bus.spawn_job(&t, &spec(1000)).await.unwrap();
    let claimed = env
        .bus
        .claim_items(&t, &job.id, "w", 1000, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1000);
    let outputs: Vec<(String, serde_json::Value)> = claimed
        .iter()
        .map(|c| (c.item_id.clone(), json!(c.item_index)))
        .collect();
    let outcomes = env.bus.complete_items(&t, &job.id, &outputs).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == CompleteOutcome::Completed));
    // Again: the job has ended, so the call is refused and charges nothing.
    let again = env.bus.complete_items(&t, &job.id, &outputs).await;
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
    let job = env.bus.job(&t, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.progress.completed, 1000);
    assert_job_credits(&job);
}
