//! Prometheus metrics: the recorder, the histogram buckets, and one function
//! per thing measured, so names and labels live in one place.
//!
//! Every name starts with `agentbus_`. Labels are bounded: a tenant at most
//! (only with `AGENTBUS_METRICS_TENANT_LABEL`; else `all`)
//! (plus small fixed sets such as an operation or an outcome), never an id.
//! Without an installed recorder (library use, tests) every call is a no-op.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds, from 100 µs to 10 minutes: what agentbus' latencies span.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Job durations run from seconds to hours.
const JOB_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

/// The tenant label's value when tenants are not labelled.
const ALL_TENANTS: &str = "all";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once); the handle renders `/metrics`.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("agentbus_job_duration_seconds".into()),
                    JOB_BUCKETS,
                )
            });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    describe();
                    zero_rare_series();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Series of rare events exist from the start (at 0), so a dashboard or an
/// alert sees them before the first one happens.
fn zero_rare_series() {
    gauge!("agentbus_http_connections").set(0.0);
    counter!("agentbus_http_panics_total").absolute(0);
    counter!("agentbus_auth_failures_total").absolute(0);
    for kind in POISON_KINDS {
        counter!("agentbus_poison_entries_total", "kind" => *kind).absolute(0);
    }
}

/// What an undecodable stored payload was: an item's input, a result, a
/// message, an invocation's response (as answered) or its stored trace.
const POISON_KINDS: &[&str] = &["item", "result", "message", "response", "invocation"];

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "agentbus_job_spawn_duration_seconds",
        "Time to spawn a job (one Lua call)"
    );
    describe_histogram!("agentbus_job_duration_seconds", "Creation to end of a job");
    describe_counter!("agentbus_jobs_ended_total", "Jobs ended, by final status");
    describe_counter!("agentbus_items_claimed_total", "Item deliveries");
    describe_counter!(
        "agentbus_items_completed_total",
        "Items completed (each charged once)"
    );
    describe_counter!(
        "agentbus_items_failed_total",
        "Failed attempts reported or timed out"
    );
    describe_counter!(
        "agentbus_items_retried_total",
        "Items re-queued for another attempt"
    );
    describe_counter!(
        "agentbus_items_dead_lettered_total",
        "Items failed for good"
    );
    describe_histogram!(
        "agentbus_item_claim_to_complete_seconds",
        "Delivery to completion of an item"
    );
    describe_histogram!(
        "agentbus_blackboard_op_duration_seconds",
        "Blackboard operations, by operation"
    );
    describe_counter!(
        "agentbus_credit_operations_total",
        "Ledger movements mirrored, by operation"
    );
    describe_counter!(
        "agentbus_credit_amount_minor_total",
        "Credits moved in hundredths of a credit, by operation (mirrored ledger)"
    );
    describe_histogram!(
        "agentbus_invoke_duration_seconds",
        "Invoke round trips, by outcome"
    );
    describe_counter!("agentbus_invokes_total", "Invocations, by outcome");
    describe_counter!("agentbus_messages_sent_total", "Messages sent");
    describe_counter!(
        "agentbus_messages_delivered_total",
        "Messages delivered to a receiver"
    );
    describe_counter!(
        "agentbus_messages_dead_lettered_total",
        "Messages delivered too often without ack"
    );
    describe_histogram!(
        "agentbus_message_latency_seconds",
        "Send to delivery of a message"
    );
    describe_gauge!("agentbus_sink_lag_events", "Outbox events not yet mirrored");
    describe_gauge!(
        "agentbus_sink_stranded_events",
        "Outbox events Postgres refused, waiting to be replayed (alert when above 0)"
    );
    describe_gauge!(
        "agentbus_sink_lag_seconds",
        "Age of the oldest unmirrored event"
    );
    describe_histogram!(
        "agentbus_sink_commit_lag_seconds",
        "Append to commit of each mirrored event"
    );
    describe_histogram!(
        "agentbus_sink_batch_duration_seconds",
        "Write + commit of one sink batch"
    );
    describe_counter!("agentbus_sink_rows_total", "Events mirrored into Postgres");
    describe_counter!("agentbus_reclaimer_runs_total", "Reclaimer passes");
    describe_counter!("agentbus_reaper_runs_total", "Reaper passes");
    describe_counter!(
        "agentbus_backend_errors_total",
        "Operations failed by Redis or Postgres (a request answered 503, a background pass, a worker's call given up), by service and kind"
    );
    describe_histogram!(
        "agentbus_http_request_duration_seconds",
        "API requests, by method and status class"
    );
    describe_gauge!("agentbus_http_connections", "HTTP connections open");
    describe_counter!(
        "agentbus_http_panics_total",
        "Handlers that panicked (answered 500; the process goes on)"
    );
    describe_counter!(
        "agentbus_auth_failures_total",
        "Requests refused for a missing or unknown token"
    );
    describe_counter!(
        "agentbus_poison_entries_total",
        "Undecodable stream entries dead-lettered alone, by kind"
    );
}

