//! Jobs over Redis Streams: spawn, claim, complete, fail, cancel, results.
//!
//! A job is a hash plus an items stream with the consumer group `workers`.
//! Every state change is one Lua script (`lua/job_*.lua`) that also writes its
//! ledger and summary events to the tenant's outbox, so an item is charged at
//! most once and a cancellation refunds exactly the uncompleted items.

//!
//! - `spec`: what a job is asked to be (validated before anything is written).
//! - `model`: what a job is (its state, items, results, outcomes).
//! - `operations`: what can be done to one (each a script).
//! - `claim`: handing out new items within the job's `parallelism`.
//! - [`reclaim`]: re-delivering what quiet workers held; [`worker`]: the
//!   Rust worker that claims, runs a handler and completes in batches.

mod claim;
mod model;
mod operations;
pub mod reclaim;
mod spec;
pub mod worker;

pub use model::*;
pub(crate) use operations::job_call;
pub use operations::validate_stream_id;
pub use spec::*;
