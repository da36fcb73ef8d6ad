//! The Rust worker's read-ahead against real Redis: a quick handler's worker
//! reads more than its free slots in one read (each item still charged
//! once), a slow one (against `timeout_per_item`) or a bounded job's does
//! not, and what was read ahead goes back at once when the worker stops.

use crate::common;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbus::bus::AgentBus;
use agentbus::jobs::worker::Worker;
use agentbus::jobs::{JobSpec, JobStatus};
use common::{TestEnv, assert_job_credits};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn spec(items: usize, parallelism: i64) -> JobSpec {
    let mut s = JobSpec::new(
        "orchestrator-1",
        "worker",
        "read-ahead",
        (0..items).map(|i| json!({ "n": i })).collect(),
    );
    s.parallelism = parallelism;
    s
}

/// The deliveries `consumer` holds (claimed, not yet completed).
async fn held(bus: &AgentBus, key: &str, consumer: &str) -> HashSet<String> {
    let mut conn = bus.redis().conn().await.unwrap();
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(key)
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query_async(&mut conn)
        .await
        .unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

/// Records, as a handler starts on `item_id`, how many deliveries the
/// consumer holds that no handler has started: what was read ahead. (A
/// count of all it holds would include finished items whose completion is
/// still on its way.)
async fn note_ahead(
    bus: &AgentBus,
    key: &str,
    consumer: &str,
    item_id: &str,
    started: &Mutex<HashSet<String>>,
    most: &Mutex<usize>,
) -> usize {
    started.lock().unwrap().insert(item_id.to_string());
    let held = held(bus, key, consumer).await;
    let started = started.lock().unwrap();
    let ahead = held.iter().filter(|id| !started.contains(*id)).count();
    let mut m = most.lock().unwrap();
    *m = (*m).max(ahead);
    ahead
}

/// Runs one worker (concurrency 1, batch 16) over `items` items whose
/// handler takes `work`, and returns the most items it held read ahead at
/// the start of any handler, and how many times each item was handled.
async fn run_one(
    env: &TestEnv,
    name: &str,
    items: usize,
    parallelism: i64,
    timeout_per_item: i64,
    work: Duration,
    read_ahead: usize,
) -> (usize, HashMap<i64, u32>) {
    let tenant = env.tenant(name);
    env.grant(&tenant, 10_000).await;
    let mut s = spec(items, parallelism);
    s.timeout_per_item = timeout_per_item;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap();
    let key = env.bus.keys(&tenant).job_items(&job.id);
    let most = Arc::new(Mutex::new(0usize));
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handled: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let report = {
        let (bus, most, handled) = (env.bus.clone(), most.clone(), handled.clone());
        let started = started.clone();
        Worker::new(env.bus.clone(), tenant.clone(), job.id, "reader")
            .unwrap()
            .concurrency(1)
            .batch(16)
            .read_ahead(read_ahead)
            .run(move |item| {
                let (bus, key, most, handled, started) = (
                    bus.clone(),
                    key.clone(),
                    most.clone(),
                    handled.clone(),
                    started.clone(),
                );
                async move {
                    note_ahead(&bus, &key, "reader", &item.item_id, &started, &most).await;
                    *handled.lock().unwrap().entry(item.item_index).or_default() += 1;
                    tokio::time::sleep(work).await;
                    Ok(json!({ "i": item.item_index }))
                }
            })
            .await
            .unwrap()
    };
    assert_eq!(report.completed, items as u64, "{report:?}");
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.progress.completed, items as i64);
    assert_job_credits(&job);
    let most = *most.lock().unwrap();
    let handled = handled.lock().unwrap().clone();
    (most, handled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_handler_is_read_ahead_of_and_each_item_is_charged_once() {
    let env = TestEnv::new().await;
    let (most, handled) = run_one(&env, "quick", 300, 0, 60, Duration::ZERO, 8).await;
    assert!(most > 0, "one read fetched more than the one free slot");
    assert!(most <= 8, "never more than the read-ahead: {most}");
    assert_eq!(handled.len(), 300);
    assert!(handled.values().all(|&n| n == 1), "each item handled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_not_to_read_ahead_does_not() {
    let env = TestEnv::new().await;
    let (most, _) = run_one(&env, "none", 100, 0, 60, Duration::ZERO, 0).await;
    assert_eq!(most, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_against_its_timeout_is_not_read_ahead_of() {
    let env = TestEnv::new().await;
    // 300 ms per item against a 1 s timeout: an item read ahead would wait
    // longer than a quarter of the timeout, so none is.
    let (most, handled) = run_one(&env, "slow", 5, 0, 1, Duration::from_millis(300), 8).await;
    assert_eq!(most, 0);
    assert!(handled.values().all(|&n| n == 1), "{handled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_job_is_never_read_ahead_of() {
    let env = TestEnv::new().await;
    // Parallelism counts every item held: a worker holds only what it runs.
    let (most, _) = run_one(&env, "bounded", 100, 10, 60, Duration::ZERO, 8).await;
    assert_eq!(most, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_read_ahead_go_back_at_once_when_the_worker_stops() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("stop-ahead");
    env.grant(&tenant, 10_000).await;
    // An hour's timeout: anything held past the stop would stay out of
    // reach for the length of the test.
    let mut s = spec(200, 0);
    s.timeout_per_item = 3600;
    let job = env.bus.spawn_job(&tenant, &s).await.unwrap();
    let key = env.bus.keys(&tenant).job_items(&job.id);
    let shutdown = CancellationToken::new();
    let most_held = Arc::new(Mutex::new(0usize));
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let first = {
        let (bus, key, stop, most) = (
            env.bus.clone(),
            key.clone(),
            shutdown.clone(),
            most_held.clone(),
        );
        let started = started.clone();
        let handled = Arc::new(Mutex::new(0u32));
        Worker::new(env.bus.clone(), tenant.clone(), job.id, "stopper")
            .unwrap()
            .shutdown_token(shutdown.clone())
            .run(move |item| {
                let (bus, key, stop, most, handled, started) = (
                    bus.clone(),
                    key.clone(),
                    stop.clone(),
                    most.clone(),
                    handled.clone(),
                    started.clone(),
                );
                async move {
                    let ahead =
                        note_ahead(&bus, &key, "stopper", &item.item_id, &started, &most).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let n = {
                        let mut h = handled.lock().unwrap();
                        *h += 1;
                        *h
                    };
                    // Stop once the worker holds items read ahead.
                    if n >= 20 && ahead > 0 {
                        stop.cancel();
                    }
                    Ok(json!({ "i": item.item_index }))
                }
            })
            .await
            .unwrap()
    };
    assert!(*most_held.lock().unwrap() > 0, "it had read ahead");
    assert!(first.completed >= 20 && first.completed < 200, "{first:?}");
    assert!(
        held(&env.bus, &key, "stopper").await.is_empty(),
        "nothing kept"
    );
    // Another worker finishes the rest at once, not after the hour.
    let second = tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(env.bus.clone(), tenant.clone(), job.id, "finisher")
            .unwrap()
            .run(|item| async move { Ok(json!({ "i": item.item_index })) }),
    )
    .await
    .expect("the rest were free to claim")
    .unwrap();
    assert_eq!(first.completed + second.completed, 200);
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.progress.completed, 200);
    assert_job_credits(&job);
}
