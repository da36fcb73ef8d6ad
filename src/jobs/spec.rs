//! What a job is asked to be: its spec, its settings and their bounds,
//! checked before anything is written.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{self, Ident};
use crate::payload::Payload;

/// Most items of a job in flight at once (delivered, not yet finished):
/// the original's default (10); its ceiling (100) raised, since a
/// batch-claiming worker fleet keeps many more in flight; 0 is no bound
/// (the workers' own concurrency is the limit, and a Rust worker then
/// claims without the bound's check).
pub const PARALLELISM: (i64, i64) = (0, 10_000);
/// Bounds of the original system, kept.
pub const TIMEOUT_PER_ITEM_SECS: (i64, i64) = (1, 3600);
pub const MAX_RETRIES: (i64, i64) = (0, 10);
/// Longest task description accepted.
pub const MAX_TASK_LEN: usize = 200;
/// Most items one claim or reclaim call takes (as the scripts check).
pub(super) const MAX_CLAIM_PER_CALL: usize = 1_000;
/// Longest cancel reason or canceller name.
pub const MAX_CANCEL_TEXT: usize = 1024;

fn default_parallelism() -> i64 {
    10
}
fn default_timeout() -> i64 {
    60
}
fn default_retries() -> i64 {
    3
}

/// What a caller asks for: the body of `POST /jobs` (and of simulate).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[schemars(with = "keys::Ident")]
    pub orchestrator_agent: String,
    #[schemars(with = "keys::Ident")]
    pub worker_agent: String,
    #[schemars(length(min = 1, max = MAX_TASK_LEN))]
    pub task: String,
    /// One entry per item (any JSON, each at most `AGENTBUS_MAX_PAYLOAD_BYTES`);
    /// at most `AGENTBUS_MAX_ITEMS`, counted while the body is parsed.
    #[schemars(length(min = 1))]
    #[serde(deserialize_with = "crate::bounded::items")]
    pub items: Vec<Payload>,
    /// Most items in flight at once (10; 0: no bound).
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = PARALLELISM.0, max = PARALLELISM.1))]
    pub parallelism: i64,
    /// Seconds an item may stay with a worker before it is re-delivered.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = TIMEOUT_PER_ITEM_SECS.0, max = TIMEOUT_PER_ITEM_SECS.1))]
    pub timeout_per_item: i64,
    #[serde(default = "default_retries")]
    #[schemars(range(min = MAX_RETRIES.0, max = MAX_RETRIES.1))]
    pub max_retries: i64,
    /// Aggregate numeric outputs into a blackboard namespace as items complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateInto>,
}

/// Where a job's numeric outputs are aggregated: each completed item's
/// output (or the number at `field` of it) becomes the entry `<job>:<index>`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateInto {
    pub namespace: Ident,
    #[serde(default)]
    pub field: Option<String>,
}

impl JobSpec {
    /// A spec with the original's defaults.
    pub fn new(
        orchestrator_agent: &str,
        worker_agent: &str,
        task: &str,
        items: Vec<serde_json::Value>,
    ) -> Self {
        Self {
            orchestrator_agent: orchestrator_agent.into(),
            worker_agent: worker_agent.into(),
            task: task.into(),
            items: items.into_iter().map(Payload::from).collect(),
            parallelism: default_parallelism(),
            timeout_per_item: default_timeout(),
            max_retries: default_retries(),
            aggregate: None,
        }
    }

    /// Checks every field; the first violation names its field.
    pub fn validate(&self, max_items: usize) -> Result<()> {
        keys::validate_id(
            "orchestrator_agent",
            &self.orchestrator_agent,
            keys::MAX_ID_LEN,
        )?;
        check_settings(
            &Settings {
                worker_agent: &self.worker_agent,
                task: &self.task,
                items: self.items.len(),
                parallelism: self.parallelism,
                timeout_per_item: self.timeout_per_item,
                max_retries: self.max_retries,
            },
            max_items,
        )?;
        if let Some(field) = self.aggregate.as_ref().and_then(|a| a.field.as_ref()) {
            keys::validate_id("aggregate.field", field, keys::MAX_ID_LEN)?;
        }
        Ok(())
    }
}

/// The settings a job (or a simulated stage) is checked by, without its items.
pub struct Settings<'a> {
    pub worker_agent: &'a str,
    pub task: &'a str,
    pub items: usize,
    pub parallelism: i64,
    pub timeout_per_item: i64,
    pub max_retries: i64,
}

/// Checks a job's settings; the first violation names its field.
pub fn check_settings(s: &Settings<'_>, max_items: usize) -> Result<()> {
    keys::validate_id("worker_agent", s.worker_agent, keys::MAX_ID_LEN)?;
    if s.task.trim().is_empty() {
        return Err(Error::invalid("task", "must not be empty"));
    }
    if s.task.len() > MAX_TASK_LEN || s.task.chars().any(char::is_control) {
        return Err(Error::invalid(
            "task",
            format!("at most {MAX_TASK_LEN} characters, no control characters"),
        ));
    }
    if s.items == 0 {
        return Err(Error::invalid("items", "must hold at least one item"));
    }
    if s.items > max_items {
        return Err(Error::invalid(
            "items",
            format!("at most {max_items} items per job ({} given)", s.items),
        ));
    }
    in_range("parallelism", s.parallelism, PARALLELISM)?;
    in_range(
        "timeout_per_item",
        s.timeout_per_item,
        TIMEOUT_PER_ITEM_SECS,
    )?;
    in_range("max_retries", s.max_retries, MAX_RETRIES)?;
    Ok(())
}

fn in_range(field: &str, value: i64, (lo, hi): (i64, i64)) -> Result<()> {
    if value < lo || value > hi {
        return Err(Error::invalid(
            field,
            format!("must be between {lo} and {hi} ({value} given)"),
        ));
    }
    Ok(())
}
