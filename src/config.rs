//! Configuration from flags and environment variables, and the building of
//! the handles (Redis, Postgres, the bus) it describes.

use std::time::Duration;

use clap::Args;
use sqlx::PgPool;

use crate::api::{self, ApiConfig};
use crate::bus::{self, AgentBus, Limits};
use crate::conn::{Redis, RedisOptions};
use crate::db;
use crate::error::{Error, Result};
use crate::keys::Keyspace;
use crate::prices::Prices;

/// Defaults of the connection settings, read by the flags and by
/// [`Config::defaults`] (the engine's own defaults: `bus::defaults`,
/// `api::defaults`, `conn::DEFAULT_POOL_SIZE`).
pub mod defaults {
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
    pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
    pub const PREFIX: &str = "ab";
    pub const PG_POOL: u32 = 8;
}

/// Settings shared by every subcommand.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Redis to use.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = defaults::REDIS_URL,
        global = true
    )]
    pub redis_url: String,

    /// Postgres to mirror into.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = defaults::DATABASE_URL,
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Prefix of every Redis key.
    #[arg(long, env = "AGENTBUS_PREFIX", default_value = defaults::PREFIX, global = true)]
    pub prefix: String,

    /// Price overrides, e.g. `job_item=2.5,agent_invoke=10`.
    #[arg(long, env = "AGENTBUS_PRICES", default_value = "", global = true)]
    pub prices: String,

    /// Seconds a finished job's keys stay in Redis.
    #[arg(
        long,
        env = "AGENTBUS_JOB_RETENTION_SECS",
        default_value_t = bus::defaults::JOB_RETENTION_SECS,
        global = true
    )]
    pub job_retention_secs: u64,

    /// Most items one job may have.
    #[arg(
        long,
        env = "AGENTBUS_MAX_ITEMS",
        default_value_t = bus::defaults::MAX_ITEMS,
        global = true
    )]
    pub max_items: usize,

    /// Largest payload (item input or output, message, invocation), in
    /// bytes as stored (MessagePack).
    #[arg(
        long,
        env = "AGENTBUS_MAX_PAYLOAD_BYTES",
        default_value_t = bus::defaults::MAX_PAYLOAD_BYTES,
        global = true
    )]
    pub max_payload_bytes: usize,
    /// Most bytes of stored entries one page of results or messages, or one
    /// REST receive, carries (a page always holds at least one entry).
    /// (a page always holds at least one entry).
    #[arg(
        long,
        env = "AGENTBUS_MAX_PAGE_BYTES",
        default_value_t = bus::defaults::MAX_PAGE_BYTES,
        global = true
    )]
    pub max_page_bytes: usize,

    /// Most agent instances one tenant may have registered at once.
    #[arg(
        long,
        env = "AGENTBUS_MAX_INSTANCES",
        default_value_t = bus::defaults::MAX_INSTANCES,
        global = true
    )]
    pub max_instances: usize,

    /// Multiplexed Redis connections (commands of concurrent requests share them).
    #[arg(long, env = "AGENTBUS_REDIS_POOL", default_value_t = crate::conn::DEFAULT_POOL_SIZE, global = true)]
    pub redis_pool: u32,

    /// Size of the Postgres connection pool.
    #[arg(long, env = "AGENTBUS_PG_POOL", default_value_t = defaults::PG_POOL, global = true)]
    pub pg_pool: u32,

    /// Seconds of silence after which an agent is stale.
    #[arg(
        long,
        env = "AGENTBUS_STALE_AFTER_SECS",
        default_value_t = bus::defaults::STALE_AFTER_SECS,
        global = true
    )]
    pub stale_after_secs: u64,

    /// Seconds a process may trust a cached API token record without
    /// hearing of its revocation (0: read Redis on every request).
    #[arg(
        long,
        env = "AGENTBUS_TOKEN_CACHE_SECS",
        default_value_t = bus::defaults::TOKEN_CACHE_SECS,
        global = true
    )]
    pub token_cache_secs: u64,

    /// Seconds the server may answer a tenant's balance from its cache,
    /// which Redis keeps exact by pushing every change (client-side
    /// caching; a single Redis only). 0: read Redis on every request.
    #[arg(
        long,
        env = "AGENTBUS_BALANCE_CACHE_SECS",
        default_value_t = bus::defaults::BALANCE_CACHE_SECS,
        global = true
    )]
    pub balance_cache_secs: u64,

    /// Most items one spawn script call enqueues (a larger job is enqueued
    /// in chunks of this many): bigger chunks spawn faster and hold Redis
    /// longer per call.
    #[arg(
        long,
        env = "AGENTBUS_SPAWN_CHUNK",
        default_value_t = bus::defaults::SPAWN_CHUNK as u64,
        value_parser = clap::value_parser!(u64).range(1..=bus::defaults::MAX_SPAWN_CHUNK as u64),
        global = true
    )]
    pub spawn_chunk: u64,

    /// Most entries an inbox keeps.
    #[arg(
        long,
        env = "AGENTBUS_INBOX_CAP",
        default_value_t = bus::defaults::INBOX_CAP,
        global = true
    )]
    pub inbox_cap: usize,

    /// Deliveries of a message before it is dead-lettered.
    #[arg(
        long,
        env = "AGENTBUS_MAX_DELIVERIES",
        default_value_t = bus::defaults::MAX_DELIVERIES,
        global = true
    )]
    pub max_deliveries: u32,

    /// Seconds a delivered, unacknowledged message waits before it is
    /// delivered again.
    #[arg(
        long,
        env = "AGENTBUS_REDELIVER_AFTER_SECS",
        default_value_t = bus::defaults::REDELIVER_AFTER_SECS,
        global = true
    )]
    pub redeliver_after_secs: u64,
}

