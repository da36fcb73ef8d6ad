//! The token cache (`auth::cache`): in steady state a request's token costs
//! no Redis round trip, a revocation reaches another process's cache at
//! once, and a cache whose subscription was lost is not trusted.

use std::time::{Duration, Instant};

use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::error::Error;
use agentbus::keys::{Keyspace, TenantId};
use agentbus::prices::Prices;
use tokio_util::sync::CancellationToken;

use crate::common::{PrivateRedis, TestEnv, calls_of, command_calls, eventually};

/// A process's view: its own bus (and cache) on `url` under `prefix`, with
/// the subscriber running when `subscribe`.
async fn process(url: &str, prefix: &str, cache: Duration, stop: &CancellationToken) -> AgentBus {
    let redis = Redis::open(url, RedisOptions::default()).expect("url");
    let bus = AgentBus::new(
        redis,
        Keyspace::new(prefix).expect("prefix"),
        Prices::default(),
        Limits {
            token_cache: cache,
            ..Limits::default()
        },
    );
    tokio::spawn(agentbus::auth::cache::run(bus.clone(), stop.clone()));
    if !cache.is_zero() {
        let live = eventually(Duration::from_secs(5), || {
            let bus = bus.clone();
            async move { bus.token_cache().is_live() }
        })
        .await;
        assert!(live, "the token cache never subscribed");
    }
    bus
}

async fn hget_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    calls_of(&command_calls(conn).await, "hget")
}

fn refused(r: &agentbus::error::Result<TenantId>) -> bool {
    matches!(r, Err(Error::Unauthorized(_)))
}

#[tokio::test]
async fn a_cached_token_costs_no_redis_round_trip() {
    let server = PrivateRedis::start(&[]);
    let stop = CancellationToken::new();
    let cached = process(&server.url(), "tc", Duration::from_secs(60), &stop).await;
    let uncached = process(&server.url(), "tc", Duration::ZERO, &stop).await;
    let token = cached
        .create_token(&TenantId::new("acme").unwrap())
        .await
        .unwrap()
        .token;
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(cached.authenticate(&token).await.unwrap().as_str(), "acme");
    let before = hget_calls(&mut conn).await;
    for _ in 0..200 {
        assert_eq!(cached.authenticate(&token).await.unwrap().as_str(), "acme");
    }
    assert_eq!(
        hget_calls(&mut conn).await - before,
        0,
        "a cached token read Redis"
    );
    // The same count sees every read of a process without the cache.
    for _ in 0..10 {
        uncached.authenticate(&token).await.unwrap();
    }
    assert_eq!(hget_calls(&mut conn).await - before, 10);
    stop.cancel();
}

#[tokio::test]
async fn a_revocation_or_rotation_reaches_another_process_at_once() {
    let env = TestEnv::new().await;
    let url = crate::common::redis_url();
    let stop = CancellationToken::new();
    // A cache time far past the bound asserted: only the message can do it.
    let a = process(&url, &env.prefix, Duration::from_secs(600), &stop).await;
    let b = process(&url, &env.prefix, Duration::from_secs(600), &stop).await;
    let tenant = TenantId::new("acme").unwrap();

    let revoked = a.create_token(&tenant).await.unwrap();
    assert!(b.authenticate(&revoked.token).await.is_ok());
    assert!(b.authenticate(&revoked.token).await.is_ok(), "cached now");
    let t = Instant::now();
    a.revoke_token(&revoked.id).await.unwrap();
    assert!(
        refused(&a.authenticate(&revoked.token).await),
        "the revoking process accepted it"
    );
    while !refused(&b.authenticate(&revoked.token).await) {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "another process still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let old = a.create_token(&tenant).await.unwrap();
    assert!(b.authenticate(&old.token).await.is_ok());
    let t = Instant::now();
    let new = a.rotate_token(&old.id).await.unwrap();
    while !refused(&b.authenticate(&old.token).await) {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "another process still accepts a rotated token"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(b.authenticate(&new.token).await.is_ok());
    stop.cancel();
}

#[tokio::test]
async fn a_cache_that_lost_its_subscription_is_not_trusted() {
    let server = PrivateRedis::start(&[]);
    let stop = CancellationToken::new();
    let b = process(&server.url(), "tc", Duration::from_secs(600), &stop).await;
    let token = b
        .create_token(&TenantId::new("acme").unwrap())
        .await
        .unwrap();
    assert!(b.authenticate(&token.token).await.is_ok());
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The subscription drops, and a revocation's message is lost with it
    // (the record removed without a publish).
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("HDEL")
        .arg(Keyspace::new("tc").unwrap().tokens_of(&token.id))
        .arg(&token.id)
        .query_async(&mut conn)
        .await
        .unwrap();
    let t = Instant::now();
    while !refused(&b.authenticate(&token.token).await) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a cache without its subscription was trusted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // It subscribes again and caches again.
    let live = eventually(Duration::from_secs(5), || {
        let b = b.clone();
        async move { b.token_cache().is_live() }
    })
    .await;
    assert!(live, "the cache never subscribed again");
    stop.cancel();
}
