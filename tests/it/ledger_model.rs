//! A model-based test of the ledger, in the spirit of TigerBeetle's VOPR:
//! a seeded generator of operation sequences — grants, spawns, claims,
//! completions, failures with and without retry, reclaims after a timeout,
//! cancels, invocations (answered, failed, abandoned and swept, refused),
//! messages, broadcasts, blackboard writes and increments — mixing valid
//! and invalid input (U+0000 in text, malformed and huge amounts,
//! out-of-range ids). After every step the tenant's Redis balance must equal
//! a pure model's; at the end the sink catches up and `verify` is clean.
//!
//! Each seed is printed; replay one with `LEDGER_SEED=<n>`. CI runs a fixed
//! set; a longer run is `LEDGER_SEEDS=200 cargo test --test it ledger_model`.

use crate::common;
use std::time::Duration;

use agentbus::agents::invoke::InvokeRequest;
use agentbus::agents::messages::OutgoingMessage;
use agentbus::agents::registry::Registration;
use agentbus::blackboard::Fence;
use agentbus::jobs::{ClaimedItem, CompleteOutcome, FailOutcome, JobSpec};
use agentbus::keys::Ident;
use agentbus::money::{from_minor, to_minor};
use agentbus::{Error, TenantId};
use axum::http::StatusCode;
use common::{ADMIN_TOKEN, TestEnv, call};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use uuid::Uuid;

const STEPS: usize = 120;
const MAX_RETRIES: i64 = 1;

/// The balance the bus must show, in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Model {
    total: i64,
    reserved: i64,
    spent: i64,
}

impl Model {
    fn available(&self) -> i64 {
        self.total - self.reserved - self.spent
    }
}

struct ModelJob {
    id: Uuid,
    running: bool,
    items: usize,
    /// Items completed or failed for good.
    settled: usize,
    /// Deliveries held by the test's worker, not yet settled.
    held: Vec<ClaimedItem>,
}

struct World {
    env: TestEnv,
    app: axum::Router,
    t: TenantId,
    rng: StdRng,
    model: Model,
    jobs: Vec<ModelJob>,
    /// Invocations whose caller went away: their reservation waits for the sweeper.
    abandoned: Vec<String>,
    caller: Ident,
    target: Ident,
    crowd: Uuid,
    prices: agentbus::prices::Prices,
    log: Vec<String>,
}

fn id(s: &str) -> Ident {
    Ident::new("instance_id", s).expect("ident")
}

/// An amount text a careless client might send, and its minor units when valid.
fn amount(rng: &mut StdRng) -> (String, Option<i64>) {
    match rng.random_range(0..10) {
        0 => ("79228162514264337593543950335".into(), None),
        1 => ("1.000000000000000000000000000001".into(), None),
        2 => ("+5".into(), None),
        3 => ("1_0".into(), None),
        4 => ("1e2".into(), None),
        5 => ("-3".into(), None),
        _ => {
            let minor = rng.random_range(1..5_000i64);
            (from_minor(minor).to_string(), Some(minor))
        }
    }
}

/// Reason text: usually plain, sometimes with U+0000 or another control character.
fn reason(rng: &mut StdRng) -> (String, bool) {
    match rng.random_range(0..6) {
        0 => ("bad\u{0}reason".into(), false),
        1 => ("bell\u{7}".into(), false),
        2 => ("line\nbreak".into(), true),
        _ => ("fine".into(), true),
    }
}

impl World {
    async fn new(seed: u64) -> Self {
        let env = TestEnv::with_db().await;
        let t = env.tenant("model");
        let app = env.app();
        let reg = |agent: &str, inst: &str, job: Option<Uuid>| {
            let mut r = Registration::new(agent)
                .expect("agent")
                .instance(inst)
                .expect("instance");
            r.job_id = job;
            r
        };
        let crowd = Uuid::new_v4();
        for (agent, inst, job) in [
            ("orc", "caller", Some(crowd)),
            ("spec", "target", None),
            ("w", "w1", Some(crowd)),
            ("w", "w2", Some(crowd)),
        ] {
            env.bus
                .register_agent(&t, &reg(agent, inst, job))
                .await
                .expect("register");
        }
        let prices = env.bus.prices().clone();
        World {
            env,
            app,
            t,
            rng: StdRng::seed_from_u64(seed),
            model: Model::default(),
            jobs: Vec::new(),
            abandoned: Vec::new(),
            caller: id("caller"),
            target: id("target"),
            crowd,
            prices,
            log: Vec::new(),
        }
    }

