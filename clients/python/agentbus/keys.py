"""Redis key names, as the server's src/keys.rs builds them.

tests/test_keys.py checks every name here against a fixture the Rust test
suite writes from keys.rs itself (tests/fixtures/keys.json), so the two
cannot drift. A tenant's keys share the hash tag ``{tenant}``: one cluster
slot per tenant.
"""

from __future__ import annotations

from dataclasses import dataclass


#: Shards of the sink's ready signal (keys.rs READY_SHARDS).
READY_SHARDS = 16


def ready_shard(tenant: str) -> int:
    """FNV-1a (32 bit) of the tenant's name, modulo the shards (keys.rs)."""
    h = 0x811C9DC5
    for b in tenant.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % READY_SHARDS


def outbox_ready(prefix: str, tenant: str) -> str:
    """The zset the sink blocks on to learn ``tenant`` has new outbox
    events: written after every script call that writes its outbox."""
    return f"{prefix}:outbox:ready:{ready_shard(tenant)}"


def ready_signal(outbox_key: str) -> tuple[str, str] | None:
    """For a tenant's outbox key, the ready key and the tenant to write in
    it (keys.rs ``ready_signal``); None for any other key."""
    if not outbox_key.endswith("}:outbox") or ":{" not in outbox_key:
        return None
    prefix, tenant = outbox_key[: -len("}:outbox")].rsplit(":{", 1)
    return outbox_ready(prefix, tenant), tenant


#: Background chores that work from deadlines (keys.rs ``Chore``).
REAP = "reap"
RECLAIM = "reclaim"


def due_key(prefix: str, chore: str, tenant: str) -> str:
    """The zset of a chore's deadlines holding ``tenant`` (its shard as for
    the ready signal): tenant → when it next needs the chore (ms). Calls
    that create a deadline write it with ``ZADD LT`` (keys.rs ``due``)."""
    return f"{prefix}:due:{chore}:{ready_shard(tenant)}"


def tenants_key(prefix: str, tenant: str) -> str:
    """The shard of the tenants registry holding ``tenant`` (the server's
    sweeps visit every tenant registered)."""
    return f"{prefix}:tenants:{ready_shard(tenant)}"


@dataclass(frozen=True)
class TenantKeys:
    prefix: str
    tenant: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.tenant}}}"

    def _key(self, suffix: str) -> str:
        return f"{self.base}:{suffix}"

    def credits(self) -> str:
        return self._key("credits")

    def outbox(self) -> str:
        return self._key("outbox")

    def jobs(self) -> str:
        return self._key("jobs")

    def active_jobs(self) -> str:
        return self._key("jobs:active")

    def job(self, job: str) -> str:
        return self._key(f"job:{job}")

    def job_items(self, job: str) -> str:
        return self._key(f"job:{job}:items")

    def job_done(self, job: str) -> str:
        return self._key(f"job:{job}:done")

    def job_staging(self, job: str) -> str:
        return self._key(f"job:{job}:staging")

    def job_results(self, job: str) -> str:
        return self._key(f"job:{job}:results")

    def dlq(self) -> str:
        return self._key("dlq")

    def outbox_dead(self) -> str:
        return self._key("outbox:dead")

    def agents(self) -> str:
        return self._key("agents")

    def agent_prefix(self) -> str:
        return self._key("agent:")

    def agent(self, instance: str) -> str:
        return self.agent_prefix() + instance

    def agents_of_type_prefix(self) -> str:
        return self._key("agents:by-type:")

    def agents_of_job_prefix(self) -> str:
        return self._key("agents:by-job:")

    def agents_with_status_prefix(self) -> str:
        return self._key("agents:by-status:")

    def inbox_prefix(self) -> str:
        return self._key("inbox:")

    def inbox(self, instance: str) -> str:
        return self.inbox_prefix() + instance

    def inbox_read_early(self, instance: str) -> str:
        return self._key(f"inbox-read:{instance}")

    def invoke(self, invoke_id: str) -> str:
        return self._key(f"invoke:{invoke_id}")

    def pending_invokes(self) -> str:
        return self._key("invokes:pending")

    def replies(self, process: str) -> str:
        return self._key(f"replies:{process}")

    def blackboard_root(self) -> str:
        return self._key("bb:")

    def blackboard_namespaces(self) -> str:
        return self._key("bbns")

    def blackboard_names(self) -> str:
        return self._key("bbnames")

    def task_stats(self, task: str) -> str:
        return self._key(f"stats:task:{task}")

    def agent_task_stats(self, worker_agent: str, task: str) -> str:
        return self._key(f"stats:agent:{worker_agent}:{task}")

    def blackboard(self, namespace: str) -> "BlackboardKeys":
        p = f"{self.blackboard_root()}{namespace}:"
        return BlackboardKeys(
            vals=p + "vals",
            nums=p + "nums",
            lex=p + "lex",
            score=p + "score",
            agg=p + "agg",
            exp=p + "exp",
            fence=p + "fence",
            namespaces=self.blackboard_namespaces(),
            names=self.blackboard_names(),
            lock_prefix=p + "lock:",
        )


@dataclass(frozen=True)
class BlackboardKeys:
    """A namespace's keys (the `@layout bb` of the blackboard scripts)."""

    vals: str
    nums: str
    lex: str
    score: str
    agg: str
    exp: str
    fence: str
    namespaces: str
    names: str
    lock_prefix: str

    def lock(self, name: str) -> str:
        return self.lock_prefix + name
