//! Redis connections: a pool for ordinary commands and dedicated connections
//! for blocking reads, on a single Redis or on a Redis Cluster.
//!
//! Call sites only see [`Redis`], [`Conn`] and [`BlockingConn`]; how a
//! connection is made stays in here. On a single node, ordinary commands go
//! over a fixed set of multiplexed `redis::aio::ConnectionManager`s (they
//! reconnect by themselves after a Redis restart), taken in turn and never
//! checked out: concurrent requests share a socket, and the commands queued
//! on it go out in one write (fewer system calls, for the server and for
//! Redis, than one socket per request). On a cluster, one
//! multiplexed cluster connection routes every command to the node owning
//! its keys and follows MOVED/ASK; each blocking reader gets a cluster
//! connection of its own, so a blocked read never holds up other traffic.
//!
//! `REDIS_URL` names a cluster as `redis+cluster://host:port,host:port,…`
//! (any of its nodes; the rest are discovered) or as several comma-separated
//! `redis://` URLs.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};

/// How long a pooled command may take before it fails (spawning a large job is one Lua call).
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Multiplexed Redis connections per process unless configured.
pub const DEFAULT_POOL_SIZE: u32 = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Margin a blocking read gets on top of its BLOCK time before the client gives up.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
/// Cluster connections for blocking reads: our own timeout applies, per read.
const BLOCKING_CLUSTER_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub pool_size: u32,
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            pool_size: DEFAULT_POOL_SIZE,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

#[derive(Clone)]
enum Backend {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
        /// Made on first use, so a process can start while Redis is down.
        managers: std::sync::Arc<[OnceCell<ConnectionManager>]>,
        next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    },
    Cluster {
        client: std::sync::Arc<ClusterClient>,
        /// Made on first use, so a process can start while the cluster is down.
        conn: std::sync::Arc<OnceCell<ClusterConnection>>,
        response_timeout: Duration,
        /// Subscriptions go to one node: a cluster carries what is published
        /// on any node to the subscribers of every node.
        subscribe_to: redis::Client,
    },
}

/// Handle to Redis: cheap to clone, shared by every task of a process.
#[derive(Clone)]
pub struct Redis {
    backend: Backend,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Single { client, .. } => f
                .debug_struct("Redis")
                .field("addr", &client.get_connection_info().addr())
                .finish(),
            Backend::Cluster { .. } => f.debug_struct("Redis").field("cluster", &true).finish(),
        }
    }
}

fn config_error(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Config {
        var: "REDIS_URL".into(),
        reason: format!("cannot use {url:?}: {e}"),
    }
}

/// The nodes of a cluster URL, or `None` for a single Redis.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        return Some(
            rest.split(',')
                .map(|n| format!("redis://{}", n.trim()))
                .collect(),
        );
    }
    url.contains(',')
        .then(|| url.split(',').map(|n| n.trim().to_string()).collect())
}

impl Redis {
    /// Parses `url` and prepares the connections; they are made on first
    /// use, so a process can start (and report not-ready) while Redis is down.
    pub fn open(url: &str, options: RedisOptions) -> Result<Self> {
        if let Some(nodes) = cluster_nodes(url) {
            let subscribe_to = nodes
                .first()
                .map(|n| redis::Client::open(n.as_str()))
                .transpose()
                .map_err(|e| config_error(url, e))?
                .ok_or_else(|| config_error(url, "no nodes"))?;
            let client = ClusterClient::builder(nodes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(options.response_timeout)
                .build()
                .map_err(|e| config_error(url, e))?;
            return Ok(Self {
                backend: Backend::Cluster {
                    client: std::sync::Arc::new(client),
                    conn: Default::default(),
                    response_timeout: options.response_timeout,
                    subscribe_to,
                },
            });
        }
        let client = redis::Client::open(url).map_err(|e| config_error(url, e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(1);
        let managers = (0..options.pool_size.max(1))
            .map(|_| OnceCell::new())
            .collect();
        Ok(Self {
            backend: Backend::Single {
                client,
                config,
                managers,
                next: Default::default(),
            },
        })
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// A connection for ordinary (non-blocking) commands.
    pub async fn conn(&self) -> Result<Conn> {
        match &self.backend {
            Backend::Single {
                client,
                config,
                managers,
                next,
            } => {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % managers.len();
                let manager = managers[i]
                    .get_or_try_init(|| async {
                        let connect =
                            ConnectionManager::new_with_config(client.clone(), config.clone());
                        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                            Ok(made) => made.map_err(Error::from),
                            Err(_) => Err(Error::Timeout("connecting to Redis".into())),
                        }
                    })
                    .await?;
                Ok(Conn(Shared::Single(manager.clone())))
            }
            Backend::Cluster {
                client,
                conn,
                response_timeout,
                ..
            } => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(*response_timeout);
                let c = conn
                    .get_or_try_init(|| client.get_async_connection_with_config(config))
                    .await?;
                Ok(Conn(Shared::Cluster(c.clone())))
            }
        }
    }

    /// A connection of its own for `XREADGROUP BLOCK` and similar: never
    /// shared with other traffic, so a blocked read delays nobody.
    pub fn blocking(&self) -> BlockingConn {
        BlockingConn {
            backend: self.backend.clone(),
            conn: None,
        }
    }

    /// A connection for `SUBSCRIBE` (of its own, as subscribing takes it over).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        let client = match &self.backend {
            Backend::Single { client, .. } => client,
            Backend::Cluster { subscribe_to, .. } => subscribe_to,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(connected) => Ok(connected?),
            Err(_) => Err(Error::Timeout(
                "connecting to Redis for a subscription".into(),
            )),
        }
    }

