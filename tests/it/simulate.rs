//! Simulation: exact credits, history-based durations, risks, stage graphs,
//! and no writes at all.

use crate::common;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentbus::bus::{AgentBus, Limits};
use agentbus::jobs::JobSpec;
use agentbus::jobs::worker::Worker;
use agentbus::keys::Keyspace;
use agentbus::prices::Prices;
use agentbus::simulate::StageSpec;
use agentbus::{Error, TenantId};
use axum::http::StatusCode;
use common::{TestEnv, call};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn spec(task: &str, items: usize) -> JobSpec {
    JobSpec::new(
        "orc",
        "resizer",
        task,
        (0..items).map(|i| json!(i)).collect(),
    )
}

async fn credits_match(items: usize, item_cents: i64, spawn_cents: i64) {
    let env = TestEnv::new().await;
    let prices = Prices::parse_overrides(&format!(
        "job_item={},agent_spawn={}",
        Decimal::new(item_cents, 2),
        Decimal::new(spawn_cents, 2)
    ))
    .unwrap();
    let bus = AgentBus::new(
        env.redis.clone(),
        Keyspace::new(&env.prefix).unwrap(),
        prices,
        Limits::default(),
    );
    let t = env.tenant("prop");
    bus.grant_credits(&t, Decimal::from(1_000_000), json!({}))
        .await
        .unwrap();
    let s = spec("p", items);
    let sim = bus.simulate(&t, &s, &[]).await.unwrap();
    let job = bus.spawn_job(&t, &s).await.unwrap();
    assert_eq!(sim.estimated_credits, job.credits.reserved);
    assert_eq!(sim.cost_breakdown.total, job.credits.reserved);
    assert_eq!(
        sim.cost_breakdown.job_overhead + sim.cost_breakdown.item_processing,
        sim.cost_breakdown.total
    );
    assert_eq!(sim.credits_per_item, job.credits_per_item);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn simulated_credits_equal_what_spawn_reserves(items in 1usize..300, item_cents in 0i64..5000, spawn_cents in 0i64..10000) {
        common::block_on(credits_match(items, item_cents, spawn_cents));
    }
}

