//! Postgres: the connection pool and the schema migrations (`migrations/`,
//! reversible, embedded at compile time).

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::{Error, Result};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Prepares a pool for `url` without connecting, so a process can start
/// (and report not-ready) while Postgres is down. A malformed URL is an
/// error naming `DATABASE_URL`.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url).map_err(|e| Error::Config {
        var: "DATABASE_URL".into(),
        reason: format!("cannot use {}: {e}", redact(url)),
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
}

/// The URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Applies every pending migration; a no-op when the schema is current.
pub async fn migrate_up(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Reverts the latest applied migration, or all of them.
pub async fn migrate_down(pool: &PgPool, all: bool) -> Result<()> {
    let applied = applied_versions(pool).await?;
    let target = if all {
        0
    } else {
        // Revert only the newest: keep everything below it.
        match applied.iter().rev().nth(1) {
            Some(previous) => *previous,
            None => 0,
        }
    };
    if applied.is_empty() {
        return Ok(());
    }
    MIGRATOR.undo(pool, target).await?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// Every known migration and whether it is applied.
pub async fn migrate_status(pool: &PgPool) -> Result<Vec<MigrationState>> {
    let applied = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationState {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?,
    )
}

/// Round trip to Postgres (readiness).
pub async fn ping(pool: &PgPool) -> Result<()> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
