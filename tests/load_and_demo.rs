//! The load test and the end-to-end demo, as a user runs them.

mod common;

use std::process::Command;

use agentbus::load::{self, LoadOptions};
use common::TestEnv;
use rust_decimal::Decimal;

/// Runs the binary; returns success, stdout, and stdout + stderr.
fn agentbus(env: &TestEnv, database_url: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentbus"));
    cmd.env("REDIS_URL", common::redis_url())
        .env("AGENTBUS_PREFIX", &env.prefix);
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    let out = cmd.args(args).output().expect("run agentbus");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_cancelled_halfway_refunds_exactly_and_the_sink_agrees() {
    let env = TestEnv::with_db().await;
    let mut options = LoadOptions::new(env.tenant("load"), 1000, 50);
    options.cancel_at = Some(50.0);
    options.verify_sink = Some(env.pool().clone());
    let report = load::run(&env.bus, &options, None).await.unwrap();
    assert!(report.passed(), "{}", report.to_text());
    assert_eq!(report.status, agentbus::jobs::JobStatus::Cancelled);
    assert!(report.completed >= 500, "{}", report.to_text());
    assert_eq!(report.completed + report.cancelled, 1000);
    assert_eq!(report.credits_refunded, Decimal::from(2 * report.cancelled));
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.sink_verified, Some(true));
}

#[tokio::test]
async fn the_load_command_runs_workers_in_separate_processes_and_reports_json() {
    let env = TestEnv::new().await;
    let (ok, stdout, all) = agentbus(
        &env,
        None,
        &[
            "load",
            "--items",
            "600",
            "--workers",
            "12",
            "--processes",
            "3",
            "--fail-rate",
            "0.05",
            "--json",
        ],
    );
    assert!(ok, "{all}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    assert_eq!(report["completed"], 600);
    assert_eq!(report["processes"], 3);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["credits_exact"], true);
    assert!(
        report["claim_to_complete"]["p50_ms"].as_f64().unwrap() > 0.0,
        "latencies merged from the processes"
    );
}

#[tokio::test]
async fn the_demo_runs_start_to_finish() {
    let env = TestEnv::with_db().await;
    let url = env.db.as_ref().unwrap().url.clone();
    let started = std::time::Instant::now();
    let (ok, out, all) = agentbus(&env, Some(&url), &["demo"]);
    assert!(ok, "{all}");
    assert!(started.elapsed().as_secs() < 60);
    for expected in [
        "verify: OK",
        "Audit trail of inv_",
        "credits refunded",
        "Blackboard",
        "Demo finished",
        "redis-cli",
        "psql",
    ] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
}
