//! `/api/v1/settings`: what a client working through the scripts must agree
//! on with this server — its prices and the limits the scripts are given
//! (the Python package reads them instead of assuming the defaults).

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::{ApiResult, AppState, Tenant};
use crate::money::Credits;
use crate::prices::Prices;

#[derive(Serialize)]
pub struct Settings {
    /// Each skill's price in credits.
    prices: std::collections::BTreeMap<&'static str, Credits>,
    /// The same in minor units (hundredths), as the scripts take them.
    prices_minor: Prices,
    job_retention_secs: u64,
    max_items: usize,
    max_payload_bytes: usize,
    max_instances: usize,
    stale_after_secs: u64,
    inbox_cap: usize,
    max_deliveries: u32,
    redeliver_after_ms: u128,
    invoke_retention_secs: u64,
}

pub async fn show(State(state): State<AppState>, _tenant: Tenant) -> ApiResult<Json<Settings>> {
    let (p, l) = (state.bus.prices().clone(), state.bus.limits());
    let prices = [
        ("agent_spawn", p.agent_spawn),
        ("agent_invoke", p.agent_invoke),
        ("agent_message", p.agent_message),
        ("blackboard_read", p.blackboard_read),
        ("blackboard_write", p.blackboard_write),
        ("blackboard_lock", p.blackboard_lock),
        ("job_item", p.job_item),
    ]
    .into_iter()
    .map(|(skill, minor)| (skill, Credits::from_minor(minor)))
    .collect();
    Ok(Json(Settings {
        prices,
        prices_minor: p,
        job_retention_secs: l.job_retention.as_secs(),
        max_items: l.max_items,
        max_payload_bytes: l.max_payload_bytes,
        max_instances: l.max_instances,
        stale_after_secs: l.stale_after.as_secs(),
        inbox_cap: l.inbox_cap,
        max_deliveries: l.max_deliveries,
        redeliver_after_ms: l.redeliver_after.as_millis(),
        invoke_retention_secs: l.invoke_retention.as_secs(),
    }))
}
