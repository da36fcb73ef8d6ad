//! Test support: each test gets its own random key prefix and, when it needs
//! Postgres, its own database; both are removed when the test ends.
//! Tests run against the real services named by REDIS_URL and DATABASE_URL.
#![allow(dead_code)]

pub mod proxy;

use std::time::Duration;

use agentbus::api::{ApiConfig, AppState};
use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::jobs::JobStatus;
use agentbus::keys::{Keyspace, TenantId};
use agentbus::prices::Prices;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rand::RngExt;
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use tower::ServiceExt;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn random_suffix() -> String {
    hex::encode(rand::rng().random::<[u8; 6]>())
}

pub struct TestEnv {
    pub prefix: String,
    pub bus: AgentBus,
    pub redis: Redis,
    pub db: Option<TestDb>,
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestEnv {
    /// Redis only, default limits.
    pub async fn new() -> Self {
        Self::with_limits(Limits::default()).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        let prefix = format!("test:{}", random_suffix());
        let redis = Redis::open(&redis_url(), RedisOptions::default()).expect("REDIS_URL parses");
        if let Err(e) = redis.ping().await {
            panic!(
                "Redis is not reachable at {} ({e}). Start it (scripts/services.sh) or set REDIS_URL.",
                redis_url()
            );
        }
        let bus = AgentBus::new(
            redis.clone(),
            Keyspace::new(&prefix).expect("test prefix is valid"),
            Prices::default(),
            limits,
        );
        TestEnv {
            prefix,
            bus,
            redis,
            db: None,
        }
    }

    /// Redis plus a fresh, migrated Postgres database of its own.
    pub async fn with_db() -> Self {
        let mut env = Self::new().await;
        env.db = Some(create_database().await);
        env
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.as_ref().expect("test was created with_db()").pool
    }

    pub fn tenant(&self, name: &str) -> TenantId {
        TenantId::new(name).expect("valid tenant")
    }

    /// A new API token of tenant `name`.
    pub async fn token(&self, name: &str) -> String {
        self.bus
            .create_token(&self.tenant(name))
            .await
            .expect("create token")
            .token
    }

    /// Grants whole credits to a tenant.
    pub async fn grant(&self, tenant: &TenantId, credits: i64) {
        self.bus
            .grant_credits(tenant, Decimal::from(credits), serde_json::json!({}))
            .await
            .expect("grant");
    }

    /// The HTTP application over this environment.
    pub fn app(&self) -> axum::Router {
        self.app_with(ApiConfig {
            admin_token: Some(ADMIN_TOKEN.into()),
            max_body_bytes: 1024 * 1024,
            ..ApiConfig::default()
        })
    }

    /// The HTTP application with its own API settings.
    pub fn app_with(&self, config: ApiConfig) -> axum::Router {
        let db = match &self.db {
            Some(db) => db.pool.clone(),
            None => agentbus::db::connect_lazy(&admin_database_url(), 2).expect("DATABASE_URL"),
        };
        agentbus::api::router(AppState::new(
            self.bus.clone(),
            db,
            config,
            agentbus::metrics::install(),
        ))
    }

    /// A conn for direct Redis assertions.
    pub async fn conn(&self) -> agentbus::conn::Conn {
        self.redis.conn().await.expect("redis conn")
    }

    /// Every key under this test's prefix, except the rate limiter's (which
    /// counts every request, accepted or not: that is its job) and the
    /// sink's ready signals (written in the same round trip as the script,
    /// whatever it answers, naming only the tenant; the visit a stray one
    /// causes finds nothing). A deadline is written only after an `ok`, so
    /// it is checked like any key.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let hints = [":rl:", ":outbox:ready:"].map(|h| format!("{}{h}", self.prefix));
        keys.retain(|k| !hints.iter().any(|h| k.starts_with(h.as_str())));
        keys.sort();
        keys
    }