    async fn check(&self, step: usize) {
        let b = self.env.bus.balance(&self.t).await.expect("balance");
        let got = Model {
            total: to_minor("total", b.total).expect("minor"),
            reserved: to_minor("reserved", b.reserved).expect("minor"),
            spent: to_minor("spent", b.spent).expect("minor"),
        };
        assert_eq!(
            got,
            self.model,
            "step {step}: Redis differs from the model after:\n{}",
            self.log.join("\n")
        );
    }

    async fn grant(&mut self) {
        let (text, minor) = amount(&mut self.rng);
        let (why, clean) = reason(&mut self.rng);
        let (status, body) = call(
            &self.app,
            "POST",
            "/api/v1/credits/grant",
            Some(ADMIN_TOKEN),
            Some(json!({ "tenant": "model", "amount": text, "reason": why })),
        )
        .await;
        self.log.push(format!("grant {text:?} {why:?} -> {status}"));
        match minor.filter(|_| clean) {
            Some(m) => {
                assert_eq!(status, StatusCode::OK, "{body}");
                self.model.total += m;
            }
            None => assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}"),
        }
    }

    async fn spawn(&mut self) {
        let items = self.rng.random_range(1..5usize);
        let bad_task = self.rng.random_range(0..8) == 0;
        let task = if bad_task { "t\u{0}" } else { "task" };
        let mut spec = JobSpec::new("orc", "w", task, (0..items).map(|i| json!(i)).collect());
        spec.max_retries = MAX_RETRIES;
        spec.timeout_per_item = 1;
        let need = self.prices.agent_spawn + self.prices.job_item * items as i64;
        let got = self.env.bus.spawn_job(&self.t, &spec).await;
        self.log
            .push(format!("spawn {items} bad_task={bad_task} -> {}", ok(&got)));
        if bad_task {
            assert!(matches!(got, Err(Error::Invalid { .. })), "{got:?}");
        } else if need > self.model.available() {
            assert!(
                matches!(got, Err(Error::InsufficientCredits { .. })),
                "{got:?}"
            );
        } else {
            let job = got.expect("spawn");
            self.model.reserved += need - self.prices.agent_spawn;
            self.model.spent += self.prices.agent_spawn;
            self.jobs.push(ModelJob {
                id: job.id,
                running: true,
                items,
                settled: 0,
                held: Vec::new(),
            });
        }
    }

    fn running_job(&mut self) -> Option<usize> {
        let running: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.jobs[i].running)
            .collect();
        (!running.is_empty()).then(|| running[self.rng.random_range(0..running.len())])
    }

    fn end_if_settled(&mut self, j: usize) {
        if self.jobs[j].settled == self.jobs[j].items {
            self.jobs[j].running = false;
        }
    }

    async fn claim(&mut self) {
        let Some(j) = self.running_job() else { return };
        let n = self.rng.random_range(1..4usize);
        let got = self
            .env
            .bus
            .claim_items(&self.t, &self.jobs[j].id, "w1", n, Duration::ZERO)
            .await
            .expect("claim");
        self.log
            .push(format!("claim {n} of job {j} -> {}", got.len()));
        self.jobs[j].held.extend(got);
    }

    async fn complete(&mut self) {
        let Some(j) = self.running_job() else { return };
        let job = self.jobs[j].id;
        if self.jobs[j].held.is_empty() || self.rng.random_range(0..6) == 0 {
            // An id past u64, or one that names no item of the job.
            let bad = ["99999999999999999999-0", "1-999999"][self.rng.random_range(0..2)];
            let got = self
                .env
                .bus
                .complete_items(&self.t, &job, &[(bad.to_string(), json!(1))])
                .await;
            self.log
                .push(format!("complete bad id {bad} -> {}", ok(&got)));
            match got {
                Err(Error::Invalid { .. }) => {}
                Ok(o) => assert_eq!(o, [CompleteOutcome::Invalid]),
                other => panic!("{other:?}"),
            }
            return;
        }
        let k = self.rng.random_range(0..self.jobs[j].held.len());
        let item = self.jobs[j].held.remove(k);
        let got = self
            .env
            .bus
            .complete_items(&self.t, &job, &[(item.item_id.clone(), json!({"n": 1}))])
            .await
            .expect("complete");
        self.log
            .push(format!("complete {} of job {j} -> {got:?}", item.item_id));
        assert_eq!(got, [CompleteOutcome::Completed]);
        self.model.reserved -= self.prices.job_item;
        self.model.spent += self.prices.job_item;
        self.jobs[j].settled += 1;
        self.end_if_settled(j);
        // A second completion of the same delivery costs nothing.
        if self.rng.random_range(0..3) == 0 && self.jobs[j].running {
            let again = self
                .env
                .bus
                .complete_items(&self.t, &job, &[(item.item_id, json!(2))])
                .await
                .expect("complete again");
            assert_ne!(again, [CompleteOutcome::Completed]);
        }
    }

    async fn fail(&mut self) {
        let Some(j) = self.running_job() else { return };
        if self.jobs[j].held.is_empty() {
            return;
        }
        let k = self.rng.random_range(0..self.jobs[j].held.len());
        let item = self.jobs[j].held.remove(k);
        let retry = self.rng.random_bool(0.5);
        let got = self
            .env
            .bus
            .fail_item(&self.t, &self.jobs[j].id, &item.item_id, "boom", retry)
            .await
            .expect("fail");
        self.log
            .push(format!("fail {} retry={retry} -> {got:?}", item.item_id));
        if retry && item.retry_count < MAX_RETRIES {
            assert!(matches!(got, FailOutcome::Retried { .. }), "{got:?}");
        } else {
            assert_eq!(got, FailOutcome::Failed);
            self.model.reserved -= self.prices.job_item;
            self.jobs[j].settled += 1;
            self.end_if_settled(j);
        }
    }

    /// Time passes past every deadline: the reclaimer takes back held items
    /// and the sweeper ends abandoned invocations.
    async fn time_passes(&mut self) {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for j in 0..self.jobs.len() {
            if !self.jobs[j].running {
                continue;
            }
            let held = std::mem::take(&mut self.jobs[j].held);
            let (requeued, failed) = self
                .env
                .bus
                .reclaim_job(&self.t, &self.jobs[j].id)
                .await
                .expect("reclaim");
            let expect_failed = held.iter().filter(|i| i.retry_count >= MAX_RETRIES).count();
            self.log.push(format!(
                "reclaim job {j}: held {} -> requeued {requeued}, failed {failed}",
                held.len()
            ));
            assert_eq!(failed as usize, expect_failed);
            assert_eq!(requeued as usize, held.len() - expect_failed);
            self.model.reserved -= self.prices.job_item * failed;
            self.jobs[j].settled += expect_failed;
            self.end_if_settled(j);
        }
        let swept = self
            .env
            .bus
            .expire_due_invokes(&self.t)
            .await
            .expect("sweep");
        self.log.push(format!("sweep -> {swept}"));
        assert_eq!(swept, self.abandoned.len());
        self.model.reserved -= self.prices.agent_invoke * swept as i64;
        self.abandoned.clear();
    }

    async fn cancel(&mut self) {
        let Some(j) = self.running_job() else { return };
        let (why, clean) = reason(&mut self.rng);
        let got = self
            .env
            .bus
            .cancel_job(&self.t, &self.jobs[j].id, "model", &why)
            .await;
        self.log
            .push(format!("cancel job {j} {why:?} -> {}", ok(&got)));
        if !clean {
            assert!(matches!(got, Err(Error::Invalid { .. })), "{got:?}");
            return;
        }
        let out = got.expect("cancel");
        let left = (self.jobs[j].items - self.jobs[j].settled) as i64;
        assert_eq!(out.cancelled_items, left);
        self.model.reserved -= self.prices.job_item * left;
        self.jobs[j].running = false;
        self.jobs[j].held.clear();
    }

    async fn invoke(&mut self) {
        let price = self.prices.agent_invoke;
        let kind = self.rng.random_range(0..5);
        if kind == 0 {
            let got = self
                .env
                .bus
                .invoke(
                    &self.t,
                    &InvokeRequest::new(&self.caller, &id("ghost"), json!({})),
                )
                .await;
            self.log.push(format!("invoke ghost -> {}", ok(&got)));
            assert!(
                matches!(
                    got,
                    Err(Error::InvokeRefused {
                        reason: "unknown_target",
                        ..
                    })
                ),
                "{got:?}"
            );
            return;
        }
        let affordable = price <= self.model.available();
        let timeout = if kind == 1 { 1 } else { 30 };
        let started =
            common::pending_invoke(&self.env, &self.t, &self.caller, &self.target, timeout).await;
        self.log.push(format!(
            "invoke kind {kind} -> started {}",
            started.is_some()
        ));
        let Some((task, invoke_id)) = started else {
            assert!(!affordable, "an affordable invocation was refused");
            return;
        };
        assert!(affordable, "an invocation started without credit");
        self.model.reserved += price;
        if kind == 1 {
            task.abort();
            self.abandoned.push(invoke_id);
            return;
        }
        // U+0000 in the answer is refused and changes nothing.
        let nul = self
            .env
            .bus
            .respond(
                &self.t,
                &invoke_id,
                &json!("x\u{0}"),
                None,
                Some(&self.target),
            )
            .await;
        assert!(matches!(nul, Err(Error::Invalid { .. })), "{nul:?}");
        let success = kind != 2;
        let error = (!success).then_some("target failed");
        self.env
            .bus
            .respond(
                &self.t,
                &invoke_id,
                &json!({"a": 1}),
                error,
                Some(&self.target),
            )
            .await
            .expect("respond");
        let result = task.await.expect("join").expect("invoke");
        assert_eq!(result.success, success);
        self.model.reserved -= price;
        if success {
            self.model.spent += price;
        }
    }

    async fn message(&mut self) {
        let price = self.prices.agent_message;
        if self.rng.random_range(0..4) == 0 {
            let got = self
                .env
                .bus
                .broadcast(&self.t, &self.crowd, &self.caller, "note", json!({"b": 1}))
                .await;
            let need = price * 2;
            self.log.push(format!("broadcast -> {}", ok(&got)));
            if need <= self.model.available() {
                assert_eq!(got.expect("broadcast").recipients.len(), 2);
                self.model.spent += need;
            } else {
                assert!(
                    matches!(got, Err(Error::InsufficientCredits { .. })),
                    "{got:?}"
                );
            }
            return;
        }
        let to = if self.rng.random_range(0..5) == 0 {
            id("nobody")
        } else {
            self.target.clone()
        };
        let got = self
            .env
            .bus
            .send_message(
                &self.t,
                &OutgoingMessage::new(&self.caller, &to, "note", json!(1)),
            )
            .await
            .map(|sent| sent.message_id);
        self.log.push(format!("message to {to} -> {}", ok(&got)));
        if to.as_str() == "nobody" {
            assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
        } else if price <= self.model.available() {
            got.expect("send");
            self.model.spent += price;
        } else {
            assert!(
                matches!(got, Err(Error::InsufficientCredits { .. })),
                "{got:?}"
            );
        }
    }

    async fn blackboard(&mut self) {
        let price = self.prices.blackboard_write;
        let ns = Ident::new("namespace", "board").expect("ns");
        let bb = self.env.bus.blackboard(&self.t, &ns);
        let key = format!("k{}", self.rng.random_range(0..5));
        let huge = self.rng.random_range(0..5) == 0;
        let got = if self.rng.random_bool(0.5) {
            let amount = if huge { json!(1e20) } else { json!(1.5) };
            bb.increment(&key, &amount, None::<&Fence>)
                .await
                .map(|_| ())
        } else {
            bb.set(
                &key,
                &json!(self.rng.random_range(0..100)),
                None,
                None::<&Fence>,
            )
            .await
            .map(|_| ())
        };
        self.log
            .push(format!("blackboard {key} huge={huge} -> {}", ok(&got)));
        match got {
            Ok(()) => {
                assert!(price <= self.model.available());
                self.model.spent += price;
            }
            Err(Error::InsufficientCredits { .. }) => assert!(price > self.model.available()),
            // Increments that cannot be held exactly, or of a non-number.
            Err(Error::Invalid { .. }) | Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn ok<T, E: std::fmt::Debug>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}").chars().take(80).collect(),
    }
}

