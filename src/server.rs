//! `agentbus serve`: the HTTP API plus the background tasks (reclaimer,
//! reaper, sink), with graceful shutdown on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, ServeConfig};
use crate::error::{Error, Result};
use crate::jobs::reclaim;
use crate::reaper;
use crate::sink::Sink;

/// A running server: its address, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
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
    let bus = config.bus()?;
    let db = config.postgres()?;
    let metrics = crate::metrics::install();
    let state = AppState::new(bus.clone(), db, serve.api(), metrics.clone());
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
    tasks.push(tokio::spawn(reclaim::run(
        bus.clone(),
        Duration::from_millis(serve.reclaim_interval_ms.max(10)),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(reaper::run(
        bus.clone(),
        Duration::from_millis(serve.reap_interval_ms.max(10)),
        shutdown.clone(),
    )));
    if !serve.no_sink {
        let sink = Sink::new(bus.clone(), state.db.clone(), serve.sink.options()?);
        tasks.push(tokio::spawn(sink.run(shutdown.clone())));
    }

    let listener = tokio::net::TcpListener::bind(serve.bind)
        .await
        .map_err(|e| Error::Config {
            var: "AGENTBUS_BIND".into(),
            reason: format!("cannot listen on {}: {e}", serve.bind),
        })?;
    let addr = listener.local_addr().map_err(|e| Error::Config {
        var: "AGENTBUS_BIND".into(),
        reason: e.to_string(),
    })?;
    tracing::info!(%addr, "agentbus listening");
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "server stopped");
        }
    }));
    Ok(Running {
        addr,
        shutdown,
        tasks,
    })
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
