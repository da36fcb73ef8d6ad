//! `agentbus demo`: the whole system, end to end, in well under a minute.
//!
//! Starts (or finds) local Redis and Postgres, applies the migrations, starts
//! the server with its sink, then plays a scenario through the REST API: an
//! orchestrator simulates and spawns a job, fifty workers process it, one of
//! them invokes a specialist, the results are aggregated on the blackboard,
//! a second job is cancelled halfway and refunded, the sink mirrors it all,
//! and `verify` proves the money adds up.

use std::fmt::Write;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use rand::RngExt;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cli::client::ApiClient;
use agentbus::agents::invoke::{Answer, InvokeRequest};
use agentbus::config::{Config, ServeConfig, SinkConfig};
use agentbus::error::{Error, Result};
use agentbus::jobs::worker::Worker;
use agentbus::keys::{Ident, TenantId};
use agentbus::outbox::{audit, verify};
use agentbus::{db, server};

mod services;

use services::{ensure_postgres, ensure_redis};

const WORKERS: usize = 50;
const ITEMS: usize = 200;
const CANCELLED_ITEMS: usize = 100;

/// What the demo did, printed at the end.
pub struct DemoReport {
    pub text: String,
    pub ok: bool,
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(&v.to_string()).unwrap_or_default()
}

/// A credit amount from the API, as text with two decimals.
fn credits(v: &Value) -> String {
    format!("{:.2}", dec(v))
}

