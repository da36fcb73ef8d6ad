//! The `agentbus` command line: parses arguments and runs one subcommand.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use agentbus::config::Config;
use agentbus::db;
use agentbus::keys::TenantId;
use agentbus::outbox::sink::Sink;
use agentbus::outbox::{stranded, verify};
use agentbus::server;

mod args;
mod bench;
mod client;
mod demo;
mod load;
mod load_http;

pub use args::*;

fn parse_work_ms(raw: &str) -> anyhow::Result<(Duration, Duration)> {
    let parse = |s: &str| -> anyhow::Result<Duration> {
        let ms: u64 = s
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("work-ms: {raw:?} is not `min` or `min-max` in ms"))?;
        Ok(Duration::from_millis(ms))
    };
    match raw.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if hi < lo {
                bail!("work-ms: max below min in {raw:?}");
            }
            Ok((lo, hi))
        }
        None => {
            let v = parse(raw)?;
            Ok((v, v))
        }
    }
}

async fn load(config: &Config, args: LoadArgs) -> anyhow::Result<bool> {
    if args.items == 0 || args.workers == 0 {
        bail!("items and workers must be at least 1");
    }
    if !(0.0..1.0).contains(&args.fail_rate) {
        bail!("fail-rate must be in [0, 1)");
    }
    if let Some(pct) = args.cancel_at
        && !(0.0..=100.0).contains(&pct)
    {
        bail!("cancel-at must be a percentage between 0 and 100");
    }
    let mut config = config.clone();
    config.max_items = config.max_items.max(args.items);
    config.redis_pool = config.redis_pool.max(32);
    let bus = config.bus()?;
    let tenant = match args.tenant {
        Some(t) => tenant(&t)?,
        None => TenantId::new(format!(
            "load-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))?,
    };
    if args.via == args::Via::Http {
        let report = load_http::run(
            &bus,
            &args.url,
            &tenant,
            args.items,
            args.workers,
            args.batch.clamp(1, 100),
            Duration::from_secs(args.timeout.max(1)),
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} items over HTTP, {} workers, batches of {}: {:.0} items/s ({} ms; spawn {} ms; {} requests)",
                report.items,
                report.workers,
                report.batch,
                report.items_per_sec,
                report.elapsed_ms,
                report.spawn_ms,
                report.requests
            );
        }
        return Ok(report.completed == report.items as u64);
    }
    let (work_min, work_max) = parse_work_ms(&args.work_ms)?;
    let mut options = load::LoadOptions::new(tenant, args.items, args.workers);
    options.concurrency = args.concurrency.max(1);
    options.batch = args.batch.max(1);
    options.read_ahead = args.read_ahead;
    options.parallelism = args.parallelism;
    options.timeout = Duration::from_secs(args.timeout.max(1));
    options.work_min = work_min;
    options.work_max = work_max;
    options.fail_rate = args.fail_rate;
    options.cancel_at = args.cancel_at;
    options.max_retries = args.max_retries;
    options.processes = args.processes;
    options.child_env = vec![
        ("REDIS_URL".into(), config.redis_url.clone()),
        ("AGENTBUS_PREFIX".into(), config.prefix.clone()),
        ("AGENTBUS_PRICES".into(), config.prices.clone()),
        ("AGENTBUS_MAX_ITEMS".into(), config.max_items.to_string()),
    ];
    if args.verify_sink {
        let pool = config.postgres()?;
        agentbus::db::migrate_up(&pool).await?;
        options.verify_sink = Some(pool);
    }

    let bar = if args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.items as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} items {per_sec} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let progress_bar = bar.clone();
    let progress: load::Progress = Arc::new(move |done, _| progress_bar.set_position(done));
    let report = load::run(&bus, &options, Some(progress)).await?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.to_text());
    }
    Ok(report.passed())
}

