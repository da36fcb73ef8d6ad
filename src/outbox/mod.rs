//! The outbox and its mirror: every script that moves money or ends
//! something appends an event to the tenant's outbox stream; the sink
//! writes those events to Postgres and the rest of this module reads or
//! judges what it wrote.
//!
//! - [`events`]: the event schema (stream entry → row).
//! - [`sink`]: the runner (read, write, ack, trim; one consumer per process).
//! - [`writer`]: one batch as one Postgres transaction.
//! - [`status`]: each outbox's backlog and lag.
//! - [`stranded`]: events Postgres refused, kept and replayable.
//! - [`audit`]: the invoke audit trail, queried.
//! - [`verify`]: Redis against Postgres, per tenant and job; [`job_audit`]:
//!   one job judged from its own state.

pub mod audit;
pub mod events;
pub mod job_audit;
pub mod sink;
pub mod status;
pub mod stranded;
pub mod verify;
pub mod writer;