    /// Every key of the test (and the global ones) with its serialized value
    /// and whether it expires: equal snapshots mean nothing was written.
    pub async fn snapshot(&self) -> BTreeMap<String, (Vec<u8>, bool)> {
        let mut keys = self.keys().await;
        keys.push(self.bus.keyspace().tenants_legacy());
        keys.push(self.bus.keyspace().tokens_legacy());
        // One pipeline per hash tag: a cluster refuses pipelines across slots.
        let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in keys {
            let tag = match (key.find('{'), key.find('}')) {
                (Some(open), Some(close)) if close > open + 1 => key[open..=close].to_string(),
                _ => key.clone(),
            };
            by_tag.entry(tag).or_default().push(key);
        }
        let mut conn = self.conn().await;
        let mut out = BTreeMap::new();
        for keys in by_tag.into_values() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("DUMP").arg(key).cmd("PTTL").arg(key);
            }
            let values: Vec<(Option<Vec<u8>>, i64)> =
                pipe.query_async(&mut conn).await.expect("DUMP");
            for (key, (dump, ttl)) in keys.into_iter().zip(values) {
                out.insert(key, (dump.unwrap_or_default(), ttl >= 0));
            }
        }
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let db = self.db.take().map(|d| d.name);
        // Drop cannot await: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                // Through agentbus' own handle, so this works on a cluster too.
                if let Ok(redis) = Redis::open(&redis_url(), RedisOptions::default())
                    && let Ok(mut conn) = redis.conn().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{prefix}:*"))
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    // A multi-key DEL: on a cluster it is split by slot.
                    for chunk in keys.chunks(500) {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
                    }
                }
                if let Some(name) = db
                    && let Ok(admin) = PgPool::connect(&admin_database_url()).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Creates and migrates a database of its own for one test.
pub async fn create_database() -> TestDb {
    let admin = PgPool::connect(&admin_database_url()).await.unwrap_or_else(|e| {
        panic!(
            "Postgres is not reachable at {} ({e}). Start it (scripts/services.sh) or set DATABASE_URL.",
            admin_database_url()
        )
    });
    let name = format!("agentbus_test_{}", random_suffix());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("CREATE DATABASE");
    admin.close().await;
    let url = database_url_for(&name);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .expect("connect test database");
    agentbus::db::migrate_up(&pool)
        .await
        .expect("migrations apply");
    TestDb { name, url, pool }
}

/// DATABASE_URL with its database name replaced.
pub fn database_url_for(name: &str) -> String {
    let base = admin_database_url();
    let (head, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    format!("{head}/{name}")
}

/// Runs `future` on one runtime shared by a test binary's property-test
/// cases (proptest's runner is synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    RUNTIME.block_on(future)
}

/// One HTTP call to the app: returns status and JSON body (Null when empty).
pub async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(serde_json::to_vec(&v).expect("json"))
        }
        None => Body::empty(),
    };
    call_raw(app, req.body(body).expect("request")).await
}

pub async fn call_raw(app: &axum::Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    (status, json)
}

/// Credits as an exact decimal from a JSON number (its text).
pub fn dec(v: &serde_json::Value) -> Decimal {
    v.to_string()
        .parse()
        .unwrap_or_else(|_| panic!("not a decimal: {v}"))
}

