//! Blocked readers across Redis faults: a restart (with AOF), an UNBLOCKED
//! error, a LOADING window, and a consumer group that went missing.

use crate::common;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbus::agents::messages::{Message, OutgoingMessage};
use agentbus::agents::registry::Registration;
use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::keys::{Ident, Keyspace, TenantId};
use agentbus::prices::Prices;
use agentbus::{Error, Result};
use common::{PrivateRedis, TestEnv, eventually};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

async fn register(bus: &AgentBus, tenant: &TenantId, agent: &str, instance: &str) -> Ident {
    let reg = Registration::new(agent)
        .unwrap()
        .instance(instance)
        .unwrap();
    let inst = bus.register_agent(tenant, &reg).await.unwrap();
    Ident::new("instance_id", inst.instance_id).unwrap()
}

/// Every delivery a receiver's handler saw, as (message type, payload n).
type Seen = Arc<Mutex<Vec<(String, i64)>>>;

/// Runs `instance`'s receiver in a task; messages of type `flaky` fail their
/// first delivery (so they stay pending), everything else succeeds.
fn start_receiver(
    bus: &AgentBus,
    tenant: &TenantId,
    instance: &Ident,
    shutdown: &CancellationToken,
) -> (Seen, JoinHandle<Result<()>>) {
    let seen: Seen = Arc::default();
    let rx = bus.receiver(tenant, instance);
    let log = seen.clone();
    let task = tokio::spawn(rx.run(shutdown.clone(), move |m: Message| {
        let log = log.clone();
        async move {
            let n = m.payload.json()["n"].as_i64().unwrap_or(-1);
            let mut log = log.lock().unwrap();
            let first = !log.iter().any(|(t, k)| t == &m.message_type && *k == n);
            log.push((m.message_type.clone(), n));
            if m.message_type == "flaky" && first {
                return Err("first delivery fails".to_string());
            }
            Ok(())
        }
    }));
    (seen, task)
}

fn deliveries(seen: &Seen, message_type: &str, n: i64) -> usize {
    let log = seen.lock().unwrap();
    log.iter()
        .filter(|(t, k)| t == message_type && *k == n)
        .count()
}

async fn send(bus: &AgentBus, tenant: &TenantId, from: &Ident, to: &Ident, kind: &str, n: i64) {
    let msg = OutgoingMessage::new(from, to, kind, json!({ "n": n }));
    // Right after a restart the pool may still be reconnecting.
    let sent = eventually(Duration::from_secs(15), || async {
        bus.send_message(tenant, &msg).await.is_ok()
    })
    .await;
    assert!(sent, "could not send message {n}");
}

