//! The demo's local services: Redis and PostgreSQL started when they are
//! not running and are installed here (only for local URLs).

use std::fmt::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentbus::config::Config;
use agentbus::db;
use agentbus::error::{Error, Result};

fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

pub(super) async fn wait_until<F, Fut>(timeout: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Finds Redis, or starts a local one when it is installed.
pub(super) async fn ensure_redis(config: &Config, log: &mut String) -> Result<()> {
    let redis = config.redis()?;
    if redis.ping().await.is_ok() {
        return Ok(());
    }
    let url = url_parts(&config.redis_url);
    if !url.as_ref().is_some_and(|(h, _)| is_local(h)) {
        return Err(Error::Config {
            var: "REDIS_URL".into(),
            reason: "Redis does not answer (and is not local, so the demo cannot start it)".into(),
        });
    }
    let port = url.map(|(_, p)| p).unwrap_or(6379);
    let started = Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .status();
    if !started.is_ok_and(|s| s.success()) {
        return Err(Error::Config {
            var: "REDIS_URL".into(),
            reason: "Redis does not answer and redis-server could not be started (run scripts/services.sh)".into(),
        });
    }
    if !wait_until(Duration::from_secs(10), || async {
        redis.ping().await.is_ok()
    })
    .await
    {
        return Err(Error::Timeout("Redis did not come up".into()));
    }
    let _ = writeln!(log, "started a local redis-server on port {port}");
    Ok(())
}

/// Finds Postgres, or starts the local Debian cluster when it is installed.
pub(super) async fn ensure_postgres(config: &Config, log: &mut String) -> Result<()> {
    let pool = config.postgres()?;
    if db::ping(&pool).await.is_ok() {
        return Ok(());
    }
    if !url_parts(&config.database_url).is_some_and(|(h, _)| is_local(&h)) {
        return Err(Error::Config {
            var: "DATABASE_URL".into(),
            reason: "Postgres does not answer (and is not local, so the demo cannot start it)"
                .into(),
        });
    }
    let version = std::fs::read_dir("/etc/postgresql").ok().and_then(|dir| {
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max()
    });
    let started = version.is_some_and(|v| {
        Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &v, "main", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !started {
        return Err(Error::Config {
            var: "DATABASE_URL".into(),
            reason: "Postgres does not answer and could not be started (run scripts/services.sh)"
                .into(),
        });
    }
    if !wait_until(Duration::from_secs(20), || async {
        db::ping(&pool).await.is_ok()
    })
    .await
    {
        return Err(Error::Timeout("Postgres did not come up".into()));
    }
    let _ = writeln!(log, "started the local PostgreSQL cluster");
    Ok(())
}

/// Host and port of a `scheme://[user[:pw]@]host[:port]/…` URL.
fn url_parts(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    // An IPv6 host is bracketed: its colons are not the port's.
    let (host, port) = match hostport.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_parts_find_host_and_port() {
        assert_eq!(
            super::url_parts("redis://127.0.0.1:6379"),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(
            super::url_parts("postgres://u:p@localhost:5432/db"),
            Some(("localhost".into(), 5432))
        );
        assert_eq!(
            super::url_parts("postgres://u@[::1]/db"),
            Some(("::1".into(), 0))
        );
    }
}
