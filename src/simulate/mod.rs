//! Pre-execution simulation: what a job will cost, how long it will take,
//! and what could go wrong — without reserving or writing anything.
//!
//! Credits come from the same price-table function spawn reserves with, so a
//! simulation's estimate is what spawn reserves. Durations come from the
//! history the job scripts record per task (and per worker agent): a
//! log-scale histogram of item durations and the attempts that failed.
//! Without history the estimate falls back to a stated bound: every attempt
//! takes `timeout_per_item`. A request may add stages that depend on the
//! job and on each other; the simulation then gives the critical path, the
//! total credits, and the chance each stage is reached.

use std::collections::HashMap;

use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::agents::registry::{AgentFilter, AgentStatus};
use crate::bus::AgentBus;
use crate::error::{Error, Result};
use crate::jobs::{JobSpec, Settings, check_settings};
use crate::keys::{self, TenantId};
use crate::money::Credits;

mod graph;
mod history;

use graph::{JOB_STAGE, Node, check_stage_shape, topological_order};
pub use graph::{MAX_DEPENDS_ON, MAX_FAN_OUT, MAX_STAGES};
pub use history::TaskHistory;
use history::{Estimate, estimate};

/// Waves shown in the execution preview.
const PREVIEW_WAVES: usize = 20;
/// A job costing more than this share of the available credits is "high cost".
const HIGH_COST_SHARE: f64 = 0.5;
/// An item more likely than this to fail for good makes retries "likely to exhaust".
const EXHAUSTION_RISK: f64 = 0.01;