/// Runs a job with `workers` workers whose items each take `item` to handle;
/// returns how long it took from spawn to completion.
async fn run_job(
    env: &TestEnv,
    t: &TenantId,
    s: &JobSpec,
    workers: usize,
    item: Duration,
) -> Duration {
    let started = Instant::now();
    let job = env.bus.spawn_job(t, s).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let worker = Worker::new(env.bus.clone(), t.clone(), job.id, &format!("w{w}"))
            .unwrap()
            .block(Duration::from_millis(50));
        tasks.push(tokio::spawn(worker.run(move |_| async move {
            tokio::time::sleep(item).await;
            Ok(json!("done"))
        })));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_warm_up_the_duration_is_predicted_within_a_quarter() {
    let env = TestEnv::new().await;
    let t = env.tenant("warm");
    env.grant(&t, 10_000).await;
    // Items long enough that scheduling noise between waves on a busy
    // 2-core machine stays well inside the quarter.
    let item = Duration::from_millis(200);
    let mut warm = spec("thumbnail", 40);
    warm.parallelism = 4;

    // Without history: the conservative bound, and it says so.
    let cold = env.bus.simulate(&t, &warm, &[]).await.unwrap();
    assert!(!cold.assumptions.history_used);
    assert_eq!(cold.assumptions.basis, "timeout_bound");
    assert!(
        cold.warnings.iter().any(|w| w.contains("no history")),
        "{:?}",
        cold.warnings
    );
    assert_eq!(cold.estimated_duration_seconds, 10.0 * 60.0);

    run_job(&env, &t, &warm, 4, item).await;

    let mut next = spec("thumbnail", 60);
    next.parallelism = 4;
    let sim = env.bus.simulate(&t, &next, &[]).await.unwrap();
    assert!(sim.assumptions.history_used);
    assert_eq!(sim.assumptions.samples, 40);
    let measured = run_job(&env, &t, &next, 4, item).await.as_secs_f64();
    let predicted = sim.estimated_duration_seconds;
    let error = (predicted - measured).abs() / measured;
    assert!(
        error <= 0.25,
        "predicted {predicted:.3}s, measured {measured:.3}s ({:.0}% off)",
        error * 100.0
    );
    assert!(sim.duration.p95_seconds >= sim.duration.p50_seconds);
    assert_eq!(sim.execution_preview.total_waves, 15);
    assert_eq!(sim.execution_preview.waves[1].first_item, 4);
}

#[tokio::test]
async fn risks_and_warnings_that_mean_something() {
    let env = TestEnv::new().await;
    let t = env.tenant("risky");
    env.grant(&t, 100).await;
    // History: items take about 2 s, and a third of attempts fail.
    let mut conn = env.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(env.bus.keys(&t).agent_task_stats("resizer", "slow"))
        .arg(&[
            "b44",
            "20",
            "completed",
            "20",
            "sum_ms",
            "40000",
            "retried",
            "10",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut s = spec("slow", 60);
    s.timeout_per_item = 1;
    s.max_retries = 0;
    s.parallelism = 20;
    let sim = env.bus.simulate(&t, &s, &[]).await.unwrap();
    let all = format!("{:?} {:?}", sim.risks, sim.warnings);
    assert!(!sim.feasible);
    assert!(!sim.budget_check.sufficient);
    assert_eq!(sim.budget_check.required, Decimal::from(125));
    assert_eq!(sim.budget_check.shortfall, Decimal::from(25));
    assert!(
        sim.risks
            .iter()
            .any(|r| r.contains("insufficient budget: 25.00")),
        "{all}"
    );
    assert!(
        sim.risks
            .iter()
            .any(|r| r.contains("exceeds timeout_per_item")),
        "{all}"
    );
    assert!(sim.risks.iter().any(|r| r.contains("exhaust")), "{all}");
    assert!(
        sim.warnings.iter().any(|w| w.contains("no retries")),
        "{all}"
    );
    assert!(
        sim.warnings
            .iter()
            .any(|w| w.contains("above the 0 live resizer workers")),
        "{all}"
    );
    assert!((sim.assumptions.failure_rate - 1.0 / 3.0).abs() < 1e-9);
    assert!(
        (sim.expected_failures - 20.0).abs() < 1e-6,
        "{}",
        sim.expected_failures
    );

    // Affordable but most of the budget: high cost.
    let small = spec("slow", 40);
    let sim = env.bus.simulate(&t, &small, &[]).await.unwrap();
    assert!(sim.feasible);
    assert!(
        sim.warnings.iter().any(|w| w.contains("high cost")),
        "{:?}",
        sim.warnings
    );
}

#[tokio::test]
async fn stage_graphs_give_the_critical_path_total_credits_and_fan_out() {
    let env = TestEnv::new().await;
    let t = env.tenant("dag");
    env.grant(&t, 10_000).await;
    let mut conn = env.conn().await;
    // "fetch" fails 10% of attempts; "render" never does.
    let _: () = redis::cmd("HSET")
        .arg(env.bus.keys(&t).task_stats("fetch"))
        .arg(&[
            "b26",
            "90",
            "completed",
            "90",
            "sum_ms",
            "9000",
            "retried",
            "10",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut s = spec("fetch", 10);
    s.max_retries = 1;
    let stage = |name: &str, items: usize, task: &str, deps: &[&str]| StageSpec {
        name: name.into(),
        items,
        task: Some(task.into()),
        worker_agent: None,
        parallelism: Some(1),
        timeout_per_item: Some(5),
        max_retries: Some(0),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    };
    let stages = vec![
        stage("parse", 4, "parse", &["job"]),
        stage("render", 2, "render", &["parse"]),
        stage("index", 1, "index", &["job"]),
    ];
    let sim = env.bus.simulate(&t, &s, &stages).await.unwrap();
    let g = sim.graph.as_ref().unwrap();
    assert_eq!(
        g.total_credits,
        Decimal::from(5 + 20 + 5 + 8 + 5 + 4 + 5 + 2)
    );
    assert_eq!(sim.estimated_credits, g.total_credits);
    assert_eq!(g.critical_path, ["job", "parse", "render"]);
    let by: BTreeMap<&str, _> = g.stages.iter().map(|s| (s.name.as_str(), s)).collect();
    // Each job item fails for good with 0.1² = 1%; all ten succeed with 0.99^10.
    let job_ok = 0.99f64.powi(10);
    assert!((by["job"].success_probability - job_ok).abs() < 1e-9);
    assert!((by["parse"].reach_probability - job_ok).abs() < 1e-9);
    assert!(
        (by["render"].reach_probability - job_ok).abs() < 1e-9,
        "parse has no history: assumed not to fail"
    );
    assert_eq!(by["index"].start_seconds, by["job"].finish_seconds);
    assert!((g.critical_path_seconds - by["render"].finish_seconds).abs() < 1e-9);

    // A cycle is refused with a clear error.
    let mut cyclic = stages.clone();
    cyclic[0].depends_on = vec!["render".into()];
    match env.bus.simulate(&t, &s, &cyclic).await {
        Err(Error::Invalid { field, reason }) => {
            assert_eq!(field, "stages");
            assert!(reason.contains("cycle"), "{reason}");
        }
        other => panic!("expected a cycle error, got {other:?}"),
    }
    let mut unknown = stages;
    unknown[2].depends_on = vec!["nope".into()];
    assert!(
        matches!(env.bus.simulate(&t, &s, &unknown).await, Err(Error::Invalid { field, .. }) if field == "stages[2].depends_on")
    );
}

#[tokio::test]
async fn simulate_never_writes_and_fails_exactly_like_spawn() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("readonly");
    env.grant(&t, 30).await;
    let token = env.bus.create_token(&t).await.unwrap().token;
    let app = env.app();
    // Some history and a registered worker, so every read path runs.
    run_job(&env, &t, &spec("warm", 3), 1, Duration::from_millis(1)).await;
    env.bus
        .register_agent(
            &t,
            &agentbus::agents::registry::Registration::new("resizer").unwrap(),
        )
        .await
        .unwrap();

    let before = env.snapshot().await;
    let pg_before: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM agents.credit_ledger) + (SELECT COUNT(*) FROM agents.jobs)",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    let body = json!({"orchestrator_agent": "orc", "worker_agent": "resizer", "task": "warm", "items": [1, 2, 3],
                      "stages": [{"name": "after", "items": 2, "depends_on": ["job"]}]});
    let (status, sim) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sim}");
    for field in [
        "feasible",
        "estimated_credits",
        "credits_per_item",
        "item_count",
        "estimated_duration_seconds",
        "budget_check",
        "risks",
        "warnings",
        "cost_breakdown",
        "duration",
        "assumptions",
        "expected_retries",
        "expected_failures",
        "execution_preview",
        "graph",
    ] {
        assert!(sim.get(field).is_some(), "{field} missing: {sim}");
    }
    assert_eq!(sim["item_count"], 3);
    assert_eq!(env.snapshot().await, before, "simulate changed Redis");
    let pg_after: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM agents.credit_ledger) + (SELECT COUNT(*) FROM agents.jobs)",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(pg_before, pg_after);

    // Validation errors are the same, status and body.
    let base =
        json!({"orchestrator_agent": "orc", "worker_agent": "resizer", "task": "t", "items": [1]});
    let variants: Vec<Value> = vec![
        json!({"parallelism": -1}),
        json!({"parallelism": "x"}),
        json!({"items": []}),
        json!({"worker_agent": "no spaces"}),
        json!({"timeout_per_item": 7200}),
        json!({"unknown": true}),
    ];
    for v in variants {
        let mut body = base.clone();
        for (k, val) in v.as_object().unwrap() {
            body[k] = val.clone();
        }
        let spawn = call(
            &app,
            "POST",
            "/api/v1/jobs",
            Some(&token),
            Some(body.clone()),
        )
        .await;
        let simulate = call(
            &app,
            "POST",
            "/api/v1/jobs/simulate",
            Some(&token),
            Some(body),
        )
        .await;
        assert_eq!(spawn, simulate, "{v}");
        assert_eq!(spawn.0, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // The budget verdict is the same, word for word.
    let big = json!({"orchestrator_agent": "orc", "worker_agent": "resizer", "task": "t", "items": (0..100).collect::<Vec<_>>()});
    let (status, spawn) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(big.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let (_, sim) = call(
        &app,
        "POST",
        "/api/v1/jobs/simulate",
        Some(&token),
        Some(big),
    )
    .await;
    assert_eq!(sim["feasible"], false);
    assert_eq!(sim["budget_check"]["message"], spawn["error"]["message"]);
    assert_eq!(sim["budget_check"]["required"], spawn["error"]["required"]);
    // And a malformed stage names its field.
    let (status, resp) = call(&app, "POST", "/api/v1/jobs/simulate", Some(&token), Some(json!({"orchestrator_agent": "orc", "worker_agent": "r", "task": "t", "items": [1], "stages": [{"name": "a"}]}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        resp["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("stages"),
        "{resp}"
    );
}