async fn run(seed: u64) {
    println!("ledger model seed {seed} (replay: LEDGER_SEED={seed})");
    let mut w = World::new(seed).await;
    for step in 0..STEPS {
        match w.rng.random_range(0..100) {
            0..=11 => w.grant().await,
            12..=23 => w.spawn().await,
            24..=37 => w.claim().await,
            38..=51 => w.complete().await,
            52..=59 => w.fail().await,
            60..=61 => w.time_passes().await,
            62..=67 => w.cancel().await,
            68..=77 => w.invoke().await,
            78..=87 => w.message().await,
            _ => w.blackboard().await,
        }
        w.check(step).await;
    }
    // The mirror catches up and agrees, with every check verify makes.
    w.env.bus.flush_metering(&w.t).await.expect("flush");
    common::drain(&w.env, &w.t).await;
    let report = common::verify_now(&w.env).await;
    assert!(
        report.ok,
        "seed {seed}: {}\n{}",
        report.to_table(),
        w.log.join("\n")
    );
    assert_eq!(
        to_minor("live", report.tenants[0].live_reservations).expect("minor"),
        w.model.reserved
    );
}

fn seeds() -> Vec<u64> {
    if let Some(one) = std::env::var("LEDGER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![one];
    }
    let n: u64 = std::env::var("LEDGER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    (1..=n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_balances_follow_the_model_and_verify_is_clean() {
    for seed in seeds() {
        run(seed).await;
    }
}