/// A further stage of work, run after the stages it depends on. Unset fields
/// take the job's values.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    /// Number of items.
    pub items: usize,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub worker_agent: Option<String>,
    #[serde(default)]
    pub parallelism: Option<i64>,
    #[serde(default)]
    pub timeout_per_item: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Names of stages (or `job`, the job itself) that must finish first.
    #[serde(
        default,
        deserialize_with = "crate::bounded::vec::<_, _, MAX_DEPENDS_ON>"
    )]
    #[schemars(length(max = MAX_DEPENDS_ON))]
    pub depends_on: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BudgetCheck {
    pub sufficient: bool,
    pub required: Credits,
    pub available: Credits,
    pub shortfall: Credits,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CostBreakdown {
    pub job_overhead: Credits,
    pub item_processing: Credits,
    pub total: Credits,
}

#[derive(Clone, Debug, Serialize)]
pub struct DurationRange {
    pub p50_seconds: f64,
    pub p95_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Assumptions {
    /// `history` (recorded item durations) or `timeout_bound` (none recorded).
    pub basis: &'static str,
    pub history_used: bool,
    /// Completed items the history holds.
    pub samples: u64,
    pub item_p50_ms: f64,
    pub item_p95_ms: f64,
    pub item_mean_ms: f64,
    /// Share of attempts that failed in the history.
    pub failure_rate: f64,
    /// Workers assumed: the job's parallelism.
    pub workers: i64,
    pub explanation: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Wave {
    pub wave: usize,
    pub first_item: usize,
    pub last_item: usize,
    pub start_seconds: f64,
    pub end_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExecutionPreview {
    pub waves: Vec<Wave>,
    pub total_waves: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageEstimate {
    pub name: String,
    pub items: usize,
    pub credits: Credits,
    pub duration: DurationRange,
    pub depends_on: Vec<String>,
    /// Earliest start and finish on the p50 schedule.
    pub start_seconds: f64,
    pub finish_seconds: f64,
    /// Chance every stage this one depends on (directly or not) finishes
    /// without an item failing for good.
    pub reach_probability: f64,
    /// Chance this stage itself finishes without an item failing for good.
    pub success_probability: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Graph {
    pub stages: Vec<StageEstimate>,
    /// Stage names along the longest p50 path.
    pub critical_path: Vec<String>,
    pub critical_path_seconds: f64,
    pub total_credits: Credits,
}

/// The answer of `POST /jobs/simulate`: the original's fields and more.
#[derive(Clone, Debug, Serialize)]
pub struct Simulation {
    pub feasible: bool,
    pub estimated_credits: Credits,
    pub credits_per_item: Credits,
    pub item_count: usize,
    pub estimated_duration_seconds: f64,
    pub duration: DurationRange,
    pub assumptions: Assumptions,
    pub expected_attempts: f64,
    pub expected_retries: f64,
    pub expected_failures: f64,
    pub budget_check: BudgetCheck,
    pub risks: Vec<String>,
    pub warnings: Vec<String>,
    pub cost_breakdown: CostBreakdown,
    pub execution_preview: ExecutionPreview,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<Graph>,
}

/// Credits a job of `items` items reserves — the function spawn uses too.
pub fn cost_breakdown(bus: &AgentBus, items: usize) -> CostBreakdown {
    let prices = bus.prices();
    CostBreakdown {
        job_overhead: Credits::from_minor(prices.agent_spawn),
        item_processing: Credits::from_minor(prices.job_item * items as i64),
        total: prices.job_reservation(items).into(),
    }
}

impl AgentBus {
    /// The recorded history of `task` (for `worker_agent` when there is
    /// some, else for the task across agents).
    pub async fn task_history(
        &self,
        tenant: &TenantId,
        worker_agent: &str,
        task: &str,
    ) -> Result<Option<TaskHistory>> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let (by_agent, by_task): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
            .cmd("HGETALL")
            .arg(keys.agent_task_stats(worker_agent, task))
            .cmd("HGETALL")
            .arg(keys.task_stats(task))
            .query_async(&mut conn)
            .await?;
        Ok(TaskHistory::from_hash(&by_agent).or_else(|| TaskHistory::from_hash(&by_task)))
    }

    /// Simulates a job (and optional stages). Reads only.
    pub async fn simulate(
        &self,
        tenant: &TenantId,
        spec: &JobSpec,
        stages: &[StageSpec],
    ) -> Result<Simulation> {
        spec.validate(self.limits().max_items)?;
        let items = spec.items.len();
        let cost = cost_breakdown(self, items);
        let history = self
            .task_history(tenant, &spec.worker_agent, &spec.task)
            .await?;
        let est = estimate(
            history.as_ref(),
            items,
            spec.parallelism,
            spec.timeout_per_item,
            spec.max_retries,
        );
        let graph = if stages.is_empty() {
            None
        } else {
            Some(self.simulate_graph(tenant, spec, &est, stages).await?)
        };
        let required = graph
            .as_ref()
            .map(|g| g.total_credits)
            .unwrap_or(cost.total);
        let balance = self.balance(tenant).await?;
        let sufficient = required <= balance.available;
        let shortfall = (required - balance.available).max(Credits::ZERO);
        let budget_check = BudgetCheck {
            sufficient,
            required,
            available: balance.available,
            shortfall,
            // Word for word what spawn answers when it refuses.
            message: if sufficient {
                format!(
                    "{} credits available for {required} required",
                    balance.available
                )
            } else {
                Error::InsufficientCredits {
                    required: required.into(),
                    available: balance.available.into(),
                }
                .to_string()
            },
        };

        let mut risks = Vec::new();
        let mut warnings = Vec::new();
        if !sufficient {
            risks.push(format!("insufficient budget: {shortfall} credits short"));
        }
        let timeout_ms = spec.timeout_per_item as f64 * 1000.0;
        if est.assumptions.history_used && est.assumptions.item_p95_ms > timeout_ms {
            risks.push(format!(
                "item p95 of {:.0} ms exceeds timeout_per_item ({} s): slow items will be re-delivered and may fail for good",
                est.assumptions.item_p95_ms, spec.timeout_per_item
            ));
        }
        if est.permanent_failure * items as f64 >= 1.0 || est.permanent_failure > EXHAUSTION_RISK {
            risks.push(format!(
                "failure rate {:.1}% per attempt: about {:.1} items expected to exhaust {} retries",
                est.assumptions.failure_rate * 100.0,
                est.permanent_failure * items as f64,
                spec.max_retries
            ));
        }
        if !est.assumptions.history_used {
            warnings.push(format!(
                "no history for task {:?}: duration is a conservative bound, not a forecast",
                spec.task
            ));
        }
        if spec.max_retries == 0 {
            warnings
                .push("no retries configured: any failed attempt fails its item for good".into());
        }
        let share = if balance.available > Credits::ZERO {
            (cost.total.decimal() / balance.available.decimal())
                .to_f64()
                .unwrap_or(f64::MAX)
        } else {
            f64::MAX
        };
        if sufficient && share > HIGH_COST_SHARE {
            warnings.push(format!(
                "high cost: {} credits is {:.0}% of the {} available",
                cost.total,
                share * 100.0,
                balance.available
            ));
        }
        let live = self
            .list_agents(
                tenant,
                &AgentFilter {
                    agent_id: keys::Ident::new("worker_agent", spec.worker_agent.as_str()).ok(),
                    ..AgentFilter::default()
                },
                // Live instances heartbeat most recently, so they come first:
                // reading `parallelism` of them is enough to compare.
                effective_parallelism(spec.parallelism, items).clamp(1, 1000),
            )
            .await?
            .iter()
            .filter(|i| matches!(i.status, AgentStatus::Running | AgentStatus::Idle))
            .count() as i64;
        let p = effective_parallelism(spec.parallelism, items);
        if p as i64 > live {
            let asked = match spec.parallelism {
                0 => format!("no parallelism bound ({items} items at once)"),
                n => format!("parallelism {n}"),
            };
            warnings.push(format!(
                "{asked} is above the {live} live {} workers registered: expect it to take longer",
                spec.worker_agent
            ));
        }

        let total_waves = items.div_ceil(p);
        let waves = (0..total_waves.min(PREVIEW_WAVES))
            .map(|w| {
                let per = est.per_attempt_s * est.attempts;
                Wave {
                    wave: w + 1,
                    first_item: w * p,
                    last_item: ((w + 1) * p).min(items) - 1,
                    start_seconds: w as f64 * per,
                    end_seconds: (w + 1) as f64 * per,
                }
            })
            .collect();

        Ok(Simulation {
            feasible: sufficient,
            estimated_credits: required,
            credits_per_item: Credits::from_minor(self.prices().job_item),
            item_count: items,
            estimated_duration_seconds: graph
                .as_ref()
                .map(|g| g.critical_path_seconds)
                .unwrap_or(est.p50_s),
            duration: DurationRange {
                p50_seconds: est.p50_s,
                p95_seconds: est.p95_s,
            },
            expected_attempts: items as f64 * est.attempts,
            expected_retries: items as f64 * (est.attempts - 1.0),
            expected_failures: items as f64 * est.permanent_failure,
            assumptions: est.assumptions,
            budget_check,
            risks,
            warnings,
            cost_breakdown: cost,
            execution_preview: ExecutionPreview { waves, total_waves },
            graph,
        })
    }

    async fn simulate_graph(
        &self,
        tenant: &TenantId,
        spec: &JobSpec,
        job: &Estimate,
        stages: &[StageSpec],
    ) -> Result<Graph> {
        check_stage_shape(stages)?;
        // Index 0 is the job; stage i is index i + 1.
        let mut index: HashMap<&str, usize> = HashMap::from([(JOB_STAGE, 0)]);
        for (i, s) in stages.iter().enumerate() {
            keys::validate_id(&format!("stages[{i}].name"), &s.name, keys::MAX_ID_LEN)?;
            if index.insert(&s.name, i + 1).is_some() {
                return Err(Error::invalid(
                    format!("stages[{i}].name"),
                    format!(
                        "{:?} used twice (\"{JOB_STAGE}\" is the job itself)",
                        s.name
                    ),
                ));
            }
        }
        let mut deps: Vec<Vec<usize>> = vec![Vec::new()];
        for (i, s) in stages.iter().enumerate() {
            let mut own = Vec::with_capacity(s.depends_on.len());
            for d in &s.depends_on {
                let Some(&at) = index.get(d.as_str()) else {
                    return Err(Error::invalid(
                        format!("stages[{i}].depends_on"),
                        format!("no stage named {d:?}"),
                    ));
                };
                if !own.contains(&at) {
                    own.push(at);
                }
            }
            deps.push(own);
        }
        let mut dependents = vec![0usize; deps.len()];
        for d in deps.iter().flatten() {
            dependents[*d] += 1;
            if dependents[*d] > MAX_FAN_OUT {
                let name = if *d == 0 {
                    JOB_STAGE
                } else {
                    &stages[*d - 1].name
                };
                return Err(Error::invalid(
                    "stages",
                    format!("at most {MAX_FAN_OUT} stages may depend on one stage ({name:?})"),
                ));
            }
        }
        let order = topological_order(&deps).map_err(|cycle| {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&n| {
                    if n == 0 {
                        JOB_STAGE
                    } else {
                        stages[n - 1].name.as_str()
                    }
                })
                .collect();
            Error::invalid(
                "stages",
                format!("dependency cycle: {}", names.join(" -> ")),
            )
        })?;

        // Each stage is checked like a job of its own, and estimated from its
        // history (read once per worker agent and task).
        let mut histories: HashMap<(&str, &str), Option<TaskHistory>> = HashMap::new();
        let mut nodes = vec![Node::new(self, spec.items.len(), job)];
        for (i, s) in stages.iter().enumerate() {
            let worker_agent = s.worker_agent.as_deref().unwrap_or(&spec.worker_agent);
            let task = s.task.as_deref().unwrap_or(&spec.task);
            let settings = Settings {
                worker_agent,
                task,
                items: s.items,
                parallelism: s.parallelism.unwrap_or(spec.parallelism),
                timeout_per_item: s.timeout_per_item.unwrap_or(spec.timeout_per_item),
                max_retries: s.max_retries.unwrap_or(spec.max_retries),
            };
            check_settings(&settings, self.limits().max_items).map_err(|e| match e {
                Error::Invalid { field, reason } => {
                    Error::invalid(format!("stages[{i}].{field}"), reason)
                }
                other => other,
            })?;
            let history = match histories.get(&(worker_agent, task)) {
                Some(h) => h.clone(),
                None => {
                    let h = self.task_history(tenant, worker_agent, task).await?;
                    histories.insert((worker_agent, task), h.clone());
                    h
                }
            };
            let e = estimate(
                history.as_ref(),
                s.items,
                settings.parallelism,
                settings.timeout_per_item,
                settings.max_retries,
            );
            nodes.push(Node::new(self, s.items, &e));
        }

        // Earliest start on the p50 schedule, the critical path, reach chances.
        // Ancestor sets are bitsets: stages are capped, so this stays small.
        let words = nodes.len().div_ceil(64);
        let mut ancestors: Vec<Vec<u64>> = vec![Vec::new(); nodes.len()];
        let mut finish: Vec<(f64, Option<usize>)> = vec![(0.0, None); nodes.len()];
        let name = |n: usize| -> String {
            if n == 0 {
                JOB_STAGE.to_string()
            } else {
                stages[n - 1].name.clone()
            }
        };
        let mut out = Vec::with_capacity(nodes.len());
        for &n in &order {
            let node = &nodes[n];
            let (start, via) = deps[n]
                .iter()
                .map(|&d| (finish[d].0, Some(d)))
                .fold((0.0, None), |a, b| if b.0 > a.0 { b } else { a });
            finish[n] = (start + node.p50, via);
            let mut anc = vec![0u64; words];
            for &d in &deps[n] {
                anc[d / 64] |= 1 << (d % 64);
                for (w, a) in anc.iter_mut().zip(&ancestors[d]) {
                    *w |= a;
                }
            }
            let reach = (0..nodes.len())
                .filter(|a| anc[a / 64] & (1 << (a % 64)) != 0)
                .map(|a| nodes[a].success)
                .product::<f64>();
            ancestors[n] = anc;
            out.push(StageEstimate {
                name: name(n),
                items: node.items,
                credits: node.credits,
                duration: DurationRange {
                    p50_seconds: node.p50,
                    p95_seconds: node.p95,
                },
                depends_on: deps[n].iter().map(|&d| name(d)).collect(),
                start_seconds: start,
                finish_seconds: start + node.p50,
                reach_probability: reach,
                success_probability: node.success,
            });
        }
        let (mut at, end) = finish
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .map(|(n, f)| (n, f.0))
            .unwrap_or((0, 0.0));
        let mut path = vec![name(at)];
        while let Some(prev) = finish[at].1 {
            path.push(name(prev));
            at = prev;
        }
        path.reverse();
        Ok(Graph {
            total_credits: out.iter().map(|s| s.credits).sum(),
            stages: out,
            critical_path: path,
            critical_path_seconds: end,
        })
    }
}

/// Items run at once: the job's parallelism, or every item when it has no
/// bound (0).
pub(crate) fn effective_parallelism(parallelism: i64, items: usize) -> usize {
    match usize::try_from(parallelism) {
        Ok(0) | Err(_) => items.max(1),
        Ok(p) => p,
    }
}