/// `INFO commandstats` of the Redis behind `conn`: calls per command name.
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_string(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// The calls of `name` in a [`command_calls`] answer.
pub fn calls_of(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sums of the ledger events in the tenant's outbox, by operation (minor units).
pub async fn ledger_sums(env: &TestEnv, tenant: &TenantId) -> HashMap<String, i64> {
    let mut conn = env.conn().await;
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(env.bus.keys(tenant).outbox())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sums = HashMap::new();
    let redis::Value::Array(entries) = entries else {
        return sums;
    };
    for e in &entries {
        let e = agentbus::codec::StreamEntry::from_value(e).unwrap();
        if e.text("type") == Some("ledger") {
            *sums.entry(e.text("op").unwrap().to_string()).or_insert(0) += e.int("amount").unwrap();
        }
    }
    sums
}

/// Invariants 2 and 5 (Redis side): the balance never goes negative, and the
/// ledger events account for every unit of it.
pub async fn assert_balance_matches_ledger(env: &TestEnv, tenant: &TenantId) {
    let b = env.bus.balance(tenant).await.unwrap();
    assert!(b.available >= Decimal::ZERO, "negative available: {b:?}");
    let s = ledger_sums(env, tenant).await;
    let get = |k: &str| Decimal::new(*s.get(k).unwrap_or(&0), 2);
    assert_eq!(b.total, get("grant"), "total vs ledger {s:?}");
    assert_eq!(
        b.reserved,
        get("reserve") - get("spend") - get("refund"),
        "reserved vs ledger {s:?}"
    );
    assert_eq!(
        b.spent,
        get("spend") + get("charge"),
        "spent vs ledger {s:?}"
    );
}

/// Invariant 3 for one job, each figure from the job's own counts and price
/// (never from the other figures, which would make the check circular): a
/// spawn reserves the overhead (5.00) plus every item; each completed item is
/// spent once; an item that failed for good, and every unfinished item of a
/// job that ended, is refunded; the rest is still reserved.
pub fn assert_job_credits(job: &agentbus::jobs::Job) {
    let c = &job.credits;
    let p = &job.progress;
    let per_item = job.credits_per_item;
    assert_eq!(
        c.reserved,
        Decimal::from(5) + per_item * Decimal::from(p.total),
        "reserved at spawn: {job:?}"
    );
    let refunded_items = if job.status == JobStatus::Running {
        p.failed
    } else {
        p.total - p.completed
    };
    assert_eq!(
        c.refunded,
        per_item * Decimal::from(refunded_items),
        "refunded: {job:?}"
    );
    let expected_still = if job.status == JobStatus::Running {
        job.credits_per_item * Decimal::from(p.total - p.completed - p.failed)
    } else {
        agentbus::money::Credits::ZERO
    };
    assert_eq!(c.still_reserved, expected_still, "{job:?}");
    assert_eq!(
        c.spent,
        Decimal::from(5) + job.credits_per_item * Decimal::from(p.completed),
        "each completed item charged exactly once: {job:?}"
    );
}

/// A redis-server of the test's own, for killing and restarting: a free
/// port, its own directory (so AOF files survive a restart), gone on drop.
pub struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one with `args` added to a no-persistence default (later args win).
    pub fn start(args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("agentbus-redis-{}", random_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = PrivateRedis {
            port,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Adds arguments for the next (re)start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Starts it again (after [`kill`](Self::kill)) on the same port and directory.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: Redis fsyncs its AOF and exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Blocks until it answers PING (after a start or restart).
    pub async fn wait_ready(&self) {
        let url = self.url();
        let ready = eventually(Duration::from_secs(15), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            }
        })
        .await;
        assert!(
            ready,
            "private redis-server on {} never answered",
            self.port
        );
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a sink over `tenant`'s outbox until it is empty.
pub async fn drain(env: &TestEnv, tenant: &TenantId) {
    let sink = agentbus::outbox::sink::Sink::new(
        env.bus.clone(),
        env.pool().clone(),
        agentbus::outbox::sink::SinkOptions::new("test-drain"),
    );
    while sink.drain_once(tenant).await.expect("drain").events > 0 {}
}

/// `verify` over the test's tenants, waiting up to a second for the outbox.
pub async fn verify_now(env: &TestEnv) -> agentbus::outbox::verify::VerifyReport {
    agentbus::outbox::verify::verify(&env.bus, env.pool(), Duration::from_secs(1))
        .await
        .expect("verify")
}

/// Starts an invocation nobody answers yet: the caller's task, and the id
/// once it is pending; `None` (the task joined) when it was refused for credit.
pub async fn pending_invoke(
    env: &TestEnv,
    t: &TenantId,
    caller: &agentbus::keys::Ident,
    target: &agentbus::keys::Ident,
    timeout_seconds: i64,
) -> Option<(
    tokio::task::JoinHandle<agentbus::Result<agentbus::agents::invoke::InvokeResult>>,
    String,
)> {
    let mut conn = env.conn().await;
    let mut list = redis::cmd("ZRANGE");
    list.arg(env.bus.keys(t).pending_invokes()).arg(0).arg(-1);
    let before: Vec<String> = list.query_async(&mut conn).await.expect("zrange");
    let mut req =
        agentbus::agents::invoke::InvokeRequest::new(caller, target, serde_json::json!({"q": 1}));
    req.timeout_seconds = timeout_seconds;
    let (bus, t2) = (env.bus.clone(), t.clone());
    let task = tokio::spawn(async move { bus.invoke(&t2, &req).await });
    for _ in 0..300 {
        let now: Vec<String> = list.query_async(&mut conn).await.expect("zrange");
        if let Some(new) = now.into_iter().find(|i| !before.contains(i)) {
            return Some((task, new));
        }
        if task.is_finished() {
            let refused = task.await.expect("join");
            assert!(
                matches!(
                    refused,
                    Err(agentbus::Error::InvokeRefused {
                        reason: "insufficient_credits",
                        ..
                    })
                ),
                "{refused:?}"
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the invocation never became pending");
}