impl Config {
    /// Settings with every default, as if no flag or variable were given.
    pub fn defaults() -> Self {
        Self {
            redis_url: defaults::REDIS_URL.into(),
            database_url: defaults::DATABASE_URL.into(),
            prefix: defaults::PREFIX.into(),
            prices: String::new(),
            job_retention_secs: bus::defaults::JOB_RETENTION_SECS,
            max_items: bus::defaults::MAX_ITEMS,
            max_payload_bytes: bus::defaults::MAX_PAYLOAD_BYTES,
            max_page_bytes: bus::defaults::MAX_PAGE_BYTES,
            max_instances: bus::defaults::MAX_INSTANCES,
            redis_pool: crate::conn::DEFAULT_POOL_SIZE,
            pg_pool: defaults::PG_POOL,
            stale_after_secs: bus::defaults::STALE_AFTER_SECS,
            inbox_cap: bus::defaults::INBOX_CAP,
            token_cache_secs: bus::defaults::TOKEN_CACHE_SECS,
            balance_cache_secs: bus::defaults::BALANCE_CACHE_SECS,
            spawn_chunk: bus::defaults::SPAWN_CHUNK as u64,
            max_deliveries: bus::defaults::MAX_DELIVERIES,
            redeliver_after_secs: bus::defaults::REDELIVER_AFTER_SECS,
        }
    }

    pub fn redis(&self) -> Result<Redis> {
        Redis::open(
            &self.redis_url,
            RedisOptions {
                pool_size: self.redis_pool,
                ..RedisOptions::default()
            },
        )
    }

    pub fn postgres(&self) -> Result<PgPool> {
        db::connect_lazy(&self.database_url, self.pg_pool)
    }

