//! agentbus: a Redis-centric event-streaming engine for multi-agent work.
//!
//! Hot state (jobs, items, credits, inboxes, the blackboard) lives in Redis
//! and changes only through Lua scripts that also append an event to the
//! tenant's outbox; a sink mirrors those events into Postgres. How a
//! request, a claim and an outbox event travel: `ARCHITECTURE.md`.
//!
//! The layout, module → what it owns:
//!
//! - Foundations: [`keys`] (every Redis key name), [`money`] (exact credits),
//!   [`text`] (free text bound for Postgres), [`codec`] and [`payload`]
//!   (MessagePack ↔ JSON), [`bounded`] (input bounded while parsed),
//!   [`error`], [`conn`] (Redis connections), [`scripts`] (the Lua scripts of
//!   `lua/` and the typed calls to them), [`bus`] (the handle every
//!   capability hangs off), [`tenant`] (the same, scoped to one tenant:
//!   `bus.tenant(&t).jobs()…`), [`prices`], [`db`] (Postgres and
//!   migrations).
//! - Money and jobs: [`credits`], [`jobs`] (spec, model, operations; the
//!   reclaimer and the Rust worker), [`simulate`], [`pages`].
//! - [`agents`]: registry, messages and their receiver, replies, invoke,
//!   dead letters.
//! - Shared state: [`blackboard`].
//! - [`outbox`]: the event schema, the sink and its Postgres writer,
//!   stranded events, the audit trail, `verify`.
//! - Serving: [`api`] (axum, REST, OpenAPI), [`auth`], [`balance_cache`], [`metrics`],
//!   [`telemetry`], [`reaper`] (stale agents, expired invocations and
//!   entries, metering), [`due`] (the deadlines that drive the reaper and
//!   the reclaimer), [`server`].
//! - For the operator tools: [`config`] (flags and environment, shared with
//!   [`server`]) and [`inspect`]. The tools themselves — the command line,
//!   the demo, the load test, the benchmarks and their HTTP client — are the
//!   binary's (`src/main.rs`, `src/cli/`), not the library's.

pub mod agents;
pub mod api;
pub mod auth;
pub mod balance_cache;
pub mod blackboard;
pub mod bounded;
pub mod bus;
pub mod codec;
pub mod config;
pub mod conn;
pub mod credits;
pub mod db;
pub mod due;
pub mod error;
pub mod inspect;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod pages;
pub mod payload;
pub mod prices;
pub mod reaper;
pub mod scripts;
pub mod server;
pub mod simulate;
pub mod telemetry;
pub mod tenant;
pub mod text;

pub use bus::{AgentBus, Limits};
pub use error::{Error, Result};
pub use keys::{Keyspace, TenantId};
