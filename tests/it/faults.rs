//! Fault injection: a job runs across real `agentbus` processes (a server
//! with its sink and reclaimer, and worker processes) while something
//! breaks at a random moment: a worker, the server or a standalone sink is
//! killed -9, Redis is killed or restarted under AOF, Postgres or Redis
//! connections stall, are cut, or are refused. Each run must finish, and `agentbus verify` must
//! then find Redis, Postgres and the ledger in agreement, with every item
//! ended exactly once and the job's credits exact.

use crate::common;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::jobs::JobSpec;
use agentbus::keys::{Keyspace, TenantId};
use agentbus::outbox::job_audit::audit_job;
use agentbus::prices::Prices;
use common::proxy::Proxy;
use common::{PrivateRedis, TestEnv, eventually};
use rand::RngExt;
use rust_decimal::Decimal;
use serde_json::json;
use tokio::process::{Child, Command};
use uuid::Uuid;

const ITEMS: usize = 2000;
const WORKER_PROCESSES: usize = 3;
/// Seconds before an item a dead worker held is delivered again.
const ITEM_TIMEOUT_SECS: i64 = 1;

/// Where Redis and Postgres are, for the processes and for the checks.
struct Target {
    /// What the agentbus processes connect to (perhaps through a proxy).
    redis_url: String,
    database_url: String,
    /// Direct, for the test's own checks.
    direct_redis_url: String,
}

/// One job run across processes, with its services and logs.
struct Run {
    env: TestEnv,
    target: Target,
    bus: AgentBus,
    tenant: TenantId,
    job: Uuid,
    logs: PathBuf,
    server: Option<Child>,
    server_starts: usize,
    workers: Vec<Option<Child>>,
    /// Sink processes of their own (none: the server runs the sink).
    sinks: Vec<Option<Child>>,
}

/// The random moments of one fault test, from a printed seed: a failure
/// names its seed, and `FAULT_SEED=<n>` runs the same moments again (the
/// processes' own timing still varies around them).
struct Moments(rand::rngs::StdRng);