/// Waits for a job to reach `status` (or any final status when `None`).
async fn wait_for_job(api: &ApiClient, id: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let job = api.ok(Method::GET, &format!("/jobs/{id}"), None).await?;
        if matches!(
            job["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return Ok(job);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!("job {id} still {}", job["status"])));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(config: &Config) -> Result<DemoReport> {
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(out, "agentbus demo\n=============");
    ensure_redis(config, &mut out).await?;
    ensure_postgres(config, &mut out).await?;
    let pool = config.postgres()?;
    db::migrate_up(&pool).await?;
    let _ = writeln!(out, "Redis and Postgres up, migrations applied.");

    let admin_token = format!(
        "demo-admin-{}",
        hex::encode(rand::rng().random::<[u8; 16]>())
    );
    let serve = ServeConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: Some(admin_token.clone()),
        reclaim_interval_ms: 200,
        reap_interval_ms: 500,
        no_sink: false,
        sink: SinkConfig {
            sink_consumer: Some(format!("demo-sink-{}", std::process::id())),
            sink_batch: 1000,
            sink_takeover_secs: 30,
            sink_sweep_secs: agentbus::outbox::sink::SWEEP_EVERY.as_secs(),
        },
        ..ServeConfig::defaults()
    };
    let running = server::start(config, &serve).await?;
    let base = format!("http://{}/api/v1", running.addr);
    let _ = writeln!(
        out,
        "Server with sink, reclaimer and reaper on http://{}",
        running.addr
    );
    let result = scenario(config, &pool, &base, &admin_token, &mut out).await;
    running.stop().await;
    let ok = match result {
        Ok(ok) => ok,
        Err(e) => {
            let _ = writeln!(out, "\nFAILED: {e}");
            false
        }
    };
    let _ = writeln!(
        out,
        "\nDemo finished in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        if ok { "OK" } else { "FAILED" }
    );
    Ok(DemoReport { text: out, ok })
}

async fn scenario(
    config: &Config,
    pool: &sqlx::PgPool,
    base: &str,
    admin_token: &str,
    out: &mut String,
) -> Result<bool> {
    let bus = config.bus()?;
    let tenant = TenantId::new(format!(
        "demo-{}",
        hex::encode(rand::rng().random::<[u8; 3]>())
    ))?;
    let admin = ApiClient::new(base, Some(admin_token));
    admin
        .ok(
            Method::POST,
            "/credits/grant",
            Some(&json!({"tenant": tenant, "amount": 2000, "reason": "demo"})),
        )
        .await?;
    let token = bus.create_token(&tenant).await?;
    let api = admin.with_token(&token.token);
    let _ = writeln!(
        out,
        "\nTenant {tenant}: granted 2000 credits, token {} created.",
        token.id
    );

    // Agents register: an orchestrator, a specialist and fifty workers.
    for (agent, instance) in [
        ("orchestrator", "orchestrator-1".to_string()),
        ("specialist", "specialist-1".to_string()),
    ]
    .into_iter()
    .chain((0..WORKERS).map(|w| ("scorer", format!("worker-{w:02}"))))
    {
        api.ok(
            Method::POST,
            "/agents/register",
            Some(&json!({"agent_id": agent, "instance_id": instance})),
        )
        .await?;
    }
    let _ = writeln!(
        out,
        "Registered orchestrator-1, specialist-1 and {WORKERS} scorer workers."
    );

    // The specialist answers invocations.
    let stop = CancellationToken::new();
    let specialist = Ident::new("instance_id", "specialist-1")?;
    let specialist_task = {
        let (bus, tenant, me, stop) = (
            bus.clone(),
            tenant.clone(),
            specialist.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            bus.serve_invocations(&tenant, &me, stop, |payload| async move {
                let text = payload.json();
                let words = text["text"]
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .count();
                Answer::Response(json!({"words": words, "verdict": "plausible"}).into())
            })
            .await
        })
    };

    // 1. Simulate, then spawn.
    let namespace = "scores";
    let job_body = json!({
        "orchestrator_agent": "orchestrator-1",
        "worker_agent": "scorer",
        "task": "score documents",
        "items": (0..ITEMS).map(|i| json!({"doc": format!("doc-{i:03}"), "text": format!("document number {i} about agents")})).collect::<Vec<_>>(),
        "parallelism": WORKERS,
        "timeout_per_item": 30,
        "max_retries": 2,
        "aggregate": {"namespace": namespace, "field": "score"},
    });
    let sim = api
        .ok(Method::POST, "/jobs/simulate", Some(&job_body))
        .await?;
    let _ = writeln!(
        out,
        "\n1. Simulation of {ITEMS} items: {} credits ({} overhead + {} items), feasible {}, duration ~{:.1} s ({}).",
        credits(&sim["estimated_credits"]),
        credits(&sim["cost_breakdown"]["job_overhead"]),
        credits(&sim["cost_breakdown"]["item_processing"]),
        sim["feasible"],
        sim["estimated_duration_seconds"].as_f64().unwrap_or(0.0),
        sim["assumptions"]["basis"].as_str().unwrap_or("")
    );
    let job = api.ok(Method::POST, "/jobs", Some(&job_body)).await?;
    let job_id = job["id"].as_str().unwrap_or_default().to_string();
    let reserved_ok = dec(&job["credits"]["reserved"]) == dec(&sim["estimated_credits"]);
    let _ = writeln!(
        out,
        "   Spawned job {job_id}: reserved {} (= the estimate: {reserved_ok}).",
        credits(&job["credits"]["reserved"])
    );

    // 2. Fifty workers process it; one of them consults the specialist once.
    let invoked: Arc<tokio::sync::Mutex<Option<String>>> = Arc::default();
    let asked = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let id = uuid::Uuid::parse_str(&job_id).map_err(|e| Error::protocol(e.to_string()))?;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let name = format!("worker-{w:02}");
        let worker = Worker::new(bus.clone(), tenant.clone(), id, &name)?;
        let (bus, tenant, invoked, asked, specialist) = (
            bus.clone(),
            tenant.clone(),
            invoked.clone(),
            asked.clone(),
            specialist.clone(),
        );
        workers.push(tokio::spawn(worker.run(move |item| {
            let (bus, tenant, invoked, asked, specialist) = (
                bus.clone(),
                tenant.clone(),
                invoked.clone(),
                asked.clone(),
                specialist.clone(),
            );
            let me = Ident::new("instance_id", name.clone());
            async move {
                let pause = Duration::from_millis(5 + (item.item_index as u64 * 7) % 16);
                tokio::time::sleep(pause).await;
                if !asked.swap(true, Ordering::SeqCst)
                    && let Ok(me) = me
                {
                    let mut req = InvokeRequest::new(&me, &specialist, item.input.json());
                    req.job_id = Some(id);
                    req.timeout_seconds = 10;
                    if let Ok(r) = bus.invoke(&tenant, &req).await {
                        *invoked.lock().await = Some(r.invoke_id);
                    }
                }
                Ok(json!({"doc": item.input.json()["doc"], "score": (item.item_index % 97) as f64 / 10.0}))
            }
        })));
    }
    let done = wait_for_job(&api, &job_id, Duration::from_secs(40)).await?;
    for w in workers {
        w.await.map_err(|e| Error::protocol(e.to_string()))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = writeln!(
        out,
        "\n2. {WORKERS} workers finished job {job_id}: {} completed, {} failed in {secs:.2} s ({:.0} items/s); spent {}.",
        done["progress"]["completed"],
        done["progress"]["failed"],
        ITEMS as f64 / secs,
        credits(&done["credits"]["spent"])
    );

    // 3. The results, aggregated on the blackboard as items completed.
    let agg = api
        .ok(
            Method::GET,
            &format!("/namespaces/{namespace}/aggregate"),
            None,
        )
        .await?;
    let top = api
        .ok(
            Method::GET,
            &format!("/namespaces/{namespace}/top?k=3"),
            None,
        )
        .await?;
    let _ = writeln!(
        out,
        "\n3. Blackboard {namespace:?}: {} scores, sum {}, mean {}, max {}; top 3: {}",
        agg["count"],
        agg["sum"],
        agg["mean"],
        agg["max"],
        top["entries"]
            .as_array()
            .map(|e| e
                .iter()
                .map(|x| x["value"].to_string())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );

    // 4. A second job, simulated again (now from history), then cancelled
    // halfway: the rest comes back exactly.
    let second_body = json!({
        "orchestrator_agent": "orchestrator-1", "worker_agent": "scorer", "task": "score documents",
        "items": (0..CANCELLED_ITEMS).collect::<Vec<_>>(), "parallelism": 10,
    });
    let sim = api
        .ok(Method::POST, "/jobs/simulate", Some(&second_body))
        .await?;
    let _ = writeln!(
        out,
        "\n4. Simulation of the next job of the same task, now from {} recorded items: ~{:.2} s (p95 {:.2} s), {} credits.",
        sim["assumptions"]["samples"],
        sim["duration"]["p50_seconds"].as_f64().unwrap_or(0.0),
        sim["duration"]["p95_seconds"].as_f64().unwrap_or(0.0),
        credits(&sim["estimated_credits"])
    );
    let second = api.ok(Method::POST, "/jobs", Some(&second_body)).await?;
    let second_id = second["id"].as_str().unwrap_or_default().to_string();
    let completed = Arc::new(AtomicU64::new(0));
    let halt = CancellationToken::new();
    let mut workers = Vec::new();
    for w in 0..10 {
        let worker = Worker::new(
            bus.clone(),
            tenant.clone(),
            uuid::Uuid::parse_str(&second_id).map_err(|e| Error::protocol(e.to_string()))?,
            &format!("worker-{w:02}"),
        )?
        .shutdown_token(halt.clone());
        let completed = completed.clone();
        workers.push(tokio::spawn(worker.run(move |_| {
            let completed = completed.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                completed.fetch_add(1, Ordering::Relaxed);
                Ok(json!({"score": 1}))
            }
        })));
    }
    while api
        .ok(Method::GET, &format!("/jobs/{second_id}"), None)
        .await?["progress"]["completed"]
        .as_u64()
        .unwrap_or(0)
        < (CANCELLED_ITEMS / 2) as u64
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancel = api
        .ok(
            Method::POST,
            &format!("/jobs/{second_id}/cancel"),
            Some(&json!({"reason": "enough data", "cancelled_by": "orchestrator-1"})),
        )
        .await?;
    halt.cancel();
    for w in workers {
        w.await.map_err(|e| Error::protocol(e.to_string()))??;
    }
    let per_item = dec(&second["credits_per_item"]);
    let refund_exact = dec(&cancel["credits_refunded"])
        == per_item * Decimal::from(cancel["cancelled_items"].as_i64().unwrap_or(-1));
    let _ = writeln!(
        out,
        "   Job {second_id} cancelled at {} of {CANCELLED_ITEMS} items: {} cancelled, {} credits refunded (= {} × {per_item:.2}: {refund_exact}).",
        cancel["completed_items"],
        cancel["cancelled_items"],
        credits(&cancel["credits_refunded"]),
        cancel["cancelled_items"]
    );

    // 5. The sink mirrors everything; verify compares Redis, Postgres and the ledger.
    stop.cancel();
    let _ = specialist_task.await;
    let report = verify::verify(&bus, pool, Duration::from_secs(30)).await?;
    let tenant_ok = report
        .tenants
        .iter()
        .find(|t| t.tenant == tenant.as_str())
        .is_some_and(|t| t.ok);
    let balance = api.ok(Method::GET, "/credits", None).await?;
    let _ = writeln!(
        out,
        "\n5. Sink caught up. Balance: total {}, spent {}, reserved {}, available {}. verify: {} ({} jobs checked).",
        credits(&balance["total"]),
        credits(&balance["spent"]),
        credits(&balance["reserved"]),
        credits(&balance["available"]),
        if report.ok { "OK" } else { "DIFFERENCES" },
        report.jobs.len()
    );

    // 6. The audit trail of the invocation, from Postgres.
    let invoke_id = invoked.lock().await.clone();
    let trail_ok = match &invoke_id {
        Some(id) => match audit::invocation(pool, &tenant, id).await {
            Ok(inv) => {
                let _ = writeln!(
                    out,
                    "\n6. Audit trail of {id} (agents.invoke_audit): {} -> {}, status {}, {} ms, {} credits charged, response {}.",
                    inv.caller_instance_id,
                    inv.target_instance_id,
                    inv.status,
                    inv.duration_ms.unwrap_or(-1),
                    inv.credits_charged.unwrap_or_default(),
                    inv.response_payload
                        .map(|p| p.json())
                        .unwrap_or(Value::Null)
                );
                inv.status == "completed"
            }
            Err(e) => {
                let _ = writeln!(out, "\n6. Audit trail of {id} missing: {e}");
                false
            }
        },
        None => {
            let _ = writeln!(out, "\n6. No invocation was made.");
            false
        }
    };

    let prefix = bus.keyspace().prefix();
    let _ = writeln!(
        out,
        "\nLook at what it left:\n\
         \x20 redis-cli HGETALL '{prefix}:{{{tenant}}}:job:{job_id}'\n\
         \x20 redis-cli HGETALL '{prefix}:{{{tenant}}}:credits'\n\
         \x20 redis-cli HGETALL '{prefix}:{{{tenant}}}:bb:{namespace}:agg'\n\
         \x20 redis-cli ZREVRANGE '{prefix}:{{{tenant}}}:bb:{namespace}:score' 0 2 WITHSCORES\n\
         \x20 psql \"{}\" -c \"SELECT operation, skill, COUNT(*), SUM(amount) FROM agents.credit_ledger WHERE tenant_id = '{tenant}' GROUP BY 1, 2 ORDER BY 1, 2\"\n\
         \x20 psql \"{}\" -c \"SELECT * FROM agents.job_cancellations WHERE tenant_id = '{tenant}'\"\n\
         \x20 psql \"{}\" -c \"SELECT invoke_id, status, duration_ms, credits_charged FROM agents.invoke_audit\"\n\
         \x20 agentbus inspect job {job_id} --tenant {tenant}",
        db::redact(&config.database_url),
        db::redact(&config.database_url),
        db::redact(&config.database_url)
    );
    let complete = done["status"] == "completed" && done["progress"]["completed"] == ITEMS;
    Ok(report.ok && tenant_ok && reserved_ok && refund_exact && trail_ok && complete)
}
