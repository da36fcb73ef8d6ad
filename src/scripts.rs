//! The Lua script registry.
//!
//! Each script lives in `lua/<name>.lua` with a header listing its KEYS and
//! ARGV, and is embedded at compile time together with the shared helpers in
//! `lua/include/`. `redis::Script` calls it by EVALSHA and loads it again
//! when Redis answers NOSCRIPT (after a restart or `SCRIPT FLUSH`).

use std::sync::LazyLock;

use redis::Script;

macro_rules! lua {
    ($($file:literal),+) => {
        Script::new(concat!($(include_str!(concat!("../lua/", $file))),+))
    };
}

macro_rules! invoke_script {
    ($file:literal) => {
        lua!("include/common.lua", "include/invoke.lua", $file)
    };
}

macro_rules! bb_script {
    ($file:literal) => {
        lua!("include/common.lua", "include/bb.lua", $file)
    };
}

macro_rules! job_script {
    ($file:literal) => {
        lua!("include/common.lua", "include/job.lua", $file)
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
    credits_move: lua!("include/common.lua", "credits_move.lua"),
    job_spawn: job_script!("job_spawn.lua"),
    job_claim: job_script!("job_claim.lua"),
    // Completion may also aggregate outputs into a blackboard namespace.
    job_complete: lua!(
        "include/common.lua",
        "include/job.lua",
        "include/bb.lua",
        "job_complete.lua"
    ),
    job_fail: job_script!("job_fail.lua"),
    job_reclaim: job_script!("job_reclaim.lua"),
    job_cancel: job_script!("job_cancel.lua"),
    agent_register: lua!(
        "include/common.lua",
        "include/registry.lua",
        "agent_register.lua"
    ),
    agent_heartbeat: lua!(
        "include/common.lua",
        "include/registry.lua",
        "agent_heartbeat.lua"
    ),
    agent_deregister: lua!(
        "include/common.lua",
        "include/registry.lua",
        "agent_deregister.lua"
    ),
    agent_reap: lua!(
        "include/common.lua",
        "include/registry.lua",
        "agent_reap.lua"
    ),
    message_send: lua!("include/common.lua", "message_send.lua"),
    message_broadcast: lua!("include/common.lua", "message_broadcast.lua"),
    inbox_redeliver: lua!("include/common.lua", "inbox_redeliver.lua"),
    inbox_poison: lua!("include/common.lua", "inbox_poison.lua"),
    inbox_take: lua!("include/common.lua", "inbox_take.lua"),
    inbox_recover: lua!("inbox_recover.lua"),
    dlq_replay: lua!("include/common.lua", "dlq_replay.lua"),
    outbox_replay: lua!("outbox_replay.lua"),
    invoke_start: invoke_script!("invoke_start.lua"),
    invoke_respond: invoke_script!("invoke_respond.lua"),
    invoke_expire: invoke_script!("invoke_expire.lua"),
    outbox_ack: lua!("include/common.lua", "outbox_ack.lua"),
    bb_write: bb_script!("bb_write.lua"),
    bb_increment: bb_script!("bb_increment.lua"),
    bb_read: bb_script!("bb_read.lua"),
    bb_lock: bb_script!("bb_lock.lua"),
    bb_sweep: bb_script!("bb_sweep.lua"),
    credits_flush: lua!("include/common.lua", "credits_flush.lua"),
    rate_limit: lua!("rate_limit.lua"),
});

/// The process-wide registry (scripts and their SHA1s are computed once).
pub fn scripts() -> &'static Scripts {
    &SCRIPTS
}
