//! The integration tests, one binary (one link instead of two dozen): each
//! module one subject, all against real Redis and PostgreSQL. Two checks of
//! process-wide state keep a process of their own: `tests/metrics.rs` (exact
//! counts of what one process recorded) and `tests/logs.rs` (what a scoped
//! log subscriber sees).

#[path = "../common/mod.rs"]
mod common;
mod console;

mod agents;
mod api_agents;
mod api_jobs;
mod balance_cache;
mod blackboard;
mod broadcast_chunks;
mod deadlines;
mod faults;
mod foundation;
mod fuzz;
mod hostile;
mod jobs;
mod jobs_interleavings;
mod ledger_model;
mod load_and_demo;
mod money;
mod openapi;
mod ops;
mod parallelism;
mod promises;
mod protocol;
mod read_ahead;
mod reconnect;
mod registry_shards;
mod security;
mod simulate;
mod sink;
mod sink_signals;
mod spawn_chunks;
mod token_cache;
mod verify;
