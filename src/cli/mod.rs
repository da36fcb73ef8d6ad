//! The `agentbus` command line: parses arguments and runs one subcommand.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use agentbus::config::{Config, ServeConfig, SinkConfig};
use agentbus::db;
use agentbus::keys::TenantId;
use agentbus::sink::Sink;
use agentbus::{server, stranded, verify};

mod bench;
mod client;
mod demo;
mod load;

#[derive(Parser, Debug)]
#[command(
    name = "agentbus",
    version,
    about = "Redis-centric event streaming for fleets of agents"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line and the environment. A bad value is one line
    /// naming the variable it came from (or could have: `AGENTBUS_…`), and
    /// exit status 2; help, version and usage errors are clap's own.
    pub fn parse_or_exit() -> Self {
        match Self::try_parse() {
            Ok(cli) => cli,
            Err(e) => match bad_value_line(&e) {
                Some(line) => {
                    eprintln!("error: {line}");
                    std::process::exit(2);
                }
                None => e.exit(),
            },
        }
    }
}

/// `AGENTBUS_X (--x): invalid value 'v': why`, for a value clap refused.
fn bad_value_line(e: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = text(ContextKind::InvalidArg)?;
    let long = flag
        .trim_start_matches("--")
        .split([' ', '='])
        .next()?
        .to_string();
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    // The command tree is ours and shallow; walked with a stack all the same.
    let mut commands = vec![Cli::command()];
    let mut var = None;
    while let Some(cmd) = commands.pop() {
        if let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        {
            var = arg.get_env().map(|v| v.to_string_lossy().into_owned());
            break;
        }
        commands.extend(cmd.get_subcommands().cloned());
    }
    let why = std::error::Error::source(e)
        .map(|s| s.to_string())
        .or_else(|| match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(v)) => Some(format!("expected one of {}", v.join(", "))),
            _ => None,
        })
        .unwrap_or_else(|| "not accepted".into());
    let name = match var {
        Some(var) => format!("{var} (--{long})"),
        None => format!("--{long}"),
    };
    Some(format!("{name}: invalid value '{value}': {why}"))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The end-to-end demo: local services, server, a realistic scenario, a checked summary.
    Demo,
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
    /// Run the sink alone (mirror outboxes into Postgres), or show its lag.
    Sink {
        #[command(subcommand)]
        action: Option<SinkAction>,
        #[command(flatten)]
        sink: SinkConfig,
    },
    /// Compare Redis balances, Postgres balances and the ledger; non-zero exit on any difference.
    Verify {
        /// Seconds to wait for the sink to catch up first.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        #[arg(long)]
        json: bool,
    },
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// Dead letters of a tenant.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Simulate a job (the body of POST /jobs, plus optional `stages`) without spending anything.
    Simulate {
        #[arg(long)]
        tenant: String,
        /// JSON file with the body, or `-` for standard input.
        #[arg(long, default_value = "-")]
        file: String,
    },
    /// Everything Redis holds about a job or an agent, as JSON.
    Inspect {
        #[command(subcommand)]
        what: InspectWhat,
    },
    /// Follow a stream of a tenant (outbox, dlq, inbox:<instance>, job:<id>:results, …).
    Tail {
        #[arg(long)]
        tenant: String,
        stream: String,
        /// Start from the beginning instead of only new entries.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many entries (0: follow until interrupted).
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// Run a load test: one job, many workers, and a checked report.
    Load(LoadArgs),
    #[command(hide = true)]
    LoadWorker(LoadWorkerArgs),
    /// Run a benchmark scenario and print its Markdown section (medians of several runs).
    Bench {
        #[arg(value_enum)]
        scenario: BenchScenario,
        /// Runs per measurement.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// messages: agents receiving.
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// messages, sink: events per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// messages, sink: seconds at that rate.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// invoke: calls per run.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// invoke: calls in flight at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// sink: events in the backlog drained.
        #[arg(long, default_value_t = 100_000)]
        backlog: usize,
        /// blackboard: namespace sizes, comma-separated.
        #[arg(long, default_value = "10000,100000,1000000", value_delimiter = ',')]
        sizes: Vec<usize>,
        /// blackboard: timed calls per operation.
        #[arg(long, default_value_t = 500)]
        samples: usize,
        /// tenants: how many tenants run jobs at once.
        #[arg(long, default_value_t = 8)]
        tenants: usize,
        /// tenants: items per tenant's job.
        #[arg(long, default_value_t = 20_000)]
        items: usize,
        /// tenants: workers per tenant.
        #[arg(long, default_value_t = 8)]
        workers: usize,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum BenchScenario {
    /// Jobs end to end (1000×50 and 100K×50).
    Jobs,
    /// One-way message latency with many agents at a steady rate.
    Messages,
    /// Invoke round trip.
    Invoke,
    /// Sink throughput and lag (needs Postgres).
    Sink,
    /// Blackboard operations at 10K/100K/1M keys vs a SCAN-based equivalent.
    Blackboard,
    /// Many tenants' jobs at once (compare one Redis with a cluster).
    Tenants,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    #[arg(long, default_value_t = 1000)]
    items: usize,
    #[arg(long, default_value_t = 50)]
    workers: usize,
    /// Seconds before the run counts as hung.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Items each worker handles at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Items each worker claims per read.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Simulated work per item in ms, as `min` or `min-max`.
    #[arg(long, default_value = "0")]
    work_ms: String,
    /// Probability that an attempt fails and is retried.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Cancel the job when this percentage of items is done.
    #[arg(long)]
    cancel_at: Option<f64>,
    #[arg(long, default_value_t = 3)]
    max_retries: i64,
    /// Tenant to run as (default: a fresh one per run).
    #[arg(long)]
    tenant: Option<String>,
    /// Run the workers in this many separate processes.
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Run a sink during the load, then check Redis against Postgres (DATABASE_URL).
    #[arg(long)]
    verify_sink: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The workers of one load-test process (started by `agentbus load --processes`).
#[derive(clap::Args, Debug)]
pub struct LoadWorkerArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    job: String,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    work_min_ms: u64,
    #[arg(long, default_value_t = 0)]
    work_max_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
}

#[derive(Subcommand, Debug)]
pub enum InspectWhat {
    /// State, counters, pending entries per consumer, credits.
    Job {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Registration, liveness and inbox.
    Agent {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SinkAction {
    /// Mirror outboxes until stopped (the default).
    Run,
    /// Per tenant: events waiting, in flight, and the age of the oldest.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// List dead letters (or, with --events, outbox events Postgres refused), oldest first.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        events: bool,
    },
    /// Move a dead-lettered message back to its inbox (or all of them with
    /// --all); with --events, put refused outbox events back for the sink.
    Replay {
        #[arg(long)]
        tenant: String,
        entry_id: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        events: bool,
    },
    /// Drop refused outbox events for good (their rows never reach Postgres).
    Discard {
        #[arg(long)]
        tenant: String,
        #[arg(required = true)]
        entry_ids: Vec<String>,
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
    /// Revoke a token by id (refused from the next request on).
    Revoke { id: String },
    /// Replace a token's secret and print the new one; the old one stops working.
    Rotate { id: String },
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
    let (work_min, work_max) = parse_work_ms(&args.work_ms)?;
    let mut options = load::LoadOptions::new(tenant, args.items, args.workers);
    options.concurrency = args.concurrency.max(1);
    options.batch = args.batch.max(1);
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
