"""The connection a Python agent works through: Redis, its tenant's key
names and the server's Lua scripts."""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from .keys import TenantKeys
from .rest import Api, Jobs
from .scripts import Scripts
from .settings import Settings

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


CLUSTER_SCHEME = "redis+cluster://"


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a ``redis+cluster://h1:p1,h2:p2`` URL (the
    server's own form for a Redis Cluster)."""
    nodes = []
    for part in url[len(CLUSTER_SCHEME) :].split("/")[0].split(","):
        host, _, port = part.rpartition(":")
        nodes.append((host, int(port)))
    return nodes


def connect(url: str) -> Any:
    """A redis-py asyncio client for ``url``: one Redis, or a Redis Cluster
    for ``redis+cluster://`` (every key of a tenant shares one slot)."""
    if url.startswith(CLUSTER_SCHEME):
        nodes = [ClusterNode(h, p) for h, p in cluster_nodes(url)]
        return RedisCluster(startup_nodes=nodes, decode_responses=False)
    return aioredis.from_url(url, decode_responses=False)


class Client:
    """One tenant on one Redis. ``prefix`` is the server's AGENTBUS_PREFIX;
    ``job_retention`` its AGENTBUS_JOB_RETENTION_SECS (how long a job this
    client ends keeps its keys). With ``api_url`` and the tenant's
    ``token``, :attr:`jobs` and :attr:`api` reach the server's REST API for
    what is not a script (spawn, simulate, job state, balance)."""

    def __init__(
        self,
        redis_url: str,
        tenant: str,
        *,
        prefix: str = "ab",
        job_retention: int | None = None,
        api_url: str | None = None,
        token: str | None = None,
    ) -> None:
        self.redis = connect(redis_url)
        self._api = Api(api_url, token) if api_url and token else None
        self.tenant = tenant
        self.keys = TenantKeys(prefix, tenant)
        self.scripts = scripts()
        #: The server's prices and limits: its defaults until
        #: :meth:`load_settings` reads the running server's.
        self.settings = Settings.defaults()
        if job_retention is not None:
            self.settings.job_retention_secs = job_retention

    @classmethod
    def from_env(cls, **options: Any) -> "Client":
        """A client configured as the server is: REDIS_URL, AGENTBUS_TENANT,
        AGENTBUS_PREFIX (default "ab"), AGENTBUS_URL and AGENTBUS_TOKEN (for
        the REST calls; the tenant's token)."""
        env = os.environ
        tenant = env.get("AGENTBUS_TENANT")
        if not tenant:
            raise RuntimeError("AGENTBUS_TENANT: the tenant to work as")
        options.setdefault("prefix", env.get("AGENTBUS_PREFIX", "ab"))
        options.setdefault("api_url", env.get("AGENTBUS_URL"))
        options.setdefault("token", env.get("AGENTBUS_TOKEN"))
        return cls(env.get("REDIS_URL", "redis://127.0.0.1:6379"), tenant, **options)

    async def close(self) -> None:
        replies = getattr(self, "_replies", None)
        if replies is not None:
            await replies.close()
        if self._api is not None:
            await self._api.close()
        await self.redis.aclose()

    @property
    def api(self) -> Api:
        if self._api is None:
            raise RuntimeError("Client(api_url=..., token=...) is needed for REST calls")
        return self._api

    async def load_settings(self) -> Settings:
        """Reads the running server's prices and limits (REST), so scripts
        charge what the server charges when it runs with AGENTBUS_PRICES."""
        self.settings = Settings.of(await self.api.request("GET", "/settings"))
        return self.settings

    @property
    def jobs(self) -> Jobs:
        return Jobs(self.api)

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
            ("staging", k.job_staging(job_id)),
        ]
        args = [
            ("event_base", event_base()),
            ("tenant", self.tenant),
            ("job_id", job_id),
            ("retention", max(1, self.settings.job_retention_secs)),
        ]
        return keys, args
