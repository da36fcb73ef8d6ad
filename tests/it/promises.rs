//! The README's promises that no other test held it to: the rate limit is
//! shared by every process, off at 0 and never applies to the admin; Redis
//! holds no plaintext secret; a 402 changes nothing; an inbox past its cap
//! loses its oldest entries; every configuration error is one line naming
//! its variable; Postgres errors are counted; a sink takes over what
//! another left idle.

use crate::common;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentbus::agents::invoke::InvokeRequest;
use agentbus::agents::messages::OutgoingMessage;
use agentbus::agents::registry::Registration;
use agentbus::api::ApiConfig;
use agentbus::keys::Ident;
use agentbus::outbox::sink::{Sink, SinkOptions};
use agentbus::{Error, Limits};
use axum::http::StatusCode;
use common::{ADMIN_TOKEN, TestEnv, call, eventually};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn limited(limit: f64, burst: u32) -> ApiConfig {
    ApiConfig {
        admin_token: Some(ADMIN_TOKEN.into()),
        rate_limit_per_sec: limit,
        rate_limit_burst: burst,
        ..ApiConfig::default()
    }
}

#[tokio::test]
async fn the_rate_limit_is_shared_by_every_process_off_at_zero_and_not_for_the_admin() {
    let env = TestEnv::new().await;
    let token = env.token("rl").await;
    // Two servers (each its own state, as two processes have) on one Redis.
    let (one, two) = (env.app_with(limited(1.0, 3)), env.app_with(limited(1.0, 3)));
    let mut statuses = Vec::new();
    for app in [&one, &two, &one, &two, &one, &two] {
        let (status, _) = call(app, "GET", "/api/v1/credits", Some(&token), None).await;
        statuses.push(status.as_u16());
    }
    // The burst of 3 (plus at most one refill) is spent across both, not per server.
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((3..=4).contains(&ok), "{statuses:?}");
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");

    // The admin token is never limited, on the same limited servers.
    for app in [&one, &two].into_iter().cycle().take(20) {
        let (status, body) = call(app, "GET", "/api/v1/tokens", Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // AGENTBUS_RATE_LIMIT=0: no limit at all.
    let off = env.app_with(limited(0.0, 1));
    let fresh = env.token("rl-off").await;
    for _ in 0..50 {
        let (status, _) = call(&off, "GET", "/api/v1/credits", Some(&fresh), None).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn redis_holds_no_plaintext_secret() {
    let env = TestEnv::new().await;
    let app = env.app();
    let mut secrets = vec![env.token("vault").await, env.token("vault").await];
    let (_, created) = call(
        &app,
        "POST",
        "/api/v1/tokens",
        Some(ADMIN_TOKEN),
        Some(json!({ "tenant": "vault" })),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    secrets.push(created["token"].as_str().unwrap().to_string());
    let (_, rotated) = call(
        &app,
        "POST",
        &format!("/api/v1/tokens/{id}/rotate"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    secrets.push(rotated["token"].as_str().unwrap().to_string());
    // Use them, so every record a request writes exists too.
    for s in &secrets[..2] {
        let (status, _) = call(&app, "GET", "/api/v1/credits", Some(s), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let snapshot = env.snapshot().await;
    let mut conn = env.conn().await;
    let mut everything: Vec<u8> = Vec::new();
    for key in snapshot.keys() {
        everything.extend_from_slice(key.as_bytes());
        let dump: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        everything.extend(dump.unwrap_or_default());
    }
    assert!(!snapshot.is_empty());
    for token in &secrets {
        // `abt_<id>_<secret>`: neither the whole token nor its secret part.
        let secret = token.rsplit('_').next().unwrap();
        assert!(secret.len() >= 20, "{token}");
        for needle in [token.as_bytes(), secret.as_bytes()] {
            assert!(
                !everything.windows(needle.len()).any(|w| w == needle),
                "a secret is stored in Redis"
            );
        }
    }
    assert!(
        !everything
            .windows(ADMIN_TOKEN.len())
            .any(|w| w == ADMIN_TOKEN.as_bytes())
    );
}

#[tokio::test]
async fn a_402_on_a_message_or_an_invocation_changes_nothing_but_the_audit() {
    let env = TestEnv::new().await;
    let t = env.tenant("poor");
    env.grant(&t, 1).await;
    let reg = |a: &str, i: &str| Registration::new(a).unwrap().instance(i).unwrap();
    let a = env.bus.register_agent(&t, &reg("x", "a")).await.unwrap();
    let b = env.bus.register_agent(&t, &reg("x", "b")).await.unwrap();
    let (a, b) = (
        Ident::new("i", a.instance_id).unwrap(),
        Ident::new("i", b.instance_id).unwrap(),
    );
    let before = env.snapshot().await;
    // A message costs 2.00, one credit is there.
    let sent = env
        .bus
        .send_message(&t, &OutgoingMessage::new(&a, &b, "note", json!(1)))
        .await
        .map(|s| s.message_id);
    assert!(
        matches!(sent, Err(Error::InsufficientCredits { .. })),
        "{sent:?}"
    );
    assert!(env.snapshot().await == before, "a refused message wrote");
    // An invocation costs 10.00: refused, and audited (its record and one
    // outbox event) — nothing else, and no credit moves.
    let invoked = env
        .bus
        .invoke(&t, &InvokeRequest::new(&a, &b, json!({})))
        .await;
    let Err(Error::InvokeRefused { invoke_id, .. }) = invoked else {
        panic!("{invoked:?}")
    };
    let audit = |k: &String| k.ends_with(":outbox") || k.contains(":invoke:inv_");
    let mut after = env.snapshot().await;
    let mut before = before;
    let grew: Vec<String> = after
        .keys()
        .filter(|k| audit(k) && before.get(*k) != after.get(*k))
        .cloned()
        .collect();
    assert_eq!(grew.len(), 2, "{grew:?}");
    assert!(grew.iter().any(|k| k.ends_with(&invoke_id)));
    before.retain(|k, _| !audit(k));
    after.retain(|k, _| !audit(k));
    assert!(
        after == before,
        "a refused invocation wrote more than its audit"
    );
}

#[tokio::test]
async fn an_inbox_past_its_cap_loses_its_oldest_entries() {
    let cap = 100;
    let env = TestEnv::with_limits(Limits {
        inbox_cap: cap,
        ..Limits::default()
    })
    .await;
    let t = env.tenant("capped");
    env.grant(&t, 100_000).await;
    let reg = |i: &str| Registration::new("x").unwrap().instance(i).unwrap();
    let from = Ident::new(
        "i",
        env.bus
            .register_agent(&t, &reg("from"))
            .await
            .unwrap()
            .instance_id,
    )
    .unwrap();
    let to = Ident::new(
        "i",
        env.bus
            .register_agent(&t, &reg("to"))
            .await
            .unwrap()
            .instance_id,
    )
    .unwrap();
    let sent = 1000;
    for seq in 0..sent {
        env.bus
            .send_message(
                &t,
                &OutgoingMessage::new(&from, &to, "n", json!({ "seq": seq })),
            )
            .await
            .unwrap();
    }
    let mut conn = env.conn().await;
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(env.bus.keys(&t).inbox(&to))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let seqs: Vec<i64> = entries
        .iter()
        .map(|(_, f)| {
            agentbus::codec::decode_json(&f["payload"]).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    // Trimming is approximate (whole stream nodes): at least the cap, and
    // well under what was sent; what is kept is the newest, in order.
    assert!(
        seqs.len() >= cap && seqs.len() < 2 * cap + 100,
        "{}",
        seqs.len()
    );
    let newest: Vec<i64> = (sent - seqs.len() as i64..sent).collect();
    assert_eq!(seqs, newest);
}

/// A bad value for a documented variable, and the variable.
fn bad_value(var: &str) -> &'static str {
    match var {
        "AGENTBUS_ADMIN_TOKEN" | "AGENTBUS_METRICS_TOKEN" => "short",
        "AGENTBUS_BIND" | "AGENTBUS_METRICS_BIND" => "nowhere",
        "AGENTBUS_PREFIX" => "a{b}",
        "AGENTBUS_PRICES" => "teleport=1",
        "AGENTBUS_SINK_CONSUMER" => "bad id",
        "AGENTBUS_NO_SINK" | "AGENTBUS_METRICS_TENANT_LABEL" => "maybe",
        "AGENTBUS_LOG_FORMAT" => "xml",
        _ => "lots",
    }
}

#[test]
fn every_documented_variable_with_a_bad_value_stops_the_server_with_one_line_naming_it() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // Every variable the README names, wherever it names it.
    let mut vars: Vec<String> = readme
        .split("AGENTBUS_")
        .skip(1)
        .map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            format!("AGENTBUS_{}", name.trim_end_matches('_'))
        })
        .filter(|v| v.len() > "AGENTBUS_".len())
        .collect();
    vars.sort();
    vars.dedup();
    assert!(vars.len() >= 30, "the README's variables: {vars:?}");
    let mut failures = Vec::new();
    for var in vars {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentbus"))
            .arg("serve")
            .env("REDIS_URL", common::redis_url())
            .env(
                "AGENTBUS_ADMIN_TOKEN",
                "an-admin-token-long-enough-for-serve-0123",
            )
            .env("AGENTBUS_BIND", "127.0.0.1:0")
            .env("AGENTBUS_PREFIX", "promises")
            .env("RUST_LOG", "error")
            .env(&var, bad_value(&var))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        match status {
            None => failures.push(format!("{var}={}: the server started", bad_value(&var))),
            Some(s) if s.success() => failures.push(format!("{var}: exit 0")),
            Some(_) if lines.len() != 1 || !lines[0].contains(&var) => {
                failures.push(format!("{var}: {err:?}"))
            }
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn postgres_errors_are_counted() {
    let env = TestEnv::new().await;
    let handle = agentbus::metrics::install().expect("the recorder");
    let t = env.tenant("pgdown");
    env.grant(&t, 1).await;
    let before = errors(&handle.render());
    // A sink whose Postgres is not there (nothing listens on port 1).
    let pool = agentbus::db::connect_lazy("postgres://postgres@127.0.0.1:1/none", 1).unwrap();
    let sink = Sink::new(env.bus.clone(), pool.clone(), SinkOptions::new("down"));
    assert!(sink.drain_once(&t).await.is_err());
    // The running sink's failed batch is counted where it gives up (that a
    // library call's error is its caller's to count: tests/metrics.rs).
    let stop = CancellationToken::new();
    let running =
        tokio::spawn(Sink::new(env.bus.clone(), pool, SinkOptions::new("down")).run(stop.clone()));
    let counted = eventually(Duration::from_secs(10), || async {
        errors(&handle.render()) > before
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    assert!(counted, "no postgres error counted after {before}");
}

/// `agentbus_backend_errors_total{service="postgres"}`, summed over kinds.
fn errors(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("agentbus_backend_errors_total{") && l.contains("service=\"postgres\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_takes_over_what_another_left_idle() {
    let env = TestEnv::with_db().await;
    let t = env.tenant("handover");
    for _ in 0..5 {
        env.grant(&t, 1).await;
    }
    // Sink "a" reads every event and dies before writing them.
    let outbox = env.bus.keys(&t).outbox();
    let mut conn = env.conn().await;
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&outbox)
        .arg(agentbus::outbox::sink::GROUP)
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(agentbus::outbox::sink::GROUP)
        .arg("a")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(&outbox)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Sink "b" runs: new reads find nothing, yet the events reach Postgres
    // at its first sweep after they sat idle past its takeover time.
    let mut options = SinkOptions::new("b");
    options.takeover_idle = Duration::from_millis(500);
    options.sweep_every = Duration::from_secs(1);
    let sink = Sink::new(env.bus.clone(), env.pool().clone(), options);
    let stop = CancellationToken::new();
    let running = tokio::spawn(sink.run(stop.clone()));
    let mirrored = common::eventually(Duration::from_secs(15), || async {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents.credit_ledger")
            .fetch_one(env.pool())
            .await
            .unwrap();
        rows == 5
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    assert!(mirrored, "the idle events were never taken over");
    let pending: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&outbox)
        .arg(agentbus::outbox::sink::GROUP)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.0, 0);
}