impl Moments {
    fn new(test: &str) -> Self {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random::<u64>());
        eprintln!(
            "{test}: fault seed {seed} (replay: FAULT_SEED={seed} cargo test --test it faults::{test})"
        );
        Moments(rand::SeedableRng::seed_from_u64(seed))
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.0.random_range(lo..=hi))
    }

    fn pick(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

impl Run {
    /// Spawns the job on `redis_url` (the direct one) and starts the server
    /// (with its sink) and the worker processes against `target`.
    async fn start(env: TestEnv, target: Target) -> Run {
        Self::start_with_sinks(env, target, 0).await
    }

    /// Like [`Run::start`]; with `sinks` > 0 the server runs no sink and
    /// that many `agentbus sink` processes run beside it.
    async fn start_with_sinks(env: TestEnv, target: Target, sinks: usize) -> Run {
        let redis = Redis::open(&target.direct_redis_url, RedisOptions::default()).unwrap();
        let bus = AgentBus::new(
            redis,
            Keyspace::new(&env.prefix).unwrap(),
            Prices::default(),
            Limits::default(),
        );
        let tenant = TenantId::new("faults").unwrap();
        let mut spec = JobSpec::new(
            "orchestrator",
            "worker",
            "fault",
            (0..ITEMS).map(|i| json!({ "i": i })).collect(),
        );
        spec.timeout_per_item = ITEM_TIMEOUT_SECS;
        // Kills cost items deliveries; enough retries that none runs out.
        spec.max_retries = 10;
        let need = bus.prices().job_reservation(ITEMS);
        bus.grant_credits(&tenant, need + Decimal::from(10), json!({}))
            .await
            .unwrap();
        let job = bus.spawn_job(&tenant, &spec).await.unwrap().id;
        let logs = std::env::temp_dir().join(format!("agentbus-faults-{}", &env.prefix[5..]));
        std::fs::create_dir_all(&logs).unwrap();
        let mut run = Run {
            env,
            target,
            bus,
            tenant,
            job,
            logs,
            server: None,
            server_starts: 0,
            workers: Vec::new(),
            sinks: Vec::new(),
        };
        if sinks == 0 {
            run.start_server(Some("sink-a"));
        } else {
            run.start_server(None);
            for slot in 0..sinks {
                run.sinks.push(None);
                run.start_sink(slot);
            }
        }
        for slot in 0..WORKER_PROCESSES {
            run.workers.push(None);
            run.start_worker(slot);
        }
        run
    }

    fn command(&self, log: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentbus"));
        cmd.env("REDIS_URL", &self.target.redis_url)
            .env("DATABASE_URL", &self.target.database_url)
            .env("AGENTBUS_PREFIX", &self.env.prefix)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(log))
            .kill_on_drop(true);
        cmd
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(name))
            .unwrap()
    }

    /// The server: API, reclaimer, reaper, and the sink under
    /// `sink_consumer` (none: no sink in the server).
    fn start_server(&mut self, sink_consumer: Option<&str>) {
        self.server_starts += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut cmd = self.command("server.log");
        cmd.arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--reclaim-interval-ms", "200", "--reap-interval-ms", "500"]);
        match sink_consumer {
            Some(consumer) => cmd.args([
                "--sink-consumer",
                consumer,
                "--sink-takeover-secs",
                "2",
                "--sink-sweep-secs",
                "2",
            ]),
            None => cmd.arg("--no-sink"),
        };
        self.server = Some(cmd.spawn().expect("start agentbus serve"));
    }

    /// Sink process `slot`, consumer `sink-proc-<slot>` (the same after a restart).
    fn start_sink(&mut self, slot: usize) {
        let child = self
            .command(&format!("sink-{slot}.log"))
            .arg("sink")
            .args(["--sink-consumer", &format!("sink-proc-{slot}")])
            .args(["--sink-takeover-secs", "2", "--sink-sweep-secs", "2"])
            .args(["--sink-batch", "100"])
            .spawn()
            .expect("start agentbus sink");
        self.sinks[slot] = Some(child);
    }

    async fn kill_sink(&mut self, slot: usize) {
        if let Some(mut c) = self.sinks[slot].take() {
            c.kill().await.unwrap();
        }
    }

    async fn kill_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().await.unwrap();
        }
    }

    /// Worker process `slot`: consumers `load-<2·slot>` and `load-<2·slot+1>`,
    /// the same names after a restart, so a replacement resumes its pending items.
    fn start_worker(&mut self, slot: usize) {
        let child = self
            .command(&format!("worker-{slot}.log"))
            .arg("load-worker")
            .args([
                "--tenant",
                self.tenant.as_str(),
                "--job",
                &self.job.to_string(),
            ])
            .args(["--first", &(slot * 2).to_string(), "--count", "2"])
            .args(["--concurrency", "2", "--batch", "4"])
            .args(["--work-min-ms", "10", "--work-max-ms", "30"])
            .spawn()
            .expect("start agentbus load-worker");
        self.workers[slot] = Some(child);
    }

    async fn kill_worker(&mut self, slot: usize) {
        if let Some(mut c) = self.workers[slot].take() {
            c.kill().await.unwrap();
        }
    }

    /// Items ended so far (errors while Redis is away count as no progress).
    async fn finished_items(&self) -> i64 {
        match self.bus.job(&self.tenant, &self.job).await {
            Ok(j) => j.progress.completed + j.progress.failed,
            Err(_) => 0,
        }
    }

    /// Waits until some items ended, and checks the job is still running,
    /// so the fault that follows lands mid-run.
    async fn wait_for_progress(&self, items: i64) {
        let moving = eventually(Duration::from_secs(60), || async {
            self.finished_items().await >= items
        })
        .await;
        assert!(
            moving,
            "the job never reached {items} items\n{}",
            self.logs_tail()
        );
        let job = self.bus.job(&self.tenant, &self.job).await.unwrap();
        assert!(
            !job.status.is_finished(),
            "the job ended before the fault: make it longer"
        );
    }

    /// Waits for the job to end, the workers to exit, and `agentbus verify`
    /// (against the direct services) to pass; then audits the job.
    async fn finish_and_verify(mut self) {
        let ended = eventually(Duration::from_secs(120), || async {
            self.bus
                .job(&self.tenant, &self.job)
                .await
                .is_ok_and(|j| j.status.is_finished())
        })
        .await;
        assert!(ended, "the job did not finish\n{}", self.logs_tail());
        for (slot, worker) in self.workers.iter_mut().enumerate() {
            if let Some(mut c) = worker.take() {
                let status = tokio::time::timeout(Duration::from_secs(30), c.wait())
                    .await
                    .unwrap_or_else(|_| panic!("worker {slot} did not exit"))
                    .unwrap();
                assert!(
                    status.success(),
                    "worker {slot}: {status}\n{}",
                    self.logs_tail()
                );
            }
        }
        let verify = Command::new(env!("CARGO_BIN_EXE_agentbus"))
            .env("REDIS_URL", &self.target.direct_redis_url)
            .env("DATABASE_URL", &self.env.db.as_ref().unwrap().url)
            .env("AGENTBUS_PREFIX", &self.env.prefix)
            .args(["verify", "--wait-secs", "60"])
            .output()
            .await
            .unwrap();
        let report = String::from_utf8_lossy(&verify.stdout);
        assert!(
            verify.status.success(),
            "verify failed:\n{report}\n{}\n{}",
            String::from_utf8_lossy(&verify.stderr),
            self.logs_tail()
        );
        let audit = audit_job(&self.bus, &self.tenant, &self.job, ITEMS)
            .await
            .unwrap();
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(audit.lost, 0);
        let job = self.bus.job(&self.tenant, &self.job).await.unwrap();
        assert_eq!(
            job.progress.completed + job.progress.failed,
            ITEMS as i64,
            "{job:?}"
        );
        self.kill_server().await;
        let _ = std::fs::remove_dir_all(&self.logs);
    }

    fn logs_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(&self.logs) {
            for entry in dir.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                out.push_str(&format!("--- {:?}\n{tail}\n", entry.file_name()));
            }
        }
        out
    }
}

