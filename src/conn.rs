//! Redis connections: a pool for ordinary commands and dedicated connections
//! for blocking reads.
//!
//! Call sites only see [`Redis`], [`Conn`] and [`BlockingConn`]; how a
//! connection is made (single node today, cluster later) stays in here.
//! Pooled connections are `redis::aio::ConnectionManager`s, which reconnect
//! by themselves after a Redis restart; bb8 bounds how many exist.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::{Error, Result};

/// How long a pooled command may take before it fails (spawning a large job is one Lua call).
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Margin a blocking read gets on top of its BLOCK time before the client gives up.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub pool_size: u32,
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

struct Manager {
    client: redis::Client,
    config: ConnectionManagerConfig,
}

impl bb8::ManageConnection for Manager {
    type Connection = ConnectionManager;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        ConnectionManager::new_with_config(self.client.clone(), self.config.clone()).await
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, _: &mut Self::Connection) -> bool {
        // A ConnectionManager re-establishes its socket itself.
        false
    }
}

/// Handle to Redis: cheap to clone, shared by every task of a process.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    pool: bb8::Pool<Manager>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("addr", &self.client.get_connection_info().addr())
            .finish()
    }
}

impl Redis {
    /// Parses `url` and prepares the pool; connections are made on first use,
    /// so a process can start (and report not-ready) while Redis is down.
    pub fn open(url: &str, options: RedisOptions) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| Error::Config {
            var: "REDIS_URL".into(),
            reason: format!("cannot use {url:?}: {e}"),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(1);
        let pool = bb8::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(None)
            .test_on_check_out(false)
            .connection_timeout(CONNECT_TIMEOUT + Duration::from_millis(500))
            .build_unchecked(Manager {
                client: client.clone(),
                config,
            });
        Ok(Self { client, pool })
    }

    /// A pooled connection for ordinary (non-blocking) commands.
    pub async fn conn(&self) -> Result<Conn> {
        Ok(Conn(self.pool.get_owned().await?))
    }

    /// A connection of its own for `XREADGROUP BLOCK` and similar: never
    /// shared with other traffic, so a blocked read delays nobody.
    pub fn blocking(&self) -> BlockingConn {
        BlockingConn {
            client: self.client.clone(),
            conn: None,
        }
    }

    /// Round trip to Redis (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

/// A pooled connection; returned to the pool when dropped.
pub struct Conn(bb8::PooledConnection<'static, Manager>);

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// A dedicated connection for blocking commands. Connects lazily and again
/// after any failure, so a reader survives Redis restarts.
pub struct BlockingConn {
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
}

impl BlockingConn {
    /// Runs a command that blocks up to `block` on the server; the client
    /// waits a margin longer so the server's timeout always fires first.
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        block: Duration,
    ) -> Result<T> {
        let conn = self.connect().await?;
        let outcome = tokio::time::timeout(block + BLOCK_MARGIN, cmd.query_async::<T>(conn)).await;
        self.settle(outcome)
    }

    /// Like [`query`](Self::query) for a pipeline ending in a blocking command
    /// (e.g. acknowledgements followed by the next read: one round trip).
    pub async fn query_pipeline<T: redis::FromRedisValue>(
        &mut self,
        pipe: &Pipeline,
        block: Duration,
    ) -> Result<T> {
        let conn = self.connect().await?;
        let outcome = tokio::time::timeout(block + BLOCK_MARGIN, pipe.query_async::<T>(conn)).await;
        self.settle(outcome)
    }

    async fn connect(&mut self) -> Result<&mut redis::aio::MultiplexedConnection> {
        if self.conn.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(None);
            let conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::protocol("blocking connection missing"))
    }

    /// Drops the connection after a failure that may have broken it.
    fn settle<T>(
        &mut self,
        outcome: std::result::Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.conn = None;
                }
                Err(e.into())
            }
            Err(_) => {
                self.conn = None;
                Err(Error::Timeout("blocking read got no answer".into()))
            }
        }
    }
}
