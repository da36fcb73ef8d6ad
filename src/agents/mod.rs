//! Agents: the registry of instances, the messages between them over inbox
//! streams, the replies their waiting callers read, invocations (request,
//! response, timeout, audit) and dead letters.
//!
//! - [`registry`]: instances, heartbeats, liveness, listing indexes.
//! - [`messages`]: send, broadcast, receive (the [`messages::Receiver`]),
//!   listing and marking read.
//! - [`replies`] and [`reply_hub`]: one reader per process and tenant hands
//!   replies to the callers waiting for them.
//! - [`invoke`]: one agent calls another and waits, audited; the target
//!   side's `serve_invocations`.
//! - [`dlq`]: dead letters and their replay.

pub mod dlq;
pub mod invoke;
pub mod messages;
pub mod registry;
pub mod replies;
pub mod reply_hub;
