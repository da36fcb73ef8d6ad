//! `agentbus serve`: the HTTP API plus the background tasks (reclaimer,
//! reaper, sink), with graceful shutdown on SIGINT/SIGTERM. Owns the
//! connection limits: a cap on open connections and a header/idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, ServeConfig};
use crate::due::Schedule;
use crate::error::{Error, Result};
use crate::jobs::reclaim;
use crate::outbox::sink::Sink;
use crate::{metrics, reaper};

/// A running server: its address, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// The metrics-only listener, when `AGENTBUS_METRICS_BIND` is set.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, lets the background tasks finish their pass.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts the API and the background tasks; returns once listening.
pub async fn start(config: &Config, serve: &ServeConfig) -> Result<Running> {
    let api_config = serve.api()?;
    let bus = config.bus()?;
    let db = config.postgres()?;
    crate::metrics::set_tenant_label(serve.metrics_tenant_label);
    let metrics = crate::metrics::install();
    let state = AppState::new(bus.clone(), db, api_config, metrics.clone());
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    // Histogram samples wait in memory until drained: drain them even when nobody scrapes.
    if let Some(handle) = metrics {
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                }
            }
        }));
    }
    tasks.push(tokio::spawn(crate::auth::cache::run(
        bus.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(crate::balance_cache::run(
        bus.clone(),
        shutdown.clone(),
    )));
    let sweep_every = Duration::from_secs(serve.sweep_secs.max(1));
    tasks.push(tokio::spawn(reclaim::run(
        bus.clone(),
        Schedule {
            interval: Duration::from_millis(serve.reclaim_interval_ms.max(10)),
            sweep_every,
        },
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(reaper::run(
        bus.clone(),
        Schedule {
            interval: Duration::from_millis(serve.reap_interval_ms.max(10)),
            sweep_every,
        },
        shutdown.clone(),
    )));
    if !serve.no_sink {
        let sink = Sink::new(bus.clone(), state.db.clone(), serve.sink.options()?);
        tasks.push(tokio::spawn(sink.run(shutdown.clone())));
    }

    let listener = bind(serve.bind, "AGENTBUS_BIND").await?;
    let addr = local_addr(&listener, "AGENTBUS_BIND")?;
    tracing::info!(%addr, "agentbus listening");
    let limits = ConnLimits::of(serve);
    let guard = api::Guard::new(&state);
    tasks.push(tokio::spawn(accept_loop(
        listener,
        api::router(state.clone()),
        guard.clone(),
        limits.clone(),
        shutdown.clone(),
    )));
    let metrics_addr = match serve.metrics_bind {
        Some(at) => {
            let listener = bind(at, "AGENTBUS_METRICS_BIND").await?;
            let at = local_addr(&listener, "AGENTBUS_METRICS_BIND")?;
            tracing::info!(addr = %at, "metrics listening");
            tasks.push(tokio::spawn(accept_loop(
                listener,
                api::metrics_router(state),
                guard,
                limits,
                shutdown.clone(),
            )));
            Some(at)
        }
        None => None,
    };
    Ok(Running {
        addr,
        metrics_addr,
        shutdown,
        tasks,
    })
}

async fn bind(at: SocketAddr, var: &str) -> Result<TcpListener> {
    TcpListener::bind(at).await.map_err(|e| Error::Config {
        var: var.into(),
        reason: format!("cannot listen on {at}: {e}"),
    })
}

fn local_addr(listener: &TcpListener, var: &str) -> Result<SocketAddr> {
    listener.local_addr().map_err(|e| Error::Config {
        var: var.into(),
        reason: e.to_string(),
    })
}

/// What one listener allows each connection.
#[derive(Clone, Debug)]
struct ConnLimits {
    /// Time to send a request's headers; also how long a kept-alive
    /// connection may sit idle before the next request.
    header_timeout: Duration,
    max_connections: usize,
}

impl ConnLimits {
    fn of(serve: &ServeConfig) -> Self {
        Self {
            header_timeout: Duration::from_secs(serve.header_timeout_secs.max(1)),
            max_connections: serve.max_connections.max(1),
        }
    }
}

/// Accepts connections up to the cap (past it, new ones wait in the
/// kernel's backlog) and serves each with HTTP/1.1, the header/idle timeout
/// and the request guard (body budget, panics); on shutdown, lets requests
/// in flight finish.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    guard: api::Guard,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics::connection_opened();
        let _ = stream.set_nodelay(true);
        // The router is shared (cloning it is a reference count); each
        // request gets the peer's address and passes the guard.
        let (app, guard) = (app.clone(), guard.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let (app, guard) = (app.clone(), guard.clone());
            async move {
                let response = guard.serve(app, req.map(axum::body::Body::new)).await;
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            metrics::connection_closed();
            drop(slot);
        });
    }
    drop(listener);
    // Requests in flight get a bounded time to finish.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("connections still open after 30 s; closing");
        }
    }
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(config: &Config, serve: &ServeConfig) -> Result<()> {
    let running = start(config, serve).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
