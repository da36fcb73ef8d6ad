//! What a job is: its state as read from Redis, its items as delivered,
//! and the outcomes and pages the operations answer with.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::StreamEntry;
use crate::error::{Error, Result};
use crate::money::Credits;
use crate::payload::{self, Payload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    /// A large spawn's items are still being enqueued (already claimable).
    Spawning,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => JobStatus::Pending,
            "spawning" => JobStatus::Spawning,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(Error::protocol(format!("job status {other:?}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Spawning => "spawning",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Progress {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    /// Items not yet in a terminal state (zero once the job has ended).
    pub pending: i64,
    /// Items stopped by a cancellation.
    pub cancelled: i64,
    /// Re-deliveries after a failure or timeout.
    pub retried: i64,
    pub progress_pct: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct JobCredits {
    pub reserved: Credits,
    pub spent: Credits,
    pub refunded: Credits,
    /// Still held for items not yet finished: `reserved - spent - refunded`.
    pub still_reserved: Credits,
}

impl JobCredits {
    /// A job's credits from its three figures; `still_reserved` follows.
    pub fn new(reserved: Credits, spent: Credits, refunded: Credits) -> Self {
        JobCredits {
            reserved,
            spent,
            refunded,
            still_reserved: reserved - spent - refunded,
        }
    }
}

/// A job as `GET /jobs/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub status: JobStatus,
    pub task: String,
    pub orchestrator_agent: String,
    pub worker_agent: String,
    pub parallelism: i64,
    pub timeout_per_item: i64,
    pub max_retries: i64,
    pub progress: Progress,
    pub credits: JobCredits,
    pub credits_per_item: Credits,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub(super) fn millis_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

impl Job {
    pub(super) fn from_hash(id: Uuid, h: &HashMap<String, String>) -> Result<Self> {
        let int = |name: &str| -> Result<i64> {
            h.get(name)
                .ok_or_else(|| Error::protocol(format!("job field {name} missing")))?
                .parse()
                .map_err(|_| Error::protocol(format!("job field {name} not an integer")))
        };
        let opt_int = |name: &str| h.get(name).and_then(|v| v.parse::<i64>().ok());
        let text = |name: &str| h.get(name).cloned().unwrap_or_default();
        let status = JobStatus::parse(h.get("status").map(String::as_str).unwrap_or(""))?;
        let total = int("total")?;
        let completed = int("completed")?;
        let failed = int("failed")?;
        let cancelled = opt_int("cancelled").unwrap_or(0);
        let pending = if status.is_finished() {
            0
        } else {
            total - completed - failed
        };
        let progress_pct = if total > 0 {
            ((completed + failed) as f64 * 10000.0 / total as f64).round() / 100.0
        } else {
            0.0
        };
        let (reserved, spent, refunded) = (int("reserved")?, int("spent")?, int("refunded")?);
        Ok(Job {
            id,
            status,
            task: text("task"),
            orchestrator_agent: text("orchestrator"),
            worker_agent: text("worker_agent"),
            parallelism: int("parallelism")?,
            timeout_per_item: int("timeout_ms")? / 1000,
            max_retries: int("max_retries")?,
            progress: Progress {
                total,
                completed,
                failed,
                pending,
                cancelled,
                retried: opt_int("retried").unwrap_or(0),
                progress_pct,
            },
            credits: JobCredits::new(
                Credits::from_minor(reserved),
                Credits::from_minor(spent),
                Credits::from_minor(refunded),
            ),
            credits_per_item: Credits::from_minor(int("item_cost")?),
            created_at: millis_to_time(int("created_at")?)
                .ok_or_else(|| Error::protocol("job created_at out of range"))?,
            started_at: opt_int("started_at").and_then(millis_to_time),
            completed_at: opt_int("completed_at").and_then(millis_to_time),
        })
    }
}

/// An item handed to a worker.
#[derive(Clone, Debug, Serialize)]
pub struct ClaimedItem {
    /// The stream entry id; names both the item and this delivery.
    pub item_id: String,
    pub item_index: i64,
    pub input: Payload,
    /// Earlier attempts of this item (0 on the first delivery).
    pub retry_count: i64,
    /// Why the stored input could not be decoded (then `input` is null):
    /// the worker should fail the item rather than guess.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

impl ClaimedItem {
    pub(crate) fn from_entry(entry: &StreamEntry) -> Result<Self> {
        let (input, undecodable) = payload::from_stored(entry.get("input"), "item");
        Ok(ClaimedItem {
            item_id: entry.id.clone(),
            item_index: entry
                .int("idx")
                .ok_or_else(|| Error::protocol("item entry without idx"))?,
            input,
            retry_count: entry.int("attempt").unwrap_or(0),
            undecodable,
        })
    }
}

/// What happened to one completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompleteOutcome {
    /// Recorded and charged.
    Completed,
    /// The item was already in a terminal state: nothing charged.
    Duplicate,
    /// This delivery is no longer held (re-delivered after a timeout): refused.
    Stale,
    /// Not an item of this job.
    Invalid,
}

/// What happened to a failure report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome")]
pub enum FailOutcome {
    /// Re-queued for another attempt.
    Retried {
        attempt: i64,
    },
    /// Failed for good: dead-lettered, its credits released.
    Failed,
    Duplicate,
    Stale,
    Invalid,
}

/// The seed's cancel contract.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CancelOutcome {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub completed_items: i64,
    pub cancelled_items: i64,
    pub credits_refunded: Credits,
}

/// One output of a finished item.
#[derive(Clone, Debug, Serialize)]
pub struct ItemResult {
    pub result_id: String,
    pub item_index: i64,
    pub output: Payload,
    pub completed_at: Option<DateTime<Utc>>,
    /// Why the stored output could not be decoded (then `output` is null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

/// A page of a job's results, and where the next one starts.
#[derive(Clone, Debug, Serialize)]
pub struct ResultPage {
    pub results: Vec<ItemResult>,
    /// Pass as `after` for the next page (none at the end).
    pub next: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub count: usize,
    pub total: i64,
}
