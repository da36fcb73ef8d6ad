//! The integration tests, one binary (one link instead of two dozen): each
//! module one subject, all against real Redis and PostgreSQL. `metrics`
//! stays a binary of its own, as it counts what one process recorded.

#[path = "../common/mod.rs"]
mod common;

mod agents;
mod api_agents;
mod api_jobs;
mod blackboard;
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
mod promises;
mod reconnect;
mod security;
mod simulate;
mod sink;
mod verify;