static TENANT_LABEL: AtomicBool = AtomicBool::new(false);

/// Whether metrics carry the tenant (`AGENTBUS_METRICS_TENANT_LABEL`): off
/// by default, since it makes one series per tenant; then `tenant="all"`.
pub fn set_tenant_label(on: bool) {
    TENANT_LABEL.store(on, Ordering::Relaxed);
}

fn t(tenant: &impl AsRef<str>) -> String {
    if TENANT_LABEL.load(Ordering::Relaxed) {
        tenant.as_ref().to_string()
    } else {
        ALL_TENANTS.to_string()
    }
}

pub fn job_spawned(tenant: &impl AsRef<str>, took: Duration) {
    histogram!("agentbus_job_spawn_duration_seconds", "tenant" => t(tenant))
        .record(took.as_secs_f64());
}

/// A job ended after `lasted` (creation to end).
pub fn job_ended(tenant: &impl AsRef<str>, status: &'static str, lasted: Duration) {
    histogram!("agentbus_job_duration_seconds", "tenant" => t(tenant)).record(lasted.as_secs_f64());
    counter!("agentbus_jobs_ended_total", "tenant" => t(tenant), "status" => status).increment(1);
}

/// Item events: `claimed`, `completed`, `failed`, `retried`, `dead_lettered`.
pub fn items(tenant: &impl AsRef<str>, event: &'static str, n: u64) {
    if n == 0 {
        return;
    }
    let name = match event {
        "claimed" => "agentbus_items_claimed_total",
        "completed" => "agentbus_items_completed_total",
        "failed" => "agentbus_items_failed_total",
        "retried" => "agentbus_items_retried_total",
        "released" => "agentbus_items_released_total",
        _ => "agentbus_items_dead_lettered_total",
    };
    counter!(name, "tenant" => t(tenant)).increment(n);
}

pub fn claim_to_complete(tenant: &impl AsRef<str>, took: Duration) {
    histogram!("agentbus_item_claim_to_complete_seconds", "tenant" => t(tenant))
        .record(took.as_secs_f64());
}

pub fn blackboard_op(op: &'static str, took: Duration) {
    histogram!("agentbus_blackboard_op_duration_seconds", "op" => op).record(took.as_secs_f64());
}

/// Newly mirrored ledger rows of one operation (grant, reserve, spend,
/// refund, charge) and their amount in minor units (hundredths).
pub fn credits(operation: &str, count: u64, amount_minor: u64) {
    let op = match operation {
        "grant" => "grant",
        "reserve" => "reserve",
        "spend" => "spend",
        "refund" => "refund",
        _ => "charge",
    };
    counter!("agentbus_credit_operations_total", "op" => op).increment(count);
    counter!("agentbus_credit_amount_minor_total", "op" => op).increment(amount_minor);
}

/// `success`, `failure` or `timeout`.
pub fn invoke(outcome: &'static str, took: Duration) {
    histogram!("agentbus_invoke_duration_seconds", "outcome" => outcome).record(took.as_secs_f64());
    counter!("agentbus_invokes_total", "outcome" => outcome).increment(1);
}

