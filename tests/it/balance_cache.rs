//! The balance cache (`balance_cache`): a balance Redis has not said
//! changed is served without a round trip; a change made by any process
//! reaches the cache at once (Redis pushes it); a cache that lost its
//! tracking connection is not trusted; over REST a client reads its own
//! change next.

use std::time::{Duration, Instant};

use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::credits::Balance;
use agentbus::keys::{Keyspace, TenantId};
use agentbus::prices::Prices;
use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{PrivateRedis, TestEnv, call, calls_of, command_calls, dec, eventually};

/// A process's view: its own bus (and balance cache, kept by its task).
async fn process(url: &str, prefix: &str, cache: Duration, stop: &CancellationToken) -> AgentBus {
    let redis = Redis::open(url, RedisOptions::default()).expect("url");
    let bus = AgentBus::new(
        redis,
        Keyspace::new(prefix).expect("prefix"),
        Prices::default(),
        Limits {
            balance_cache: cache,
            ..Limits::default()
        },
    );
    tokio::spawn(agentbus::balance_cache::run(bus.clone(), stop.clone()));
    if !cache.is_zero() {
        wait_live(&bus).await;
    }
    bus
}

/// Waits until the cache is trusted; on a cluster, where it is off, checks
/// that it stays so (every read then goes to Redis).
async fn wait_live(bus: &AgentBus) {
    if bus.redis().is_cluster() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!bus.balance_cache().is_live(), "a cache on a cluster");
        return;
    }
    let live = eventually(Duration::from_secs(5), || {
        let bus = bus.clone();
        async move { bus.balance_cache().is_live() }
    })
    .await;
    assert!(live, "the balance cache never connected");
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Waits (at most `within`) until `bus`'s cached balance of `tenant` is the
/// one Redis holds, as read without the cache.
async fn converges(bus: &AgentBus, tenant: &TenantId, within: Duration, what: &str) -> Balance {
    let t = Instant::now();
    loop {
        let truth = bus.balance(tenant).await.unwrap();
        let cached = bus.balance_cached(tenant).await.unwrap();
        if cached == truth {
            return cached;
        }
        assert!(
            t.elapsed() < within,
            "{what}: cached {cached:?}, Redis {truth:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_cached_balance_costs_no_redis_round_trip() {
    let server = PrivateRedis::start(&[]);
    let stop = CancellationToken::new();
    let cached = process(&server.url(), "bc", Duration::from_secs(60), &stop).await;
    let uncached = process(&server.url(), "bc", Duration::ZERO, &stop).await;
    let tenant = TenantId::new("acme").unwrap();
    cached
        .grant_credits(&tenant, Decimal::from(7), json!({}))
        .await
        .unwrap();
    let mut conn = raw(&server.url()).await;
    let first = cached.balance_cached(&tenant).await.unwrap();
    assert_eq!(first.total, Decimal::from(7));
    let before = calls_of(&command_calls(&mut conn).await, "hmget");
    for _ in 0..200 {
        assert_eq!(cached.balance_cached(&tenant).await.unwrap(), first);
    }
    assert_eq!(
        calls_of(&command_calls(&mut conn).await, "hmget") - before,
        0,
        "a cached balance read Redis"
    );
    // The same count sees every read of a process without the cache.
    for _ in 0..10 {
        assert_eq!(uncached.balance_cached(&tenant).await.unwrap(), first);
    }
    assert_eq!(
        calls_of(&command_calls(&mut conn).await, "hmget") - before,
        10
    );
    stop.cancel();
}

#[tokio::test]
async fn a_change_made_by_another_process_reaches_the_cache_at_once() {
    let env = TestEnv::new().await;
    let url = crate::common::redis_url();
    let stop = CancellationToken::new();
    // A time to live far past the bound asserted: only Redis's push can do it.
    let a = process(&url, &env.prefix, Duration::from_secs(600), &stop).await;
    let b = process(&url, &env.prefix, Duration::ZERO, &stop).await;
    let tenant = env.tenant("acme");
    b.grant_credits(&tenant, Decimal::from(100), json!({}))
        .await
        .unwrap();
    let seen = converges(&a, &tenant, Duration::from_secs(1), "first read").await;
    assert_eq!(seen.total, Decimal::from(100));
    assert_eq!(a.balance_cached(&tenant).await.unwrap(), seen, "cached now");

    // Another process grants, spawns (reserves), and a worker there completes.
    b.grant_credits(&tenant, Decimal::from(5), json!({}))
        .await
        .unwrap();
    let seen = converges(&a, &tenant, Duration::from_secs(1), "a grant elsewhere").await;
    assert_eq!(seen.total, Decimal::from(105));
    let spec = agentbus::jobs::JobSpec::new("o", "w", "t", vec![json!(1), json!(2)]);
    let job = b.spawn_job(&tenant, &spec).await.unwrap();
    let seen = converges(&a, &tenant, Duration::from_secs(1), "a spawn elsewhere").await;
    assert!(seen.reserved > Decimal::ZERO, "{seen:?}");
    let claimed = b
        .claim_items(&tenant, &job.id, "w1", 2, Duration::ZERO)
        .await
        .unwrap();
    b.complete_items(
        &tenant,
        &job.id,
        &[(claimed[0].item_id.clone(), json!("done"))],
    )
    .await
    .unwrap();
    let after = b.balance(&tenant).await.unwrap();
    assert!(after.spent > Decimal::ZERO);
    let seen = converges(
        &a,
        &tenant,
        Duration::from_secs(1),
        "a completion elsewhere",
    )
    .await;
    assert_eq!(seen, after);
    stop.cancel();
}

#[tokio::test]
async fn a_cache_that_lost_its_connection_is_not_trusted() {
    let server = PrivateRedis::start(&[]);
    let stop = CancellationToken::new();
    let bus = process(&server.url(), "bc", Duration::from_secs(600), &stop).await;
    let tenant = TenantId::new("acme").unwrap();
    bus.grant_credits(&tenant, Decimal::from(3), json!({}))
        .await
        .unwrap();
    assert_eq!(
        bus.balance_cached(&tenant).await.unwrap().total,
        Decimal::from(3)
    );
    let mut conn = raw(&server.url()).await;
    // The tracking connection drops, and a change made meanwhile sends no
    // invalidation to anyone (the tracking state went with the connection).
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let tracking: Vec<&str> = clients
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('t')))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(tracking.len(), 1, "{clients}");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracking[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    let key = bus.keys(&tenant).credits();
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&key)
        .arg("total")
        .arg(1_000_000) // minor units: 10,000 credits
        .query_async(&mut conn)
        .await
        .unwrap();
    let seen = converges(&bus, &tenant, Duration::from_secs(2), "after the drop").await;
    assert_eq!(seen.total, Decimal::from(10_003));
    // It connects again and caches again, exactly.
    wait_live(&bus).await;
    let seen = converges(&bus, &tenant, Duration::from_secs(1), "connected again").await;
    assert_eq!(seen.total, Decimal::from(10_003));
    stop.cancel();
}

#[tokio::test]
async fn over_rest_a_client_reads_its_own_change_next() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    tokio::spawn(agentbus::balance_cache::run(env.bus.clone(), stop.clone()));
    wait_live(&env.bus).await;
    let app = env.app();
    let token = env.token("acme").await;
    env.grant(&env.tenant("acme"), 50).await;
    let auth = Some(token.as_str());
    let (status, before) = call(&app, "GET", "/api/v1/credits", auth, None).await;
    assert_eq!(status, StatusCode::OK);
    // Served from the cache now; a spawn through the API moves the balance,
    // and the very next read shows it.
    let (status, _) = call(&app, "GET", "/api/v1/credits", auth, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, job) = call(
        &app,
        "POST",
        "/api/v1/jobs",
        auth,
        Some(json!({
            "orchestrator_agent": "o",
            "worker_agent": "w",
            "task": "t",
            "items": [1, 2, 3],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let (_, after) = call(&app, "GET", "/api/v1/credits", auth, None).await;
    // What the job took (its items reserved, its overhead spent) is gone
    // from what is available.
    assert_eq!(
        dec(&before["available"]) - dec(&after["available"]),
        dec(&job["credits"]["reserved"]),
        "{before} {after}"
    );
    stop.cancel();
}
