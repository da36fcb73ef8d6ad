"""The connection a Python agent works through: Redis, its tenant's key
names and the server's Lua scripts."""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis

from .keys import TenantKeys
from .scripts import Scripts

_SCRIPTS: Scripts | None = None


def scripts() -> Scripts:
    """The bundled scripts, parsed once per process."""
    global _SCRIPTS
    if _SCRIPTS is None:
        _SCRIPTS = Scripts()
    return _SCRIPTS


def event_base() -> str:
    """A unique base for the ids of the outbox events one script call
    appends (the script numbers them `<base>.<n>`): time-ordered, like the
    server's UUIDv7."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def encode(value: Any) -> bytes:
    """A payload as MessagePack (what every agent, in any language, reads)."""
    return msgpack.packb(value, use_bin_type=True)


def decode(data: bytes | None) -> Any:
    if not data:
        return None
    return msgpack.unpackb(data, raw=False)


class Client:
    """One tenant on one Redis. ``prefix`` is the server's AGENTBUS_PREFIX;
    ``job_retention`` its AGENTBUS_JOB_RETENTION_SECS (how long a job this
    client ends keeps its keys)."""

    def __init__(
        self,
        redis_url: str,
        tenant: str,
        *,
        prefix: str = "ab",
        job_retention: int = 86400,
    ) -> None:
        self.redis = aioredis.from_url(redis_url, decode_responses=False)
        self.tenant = tenant
        self.keys = TenantKeys(prefix, tenant)
        self.scripts = scripts()
        self.job_retention = job_retention

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def job_layout(self, job_id: str) -> tuple[list[tuple[str, str]], list[tuple[str, Any]]]:
        """The KEYS and first ARGV every job script takes (`@layout job`)."""
        k = self.keys
        keys = [
            ("credits", k.credits()),
            ("outbox", k.outbox()),
            ("job", k.job(job_id)),
            ("items", k.job_items(job_id)),
            ("done", k.job_done(job_id)),
            ("results", k.job_results(job_id)),
            ("active", k.active_jobs()),
            ("dlq", k.dlq()),
            ("jobs", k.jobs()),
        ]
        args = [
            ("event_base", event_base()),
            ("tenant", self.tenant),
            ("job_id", job_id),
            ("retention", max(1, self.job_retention)),
        ]
        return keys, args