    /// A RESP3 connection of its own whose pushes (invalidations of
    /// `CLIENT TRACKING`) go to `push`; `None` on a cluster, whose keys live
    /// on many nodes (client-side caching is not used there).
    pub async fn tracking(
        &self,
        push: impl redis::aio::AsyncPushSender,
    ) -> Result<Option<redis::aio::MultiplexedConnection>> {
        let Backend::Single { client, .. } = &self.backend else {
            return Ok(None);
        };
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
            .set_push_sender(push);
        Ok(Some(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        ))
    }

    /// Round trip to Redis (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

/// A connection for ordinary commands: a handle on a shared multiplexed one.
pub struct Conn(Shared);

enum Shared {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Shared::Single(c) => c.req_packed_command(cmd),
            Shared::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Shared::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Shared::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Shared::Single(c) => c.get_db(),
            Shared::Cluster(c) => c.get_db(),
        }
    }
}

enum Dedicated {
    Single(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A dedicated connection for blocking commands. Connects lazily and again
/// after any failure, so a reader survives Redis restarts.
pub struct BlockingConn {
    backend: Backend,
    conn: Option<Dedicated>,
}

impl BlockingConn {
    /// Runs a command that blocks up to `block` on the server; the client
    /// waits a margin longer so the server's timeout always fires first.
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        block: Duration,
    ) -> Result<T> {
        let outcome = match self.connect().await? {
            Dedicated::Single(c) => {
                tokio::time::timeout(block + BLOCK_MARGIN, cmd.query_async::<T>(c)).await
            }
            Dedicated::Cluster(c) => {
                tokio::time::timeout(block + BLOCK_MARGIN, cmd.query_async::<T>(c)).await
            }
        };
        self.settle(outcome)
    }

    /// Like [`query`](Self::query) for a pipeline ending in a blocking command
    /// (e.g. acknowledgements followed by the next read: one round trip).
    pub async fn query_pipeline<T: redis::FromRedisValue>(
        &mut self,
        pipe: &Pipeline,
        block: Duration,
    ) -> Result<T> {
        let outcome = match self.connect().await? {
            Dedicated::Single(c) => {
                tokio::time::timeout(block + BLOCK_MARGIN, pipe.query_async::<T>(c)).await
            }
            Dedicated::Cluster(c) => {
                tokio::time::timeout(block + BLOCK_MARGIN, pipe.query_async::<T>(c)).await
            }
        };
        self.settle(outcome)
    }

    async fn connect(&mut self) -> Result<&mut Dedicated> {
        if self.conn.is_none() {
            let conn = match &self.backend {
                Backend::Single { client, .. } => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(None);
                    Dedicated::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    )
                }
                Backend::Cluster { client, .. } => {
                    let config = ClusterConfig::new()
                        .set_connection_timeout(CONNECT_TIMEOUT)
                        .set_response_timeout(BLOCKING_CLUSTER_TIMEOUT);
                    Dedicated::Cluster(client.get_async_connection_with_config(config).await?)
                }
            };
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

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(
            super::cluster_nodes("redis+cluster://a:1,b:2"),
            Some(vec!["redis://a:1".to_string(), "redis://b:2".to_string()])
        );
        assert_eq!(
            super::cluster_nodes("redis://a:1, redis://b:2"),
            Some(vec!["redis://a:1".to_string(), "redis://b:2".to_string()])
        );
        assert_eq!(super::cluster_nodes("redis://a:1"), None);
    }
}
