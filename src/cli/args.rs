//! The command line's shape: every command, its flags and their
//! environment variables, and one-line errors for bad values.

use clap::{Parser, Subcommand};

use agentbus::config::{Config, ServeConfig, SinkConfig};

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
    pub items: usize,
    #[arg(long, default_value_t = 50)]
    pub workers: usize,
    /// Seconds before the run counts as hung.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Items each worker handles at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Items each worker claims per read.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Items each worker reads ahead of its free slots (job without a
    /// parallelism bound only; 0: none).
    #[arg(long, default_value_t = agentbus::jobs::worker::DEFAULT_READ_AHEAD)]
    pub read_ahead: usize,
    /// The job's parallelism: most items in flight at once (0: no bound).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..=10_000))]
    pub parallelism: i64,
    /// Simulated work per item in ms, as `min` or `min-max`.
    #[arg(long, default_value = "0")]
    pub work_ms: String,
    /// Probability that an attempt fails and is retried.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Cancel the job when this percentage of items is done.
    #[arg(long)]
    pub cancel_at: Option<f64>,
    #[arg(long, default_value_t = 3)]
    pub max_retries: i64,
    /// Tenant to run as (default: a fresh one per run).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Run the workers in this many separate processes.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Run a sink during the load, then check Redis against Postgres (DATABASE_URL).
    #[arg(long)]
    pub verify_sink: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// `engine`: workers use the library against Redis; `http`: they claim
    /// and complete (in batches) over the REST API of a running server at
    /// `--url` (same Redis and prefix).
    #[arg(long, value_enum, default_value_t = Via::Engine)]
    pub via: Via,
    /// The server, with `--via http`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Engine,
    Http,
}

/// The workers of one load-test process (started by `agentbus load --processes`).
#[derive(clap::Args, Debug)]
pub struct LoadWorkerArgs {
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub job: String,
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = agentbus::jobs::worker::DEFAULT_READ_AHEAD)]
    pub read_ahead: usize,
    #[arg(long, default_value_t = 0)]
    pub work_min_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub work_max_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
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
