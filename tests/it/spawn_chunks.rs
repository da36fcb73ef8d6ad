//! Large spawns in bounded chunks: a job of more than one chunk is
//! `spawning` while its staged inputs are enqueued, live all along (claims,
//! completions, retries, cancel with the exact refund), finished by any
//! process if its spawner stops, and every item is enqueued exactly once.

use crate::common;
use std::collections::BTreeMap;
use std::time::Duration;

use agentbus::bus::Limits;
use agentbus::jobs::{JobSpec, JobStatus, reclaim};
use common::{TestEnv, assert_balance_matches_ledger, assert_job_credits};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

const CHUNK: usize = 10;

fn spec(items: usize) -> JobSpec {
    let mut s = JobSpec::new(
        "orchestrator-1",
        "worker",
        "chunked",
        (0..items).map(|i| json!({ "n": i })).collect(),
    );
    // Claimed in bulk here: no bound on items in flight to meet.
    s.parallelism = agentbus::jobs::PARALLELISM.1;
    s
}

async fn env_with(stall: Duration) -> TestEnv {
    TestEnv::with_limits(Limits {
        spawn_chunk: CHUNK,
        spawn_stall: stall,
        ..Limits::default()
    })
    .await
}

/// Every entry of the job's items stream: (entry id, idx, input's `n`).
async fn items_stream(
    env: &TestEnv,
    tenant: &agentbus::keys::TenantId,
    job: &Uuid,
) -> Vec<(String, i64, i64)> {
    let mut conn = env.conn().await;
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(env.bus.keys(tenant).job_items(job))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(entries) = v else {
        panic!("XRANGE answered {v:?}")
    };
    entries
        .iter()
        .map(|v| {
            let e = agentbus::codec::StreamEntry::from_value(v).unwrap();
            let (input, bad) = agentbus::payload::from_stored(e.get("input"), "item");
            assert!(bad.is_none(), "{bad:?}");
            let input = serde_json::to_value(&input).unwrap();
            (
                e.id.clone(),
                e.int("idx").unwrap(),
                input["n"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn exists(env: &TestEnv, key: &str) -> bool {
    let mut conn = env.conn().await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn a_large_spawn_enqueues_every_item_once_in_chunks_and_answers_running() {
    let env = env_with(Duration::from_secs(10)).await;
    let tenant = env.tenant("chunks");
    env.grant(&tenant, 1000).await;
    let job = env.bus.spawn_job(&tenant, &spec(35)).await.unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.progress.total, 35);
    let items = items_stream(&env, &tenant, &job.id).await;
    let idx: Vec<i64> = items.iter().map(|i| i.1).collect();
    assert_eq!(idx, (0..35).collect::<Vec<_>>());
    assert!(items.iter().all(|(_, i, n)| i == n), "{items:?}");
    assert!(!exists(&env, &env.bus.keys(&tenant).job_staging(&job.id)).await);
    // Reserved once for the whole job, at the start.
    assert_eq!(job.credits.reserved, Decimal::from(5 + 2 * 35));
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test]
async fn a_spawning_job_is_claimable_and_its_cancel_refunds_staged_items_exactly() {
    let env = env_with(Duration::from_secs(3600)).await;
    let tenant = env.tenant("cancel");
    env.grant(&tenant, 1000).await;
    let before = env.bus.balance(&tenant).await.unwrap();
    let (id, status) = env.bus.begin_spawn(&tenant, &spec(35)).await.unwrap();
    assert_eq!(status, JobStatus::Spawning);
    let job = env.bus.job(&tenant, &id).await.unwrap();
    assert_eq!(job.status, JobStatus::Spawning);
    assert_eq!(job.progress.pending, 35);

    // The first chunk is in: claimed and completed as in a running job.
    let claimed = env
        .bus
        .claim_items(&tenant, &id, "w1", 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(claimed.len(), CHUNK);
    let done: Vec<(String, serde_json::Value)> = claimed[..3]
        .iter()
        .map(|c| (c.item_id.clone(), json!("ok")))
        .collect();
    env.bus.complete_items(&tenant, &id, &done).await.unwrap();

    let out = env
        .bus
        .cancel_job(&tenant, &id, "test", "enough")
        .await
        .unwrap();
    assert_eq!((out.completed_items, out.cancelled_items), (3, 32));
    assert_eq!(out.credits_refunded, Decimal::from(2 * 32));
    let keys = env.bus.keys(&tenant);
    assert!(!exists(&env, &keys.job_staging(&id)).await);
    assert!(!exists(&env, &keys.job_items(&id)).await);
    // Nothing is enqueued after the cancel, by anyone.
    assert_eq!(env.bus.enqueue_staged(&tenant, &id).await.unwrap(), 0);
    assert!(!exists(&env, &keys.job_items(&id)).await);

    let job = env.bus.job(&tenant, &id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_job_credits(&job);
    let after = env.bus.balance(&tenant).await.unwrap();
    // Paid: the overhead and three items.
    assert_eq!(before.available - after.available, Decimal::from(5 + 2 * 3));
    assert_eq!(after.reserved, Decimal::ZERO);
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reclaimer_finishes_a_spawn_whose_spawner_stopped_after_a_retry() {
    let env = env_with(Duration::ZERO).await;
    let tenant = env.tenant("resume");
    env.grant(&tenant, 1000).await;
    let (id, _) = env.bus.begin_spawn(&tenant, &spec(35)).await.unwrap();
    // A retry while spawning takes a new gen: what is enqueued next must
    // still sort after it.
    let first = env
        .bus
        .claim_items(&tenant, &id, "w1", 1, Duration::ZERO)
        .await
        .unwrap();
    env.bus
        .fail_item(&tenant, &id, &first[0].item_id, "flaky", true)
        .await
        .unwrap();

    // Nobody enqueues the rest: a reclaimer pass does.
    reclaim::reclaim_once(&env.bus).await.unwrap();
    let job = env.bus.job(&tenant, &id).await.unwrap();
    assert_eq!(job.status, JobStatus::Running);
    let items = items_stream(&env, &tenant, &id).await;
    let mut idx: Vec<i64> = items.iter().map(|i| i.1).collect();
    idx.sort();
    assert_eq!(idx, (0..35).collect::<Vec<_>>(), "{items:?}");
    assert!(items.iter().all(|(_, i, n)| i == n));
    assert!(
        items
            .iter()
            .any(|(e, i, _)| *i >= CHUNK as i64 && e.starts_with("2-")),
        "{items:?}"
    );

    // Worked to the end: every item charged once.
    let mut seen = BTreeMap::new();
    while seen.len() < 35 {
        let claimed = env
            .bus
            .claim_items(&tenant, &id, "w2", 100, Duration::ZERO)
            .await
            .unwrap();
        assert!(!claimed.is_empty(), "nothing to claim, {} seen", seen.len());
        for c in &claimed {
            *seen.entry(c.item_index).or_insert(0) += 1;
        }
        let done: Vec<(String, serde_json::Value)> = claimed
            .iter()
            .map(|c| (c.item_id.clone(), json!(1)))
            .collect();
        env.bus.complete_items(&tenant, &id, &done).await.unwrap();
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(seen.len(), 35);
    let job = env.bus.job(&tenant, &id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.credits.spent, Decimal::from(5 + 2 * 35));
    assert_job_credits(&job);
    assert_balance_matches_ledger(&env, &tenant).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueuers_racing_on_one_spawn_enqueue_each_item_once() {
    let env = env_with(Duration::ZERO).await;
    let tenant = env.tenant("race");
    env.grant(&tenant, 10_000).await;
    let (id, _) = env.bus.begin_spawn(&tenant, &spec(503)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (bus, t) = (env.bus.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            bus.enqueue_staged(&t, &id).await.unwrap()
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    // 50 chunks were staged; each call moved one (the last may find none).
    assert!((50..=53).contains(&calls), "{calls}");
    let items = items_stream(&env, &tenant, &id).await;
    let idx: Vec<i64> = items.iter().map(|i| i.1).collect();
    assert_eq!(idx, (0..503).collect::<Vec<_>>());
    assert!(items.iter().all(|(_, i, n)| i == n));
    assert_eq!(
        env.bus.job(&tenant, &id).await.unwrap().status,
        JobStatus::Running
    );
}

#[tokio::test]
async fn a_refused_large_spawn_leaves_nothing_staged() {
    let env = env_with(Duration::from_secs(10)).await;
    let tenant = env.tenant("poor");
    env.grant(&tenant, 40).await;
    env.bus.spawn_job(&tenant, &spec(2)).await.unwrap();
    let before = env.snapshot().await;
    let e = env.bus.spawn_job(&tenant, &spec(35)).await.unwrap_err();
    assert!(
        matches!(e, agentbus::Error::InsufficientCredits { .. }),
        "{e}"
    );
    assert_eq!(env.snapshot().await, before);
}

/// A completion batch larger than one script call's share (500 pairs) is
/// completed in chunks: every item charged once, the job ending with the
/// last chunk, and each outcome in its place.
#[tokio::test]
async fn a_completion_batch_past_one_call_is_completed_in_chunks() {
    let env = env_with(Duration::from_secs(10)).await;
    let tenant = env.tenant("batch");
    env.grant(&tenant, 10_000).await;
    let job = env.bus.spawn_job(&tenant, &spec(1201)).await.unwrap();
    let mut claimed = Vec::new();
    while claimed.len() < 1201 {
        let got = env
            .bus
            .claim_items(&tenant, &job.id, "w", 1000, Duration::ZERO)
            .await
            .unwrap();
        assert!(!got.is_empty());
        claimed.extend(got);
    }
    let mut done: Vec<(String, serde_json::Value)> = claimed
        .iter()
        .map(|c| (c.item_id.clone(), json!(c.item_index)))
        .collect();
    // A duplicate in the second chunk, and an unknown id in the third.
    done.insert(700, done[3].clone());
    done.push(("9-999999".into(), json!(0)));
    let outcomes = env
        .bus
        .complete_items(&tenant, &job.id, &done)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), done.len());
    use agentbus::jobs::CompleteOutcome as O;
    assert_eq!(
        outcomes.iter().filter(|o| **o == O::Completed).count(),
        1201
    );
    assert_eq!(outcomes[700], O::Duplicate);
    assert_eq!(outcomes[done.len() - 1], O::Invalid);
    let job = env.bus.job(&tenant, &job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.credits.spent, Decimal::from(5 + 2 * 1201));
    assert_job_credits(&job);
    assert_balance_matches_ledger(&env, &tenant).await;
}

/// When enqueuing stops mid-way (here its staged inputs vanish under it),
/// the spawn still answers the job as it stands — `spawning`, its credits
/// reserved — rather than an error that would invite a second spawn; a
/// cancel then refunds every item that never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_whose_enqueuing_stops_answers_the_job_spawning() {
    let env = TestEnv::with_limits(Limits {
        spawn_chunk: 1,
        spawn_stall: Duration::from_secs(3600),
        ..Limits::default()
    })
    .await;
    let tenant = env.tenant("stops");
    env.grant(&tenant, 100_000).await;
    let pattern = format!("{}*:staging", env.prefix);
    let redis = env.redis.clone();
    let saboteur = tokio::spawn(async move {
        let mut conn = redis.conn().await.unwrap();
        loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            if let Some(staging) = keys.first() {
                let job = staging.trim_end_matches(":staging").to_string();
                let status: Option<String> = redis::cmd("HGET")
                    .arg(&job)
                    .arg("status")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if status.as_deref() == Some("spawning") {
                    let _: () = redis::cmd("DEL")
                        .arg(staging)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let job = env.bus.spawn_job(&tenant, &spec(3000)).await.unwrap();
    saboteur.await.unwrap();
    assert_eq!(job.status, JobStatus::Spawning);
    assert_eq!(job.credits.reserved, Decimal::from(5 + 2 * 3000));
    // A reclaimer that takes the spawn for stalled cannot finish it either:
    // that stays this job's trouble (logged), not an error for the visit,
    // which goes on to the tenant's other jobs.
    let eager = agentbus::bus::AgentBus::new(
        env.redis.clone(),
        env.bus.keyspace().clone(),
        agentbus::prices::Prices::default(),
        Limits {
            spawn_stall: Duration::ZERO,
            ..Limits::default()
        },
    );
    assert_eq!(eager.reclaim_job(&tenant, &job.id).await.unwrap(), (0, 0));
    let out = env
        .bus
        .cancel_job(&tenant, &job.id, "test", "lost")
        .await
        .unwrap();
    assert_eq!(out.cancelled_items, 3000);
    assert_eq!(out.credits_refunded, Decimal::from(2 * 3000));
    assert_job_credits(&env.bus.job(&tenant, &job.id).await.unwrap());
    assert_balance_matches_ledger(&env, &tenant).await;
}