    pub fn bus(&self) -> Result<AgentBus> {
        let keys = Keyspace::new(&self.prefix).map_err(|e| Error::Config {
            var: "AGENTBUS_PREFIX".into(),
            reason: e.to_string(),
        })?;
        if self.max_items == 0 {
            return Err(Error::Config {
                var: "AGENTBUS_MAX_ITEMS".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(AgentBus::new(
            self.redis()?,
            keys,
            Prices::parse_overrides(&self.prices)?,
            Limits {
                job_retention: Duration::from_secs(self.job_retention_secs.max(1)),
                max_items: self.max_items,
                max_payload_bytes: self.max_payload_bytes.max(1024),
                max_page_bytes: self.max_page_bytes.max(1),
                max_instances: self.max_instances.max(1),
                stale_after: Duration::from_secs(self.stale_after_secs.max(1)),
                inbox_cap: self.inbox_cap.max(1),
                max_deliveries: self.max_deliveries.max(1),
                redeliver_after: Duration::from_secs(self.redeliver_after_secs.clamp(1, 86_400)),
                token_cache: Duration::from_secs(self.token_cache_secs),
                balance_cache: Duration::from_secs(self.balance_cache_secs),
                spawn_chunk: self.spawn_chunk as usize,
                ..Limits::default()
            },
        ))
    }
}

/// Settings of `agentbus serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "AGENTBUS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,

    /// Token that may grant credits (admin calls are refused without one).
    #[arg(long, env = "AGENTBUS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Largest request body, in bytes.
    #[arg(long, env = "AGENTBUS_MAX_BODY_BYTES", default_value_t = api::defaults::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Requests per second per token, shared by all processes (0: no limit).
    #[arg(long, env = "AGENTBUS_RATE_LIMIT", default_value_t = api::defaults::RATE_LIMIT)]
    pub rate_limit: f64,

    /// Requests a token may send at once above its rate.
    #[arg(long, env = "AGENTBUS_RATE_BURST", default_value_t = api::defaults::RATE_BURST)]
    pub rate_burst: u32,

    /// Requests per token in flight at once, per process (0: no limit).
    #[arg(long, env = "AGENTBUS_CONCURRENCY_LIMIT", default_value_t = api::defaults::CONCURRENCY_LIMIT)]
    pub concurrency_limit: usize,

    /// Milliseconds between passes of the reclaimer.
    #[arg(long, env = "AGENTBUS_RECLAIM_INTERVAL_MS", default_value_t = 1000)]
    pub reclaim_interval_ms: u64,

    /// Milliseconds between passes of the reaper (stale agents, expired invocations).
    #[arg(long, env = "AGENTBUS_REAP_INTERVAL_MS", default_value_t = 5000)]
    pub reap_interval_ms: u64,

    /// Seconds over which the reaper and the reclaimer sweep every tenant
    /// once, spread evenly: the safety net under their deadlines.
    #[arg(long, env = "AGENTBUS_SWEEP_SECS", default_value_t = 3600)]
    pub sweep_secs: u64,

    /// Seconds a client has to send a request's headers; also how long a
    /// kept-alive connection may stay idle.
    #[arg(long, env = "AGENTBUS_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a client has to send a request's body.
    #[arg(long, env = "AGENTBUS_BODY_TIMEOUT_SECS", default_value_t = api::defaults::BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,

    /// Connections open at once, per listener (more wait in the backlog).
    #[arg(long, env = "AGENTBUS_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Request bodies held in memory at once, in bytes, across all requests.
    #[arg(long, env = "AGENTBUS_MAX_INFLIGHT_BODY_BYTES", default_value_t = api::defaults::MAX_INFLIGHT_BODY_BYTES)]
    pub max_inflight_body_bytes: usize,

    /// Failed authentications per minute from one client address before 429.
    #[arg(long, env = "AGENTBUS_AUTH_FAILURE_LIMIT", default_value_t = api::defaults::AUTH_FAILURE_LIMIT)]
    pub auth_failure_limit: u32,

    /// Heavy requests (large bodies, simulations, pages, receives) handled at
    /// once, each on a thread of its own; more wait their turn.
    #[arg(long, env = "AGENTBUS_MAX_HEAVY_REQUESTS", default_value_t = api::defaults::MAX_HEAVY_REQUESTS)]
    pub max_heavy_requests: usize,

    /// Token that may read `/metrics` on the API listener (the admin token may too).
    #[arg(long, env = "AGENTBUS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// A second listener serving only `/metrics`, without a token (e.g. a private address).
    #[arg(long, env = "AGENTBUS_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,

    /// Label metrics with the tenant (one series per tenant: mind the cardinality).
    #[arg(long, env = "AGENTBUS_METRICS_TENANT_LABEL")]
    pub metrics_tenant_label: bool,

    /// Do not run the sink in this process (run `agentbus sink` elsewhere).
    #[arg(long, env = "AGENTBUS_NO_SINK")]
    pub no_sink: bool,

    #[command(flatten)]
    pub sink: SinkConfig,
}

/// Settings of the sink (in `serve` and `agentbus sink`).
#[derive(Args, Clone, Debug)]
pub struct SinkConfig {
    /// Consumer name of this sink: unique per process, stable across its restarts
    /// (default: `sink-<hostname>-<pid>`).
    #[arg(long, env = "AGENTBUS_SINK_CONSUMER")]
    pub sink_consumer: Option<String>,

    /// Most events written per transaction.
    #[arg(long, env = "AGENTBUS_SINK_BATCH", default_value_t = crate::outbox::sink::DEFAULT_BATCH)]
    pub sink_batch: usize,

    /// Seconds another sink's unacknowledged events wait before this one takes them over.
    #[arg(long, env = "AGENTBUS_SINK_TAKEOVER_SECS", default_value_t = crate::outbox::sink::TAKEOVER_IDLE.as_secs())]
    pub sink_takeover_secs: u64,

    /// Seconds between the sink's visits of every tenant (signals bring it
    /// to a tenant with new events at once; this is the safety net).
    #[arg(long, env = "AGENTBUS_SINK_SWEEP_SECS", default_value_t = crate::outbox::sink::SWEEP_EVERY.as_secs())]
    pub sink_sweep_secs: u64,
}

impl SinkConfig {
    pub fn options(&self) -> crate::error::Result<crate::outbox::sink::SinkOptions> {
        let consumer = match &self.sink_consumer {
            Some(c) => c.clone(),
            None => {
                let host = std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "host".into());
                format!("sink-{host}-{}", std::process::id())
            }
        };
        crate::keys::validate_id("AGENTBUS_SINK_CONSUMER", &consumer, crate::keys::MAX_ID_LEN)?;
        let mut options = crate::outbox::sink::SinkOptions::new(&consumer);
        options.batch = self.sink_batch.clamp(1, crate::outbox::sink::MAX_BATCH);
        options.takeover_idle = Duration::from_secs(self.sink_takeover_secs.max(1));
        options.sweep_every = Duration::from_secs(self.sink_sweep_secs.max(1));
        Ok(options)
    }
}

/// Shortest admin or metrics token accepted at startup.
pub const MIN_SECRET_LEN: usize = 32;

impl ServeConfig {
    /// The settings of `agentbus serve` without flags: the flags' defaults,
    /// with the environment's `AGENTBUS_*` variables applied (secrets and
    /// the metrics listener excepted, which stay unset).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeConfig,
        }
        // The defaults are those of the flags: written once, in the attributes.
        let mut serve = <Only as clap::Parser>::parse_from(["agentbus"]).serve;
        serve.admin_token = None;
        serve.metrics_token = None;
        serve.metrics_bind = None;
        serve
    }

    pub fn api(&self) -> Result<ApiConfig> {
        let secret = |var: &str, value: &Option<String>| -> Result<Option<String>> {
            match value.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(t) if t.len() < MIN_SECRET_LEN => Err(Error::Config {
                    var: var.into(),
                    reason: format!(
                        "must be at least {MIN_SECRET_LEN} characters ({} given)",
                        t.len()
                    ),
                }),
                Some(t) => Ok(Some(t.to_string())),
            }
        };
        Ok(ApiConfig {
            admin_token: secret("AGENTBUS_ADMIN_TOKEN", &self.admin_token)?,
            metrics_token: secret("AGENTBUS_METRICS_TOKEN", &self.metrics_token)?,
            max_body_bytes: self.max_body_bytes,
            max_inflight_body_bytes: self.max_inflight_body_bytes.max(self.max_body_bytes),
            body_timeout: Duration::from_secs(self.body_timeout_secs.max(1)),
            rate_limit_per_sec: self.rate_limit.max(0.0),
            rate_limit_burst: self.rate_burst.max(1),
            concurrency_limit: self.concurrency_limit,
            auth_failure_limit: self.auth_failure_limit,
            max_heavy_requests: self.max_heavy_requests.max(1),
        })
    }
}
