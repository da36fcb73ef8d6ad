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

    def __init__(self, prefix: str):
        binary = os.environ.get("AGENTBUS_BIN", str(REPO / "target" / "debug" / "agentbus"))
        if not pathlib.Path(binary).exists():
            raise RuntimeError(f"{binary} not built: run `cargo build` (or set AGENTBUS_BIN)")
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


@pytest.fixture
def server():
    prefix = "py" + secrets.token_hex(4)
    s = Server(prefix)
    yield s
    s.stop()
    # Leave Redis as found.
    r = sync_redis()
    for key in r.scan_iter(f"{prefix}:*", count=1000):
        r.delete(key)


def sync_redis():
    """A plain (blocking) client of the tests' Redis, or Redis Cluster."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    from agentbus.client import CLUSTER_SCHEME, cluster_nodes

    if REDIS_URL.startswith(CLUSTER_SCHEME):
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(REDIS_URL)])
    return redis.Redis.from_url(REDIS_URL)
