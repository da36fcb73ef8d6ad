//! The `agentbus` command line: parses arguments and runs one subcommand.

use std::str::FromStr;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rust_decimal::Decimal;

use crate::config::{Config, ServeConfig};
use crate::db;
use crate::keys::TenantId;
use crate::server;

#[derive(Parser, Debug)]
#[command(name = "agentbus", version, about = "Redis-centric event streaming for fleets of agents")]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API and the background tasks.
    Serve(ServeConfig),
    /// Apply, revert or show the Postgres schema migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Show or grant a tenant's credits.
    Credits {
        #[command(subcommand)]
        action: CreditsAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum MigrateAction {
    /// Apply every pending migration (a no-op when current).
    Up,
    /// Revert the latest migration (or all of them).
    Down {
        #[arg(long)]
        all: bool,
    },
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Create a token for a tenant and print it (shown only once).
    Create {
        #[arg(long)]
        tenant: String,
    },
    /// List tokens (ids and tenants; secrets are never stored).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum CreditsAction {
    /// Show a tenant's balance.
    Show {
        #[arg(long)]
        tenant: String,
    },
    /// Add credits to a tenant.
    Grant {
        #[arg(long)]
        tenant: String,
        /// Amount in credits (at most two decimals).
        #[arg(long)]
        amount: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn tenant(raw: &str) -> anyhow::Result<TenantId> {
    Ok(TenantId::new(raw)?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command {
        Command::Serve(serve) => server::serve(&config, &serve).await?,
        Command::Migrate { action } => {
            let pool = config.postgres()?;
            let target = db::redact(&config.database_url);
            match action {
                MigrateAction::Up => {
                    db::migrate_up(&pool)
                        .await
                        .with_context(|| format!("DATABASE_URL {target}"))?;
                    println!("migrations applied");
                }
                MigrateAction::Down { all } => {
                    db::migrate_down(&pool, all)
                        .await
                        .with_context(|| format!("DATABASE_URL {target}"))?;
                    println!("reverted {}", if all { "all migrations" } else { "the latest migration" });
                }
                MigrateAction::Status => {
                    for m in db::migrate_status(&pool)
                        .await
                        .with_context(|| format!("DATABASE_URL {target}"))?
                    {
                        let state = if m.applied { "applied" } else { "pending" };
                        println!("{:<16} {:<8} {}", m.version, state, m.description);
                    }
                }
            }
        }
        Command::Token { action } => {
            let bus = config.bus()?;
            match action {
                TokenAction::Create { tenant: t } => {
                    let token = bus.create_token(&tenant(&t)?).await?;
                    println!("{}", token.token);
                    eprintln!("token {} for tenant {} (store it now: it is not shown again)", token.id, token.tenant);
                }
                TokenAction::List { tenant: t } => {
                    let filter = t.as_deref().map(tenant).transpose()?;
                    for r in bus.list_tokens(filter.as_ref()).await? {
                        println!("{}  {:<24} {}", r.id, r.tenant, r.created_at.to_rfc3339());
                    }
                }
                TokenAction::Revoke { id } => {
                    bus.revoke_token(&id).await?;
                    println!("revoked {id}");
                }
            }
        }
        Command::Credits { action } => {
            let bus = config.bus()?;
            let balance = match action {
                CreditsAction::Show { tenant: t } => bus.balance(&tenant(&t)?).await?,
                CreditsAction::Grant {
                    tenant: t,
                    amount,
                    reason,
                } => {
                    let Ok(amount) = Decimal::from_str(&amount) else {
                        bail!("amount: {amount:?} is not a decimal number");
                    };
                    bus.grant_credits(
                        &tenant(&t)?,
                        amount,
                        serde_json::json!({ "reason": reason, "by": "cli" }),
                    )
                    .await?
                }
            };
            println!("{}", serde_json::to_string_pretty(&balance)?);
        }
    }
    Ok(())
}
