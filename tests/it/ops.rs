//! Operator commands agree with Redis itself and with the REST API.

use crate::common;
use std::process::Command;
use std::time::Duration;

use agentbus::agents::messages::OutgoingMessage;
use agentbus::agents::registry::Registration;
use agentbus::jobs::JobSpec;
use agentbus::keys::Ident;
use common::{TestEnv, call};
use serde_json::{Value, json};

fn agentbus(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agentbus"))
        .env("REDIS_URL", common::redis_url())
        .env("AGENTBUS_PREFIX", &env.prefix)
        .args(args)
        .output()
        .expect("run agentbus");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn inspect_job_shows_what_redis_cli_and_the_api_show() {
    let env = TestEnv::new().await;
    let t = env.tenant("ops");
    env.grant(&t, 1000).await;
    let job = env
        .bus
        .spawn_job(
            &t,
            &JobSpec::new("orc", "w", "inspect", (0..10).map(|i| json!(i)).collect()),
        )
        .await
        .unwrap();
    let a = env
        .bus
        .claim_items(&t, &job.id, "worker-a", 4, Duration::ZERO)
        .await
        .unwrap();
    let _b = env
        .bus
        .claim_items(&t, &job.id, "worker-b", 3, Duration::ZERO)
        .await
        .unwrap();
    env.bus
        .complete_items(
            &t,
            &job.id,
            &[
                (a[0].item_id.clone(), json!(1)),
                (a[1].item_id.clone(), json!(2)),
            ],
        )
        .await
        .unwrap();

    let shown: Value = serde_json::from_str(&agentbus(
        &env,
        &["inspect", "job", "--tenant", "ops", &job.id.to_string()],
    ))
    .unwrap();

    // What redis-cli would print.
    let mut conn = env.conn().await;
    let keys = env.bus.keys(&t);
    let hash: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.job(&job.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    for field in [
        "completed",
        "failed",
        "total",
        "reserved",
        "spent",
        "refunded",
        "status",
    ] {
        assert_eq!(
            shown["hash"][field].as_str(),
            hash.get(field).map(String::as_str),
            "{field}"
        );
    }
    let pending: (i64, String, String, Vec<(String, String)>) = redis::cmd("XPENDING")
        .arg(keys.job_items(&job.id))
        .arg("workers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(shown["items"]["groups"][0]["pending"], json!(pending.0));
    for (consumer, count) in &pending.3 {
        let c = shown["items"]["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == consumer.as_str())
            .unwrap();
        assert_eq!(c["pending"].to_string(), *count, "{consumer}");
    }
    assert_eq!(pending.0, 5, "2 + 3 items still held");
    assert_eq!(shown["done_items"], 2);
    assert_eq!(shown["results"], 2);

    // What the REST API shows.
    let token = env.bus.create_token(&t).await.unwrap().token;
    let (_, api) = call(
        &env.app(),
        "GET",
        &format!("/api/v1/jobs/{}", job.id),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(shown["job"]["progress"], api["progress"]);
    assert_eq!(shown["job"]["credits"], api["credits"]);
    assert_eq!(api["progress"]["completed"], 2);
}

#[tokio::test]
async fn inspect_agent_and_tail_a_stream() {
    let env = TestEnv::new().await;
    let t = env.tenant("ops");
    env.grant(&t, 100).await;
    let a = Ident::new("i", "tail-a").unwrap();
    let b = Ident::new("i", "tail-b").unwrap();
    for who in [&a, &b] {
        env.bus
            .register_agent(
                &t,
                &Registration::new("x")
                    .unwrap()
                    .instance(who.as_str())
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    env.bus
        .send_message(
            &t,
            &OutgoingMessage::new(&a, &b, "request", json!({"hello": "world"})),
        )
        .await
        .unwrap();

    let shown: Value = serde_json::from_str(&agentbus(
        &env,
        &["inspect", "agent", "--tenant", "ops", "tail-b"],
    ))
    .unwrap();
    assert_eq!(shown["instance"]["status"], "running");
    assert_eq!(shown["inbox"]["length"], 1);
    assert_eq!(shown["inbox"]["groups"][0]["name"], "inbox");

    let lines = agentbus(
        &env,
        &[
            "tail",
            "--tenant",
            "ops",
            "inbox:tail-b",
            "--from-start",
            "--count",
            "1",
        ],
    );
    let entry: Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(entry["from"], "tail-a");
    assert_eq!(
        entry["payload"],
        json!({"hello": "world"}),
        "payloads are decoded"
    );

    let lines = agentbus(
        &env,
        &[
            "tail",
            "--tenant",
            "ops",
            "outbox",
            "--from-start",
            "--count",
            "2",
        ],
    );
    let kinds: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["op"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["grant", "charge"]);
}
