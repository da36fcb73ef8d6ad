//! The reaper and the reclaimer work from deadlines: a pass touches only
//! tenants that are due, a call that creates a deadline writes it, a visit
//! settles the tenant's next one (or drops the tenant), a deadline written
//! during a visit survives it, a stuck lease is taken again, and the sweep
//! restores a lost deadline.

use std::time::Duration;

use agentbus::TenantId;
use agentbus::agents::invoke::InvokeRequest;
use agentbus::agents::registry::Registration;
use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::due::{LEASE_BASE, STUCK_MS, now_ms};
use agentbus::jobs::{JobSpec, reclaim};
use agentbus::keys::{Chore, Ident, Keyspace};
use agentbus::prices::Prices;
use agentbus::reaper;
use rust_decimal::Decimal;
use serde_json::json;

use crate::common::{PrivateRedis, TestEnv, calls_of, command_calls};

fn id(s: &str) -> Ident {
    Ident::new("instance_id", s).unwrap()
}

async fn reap_due(bus: &AgentBus) -> (i64, i64) {
    bus.run_due(Chore::Reap, false, &reaper::visit)
        .await
        .unwrap()
}

async fn reclaim_due(bus: &AgentBus) -> (i64, i64) {
    bus.run_due(Chore::Reclaim, false, &|b, t| {
        reclaim::visit(b, t, Duration::from_millis(100))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_idle_tenant_costs_a_pass_nothing() {
    let server = PrivateRedis::start(&[]);
    let redis = Redis::open(&server.url(), RedisOptions::default()).unwrap();
    let bus = AgentBus::new(
        redis,
        Keyspace::new("due").unwrap(),
        Prices::default(),
        Limits::default(),
    );
    let tenant = |i: usize| TenantId::new(format!("t{i}")).unwrap();
    for i in 0..300 {
        bus.grant_credits(&tenant(i), Decimal::ONE, json!({}))
            .await
            .unwrap();
    }
    // One tenant was active: a metered read made it due; its visit flushes
    // the charge and, with nothing left, drops it.
    let ns = Ident::new("namespace", "n").unwrap();
    bus.blackboard(&tenant(7), &ns).get("k").await.unwrap();
    assert!(bus.due_at(Chore::Reap, &tenant(7)).await.unwrap().unwrap() <= now_ms());
    assert_eq!(reap_due(&bus).await, (0, 0));
    assert_eq!(bus.due_at(Chore::Reap, &tenant(7)).await.unwrap(), None);

    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..5 {
        reap_due(&bus).await;
        reclaim_due(&bus).await;
    }
    let stats = command_calls(&mut conn).await;
    // Per pass and chore: one range read per shard, whatever the number of
    // tenants; nothing read or written for any tenant.
    let reads = 5 * 2 * agentbus::keys::READY_SHARDS as u64;
    assert_eq!(calls_of(&stats, "zrangebyscore"), reads, "{stats:?}");
    let total: u64 = stats.iter().map(|(_, n)| n).sum();
    // And the CONFIG RESETSTAT.
    assert_eq!(total, reads + 1, "{stats:?}");

    // The safety-net sweep visits every tenant, but an idle one costs the
    // reaper two commands (does it hold anything? a metered charge?) and
    // the reclaimer one (its running jobs), and writes nothing.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    reaper::reap_once(&bus).await.unwrap();
    reclaim::reclaim_once(&bus).await.unwrap();
    let stats = command_calls(&mut conn).await;
    let registry = 2 * (agentbus::keys::READY_SHARDS as u64 + 1); // tenants(), twice
    assert_eq!(calls_of(&stats, "exists"), 300, "{stats:?}");
    assert_eq!(calls_of(&stats, "hgetall"), 300, "{stats:?}");
    assert_eq!(calls_of(&stats, "smembers"), 300 + registry, "{stats:?}");
    let total: u64 = stats.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 900 + registry + 1, "{stats:?}");
}

#[tokio::test]
async fn deadlines_drive_the_reaper() {
    let env = TestEnv::with_limits(Limits {
        stale_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let bus = &env.bus;
    let t = env.tenant("reap");
    env.grant(&t, 100).await;

    // Registering: due when the instance would turn stale.
    let before = now_ms();
    let reg = Registration::new("w").unwrap().instance("w-1").unwrap();
    bus.register_agent(&t, &reg).await.unwrap();
    let due = bus.due_at(Chore::Reap, &t).await.unwrap().unwrap();
    assert!(
        (before + 1000..=now_ms() + 1001).contains(&due),
        "{due} vs {before}"
    );
    // Not due yet: the pass does not visit it.
    assert_eq!(reap_due(bus).await, (0, 0));
    assert_eq!(bus.due_at(Chore::Reap, &t).await.unwrap(), Some(due));

    // Silent past its deadline: marked stale, and with nothing else the
    // tenant leaves the set.
    tokio::time::sleep(Duration::from_millis((due - now_ms()).max(0) as u64 + 50)).await;
    assert_eq!(reap_due(bus).await, (1, 0));
    assert_eq!(bus.due_at(Chore::Reap, &t).await.unwrap(), None);

    // A heartbeat brings it back, due again a second later.
    bus.heartbeat(&t, &id("w-1"), None).await.unwrap();
    let due = bus.due_at(Chore::Reap, &t).await.unwrap().unwrap();
    assert!(due > now_ms() + 500, "{due}");

    // An invocation whose caller went away: due at its deadline (before
    // the heartbeat's), expired there, its reservation returned.
    let caller = id("caller-1");
    let reg = Registration::new("c")
        .unwrap()
        .instance("caller-1")
        .unwrap();
    bus.register_agent(&t, &reg).await.unwrap();
    let mut req = InvokeRequest::new(&caller, &id("w-1"), json!({"q": 1}));
    req.timeout_seconds = 1;
    let (b2, t2) = (bus.clone(), t.clone());
    let task = tokio::spawn(async move { b2.invoke(&t2, &req).await });
    let reserved = async {
        loop {
            if bus.balance(&t).await.unwrap().reserved > Decimal::ZERO {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reserved)
        .await
        .unwrap();
    task.abort();
    let due_invoke = bus.due_at(Chore::Reap, &t).await.unwrap().unwrap();
    assert!(due_invoke <= now_ms() + 1001, "{due_invoke}");
    // Keep both instances alive while the invocation runs out.
    tokio::time::sleep(Duration::from_millis(700)).await;
    bus.heartbeat(&t, &id("w-1"), None).await.unwrap();
    bus.heartbeat(&t, &caller, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(
        (due_invoke - now_ms()).max(0) as u64 + 50,
    ))
    .await;
    assert_eq!(reap_due(bus).await, (0, 1));
    assert_eq!(bus.balance(&t).await.unwrap().reserved, Decimal::ZERO);
    // Next: the instances' stale time, not the invocation's.
    let next = bus.due_at(Chore::Reap, &t).await.unwrap().unwrap();
    assert!(next > now_ms(), "{next}");

    // A blackboard entry with a TTL: the write is metered (due at once);
    // the visit flushes the charge to the ledger and settles on the
    // entry's expiry (earlier than the instances' stale time).
    let ns = Ident::new("namespace", "n").unwrap();
    let board = bus.blackboard(&t, &ns);
    board
        .set("k", &json!(1), Some(Duration::from_millis(300)), None)
        .await
        .unwrap();
    assert!(bus.due_at(Chore::Reap, &t).await.unwrap().unwrap() <= now_ms());
    reap_due(bus).await;
    let flushed: i64 = redis::cmd("HGET")
        .arg(bus.keys(&t).credits())
        .arg("unbilled:blackboard_write")
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    assert_eq!(flushed, 0);
    let expiry = bus.due_at(Chore::Reap, &t).await.unwrap().unwrap();
    assert!(
        expiry <= now_ms() + 300 && expiry > now_ms() - 300,
        "{expiry}"
    );
    tokio::time::sleep(Duration::from_millis(
        (expiry - now_ms()).max(0) as u64 + 50,
    ))
    .await;
    reap_due(bus).await;
    assert_eq!(board.get("k").await.unwrap(), None);
    assert_eq!(bus.next_expiry(&t).await.unwrap(), None);
}

#[tokio::test]
async fn deadlines_drive_the_reclaimer() {
    let env = TestEnv::new().await;
    let bus = &env.bus;
    let t = env.tenant("reclaim");
    env.grant(&t, 100).await;
    assert_eq!(bus.due_at(Chore::Reclaim, &t).await.unwrap(), None);
    // A job whose items may take a minute: visited every 6 s.
    let slow = bus
        .spawn_job(&t, &JobSpec::new("o", "w", "t", vec![json!(1), json!(2)]))
        .await
        .unwrap();
    // Due at once, then a tenth of its timeout later while the job runs.
    assert!(bus.due_at(Chore::Reclaim, &t).await.unwrap().unwrap() <= now_ms());
    reclaim_due(bus).await;
    let next = bus.due_at(Chore::Reclaim, &t).await.unwrap().unwrap();
    assert!(
        (now_ms() + 5_000..=now_ms() + 6_000).contains(&next),
        "{next}"
    );
    // A job with a 1 s timeout brings the tenant's next visit down to the
    // pass interval (100 ms here).
    let mut spec = JobSpec::new("o", "w", "t", vec![json!(1)]);
    spec.timeout_per_item = 1;
    let quick = bus.spawn_job(&t, &spec).await.unwrap();
    reclaim_due(bus).await;
    let next = bus.due_at(Chore::Reclaim, &t).await.unwrap().unwrap();
    assert!(next > now_ms() && next <= now_ms() + 100, "{next}");
    for job in [&slow, &quick] {
        bus.cancel_job(&t, &job.id, "test", "done").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    reclaim_due(bus).await;
    assert_eq!(bus.due_at(Chore::Reclaim, &t).await.unwrap(), None);
}

#[tokio::test]
async fn a_deadline_written_during_a_visit_survives_it_and_a_stuck_lease_is_retaken() {
    let env = TestEnv::new().await;
    let bus = &env.bus;
    let (a, b) = (env.tenant("a"), env.tenant("b"));
    let shard = agentbus::keys::ready_shard(a.as_str());

    bus.mark_due(Chore::Reap, &a, now_ms() - 1).await.unwrap();
    let (lease, taken) = bus.take_due(Chore::Reap, shard, 10, false).await.unwrap();
    assert_eq!(taken, vec![a.clone()]);
    assert_eq!(bus.due_at(Chore::Reap, &a).await.unwrap(), Some(lease));
    assert!(lease > LEASE_BASE);
    // Leased: not taken twice.
    assert!(
        bus.take_due(Chore::Reap, shard, 10, false)
            .await
            .unwrap()
            .1
            .is_empty()
    );
    // A deadline written meanwhile (later than anything the visit saw) is
    // kept when the visit settles with none.
    let later = now_ms() + 60_000;
    bus.mark_due(Chore::Reap, &a, later).await.unwrap();
    assert!(bus.settle_due(Chore::Reap, &a, lease, None).await.unwrap());
    assert_eq!(bus.due_at(Chore::Reap, &a).await.unwrap(), Some(later));
    // Without one, settling with none drops the tenant; with a next, that one.
    bus.mark_due(Chore::Reap, &a, now_ms() - 1).await.unwrap();
    let (lease, _) = bus.take_due(Chore::Reap, shard, 10, false).await.unwrap();
    assert!(!bus.settle_due(Chore::Reap, &a, lease, None).await.unwrap());
    assert_eq!(bus.due_at(Chore::Reap, &a).await.unwrap(), None);

    // A lease older than STUCK_MS (its visitor died) is taken again.
    let mut conn = env.conn().await;
    let old = LEASE_BASE + now_ms() - STUCK_MS - 1000;
    let _: () = redis::cmd("ZADD")
        .arg(bus.due_key(Chore::Reap, &b))
        .arg(old)
        .arg(b.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    let shard_b = agentbus::keys::ready_shard(b.as_str());
    // Only when stuck leases are looked for (now and then, not every pass).
    let (_, taken) = bus.take_due(Chore::Reap, shard_b, 10, false).await.unwrap();
    assert!(taken.is_empty());
    let (_, taken) = bus.take_due(Chore::Reap, shard_b, 10, true).await.unwrap();
    assert_eq!(taken, vec![b.clone()]);
}

#[tokio::test]
async fn the_sweep_restores_a_lost_deadline() {
    let env = TestEnv::with_limits(Limits {
        stale_after: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let bus = &env.bus;
    let t = env.tenant("lost");
    let reg = Registration::new("w").unwrap().instance("w-1").unwrap();
    bus.register_agent(&t, &reg).await.unwrap();
    let due = bus.due_at(Chore::Reap, &t).await.unwrap().unwrap();
    // Lost (as a crash between a script and its deadline on a cluster).
    let _: () = redis::cmd("ZREM")
        .arg(bus.due_key(Chore::Reap, &t))
        .arg(t.as_str())
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    reaper::reap_once(bus).await.unwrap();
    let restored = bus.due_at(Chore::Reap, &t).await.unwrap().unwrap();
    assert!(
        (due - 50..=due + 50).contains(&restored),
        "{restored} vs {due}"
    );
}

#[tokio::test]
async fn a_deployments_first_sweep_visits_every_tenant_at_once_then_marks_it() {
    let env = TestEnv::with_limits(Limits {
        stale_after: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let bus = &env.bus;
    // Tenants from before deadlines existed: agents, no deadline.
    let tenants: Vec<TenantId> = (0..20).map(|i| env.tenant(&format!("old{i}"))).collect();
    let mut conn = env.conn().await;
    for t in &tenants {
        let reg = Registration::new("w").unwrap().instance("w-1").unwrap();
        bus.register_agent(t, &reg).await.unwrap();
        let _: () = redis::cmd("ZREM")
            .arg(bus.due_key(Chore::Reap, t))
            .arg(t.as_str())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert!(!bus.swept(Chore::Reap).await.unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let schedule = agentbus::due::Schedule {
        interval: Duration::from_millis(50),
        sweep_every: Duration::from_secs(3600),
    };
    let task = tokio::spawn(reaper::run(bus.clone(), schedule, stop.clone()));
    let marked = crate::common::eventually(Duration::from_secs(10), || async {
        bus.swept(Chore::Reap).await.unwrap()
    })
    .await;
    assert!(marked);
    for t in &tenants {
        assert!(bus.due_at(Chore::Reap, t).await.unwrap().is_some(), "{t}");
    }
    stop.cancel();
    task.await.unwrap();
}

/// The two deadline scripts check every argument before their first write:
/// a bad one is an error and the shard is left as it was.
#[tokio::test]
async fn bad_arguments_leave_a_deadline_shard_unchanged() {
    let env = TestEnv::new().await;
    let bus = &env.bus;
    let t = env.tenant("args");
    bus.mark_due(Chore::Reap, &t, now_ms() - 1).await.unwrap();
    let key = bus.due_key(Chore::Reap, &t);
    let mut conn = env.conn().await;
    let mut dump = redis::cmd("DUMP");
    dump.arg(&key);
    let before: Vec<u8> = dump.query_async(&mut conn).await.unwrap();
    let s = agentbus::scripts::scripts();
    let take = |args: Vec<String>| {
        let mut inv = s.due_take.script().key(&key);
        for a in args {
            inv.arg(a);
        }
        inv
    };
    let now = now_ms().to_string();
    let base = LEASE_BASE.to_string();
    for args in [
        vec![now.clone(), "0".into(), base.clone(), "0".into()], // most < 1
        vec![now.clone(), "10".into(), "5e15".into(), "0".into()], // not digits
        vec![now.clone(), "10".into(), base.clone(), "-1".into()], // stuck < 0
        vec![
            "99999999999999".into(),
            "10".into(),
            base.clone(),
            "0".into(),
        ], // now past bound
    ] {
        let r: redis::RedisResult<redis::Value> = take(args.clone()).invoke_async(&mut conn).await;
        assert!(r.is_err(), "{args:?}: {r:?}");
    }
    for args in [
        vec!["".to_string(), "0".into(), "0".into()], // no tenant
        vec![t.to_string(), "-1".into(), "0".into()], // lease < 0
        vec![t.to_string(), "0".into(), "4000000000000001".into()], // next past bound
    ] {
        let mut inv = s.due_settle.script().key(&key);
        for a in &args {
            inv.arg(a);
        }
        let r: redis::RedisResult<redis::Value> = inv.invoke_async(&mut conn).await;
        assert!(r.is_err(), "{args:?}: {r:?}");
    }
    let after: Vec<u8> = dump.query_async(&mut conn).await.unwrap();
    assert_eq!(after, before);
}
