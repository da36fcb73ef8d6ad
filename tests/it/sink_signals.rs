//! The sink is driven by work: it reaches a tenant with new events through
//! the ready signal its write left, visits no idle tenant between sweeps,
//! and its sweep catches an event whose signal was lost.

use std::time::Duration;

use agentbus::TenantId;
use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::keys::Keyspace;
use agentbus::outbox::sink::{Sink, SinkOptions};
use agentbus::prices::Prices;
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::common::{
    PrivateRedis, TestEnv, calls_of as calls, command_calls as commands, eventually,
};

const IDLE_TENANTS: usize = 300;

async fn ledger_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM agents.credit_ledger")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rows_reach(pool: &PgPool, n: i64, within: Duration) -> bool {
    eventually(within, || async { ledger_rows(pool).await == n }).await
}

fn sink(bus: &AgentBus, pool: &PgPool, sweep: Duration, stop: &CancellationToken) {
    let mut options = SinkOptions::new("sink-signals");
    options.sweep_every = sweep;
    let sink = Sink::new(bus.clone(), pool.clone(), options);
    tokio::spawn(sink.run(stop.clone()));
}

/// A private Redis holding IDLE_TENANTS tenants with one grant each (not
/// yet mirrored), a bus on it under `prefix`, a database, and a plain
/// connection for counting commands.
struct Idle {
    _server: PrivateRedis,
    env: TestEnv,
    bus: AgentBus,
    conn: redis::aio::MultiplexedConnection,
}

async fn idle_tenants(prefix: &str) -> Idle {
    let server = PrivateRedis::start(&[]);
    let env = TestEnv::with_db().await;
    let redis = Redis::open(&server.url(), RedisOptions::default()).unwrap();
    let bus = AgentBus::new(
        redis,
        Keyspace::new(prefix).unwrap(),
        Prices::default(),
        Limits::default(),
    );
    for i in 0..IDLE_TENANTS {
        bus.grant_credits(&tenant(i), Decimal::ONE, json!({}))
            .await
            .unwrap();
    }
    let conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Idle {
        _server: server,
        env,
        bus,
        conn,
    }
}

fn tenant(i: usize) -> TenantId {
    TenantId::new(format!("t{i}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_visits_signalled_tenants_only_and_sweeps_up_a_lost_signal() {
    let Idle {
        _server,
        env,
        bus,
        mut conn,
    } = idle_tenants("sig").await;
    let pool = env.pool().clone();

    // A sink whose sweep (the safety net) never comes again in this test.
    let stop = CancellationToken::new();
    sink(&bus, &pool, Duration::from_secs(3600), &stop);
    assert!(rows_reach(&pool, IDLE_TENANTS as i64, Duration::from_secs(20)).await);

    // Idle: no tenant is visited.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = commands(&mut conn).await;
    assert_eq!(
        calls(&idle, "xreadgroup"),
        0,
        "an idle tenant was read: {idle:?}"
    );
    let total: u64 = idle.iter().map(|(_, c)| c).sum();
    assert!(
        total < 100,
        "idle sink sent {total} commands in 2 s: {idle:?}"
    );

    // One tenant's grant reaches Postgres through its signal, visiting it alone.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    bus.grant_credits(&tenant(7), Decimal::ONE, json!({}))
        .await
        .unwrap();
    assert!(
        rows_reach(&pool, IDLE_TENANTS as i64 + 1, Duration::from_secs(5)).await,
        "a signalled event did not arrive"
    );
    let busy = commands(&mut conn).await;
    assert!(calls(&busy, "xreadgroup") <= 3, "{busy:?}");
    stop.cancel();

    // An event appended without a signal (a writer that died between the
    // two) waits for the sweep: a sink sweeping every second finds it.
    let outbox = bus.keys(&tenant(3)).outbox();
    let entries: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(Keyspace::new("sig").unwrap().tenant(&tenant(3)).outbox())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        entries.is_empty(),
        "the outbox was not emptied: {entries:?}"
    );
    let stop = CancellationToken::new();
    sink(&bus, &pool, Duration::from_secs(1), &stop);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the start sweep
    let mut add = redis::cmd("XADD");
    add.arg(&outbox).arg("*");
    for (k, v) in [
        ("type", &b"ledger"[..]),
        ("id", b"lost-signal.1"),
        ("ts", b"1700000000000"),
        ("tenant", b"t3"),
        ("job", b""),
        ("op", b"grant"),
        ("skill", b"credit_grant"),
        ("amount", b"100"),
        ("ctx", b"\x80"), // MessagePack {}
    ] {
        add.arg(k).arg(v);
    }
    let _: String = add.query_async(&mut conn).await.unwrap();
    assert!(
        rows_reach(&pool, IDLE_TENANTS as i64 + 2, Duration::from_secs(10)).await,
        "the sweep did not find an unsignalled event"
    );

    // A sweep over tenants with nothing in flight and nothing undelivered
    // costs two commands each (XINFO GROUPS, XLEN of the dead letters):
    // nothing is taken over or read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let swept = commands(&mut conn).await;
    let probes = calls(&swept, "xinfo|groups");
    assert!(probes >= IDLE_TENANTS as u64, "no sweep ran: {swept:?}");
    assert_eq!(calls(&swept, "xautoclaim"), 0, "{swept:?}");
    assert_eq!(calls(&swept, "xreadgroup"), 0, "{swept:?}");
    assert_eq!(calls(&swept, "xlen"), probes, "{swept:?}");
    stop.cancel();
}

/// After its first sweep, the sink spreads each sweep evenly over its
/// period: a slice of the tenants at a time, not a burst of all of them,
/// and a signalled tenant is drained between slices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_sweeps_are_spread_over_their_period() {
    let Idle {
        _server,
        env,
        bus,
        mut conn,
    } = idle_tenants("spread").await;
    let pool = env.pool().clone();
    let stop = CancellationToken::new();
    let period = Duration::from_secs(6);
    sink(&bus, &pool, period, &stop);
    assert!(rows_reach(&pool, IDLE_TENANTS as i64, Duration::from_secs(20)).await);
    // The first sweep (all at once) is over well before this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let quarter = calls(&commands(&mut conn).await, "xinfo|groups");
    // A quarter of the period: about a quarter of the tenants (75), give or
    // take a slice and the first sweep's end.
    assert!(
        (10..=200).contains(&quarter),
        "{quarter} of {IDLE_TENANTS} tenants probed in a quarter of the period"
    );
    let before = ledger_rows(&pool).await;
    let t0 = std::time::Instant::now();
    bus.grant_credits(&tenant(5), Decimal::ONE, json!({}))
        .await
        .unwrap();
    assert!(rows_reach(&pool, before + 1, Duration::from_secs(5)).await);
    let lag = t0.elapsed();
    assert!(
        lag < Duration::from_secs(1),
        "a signal waited {lag:?} behind the sweep"
    );
    tokio::time::sleep(period).await;
    let whole = calls(&commands(&mut conn).await, "xinfo|groups");
    assert!(
        whole >= IDLE_TENANTS as u64,
        "{whole} of {IDLE_TENANTS} tenants probed in a period and a half"
    );
    stop.cancel();
}
