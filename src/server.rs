//! `agentbus serve`: the HTTP API plus the background tasks (reclaimer,
//! reaper, sink),
//! with graceful shutdown on SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, ServeConfig};
use crate::error::{Error, Result};
use crate::jobs::reclaim;
use crate::reaper;
use crate::sink::Sink;

pub async fn serve(config: &Config, serve: &ServeConfig) -> Result<()> {
    let bus = config.bus()?;
    let db = config.postgres()?;
    let metrics = crate::metrics::install();
    let state = AppState {
        bus: bus.clone(),
        db,
        config: Arc::new(serve.api()),
        metrics: metrics.clone(),
    };
    let shutdown = CancellationToken::new();
    // Histogram samples wait in memory until drained: drain them even when nobody scrapes.
    if let Some(handle) = metrics {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                }
            }
        });
    }
    let reclaimer = tokio::spawn(reclaim::run(
        bus.clone(),
        Duration::from_millis(serve.reclaim_interval_ms.max(10)),
        shutdown.clone(),
    ));
    let reaper = tokio::spawn(reaper::run(
        bus.clone(),
        Duration::from_millis(serve.reap_interval_ms.max(10)),
        shutdown.clone(),
    ));
    let sink = if serve.no_sink {
        None
    } else {
        let sink = Sink::new(bus.clone(), state.db.clone(), serve.sink.options()?);
        Some(tokio::spawn(sink.run(shutdown.clone())))
    };

    let listener = tokio::net::TcpListener::bind(serve.bind)
        .await
        .map_err(|e| Error::Config {
            var: "AGENTBUS_BIND".into(),
            reason: format!("cannot listen on {}: {e}", serve.bind),
        })?;
    tracing::info!(addr = %serve.bind, "agentbus listening");
    let stop = shutdown.clone();
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            stop.cancel();
        })
        .await
        .map_err(|e| Error::Config {
            var: "AGENTBUS_BIND".into(),
            reason: e.to_string(),
        })?;
    shutdown.cancel();
    let _ = tokio::join!(reclaimer, reaper);
    if let Some(sink) = sink {
        let _ = sink.await;
    }
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