/// The shared Redis and the test's own database, reached directly.
async fn direct() -> (TestEnv, Target) {
    let env = TestEnv::with_db().await;
    let target = Target {
        redis_url: common::redis_url(),
        database_url: env.db.as_ref().unwrap().url.clone(),
        direct_redis_url: common::redis_url(),
    };
    (env, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow lane: scripts/test --slow"]
async fn worker_processes_killed_at_random_moments() {
    let mut m = Moments::new("worker_processes_killed_at_random_moments");
    let (env, target) = direct().await;
    let mut run = Run::start(env, target).await;
    for round in 0..3 {
        run.wait_for_progress(150 * (round + 1)).await;
        tokio::time::sleep(m.ms(0, 300)).await;
        let slot = m.pick(WORKER_PROCESSES);
        run.kill_worker(slot).await;
        tokio::time::sleep(m.ms(100, 600)).await;
        run.start_worker(slot);
    }
    run.finish_and_verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow lane: scripts/test --slow"]
async fn the_server_and_its_sink_killed_at_random_moments() {
    let mut m = Moments::new("the_server_and_its_sink_killed_at_random_moments");
    let (env, target) = direct().await;
    let mut run = Run::start(env, target).await;
    run.wait_for_progress(200).await;
    tokio::time::sleep(m.ms(0, 300)).await;
    run.kill_server().await;
    tokio::time::sleep(m.ms(100, 500)).await;
    // Same sink consumer: it resumes its own pending events.
    run.start_server(Some("sink-a"));
    run.wait_for_progress(700).await;
    run.kill_server().await;
    // A different consumer: the dead one's pending events are taken over.
    run.start_server(Some("sink-b"));
    assert_eq!(run.server_starts, 3);
    run.finish_and_verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow lane: scripts/test --slow"]
async fn standalone_sinks_killed_at_random_moments() {
    let mut m = Moments::new("standalone_sinks_killed_at_random_moments");
    let (env, target) = direct().await;
    // Two sinks at once (rows must not double), one killed at a time.
    let mut run = Run::start_with_sinks(env, target, 2).await;
    for round in 0..3 {
        run.wait_for_progress(150 * (round + 1)).await;
        tokio::time::sleep(m.ms(0, 300)).await;
        let slot = rand::rng().random_range(0..2);
        run.kill_sink(slot).await;
        tokio::time::sleep(m.ms(100, 600)).await;
        run.start_sink(slot);
    }
    run.finish_and_verify().await;
}

#[derive(Clone, Copy)]
enum Stop {
    /// SIGKILL: the process gets no chance to flush anything.
    Kill,
    /// SIGTERM: Redis fsyncs its AOF and exits.
    Term,
}

/// A private Redis with AOF (`aof` settings), stopped mid-run in each of
/// `stops` ways in turn and started again.
async fn redis_restarts(test: &str, aof: &[&str], stops: &[Stop]) {
    let mut m = Moments::new(test);
    let mut args = vec!["--appendonly", "yes"];
    args.extend_from_slice(aof);
    let mut server = PrivateRedis::start(&args);
    server.wait_ready().await;
    let env = TestEnv::with_db().await;
    let target = Target {
        redis_url: server.url(),
        database_url: env.db.as_ref().unwrap().url.clone(),
        direct_redis_url: server.url(),
    };
    let run = Run::start(env, target).await;
    for (n, stop) in stops.iter().enumerate() {
        run.wait_for_progress(300 + 400 * n as i64).await;
        tokio::time::sleep(m.ms(0, 300)).await;
        match stop {
            Stop::Kill => server.kill(),
            Stop::Term => server.stop(),
        }
        tokio::time::sleep(m.ms(200, 800)).await;
        server.restart();
        server.wait_ready().await;
    }
    run.finish_and_verify().await;
}

/// What this shows is that an AOF Redis *process* killed twice (SIGKILL)
/// loses nothing the run depends on, and the run recovers through both
/// restarts. It does not test the fsync policy: a killed process loses
/// nothing under any policy (each write reaches the kernel before its
/// reply); `always` differs only when the machine itself crashes, which no
/// test here can stage (see the README's durability table and the runbook).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow lane: scripts/test --slow"]
async fn an_aof_redis_process_killed_twice_mid_run_loses_nothing() {
    redis_restarts(
        "an_aof_redis_process_killed_twice_mid_run_loses_nothing",
        &["--appendfsync", "always"],
        &[Stop::Kill, Stop::Kill],
    )
    .await;
}

/// Under `everysec` every write reaches the kernel before its reply, so a
/// killed Redis process loses nothing; only a crash of the machine (or a
/// disk stalling fsync) can, which no test here can stage: see docs/runbook.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow lane: scripts/test --slow"]
async fn redis_stopped_and_killed_mid_run_with_appendfsync_everysec() {
    redis_restarts(
        "redis_stopped_and_killed_mid_run_with_appendfsync_everysec",
        &["--appendfsync", "everysec"],
        &[Stop::Term, Stop::Kill],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow lane: scripts/test --slow"]
async fn postgres_stalled_cut_and_down_mid_run() {
    let mut m = Moments::new("postgres_stalled_cut_and_down_mid_run");
    let env = TestEnv::with_db().await;
    let db_url = env.db.as_ref().unwrap().url.clone();
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(pg).await;
    let target = Target {
        redis_url: common::redis_url(),
        database_url: db_url.replace(":5432/", &format!(":{}/", proxy.port())),
        direct_redis_url: common::redis_url(),
    };
    assert_ne!(target.database_url, db_url, "DATABASE_URL names port 5432");
    let run = Run::start(env, target).await;
    run.wait_for_progress(200).await;
    proxy.stall();
    tokio::time::sleep(m.ms(1000, 2000)).await;
    proxy.resume();
    run.wait_for_progress(500).await;
    proxy.cut();
    run.wait_for_progress(800).await;
    proxy.down();
    tokio::time::sleep(m.ms(1000, 2000)).await;
    proxy.resume();
    run.finish_and_verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow lane: scripts/test --slow"]
async fn redis_connections_stalled_and_cut_mid_run() {
    let mut m = Moments::new("redis_connections_stalled_and_cut_mid_run");
    let env = TestEnv::with_db().await;
    let url = common::redis_url();
    // On a cluster the nodes hand out their own addresses: nothing to proxy.
    // That is the one case this test may skip; any single-node URL runs.
    if url.starts_with("redis+cluster://") || url.contains(',') {
        eprintln!("skipped on a cluster ({url}): its nodes cannot be put behind one proxy");
        return;
    }
    let host_port = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let redis_addr = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("REDIS_URL {url:?} names no address this test can proxy"));
    let proxy = Proxy::start(redis_addr).await;
    let target = Target {
        redis_url: format!("redis://127.0.0.1:{}", proxy.port()),
        database_url: env.db.as_ref().unwrap().url.clone(),
        direct_redis_url: common::redis_url(),
    };
    let run = Run::start(env, target).await;
    run.wait_for_progress(200).await;
    proxy.cut();
    run.wait_for_progress(500).await;
    proxy.stall();
    tokio::time::sleep(m.ms(500, 1500)).await;
    proxy.resume();
    run.wait_for_progress(800).await;
    proxy.down();
    tokio::time::sleep(m.ms(500, 1000)).await;
    proxy.resume();
    run.finish_and_verify().await;
}
