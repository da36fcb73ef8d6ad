//! The load test and the end-to-end demo, as a user runs them.

use crate::common;
use std::collections::{HashMap, HashSet};
use std::process::Command;

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
    let url = env.db.as_ref().unwrap().url.clone();
    // As a user runs it: the binary, its sink mirroring into the test's database.
    let (ok, stdout, all) = agentbus(
        &env,
        Some(&url),
        &[
            "load",
            "--tenant",
            "load",
            "--items",
            "1000",
            "--workers",
            "50",
            "--cancel-at",
            "50",
            "--verify-sink",
            "--json",
        ],
    );
    assert!(ok, "{all}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    assert_eq!(report["status"], "cancelled", "{report}");
    let completed = report["completed"].as_i64().unwrap();
    let cancelled = report["cancelled"].as_i64().unwrap();
    assert!(completed >= 500, "{report}");
    assert_eq!(completed + cancelled, 1000);
    assert_eq!(
        common::dec(&report["credits_refunded"]),
        Decimal::from(2 * cancelled)
    );
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["sink_verified"], true);
    let job_id: uuid::Uuid = report["job_id"].as_str().unwrap().parse().unwrap();

    // Judged independently of the load command's own report: the outputs
    // that really arrived, and the money Postgres recorded for the job.
    let mut conn = env.conn().await;
    let results: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(env.bus.keys(&env.tenant("load")).job_results(&job_id))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let done: HashSet<Vec<u8>> = results.iter().map(|(_, f)| f["idx"].clone()).collect();
    assert_eq!(done.len(), results.len(), "an item has two results");
    let done = done.len() as i64;
    assert_eq!(completed, done);
    let (reserved, spent, refunded): (Decimal, Decimal, Decimal) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount) FILTER (WHERE operation = 'reserve'), 0),
                COALESCE(SUM(amount) FILTER (WHERE operation = 'spend'), 0),
                COALESCE(SUM(amount) FILTER (WHERE operation = 'refund'), 0)
           FROM agents.credit_ledger WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(env.pool())
    .await
    .unwrap();
    // 5.00 overhead plus 2.00 per item reserved; spent for what arrived; the rest back.
    assert_eq!(reserved, Decimal::from(5 + 2 * 1000));
    assert_eq!(spent, Decimal::from(5 + 2 * done));
    assert_eq!(refunded, Decimal::from(2 * (1000 - done)));
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
    // At 5% failures with 3 retries an item fails for good about once in 250
    // runs: judge the sum and the money, not luck.
    let completed = report["completed"].as_i64().unwrap();
    let failed = report["failed"].as_i64().unwrap();
    assert_eq!(completed + failed, 600, "{report}");
    assert!(
        report["retried"].as_i64().unwrap() > 0,
        "failures were injected"
    );
    let balance: HashMap<String, serde_json::Value> = serde_json::from_str(
        &agentbus(
            &env,
            None,
            &[
                "credits",
                "show",
                "--tenant",
                report["tenant"].as_str().unwrap(),
            ],
        )
        .1,
    )
    .unwrap();
    // What the load granted itself is what it reserved; spent: 5.00 + 2.00 per completed item.
    assert_eq!(
        common::dec(&balance["spent"]),
        Decimal::from(5 + 2 * completed),
        "{balance:?}"
    );
    assert_eq!(common::dec(&balance["reserved"]), Decimal::ZERO);
    assert_eq!(report["processes"], 3);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["credits_exact"], true);
    assert!(
        report["claim_to_complete"]["p50_ms"].as_f64().unwrap() > 0.0,
        "latencies merged from the processes"
    );
}

/// The bench scenarios that scale down run to their table (a scenario that
/// fails only shows in a benchmark run otherwise; `bench blackboard` once
/// called a script with an outdated key list).
#[tokio::test]
async fn the_scaled_down_bench_scenarios_run_to_their_table() {
    let env = TestEnv::new().await;
    for args in [
        &[
            "bench",
            "blackboard",
            "--runs",
            "1",
            "--sizes",
            "300",
            "--samples",
            "20",
        ][..],
        &[
            "bench", "messages", "--runs", "1", "--agents", "4", "--rate", "100", "--secs", "1",
        ],
        &[
            "bench",
            "invoke",
            "--runs",
            "1",
            "--calls",
            "50",
            "--concurrency",
            "4",
        ],
    ] {
        let (ok, out, all) = agentbus(&env, None, args);
        assert!(ok, "{args:?}: {all}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("| ") && !l.starts_with("|---")),
            "{args:?} printed no table row:\n{out}"
        );
    }
}

#[tokio::test]
async fn the_demo_runs_start_to_finish() {
    let env = TestEnv::with_db().await;
    let url = env.db.as_ref().unwrap().url.clone();
    // How long it takes is the bench's business, not a test's (a debug build
    // on a busy 2-core machine varies by several times).
    let (ok, out, all) = agentbus(&env, Some(&url), &["demo"]);
    assert!(ok, "{all}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_over_http_completes_every_item_through_the_batch_endpoints() {
    use agentbus::config::{Config, ServeConfig};
    let env = TestEnv::new().await;
    let mut config = Config::defaults();
    config.redis_url = common::redis_url();
    config.prefix = env.prefix.clone();
    let mut serve = ServeConfig::defaults();
    serve.bind = "127.0.0.1:0".parse().expect("addr");
    serve.no_sink = true;
    let server = agentbus::server::start(&config, &serve)
        .await
        .expect("server starts");
    let url = format!("http://{}", server.addr);
    let (ok, out, all) = tokio::task::spawn_blocking({
        let env_prefix = env.prefix.clone();
        move || {
            let out = Command::new(env!("CARGO_BIN_EXE_agentbus"))
                .env("REDIS_URL", common::redis_url())
                .env("AGENTBUS_PREFIX", env_prefix)
                .args([
                    "load",
                    "--via",
                    "http",
                    "--url",
                    &url,
                    "--items",
                    "1500",
                    "--workers",
                    "8",
                    "--batch",
                    "40",
                    "--tenant",
                    "http-load",
                    "--json",
                ])
                .output()
                .expect("run agentbus");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            (out.status.success(), stdout, all)
        }
    })
    .await
    .unwrap();
    server.stop().await;
    assert!(ok, "{all}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["completed"], 1500, "{report}");
    // Two requests per batch (claim, complete), plus the claims that found the end.
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests >= 2 * 1500 / 40, "{report}");
    assert!(
        requests < 2 * 1500 / 40 + 8 * 4 + 20,
        "one request per item? {report}"
    );
    // Every item charged once: 5.00 + 2.00 × 1,500 spent, nothing held.
    let b = env.bus.balance(&env.tenant("http-load")).await.unwrap();
    assert_eq!(
        (b.spent, b.reserved),
        (
            agentbus::money::Credits::from_minor(500 + 200 * 1500),
            agentbus::money::Credits::from_minor(0)
        )
    );
}