/// The id of the connection blocked in XREADGROUP on this server.
async fn blocked_reader_id(url: &str) -> Option<i64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .ok()?;
    list.lines()
        .find(|l| l.contains("cmd=xreadgroup"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .and_then(|id| id.parse().ok())
}

#[tokio::test]
async fn a_blocked_receiver_survives_unblock_kill_and_restart_with_aof() {
    let mut server = PrivateRedis::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--enable-debug-command",
        "yes",
    ]);
    server.wait_ready().await;
    let redis = Redis::open(&server.url(), RedisOptions::default()).unwrap();
    // Redelivery by idle time is out of reach of this test: only resuming
    // from pending entries after the reconnect can bring `flaky` back.
    let limits = Limits {
        redeliver_after: Duration::from_secs(600),
        ..Limits::default()
    };
    let bus = AgentBus::new(
        redis,
        Keyspace::new("ab").unwrap(),
        Prices::default(),
        limits,
    );
    let t = TenantId::new("faults").unwrap();
    bus.grant_credits(&t, Decimal::from(1000), json!({}))
        .await
        .unwrap();
    let from = register(&bus, &t, "caller", "caller-1").await;
    let me = register(&bus, &t, "worker", "worker-1").await;
    let shutdown = CancellationToken::new();
    let (seen, task) = start_receiver(&bus, &t, &me, &shutdown);

    send(&bus, &t, &from, &me, "ping", 1).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            deliveries(&seen, "ping", 1) == 1
        })
        .await
    );

    // UNBLOCKED: the server ends the blocked read with an error.
    let url = server.url();
    let id = eventually(Duration::from_secs(5), || async {
        blocked_reader_id(&url).await.is_some()
    })
    .await
    .then_some(())
    .and(blocked_reader_id(&url).await)
    .expect("the receiver blocks in XREADGROUP");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let unblocked: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(id)
        .arg("ERROR")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(unblocked, 1);
    send(&bus, &t, &from, &me, "ping", 2).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            deliveries(&seen, "ping", 2) == 1
        })
        .await
    );

    // A message whose handler fails stays pending in the group.
    send(&bus, &t, &from, &me, "flaky", 3).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            deliveries(&seen, "flaky", 3) == 1
        })
        .await
    );

    // Enough data that the restarted server spends a while LOADING.
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(30_000)
        .arg("filler")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("BGREWRITEAOF")
        .query_async(&mut admin)
        .await
        .unwrap();
    let rewritten = eventually(Duration::from_secs(30), || async {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut admin.clone())
            .await
            .unwrap_or_default();
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    })
    .await;
    assert!(rewritten, "AOF rewrite did not finish");

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A delay per key while loading (a setting Redis has for its own tests;
    // about 80 µs a key here) keeps it LOADING for seconds, and answering
    // clients every KiB of loading lets them see it.
    server.add_args(&[
        "--key-load-delay",
        "5",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    server.restart();
    // Seen, not assumed: commands answered LOADING while it loaded.
    let mut loading_replies = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "never ready");
        let Ok(client) = redis::Client::open(server.url()) else {
            continue;
        };
        let mut conn = match client.get_multiplexed_async_connection().await {
            Ok(conn) => conn,
            // Refused before the port opens, or LOADING at the handshake.
            Err(e) => {
                if agentbus::error::redis_code(&e).as_deref() == Some("LOADING") {
                    loading_replies += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match redis::cmd("PING").query_async::<String>(&mut conn).await {
            Ok(_) => break,
            Err(e) if agentbus::error::redis_code(&e).as_deref() == Some("LOADING") => {
                loading_replies += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(loading_replies > 0, "the restart never answered LOADING");
    server.wait_ready().await;

    // Back: the pending message comes again at once, new ones flow, and the
    // acknowledged ones (fsynced before the kill) do not come back.
    send(&bus, &t, &from, &me, "ping", 4).await;
    let resumed = eventually(Duration::from_secs(20), || async {
        deliveries(&seen, "flaky", 3) == 2 && deliveries(&seen, "ping", 4) == 1
    })
    .await;
    assert!(resumed, "after the restart: {:?}", seen.lock().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deliveries(&seen, "ping", 1),
        1,
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(
        deliveries(&seen, "ping", 2),
        1,
        "{:?}",
        seen.lock().unwrap()
    );
    assert!(!task.is_finished(), "the receiver gave up");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_missing_inbox_group_is_recreated_until_the_instance_is_gone() {
    let env = TestEnv::new().await;
    let t = env.tenant("regroup");
    env.grant(&t, 100).await;
    let from = register(&env.bus, &t, "caller", "c").await;
    let me = register(&env.bus, &t, "worker", "w").await;
    let shutdown = CancellationToken::new();
    let (seen, task) = start_receiver(&env.bus, &t, &me, &shutdown);
    send(&env.bus, &t, &from, &me, "ping", 1).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            deliveries(&seen, "ping", 1) == 1
        })
        .await
    );

    // The group disappears (an operator, or a restore from an old snapshot).
    let inbox = env.bus.keys(&t).inbox(&me);
    let mut conn = env.conn().await;
    let destroyed: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&inbox)
        .arg("inbox")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(destroyed, 1);
    send(&env.bus, &t, &from, &me, "ping", 2).await;
    // Re-created from the start of the stream: nothing is lost, and what
    // was acknowledged in the lost group is delivered again (at-least-once).
    let recovered = eventually(Duration::from_secs(10), || async {
        deliveries(&seen, "ping", 2) == 1 && deliveries(&seen, "ping", 1) == 2
    })
    .await;
    assert!(recovered, "{:?}", seen.lock().unwrap());
    assert!(!task.is_finished());

    // Deregistered and its inbox gone: the receiver stops, not found.
    env.bus.deregister_agent(&t, &me).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&inbox)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the receiver of a deregistered instance stops")
        .unwrap();
    assert!(matches!(ended, Err(Error::NotFound(_))), "{ended:?}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&inbox)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a gone instance's inbox was re-created");
}
