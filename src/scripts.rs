//! The Lua script registry.
//!
//! Each script lives in `lua/<name>.lua` with a header listing its
//! includes, KEYS and ARGV; build.rs prepends the helpers of `lua/include/`
//! the header names, and the result is embedded at compile time. `redis::Script` calls it by EVALSHA and loads it again
//! when Redis answers NOSCRIPT (after a restart or `SCRIPT FLUSH`).

use std::sync::LazyLock;

use redis::Script;

/// A script as build.rs assembled it: the helpers its header names, then
/// the script itself.
macro_rules! lua {
    ($name:literal) => {
        Script::new(include_str!(concat!(
            env!("OUT_DIR"),
            "/lua/",
            $name,
            ".lua"
        )))
    };
}

pub struct Scripts {
    pub credits_move: Script,
    pub job_spawn: Script,
    pub job_claim: Script,
    pub job_complete: Script,
    pub job_fail: Script,
    pub job_reclaim: Script,
    pub job_cancel: Script,
    pub agent_register: Script,
    pub agent_heartbeat: Script,
    pub agent_deregister: Script,
    pub agent_reap: Script,
    pub message_send: Script,
    pub message_broadcast: Script,
    pub inbox_redeliver: Script,
    pub inbox_poison: Script,
    pub inbox_take: Script,
    pub inbox_recover: Script,
    pub dlq_replay: Script,
    pub outbox_replay: Script,
    pub invoke_start: Script,
    pub invoke_respond: Script,
    pub invoke_expire: Script,
    pub outbox_ack: Script,
    pub bb_write: Script,
    pub bb_increment: Script,
    pub bb_read: Script,
    pub bb_lock: Script,
    pub bb_sweep: Script,
    pub credits_flush: Script,
    pub rate_limit: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    credits_move: lua!("credits_move"),
    job_spawn: lua!("job_spawn"),
    job_claim: lua!("job_claim"),
    job_complete: lua!("job_complete"),
    job_fail: lua!("job_fail"),
    job_reclaim: lua!("job_reclaim"),
    job_cancel: lua!("job_cancel"),
    agent_register: lua!("agent_register"),
    agent_heartbeat: lua!("agent_heartbeat"),
    agent_deregister: lua!("agent_deregister"),
    agent_reap: lua!("agent_reap"),
    message_send: lua!("message_send"),
    message_broadcast: lua!("message_broadcast"),
    inbox_redeliver: lua!("inbox_redeliver"),
    inbox_poison: lua!("inbox_poison"),
    inbox_take: lua!("inbox_take"),
    inbox_recover: lua!("inbox_recover"),
    dlq_replay: lua!("dlq_replay"),
    outbox_replay: lua!("outbox_replay"),
    invoke_start: lua!("invoke_start"),
    invoke_respond: lua!("invoke_respond"),
    invoke_expire: lua!("invoke_expire"),
    outbox_ack: lua!("outbox_ack"),
    bb_write: lua!("bb_write"),
    bb_increment: lua!("bb_increment"),
    bb_read: lua!("bb_read"),
    bb_lock: lua!("bb_lock"),
    bb_sweep: lua!("bb_sweep"),
    credits_flush: lua!("credits_flush"),
    rate_limit: lua!("rate_limit"),
});

/// The process-wide registry (scripts and their SHA1s are computed once).
pub fn scripts() -> &'static Scripts {
    &SCRIPTS
}