/// An invocation refused before it started (no duration to record).
pub fn invoke_refused() {
    counter!("agentbus_invokes_total", "outcome" => "refused").increment(1);
}

pub fn message_sent(tenant: &impl AsRef<str>) {
    counter!("agentbus_messages_sent_total", "tenant" => t(tenant)).increment(1);
}

pub fn message_delivered(tenant: &impl AsRef<str>, latency: Option<Duration>) {
    counter!("agentbus_messages_delivered_total", "tenant" => t(tenant)).increment(1);
    if let Some(l) = latency {
        histogram!("agentbus_message_latency_seconds", "tenant" => t(tenant))
            .record(l.as_secs_f64());
    }
}

pub fn messages_dead_lettered(tenant: &impl AsRef<str>, n: u64) {
    if n > 0 {
        counter!("agentbus_messages_dead_lettered_total", "tenant" => t(tenant)).increment(n);
    }
}

pub fn sink_batch(took: Duration, events: usize, commit_lags: impl Iterator<Item = f64>) {
    histogram!("agentbus_sink_batch_duration_seconds").record(took.as_secs_f64());
    counter!("agentbus_sink_rows_total").increment(events as u64);
    let h = histogram!("agentbus_sink_commit_lag_seconds");
    for lag in commit_lags {
        h.record(lag);
    }
}

/// Sink lag per tenant, or (without tenant labels) the events summed and
/// the oldest age over every tenant.
/// Each item: (tenant, events waiting, age of the oldest, stranded events).
pub fn sink_lag<'a>(lags: impl Iterator<Item = (&'a str, u64, f64, u64)>) {
    if TENANT_LABEL.load(Ordering::Relaxed) {
        for (tenant, events, oldest_secs, stranded) in lags {
            gauge!("agentbus_sink_lag_events", "tenant" => tenant.to_string()).set(events as f64);
            gauge!("agentbus_sink_lag_seconds", "tenant" => tenant.to_string()).set(oldest_secs);
            gauge!("agentbus_sink_stranded_events", "tenant" => tenant.to_string())
                .set(stranded as f64);
        }
    } else {
        let (events, oldest, stranded) = lags.fold(
            (0u64, 0f64, 0u64),
            |(e, o, s), (_, events, oldest, stranded)| (e + events, o.max(oldest), s + stranded),
        );
        gauge!("agentbus_sink_lag_events", "tenant" => ALL_TENANTS).set(events as f64);
        gauge!("agentbus_sink_lag_seconds", "tenant" => ALL_TENANTS).set(oldest);
        gauge!("agentbus_sink_stranded_events", "tenant" => ALL_TENANTS).set(stranded as f64);
    }
}

static OPEN_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

pub fn connection_opened() {
    let n = OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
    gauge!("agentbus_http_connections").set(n as f64);
}

pub fn connection_closed() {
    let n = OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed) - 1;
    gauge!("agentbus_http_connections").set(n as f64);
}

pub fn http_panic() {
    counter!("agentbus_http_panics_total").increment(1);
}

pub fn auth_failed() {
    counter!("agentbus_auth_failures_total").increment(1);
}

/// A stored payload that could not be decoded, dead-lettered where it was read.
pub fn poison(kind: &'static str) {
    counter!("agentbus_poison_entries_total", "kind" => kind).increment(1);
}

pub fn reclaimer_run() {
    counter!("agentbus_reclaimer_runs_total").increment(1);
}

pub fn reaper_run() {
    counter!("agentbus_reaper_runs_total").increment(1);
}

/// `service`: redis or postgres; `kind`: io, server, pool, other.
pub fn backend_error(service: &'static str, kind: &'static str) {
    counter!("agentbus_backend_errors_total", "service" => service, "kind" => kind).increment(1);
}

pub fn http_request(method: &str, status: u16, took: Duration) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let method = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "OTHER",
    };
    histogram!("agentbus_http_request_duration_seconds", "method" => method, "status" => class)
        .record(took.as_secs_f64());
}
