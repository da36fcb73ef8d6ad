//! A task's recorded history (the job scripts' duration histogram and
//! outcomes) and what it predicts for a group of items.

use std::collections::HashMap;

use serde::Serialize;

use super::Assumptions;

/// History of one task, as the job scripts recorded it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskHistory {
    pub completed: u64,
    pub retried: u64,
    pub failed: u64,
    /// (bucket's lower and upper bound in ms, count), ascending.
    #[serde(skip)]
    pub buckets: Vec<(f64, f64, u64)>,
    pub mean_ms: f64,
}

impl TaskHistory {
    pub(super) fn from_hash(h: &HashMap<String, String>) -> Option<Self> {
        let get = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let completed = get("completed");
        if completed == 0 {
            return None;
        }
        let mut buckets: Vec<(f64, f64, u64)> = h
            .iter()
            .filter_map(|(k, v)| {
                let b: i32 = k.strip_prefix('b')?.parse().ok()?;
                // Bucket b holds durations d with floor(4·log2(d + 1)) = b.
                let bound = |i: i32| 2f64.powf(i as f64 / 4.0) - 1.0;
                Some((bound(b), bound(b + 1), v.parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(TaskHistory {
            completed,
            retried: get("retried"),
            failed: get("failed"),
            mean_ms: get("sum_ms") as f64 / completed as f64,
            buckets,
        })
    }

    /// Duration (ms) below which a share `q` of items finished.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.buckets.iter().map(|(_, _, n)| n).sum();
        let target = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (lower, upper, n) in &self.buckets {
            if seen + n >= target {
                // Interpolate inside the bucket.
                let within = (target - seen) as f64 / (*n).max(1) as f64;
                return lower + (upper - lower) * within;
            }
            seen += n;
        }
        self.buckets.last().map(|b| b.1).unwrap_or(0.0)
    }

    /// Standard deviation of item durations (ms), from the histogram.
    pub fn sd_ms(&self) -> f64 {
        let total: u64 = self.buckets.iter().map(|(_, _, n)| n).sum();
        if total < 2 {
            return 0.0;
        }
        let var: f64 = self
            .buckets
            .iter()
            .map(|(lower, upper, n)| *n as f64 * ((lower + upper) / 2.0 - self.mean_ms).powi(2))
            .sum();
        (var / total as f64).sqrt()
    }

    /// Share of attempts that failed (retried or failed for good).
    pub fn failure_rate(&self) -> f64 {
        let bad = self.retried + self.failed;
        bad as f64 / (self.completed + bad) as f64
    }
}

/// What one group of items is expected to take.
pub(super) struct Estimate {
    pub(super) p50_s: f64,
    pub(super) p95_s: f64,
    pub(super) attempts: f64,
    pub(super) permanent_failure: f64,
    pub(super) assumptions: Assumptions,
    pub(super) per_attempt_s: f64,
}

pub(super) fn estimate(
    history: Option<&TaskHistory>,
    items: usize,
    parallelism: i64,
    timeout_s: i64,
    max_retries: i64,
) -> Estimate {
    let workers = super::effective_parallelism(parallelism, items) as i64;
    let (p50_ms, p95_ms, mean_ms, sd_ms, f, samples) = match history {
        Some(h) => (
            h.quantile_ms(0.5),
            h.quantile_ms(0.95),
            h.mean_ms,
            h.sd_ms(),
            h.failure_rate(),
            h.completed,
        ),
        None => {
            let t = timeout_s as f64 * 1000.0;
            (t, t, t, 0.0, 0.0, 0)
        }
    };
    // Attempts per item: 1 + f + f² + … up to max_retries retries.
    let attempts = if f > 0.0 {
        (1.0 - f.powi(max_retries as i32 + 1)) / (1.0 - f)
    } else {
        1.0
    };
    let permanent_failure = f.powi(max_retries as i32 + 1);
    // Workers pull continuously: each carries its share of all attempts.
    let per_worker = (items as f64 * attempts / workers as f64).ceil().max(1.0);
    let p50_ms_total = per_worker * mean_ms;
    // Spread of a sum of per_worker durations, plus the slowest last item.
    let p95_ms_total =
        p50_ms_total + 1.645 * per_worker.sqrt() * sd_ms + (p95_ms - mean_ms).max(0.0);
    let explanation = match history {
        Some(_) => format!(
            "{samples} recorded items of this task: {workers} workers each take about {per_worker} attempts of {mean_ms:.0} ms on average"
        ),
        None => format!(
            "no history for this task: assumes every attempt takes the full timeout_per_item ({timeout_s} s) on {workers} workers, a conservative bound"
        ),
    };
    Estimate {
        p50_s: p50_ms_total / 1000.0,
        p95_s: p95_ms_total / 1000.0,
        attempts,
        permanent_failure,
        per_attempt_s: mean_ms / 1000.0,
        assumptions: Assumptions {
            basis: if history.is_some() {
                "history"
            } else {
                "timeout_bound"
            },
            history_used: history.is_some(),
            samples,
            item_p50_ms: p50_ms,
            item_p95_ms: p95_ms,
            item_mean_ms: mean_ms,
            failure_rate: f,
            workers,
            explanation,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(buckets: &[(i32, u64)], completed: u64, sum_ms: u64, retried: u64) -> TaskHistory {
        let mut h: HashMap<String, String> = buckets
            .iter()
            .map(|(b, n)| (format!("b{b}"), n.to_string()))
            .collect();
        h.insert("completed".into(), completed.to_string());
        h.insert("sum_ms".into(), sum_ms.to_string());
        h.insert("retried".into(), retried.to_string());
        TaskHistory::from_hash(&h).unwrap()
    }

    #[test]
    fn quantiles_come_from_the_histogram() {
        // 100 ms items fall in bucket floor(4·log2(101)) = 26: [89.5, 106.6) ms.
        let h = history(&[(26, 100)], 100, 10_000, 0);
        let p50 = h.quantile_ms(0.5);
        assert!((89.0..=107.0).contains(&p50), "{p50}");
        assert_eq!(h.failure_rate(), 0.0);
        // Half at ~10 ms, half at ~1 s: the median sits at the top of the fast half,
        // the p95 among the slow ones.
        let h = history(&[(13, 50), (39, 50)], 100, 50 * 10 + 50 * 1000, 0);
        assert!(h.quantile_ms(0.5) < 12.0, "{}", h.quantile_ms(0.5));
        assert!(
            (800.0..1200.0).contains(&h.quantile_ms(0.95)),
            "{}",
            h.quantile_ms(0.95)
        );
        assert!(h.sd_ms() > 400.0);
    }

    #[test]
    fn retries_follow_the_failure_rate() {
        let h = history(&[(26, 90)], 90, 9_000, 10);
        let e = estimate(Some(&h), 100, 10, 60, 3);
        // f = 0.1: 1 + 0.1 + 0.01 + 0.001 attempts per item.
        assert!((e.attempts - 1.111).abs() < 1e-9, "{}", e.attempts);
        assert!((e.permanent_failure - 0.0001).abs() < 1e-12);
        let none = estimate(None, 100, 10, 60, 3);
        assert_eq!(none.p50_s, 10.0 * 60.0);
        assert!(!none.assumptions.history_used);
    }
}
