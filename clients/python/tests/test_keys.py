"""Key names as the server's keys.rs builds them (the contract fixture is
written from keys.rs by the Rust test suite)."""

from agentbus.keys import REAP, RECLAIM, TenantKeys, due_key, outbox_ready, tenants_key


def test_every_key_name_is_the_servers(contract):
    k = TenantKeys(contract["prefix"], contract["tenant"])
    job, inst = contract["job"], contract["instance"]
    ours = {
        "tenants": tenants_key(contract["prefix"], contract["tenant"]),
        "outbox_ready": outbox_ready(contract["prefix"], contract["tenant"]),
        "outbox_ready_other": outbox_ready(contract["prefix"], "tenant-b"),
        "due_reap": due_key(contract["prefix"], REAP, contract["tenant"]),
        "due_reclaim_other": due_key(contract["prefix"], RECLAIM, "tenant-b"),
        "credits": k.credits(),
        "outbox": k.outbox(),
        "jobs": k.jobs(),
        "active_jobs": k.active_jobs(),
        "job": k.job(job),
        "job_items": k.job_items(job),
        "job_done": k.job_done(job),
        "job_results": k.job_results(job),
        "job_staging": k.job_staging(job),
        "dlq": k.dlq(),
        "outbox_dead": k.outbox_dead(),
        "agents": k.agents(),
        "agent_prefix": k.agent_prefix(),
        "agent": k.agent(inst),
        "agents_of_type_prefix": k.agents_of_type_prefix(),
        "agents_of_job_prefix": k.agents_of_job_prefix(),
        "agents_with_status_prefix": k.agents_with_status_prefix(),
        "inbox_prefix": k.inbox_prefix(),
        "inbox": k.inbox(inst),
        "inbox_read_early": k.inbox_read_early(inst),
        "invoke": k.invoke(contract["invoke"]),
        "pending_invokes": k.pending_invokes(),
        "replies": k.replies(contract["process"]),
        "blackboard_root": k.blackboard_root(),
        "blackboard_namespaces": k.blackboard_namespaces(),
        "blackboard_names": k.blackboard_names(),
        "task_stats": k.task_stats(contract["task"]),
        "agent_task_stats": k.agent_task_stats(contract["worker"], contract["task"]),
    }
    bb = k.blackboard(contract["namespace"])
    ours.update(
        bb_vals=bb.vals, bb_nums=bb.nums, bb_lex=bb.lex, bb_score=bb.score, bb_agg=bb.agg,
        bb_exp=bb.exp, bb_fence=bb.fence, bb_namespaces=bb.namespaces, bb_lock=bb.lock(contract["lock"]),
    )
    assert ours == contract["names"]
