//! `agentbus load --via http`: the load test's shape (spawn a job of N
//! items, W workers claim and complete them) over the REST API of a running
//! `agentbus serve`, as an HTTP agent without a client library would: each
//! worker claims a batch (`count`, long-polling) and completes it in one
//! batch call, over kept-alive connections. The tenant is made directly in
//! Redis (same `REDIS_URL` and prefix as the server): credits and a token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::client::ApiClient;
use agentbus::AgentBus;
use agentbus::keys::TenantId;

/// What one run over HTTP measured.
#[derive(Debug, serde::Serialize)]
pub struct HttpLoadReport {
    pub items: usize,
    pub workers: usize,
    pub batch: usize,
    pub spawn_ms: u128,
    pub elapsed_ms: u128,
    pub items_per_sec: f64,
    /// HTTP requests made by the workers (claims and completions).
    pub requests: u64,
    pub completed: u64,
}

/// Runs the job through `url` (e.g. `http://127.0.0.1:8080`).
pub async fn run(
    bus: &AgentBus,
    url: &str,
    tenant: &TenantId,
    items: usize,
    workers: usize,
    batch: usize,
    timeout: Duration,
) -> anyhow::Result<HttpLoadReport> {
    let credits = 5 + 2 * items as i64 + 100;
    bus.grant_credits(
        tenant,
        rust_decimal::Decimal::from(credits),
        json!({"reason": "load --via http"}),
    )
    .await?;
    let token = bus.create_token(tenant).await?.token;
    let api = ApiClient::new(
        &format!("{}/api/v1", url.trim_end_matches('/')),
        Some(&token),
    );
    let spec = json!({
        "orchestrator_agent": "load", "worker_agent": "load-worker", "task": "load-http",
        "items": (0..items).map(|i| json!({"n": i})).collect::<Vec<_>>(),
        "timeout_per_item": 60, "parallelism": 0,
    });
    let started = Instant::now();
    let job = api
        .ok(Method::POST, "/jobs", Some(&spec))
        .await
        .context("spawn")?;
    let spawn_ms = started.elapsed().as_millis();
    let id = job["id"]
        .as_str()
        .context("the spawn answered no id")?
        .to_string();
    let requests = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (api, id) = (api.clone(), id.clone());
        let (requests, completed) = (requests.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            work(&api, &id, &format!("hw{w}"), batch, &requests, &completed).await
        }));
    }
    let all = futures::future::join_all(tasks);
    match tokio::time::timeout(timeout, all).await {
        Ok(results) => {
            for r in results {
                r??;
            }
        }
        Err(_) => bail!("the job did not finish within {timeout:?}"),
    }
    let elapsed = started.elapsed();
    let status = api.ok(Method::GET, &format!("/jobs/{id}"), None).await?;
    if status["status"] != "completed" {
        bail!("the job ended {}: {status}", status["status"]);
    }
    let done = completed.load(Ordering::Relaxed);
    Ok(HttpLoadReport {
        items,
        workers,
        batch,
        spawn_ms,
        elapsed_ms: elapsed.as_millis(),
        items_per_sec: done as f64 / elapsed.as_secs_f64(),
        requests: requests.load(Ordering::Relaxed),
        completed: done,
    })
}

/// One worker: claim a batch (waiting up to a second), complete it in one
/// call; until the job has ended (a claim answers 409).
async fn work(
    api: &ApiClient,
    job: &str,
    worker: &str,
    batch: usize,
    requests: &AtomicU64,
    completed: &AtomicU64,
) -> anyhow::Result<()> {
    let claim = format!("/jobs/{job}/claim?worker_instance_id={worker}&count={batch}&wait_ms=1000");
    let complete = format!("/jobs/{job}/items/complete");
    loop {
        let (status, claimed) = api.call(Method::POST, &claim, None).await?;
        requests.fetch_add(1, Ordering::Relaxed);
        if status == StatusCode::CONFLICT {
            return Ok(());
        }
        if !status.is_success() {
            bail!("claim: {status} {claimed}");
        }
        let items: Vec<Value> = claimed["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| json!({"item_id": i["item_id"], "output": {"ok": true}}))
                    .collect()
            })
            .unwrap_or_default();
        if items.is_empty() {
            continue;
        }
        let (status, done) = api
            .call(Method::POST, &complete, Some(&json!({ "items": items })))
            .await?;
        requests.fetch_add(1, Ordering::Relaxed);
        if status == StatusCode::CONFLICT {
            return Ok(());
        }
        if !status.is_success() {
            bail!("complete: {status} {done}");
        }
        completed.fetch_add(done["completed"].as_u64().unwrap_or(0), Ordering::Relaxed);
    }
}