fn tenant(raw: &str) -> anyhow::Result<TenantId> {
    Ok(TenantId::new(raw)?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command {
        Command::Bench {
            scenario,
            runs,
            agents,
            rate,
            secs,
            calls,
            concurrency,
            backlog,
            sizes,
            samples,
            tenants,
            items,
            workers,
        } => {
            let mut config = config.clone();
            config.redis_pool = config.redis_pool.max(32);
            config.max_items = config.max_items.max(100_000);
            let bus = config.bus()?;
            let runs = runs.max(1);
            let (rate, secs) = (rate.max(1), secs.max(1));
            let section = match scenario {
                BenchScenario::Jobs => bench::jobs(&bus, runs).await?,
                BenchScenario::Messages => {
                    bench::messages(&bus, agents.max(2), rate, secs, runs).await?
                }
                BenchScenario::Invoke => {
                    bench::invoke(&bus, calls.max(1), concurrency, runs).await?
                }
                BenchScenario::Tenants => {
                    bench::tenants(&bus, tenants.max(1), items.max(1), workers.max(1), runs).await?
                }
                BenchScenario::Blackboard => {
                    let sizes: Vec<usize> = sizes.into_iter().filter(|s| *s > 0).collect();
                    bench::blackboard(&bus, &sizes, samples.max(10), runs).await?
                }
                BenchScenario::Sink => {
                    let pool = config.postgres()?;
                    bench::sink(&bus, &pool, backlog.max(1), rate, secs, runs).await?
                }
            };
            println!("{section}");
        }
        Command::Sink { action, sink } => {
            let bus = config.bus()?;
            match action.unwrap_or(SinkAction::Run) {
                SinkAction::Run => {
                    let pool = config.postgres()?;
                    let shutdown = CancellationToken::new();
                    let stop = shutdown.clone();
                    tokio::spawn(async move {
                        server::wait_for_signal().await;
                        stop.cancel();
                    });
                    let options = sink.options()?;
                    tracing::info!(consumer = %options.consumer, "sink running");
                    Sink::new(bus, pool, options).run(shutdown).await;
                }
                SinkAction::Status => {
                    println!(
                        "{:<32} {:>10} {:>10} {:>12} {:>10}",
                        "tenant", "events", "in flight", "oldest (s)", "stranded"
                    );
                    let mut stranded = 0;
                    for s in bus.outbox_status().await? {
                        println!(
                            "{:<32} {:>10} {:>10} {:>12.1} {:>10}",
                            s.tenant, s.events, s.in_flight, s.oldest_age_secs, s.stranded
                        );
                        stranded += s.stranded;
                    }
                    if stranded > 0 {
                        println!(
                            "{stranded} event(s) refused by Postgres: see `agentbus dlq list --events`, fix the cause, then `agentbus dlq replay --events`"
                        );
                    }
                }
            }
        }
        Command::Verify { wait_secs, json } => {
            let bus = config.bus()?;
            let pool = config.postgres()?;
            let report = verify::verify(&bus, &pool, Duration::from_secs(wait_secs)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_table());
            }
            if !report.ok {
                bail!("verify found differences");
            }
        }
        Command::Dlq { action } => {
            let bus = config.bus()?;
            match action {
                DlqAction::List {
                    tenant: t,
                    limit,
                    events: false,
                } => {
                    for d in bus
                        .dead_letters(&tenant(&t)?, None, limit.clamp(1, 10_000))
                        .await?
                    {
                        println!("{}", serde_json::to_string(&d)?);
                    }
                }
                DlqAction::List {
                    tenant: t,
                    limit,
                    events: true,
                } => {
                    for e in bus.stranded_events(&tenant(&t)?, None, limit).await? {
                        println!("{}", serde_json::to_string(&e)?);
                    }
                }
                DlqAction::Replay {
                    tenant: t,
                    entry_id,
                    all,
                    events: true,
                } => {
                    let t = tenant(&t)?;
                    let ids: Vec<String> = match (entry_id, all) {
                        (Some(id), false) => vec![id],
                        (None, true) => bus
                            .stranded_events(&t, None, stranded::MAX_IDS_PER_CALL)
                            .await?
                            .into_iter()
                            .map(|e| e.entry_id)
                            .collect(),
                        _ => bail!("give one entry id, or --all"),
                    };
                    let done = bus.replay_stranded(&t, &ids).await?;
                    println!("{}", serde_json::to_string(&done)?);
                    if done.missing > 0 && done.replayed == 0 {
                        bail!("no such stranded event");
                    }
                }
                DlqAction::Replay {
                    tenant: t,
                    entry_id,
                    all,
                    events: false,
                } => {
                    let t = tenant(&t)?;
                    let ids: Vec<String> = match (entry_id, all) {
                        (Some(id), false) => vec![id],
                        (None, true) => bus
                            .dead_letters(&t, None, 10_000)
                            .await?
                            .into_iter()
                            .filter(|d| d.kind == "message")
                            .map(|d| d.entry_id)
                            .collect(),
                        _ => bail!("give one entry id, or --all"),
                    };
                    for id in ids {
                        let new_id = bus.replay_dead_letter(&t, &id).await?;
                        println!("replayed {id} as {new_id}");
                    }
                }
                DlqAction::Discard {
                    tenant: t,
                    entry_ids,
                } => {
                    let gone = bus.discard_stranded(&tenant(&t)?, &entry_ids).await?;
                    println!("discarded {gone} event(s)");
                }
            }
        }
        Command::Simulate { tenant: t, file } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?
            };
            let mut body: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{file}: not JSON"))?;
            let stages: Vec<agentbus::simulate::StageSpec> =
                match body.as_object_mut().and_then(|o| o.remove("stages")) {
                    Some(v) => serde_json::from_value(v).context("stages")?,
                    None => Vec::new(),
                };
            let spec: agentbus::jobs::JobSpec = serde_json::from_value(body).context("job body")?;
            let bus = config.bus()?;
            let simulation = bus.simulate(&tenant(&t)?, &spec, &stages).await?;
            println!("{}", serde_json::to_string_pretty(&simulation)?);
        }
        Command::Inspect { what } => {
            let bus = config.bus()?;
            let json = match what {
                InspectWhat::Job { tenant: t, id } => {
                    let Ok(id) = uuid::Uuid::parse_str(&id) else {
                        bail!("job id: {id:?} is not a UUID");
                    };
                    serde_json::to_string_pretty(&bus.inspect_job(&tenant(&t)?, &id).await?)?
                }
                InspectWhat::Agent { tenant: t, id } => {
                    let id = agentbus::keys::Ident::new("instance_id", id)?;
                    serde_json::to_string_pretty(&bus.inspect_agent(&tenant(&t)?, &id).await?)?
                }
            };
            println!("{json}");
        }
        Command::Tail {
            tenant: t,
            stream,
            from_start,
            count,
        } => {
            let bus = config.bus()?;
            let key = bus.tenant_stream(&tenant(&t)?, &stream)?;
            let from = if from_start { "0-0" } else { "$" };
            let follow = bus.tail(&key, from, count, |entry| println!("{entry}"));
            tokio::select! {
                r = follow => r?,
                _ = server::wait_for_signal() => {}
            }
        }
        Command::LoadWorker(args) => {
            let bus = config.bus()?;
            let Ok(job) = uuid::Uuid::parse_str(&args.job) else {
                bail!("job: {:?} is not a UUID", args.job);
            };
            let profile = load::WorkProfile {
                concurrency: args.concurrency.max(1),
                batch: args.batch.max(1),
                read_ahead: args.read_ahead,
                work_min: Duration::from_millis(args.work_min_ms),
                work_max: Duration::from_millis(args.work_max_ms.max(args.work_min_ms)),
                fail_rate: args.fail_rate.clamp(0.0, 0.99),
            };
            let report = load::worker_process(
                &bus,
                &tenant(&args.tenant)?,
                job,
                args.first,
                args.count,
                profile,
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Load(args) => {
            if !load(&config, args).await? {
                bail!("load test found violations");
            }
        }
        Command::Serve(serve) => server::serve(&config, &serve).await?,
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&agentbus::api::openapi_document())?
            );
        }
        Command::Demo => {
            let report = crate::cli::demo::run(&config).await?;
            println!("{}", report.text);
            if !report.ok {
                bail!("the demo found a problem (see above)");
            }
        }
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
                    println!(
                        "reverted {}",
                        if all {
                            "all migrations"
                        } else {
                            "the latest migration"
                        }
                    );
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
                    eprintln!(
                        "token {} for tenant {} (store it now: it is not shown again)",
                        token.id, token.tenant
                    );
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
                TokenAction::Rotate { id } => {
                    let token = bus.rotate_token(&id).await?;
                    println!("{}", token.token);
                    eprintln!(
                        "token {} of tenant {} rotated (store it now: it is not shown again)",
                        token.id, token.tenant
                    );
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
                    let amount = match agentbus::money::parse_credits(&amount) {
                        Ok(amount) => amount,
                        Err(e) => bail!("amount: {e}"),
                    };
                    bus.grant_credits(
                        &tenant(&t)?,
                        amount,
                        agentbus::credits::grant_context(&reason, "cli")?,
                    )
                    .await?
                }
            };
            println!("{}", serde_json::to_string_pretty(&balance)?);
        }
    }
    Ok(())
}
