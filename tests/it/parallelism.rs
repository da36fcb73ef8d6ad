//! A job's `parallelism`: never more of its items in flight (delivered, not
//! yet finished) than that, whoever claims — the library, REST claims with
//! and without waiting, many Rust workers at once.

use crate::common;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentbus::jobs::JobSpec;
use agentbus::jobs::worker::Worker;
use axum::http::StatusCode;
use common::{TestEnv, assert_job_credits, call};
use serde_json::json;

fn spec(items: usize, parallelism: i64) -> JobSpec {
    let mut s = JobSpec::new(
        "orc",
        "w",
        "bounded",
        (0..items).map(|i| json!({ "n": i })).collect(),
    );
    s.parallelism = parallelism;
    s
}

#[tokio::test]
async fn claims_stop_at_parallelism_and_resume_as_items_finish() {
    let env = TestEnv::new().await;
    let t = env.tenant("par");
    env.grant(&t, 1000).await;
    let job = env.bus.spawn_job(&t, &spec(20, 3)).await.unwrap().id;
    let claim = |worker: &'static str, count: usize| {
        let (bus, t) = (env.bus.clone(), t.clone());
        async move {
            bus.claim_items(&t, &job, worker, count, Duration::ZERO)
                .await
                .unwrap()
        }
    };
    let held = claim("a", 10).await;
    assert_eq!(held.len(), 3, "one claim of ten gets the parallelism");
    assert!(claim("b", 10).await.is_empty(), "another worker gets none");

    // Each way an item stops being in flight makes room for one more.
    let done = env
        .bus
        .complete_items(&t, &job, &[(held[0].item_id.clone(), json!(1))])
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(claim("b", 10).await.len(), 1, "after a completion");
    env.bus
        .fail_item(&t, &job, &held[1].item_id, "boom", true)
        .await
        .unwrap();
    let after_fail = claim("b", 10).await;
    assert_eq!(after_fail.len(), 1, "after a failure (its retry is new)");
    let released = env
        .bus
        .release_items(&t, &job, "a", &[held[2].item_id.clone()])
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(claim("c", 10).await.len(), 1, "after a release");
    assert!(claim("c", 10).await.is_empty());
    assert_job_credits(&env.bus.job(&t, &job).await.unwrap());
}

#[tokio::test]
async fn parallelism_zero_is_no_bound() {
    let env = TestEnv::new().await;
    let t = env.tenant("free");
    env.grant(&t, 1000).await;
    let job = env.bus.spawn_job(&t, &spec(25, 0)).await.unwrap().id;
    let got = env
        .bus
        .claim_items(&t, &job, "a", 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 25);
    let sim = env.bus.simulate(&t, &spec(25, 0), &[]).await.unwrap();
    assert!(
        sim.warnings
            .iter()
            .any(|w| w.contains("no parallelism bound")),
        "{:?}",
        sim.warnings
    );
}

/// A REST claim waiting on a job without a bound is woken by what comes:
/// an item given back is delivered to it at once, and the job's end ends
/// the wait at once (409), where a bounded job's waiter claims again only
/// at its next one-second slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waiting_on_an_unbounded_job_is_woken_by_its_end() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("wake").await;
    env.grant(&env.tenant("wake"), 1000).await;
    let body = json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t",
                      "items": [1], "parallelism": 0});
    let (status, job) = call(&app, "POST", "/api/v1/jobs", Some(&token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let claim_uri =
        |w: &str| format!("/api/v1/jobs/{id}/claim?worker_instance_id={w}&count=10&wait_ms=20000");
    let (_, held) = call(&app, "POST", &claim_uri("a"), Some(&token), None).await;
    let item = held["items"][0]["item_id"].as_str().unwrap().to_string();
    let wait = |w: &'static str| {
        let (app, token, uri) = (app.clone(), token.clone(), claim_uri(w));
        tokio::spawn(async move {
            let r = call(&app, "POST", &uri, Some(&token), None).await;
            (r, Instant::now())
        })
    };

    // Given back: the waiter gets it (a new delivery), well within a slice.
    let waiting = wait("b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing to take: the claim waits");
    let released = Instant::now();
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{item}/release?worker_instance_id=a"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ((status, got), at) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["items"].as_array().unwrap().len(), 1, "{got}");
    assert!(
        at - released < Duration::from_millis(500),
        "{:?}",
        at - released
    );

    // The job ends while another claim waits: 409 at once. (Cancelled just
    // past a one-second slice, a waiter woken only by its slices would
    // answer ~900 ms later.)
    let waiting = wait("c");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!waiting.is_finished());
    let cancelled = Instant::now();
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ((status, resp), at) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert!(
        at - cancelled < Duration::from_millis(500),
        "answered {:?} after the cancel",
        at - cancelled
    );
}

#[tokio::test]
async fn a_waiting_rest_claim_at_parallelism_gets_the_room_a_completion_makes() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("rest").await;
    env.grant(&env.tenant("rest"), 1000).await;
    let body = json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t",
                      "items": [1, 2, 3, 4], "parallelism": 2});
    let (status, job) = call(&app, "POST", "/api/v1/jobs", Some(&token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let claim_uri = |w: &str, wait: u64| {
        format!("/api/v1/jobs/{id}/claim?worker_instance_id={w}&count=10&wait_ms={wait}")
    };
    let (_, held) = call(&app, "POST", &claim_uri("a", 0), Some(&token), None).await;
    assert_eq!(held["items"].as_array().unwrap().len(), 2, "{held}");
    let first = held["items"][0]["item_id"].as_str().unwrap().to_string();

    let started = Instant::now();
    let waiting = {
        let (app, token, uri) = (app.clone(), token.clone(), claim_uri("b", 5000));
        tokio::spawn(async move { call(&app, "POST", &uri, Some(&token), None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing to take: the claim waits");
    let (status, done) = call(
        &app,
        "POST",
        &format!("/api/v1/jobs/{id}/items/{first}/complete"),
        Some(&token),
        Some(json!({"output": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let (status, got) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["items"].as_array().unwrap().len(), 1, "{got}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(4),
        "answered {waited:?} after it began, once the completion made room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_never_run_more_than_parallelism_items_at_once() {
    let env = TestEnv::new().await;
    let t = env.tenant("fleet");
    env.grant(&t, 1000).await;
    let job = env.bus.spawn_job(&t, &spec(40, 3)).await.unwrap().id;
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let worker = Worker::new(env.bus.clone(), t.clone(), job, &format!("w{w}"))
            .unwrap()
            .concurrency(4)
            .batch(4)
            .block(Duration::from_millis(100));
        let (running, most) = (running.clone(), most.clone());
        workers.push(tokio::spawn(worker.run(move |item| {
            let (running, most) = (running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(json!(item.item_index))
            }
        })));
    }
    let mut handled = 0;
    for w in workers {
        handled += tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("the workers finish")
            .unwrap()
            .unwrap()
            .completed;
    }
    let job = env.bus.job(&t, &job).await.unwrap();
    assert_eq!((job.progress.completed, handled), (40, 40));
    let most = most.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&most),
        "at most 3 handlers at once (16 slots among the workers), saw {most}"
    );
}
