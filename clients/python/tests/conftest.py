"""Fixtures: the repository, the contract the Rust tests wrote, and a live
`agentbus serve` (the binary `cargo test` built, or $AGENTBUS_BIN) on real
Redis, each test with its own key prefix."""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def _binary() -> str:
    binary = os.environ.get("AGENTBUS_BIN", str(REPO / "target" / "debug" / "agentbus"))
    if not pathlib.Path(binary).exists():
        raise RuntimeError(f"{binary} not built: run `cargo build` (or set AGENTBUS_BIN)")
    return binary


class Database:
    """A Postgres database of its own, migrated by the binary; queried with
    psql (the Postgres client installed with the server)."""

    def __init__(self) -> None:
        self.name = "py_" + secrets.token_hex(5)
        self.admin_url = ADMIN_DATABASE_URL
        self._psql(self.admin_url, f"CREATE DATABASE {self.name}")
        base = self.admin_url.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"
        subprocess.run(
            [_binary(), "migrate", "up"], env=dict(os.environ, DATABASE_URL=self.url),
            check=True, stdout=subprocess.DEVNULL,
        )

    @staticmethod
    def _psql(url: str, sql: str) -> str:
        out = subprocess.run(
            ["psql", url, "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout

    def rows(self, sql: str) -> list[list[str]]:
        """The rows of a query, each a list of column texts."""
        return [line.split("\t") for line in self._psql(self.url, sql).splitlines() if line]

    def drop(self) -> None:
        self._psql(self.admin_url, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


@pytest.fixture(scope="session")
def contract() -> dict[str, Any]:
    return json.loads((pathlib.Path(__file__).parent / "fixtures" / "contract.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`agentbus serve` and its REST API, for what Python agents do not do
    through the scripts (spawning and reading jobs, tokens, credits)."""

    def __init__(self, prefix: str, database: Database | None = None, extra_env: dict | None = None):
        binary = _binary()
        self.prefix = prefix
        self.port = _free_port()
        self.admin = secrets.token_hex(20)
        env = dict(
            os.environ,
            REDIS_URL=REDIS_URL,
            AGENTBUS_PREFIX=prefix,
            AGENTBUS_ADMIN_TOKEN=self.admin,
            AGENTBUS_NO_SINK="true",
            AGENTBUS_RATE_LIMIT="0",
            RUST_LOG="warn",
        )
        if database is not None:
            # The sink runs: ledger, cancellations and audit reach Postgres.
            env.pop("AGENTBUS_NO_SINK")
            env["DATABASE_URL"] = database.url
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            [binary, "serve", "--bind", f"127.0.0.1:{self.port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("agentbus serve did not come up")
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v1{path}", data=data, method=method
        )
        req.add_header("authorization", f"Bearer {token or self.admin}")
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null", parse_float=Decimal)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null", parse_float=Decimal)

    def tenant(self, name: str, credits: int) -> str:
        """A token of a new tenant holding `credits`."""
        status, token = self.call("POST", "/tokens", body={"tenant": name})
        assert status == 201, token
        status, body = self.call("POST", "/credits/grant", body={"tenant": name, "amount": credits})
        assert status == 200, body
        return token["secret"] if "secret" in token else token["token"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _clean(prefix: str) -> None:
    """Leave Redis as found."""
    r = sync_redis()
    for key in r.scan_iter(f"{prefix}:*", count=1000):
        r.delete(key)


@pytest.fixture
def server():
    prefix = "py" + secrets.token_hex(4)
    s = Server(prefix)
    yield s
    s.stop()
    _clean(prefix)


@pytest.fixture
def database():
    db = Database()
    yield db
    db.drop()


@pytest.fixture
def server_pg(database):
    """A server whose sink mirrors into ``database``."""
    prefix = "py" + secrets.token_hex(4)
    s = Server(prefix, database)
    s.database = database
    yield s
    s.stop()
    _clean(prefix)


def sync_redis():
    """A plain (blocking) client of the tests' Redis, or Redis Cluster."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    from agentbus.client import CLUSTER_SCHEME, cluster_nodes

    if REDIS_URL.startswith(CLUSTER_SCHEME):
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(REDIS_URL)])
    return redis.Redis.from_url(REDIS_URL)


def eventually(check, timeout: float = 15.0, every: float = 0.1):
    """``check()``'s first truthy value, polled (the sink mirrors to
    Postgres asynchronously); fails with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {value!r}")
        time.sleep(every)


def audit_row(db: Database, invoke_id: str) -> dict[str, str] | None:
    """An invocation's row in agents.invoke_audit, with its tenant."""
    cols = ["caller_instance_id", "target_instance_id", "status", "credits_charged",
            "request_payload", "response_payload", "error_message", "tenant_id"]
    rows = db.rows(
        "SELECT a.caller_instance_id, a.target_instance_id, a.status, coalesce(a.credits_charged::text, ''),"
        " a.request_payload::text, coalesce(a.response_payload::text, ''), coalesce(a.error_message, ''),"
        f" t.tenant_id FROM agents.invoke_audit a JOIN agents.invoke_tenants t USING (invoke_id)"
        f" WHERE a.invoke_id = '{invoke_id}' AND a.status <> 'pending'"
    )
    return dict(zip(cols, rows[0])) if rows else None


class Proxy:
    """A TCP proxy in front of the tests' (single) Redis that can cut every
    connection and refuse new ones for a while: an outage on demand."""

    def __init__(self) -> None:
        from urllib.parse import urlparse

        u = urlparse(REDIS_URL)
        self.target = (u.hostname or "127.0.0.1", u.port or 6379)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.links: set = set()
        self.server = None

    async def start(self) -> "Proxy":
        import asyncio

        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader, writer) -> None:
        import asyncio

        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self.links.add(link)

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.links.discard(link)

    async def cut(self, seconds: float) -> None:
        """Drops every connection and refuses new ones for ``seconds``."""
        import asyncio

        self.server.close()
        for a, b in list(self.links):
            a.transport.abort()
            b.transport.abort()
        await asyncio.sleep(seconds)
        await self.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for a, b in list(self.links):
            a.transport.abort()
            b.transport.abort()
