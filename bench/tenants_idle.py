#!/usr/bin/env python3
"""What idle tenants cost (issue 20): for each count of idle tenants and
each binary (runs alternate between binaries), `agentbus serve` with its
sink on a fresh Postgres database, on the same Redis:

- idle: 10 s with nothing happening — the server's CPU (% of one core, from
  /proc), Redis's CPU (% of one core, INFO cpu) and Redis commands/s
  (INFO stats; run it on an otherwise idle Redis);
- sink lag: one active tenant receives --grants grants through REST, one
  every 100 ms; lag is from the grant's answer to its ledger row being
  visible in Postgres (polled every millisecond): p50 and p99.

Idle tenants are made directly in Redis, as a grant leaves them (the
tenants set, a credits hash, an outbox stream with the sink's group), so a
100,000-tenant run starts in seconds.

Usage: bench/tenants_idle.py --binary OLD --binary NEW [--tenants 1,1000,10000]
(needs psycopg and pytest in the running Python: pip install "psycopg[binary]" pytest)
"""

import argparse
import os
import pathlib
import secrets
import statistics
import sys
import time

import psycopg
import redis

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "clients" / "python" / "tests"))
from conftest import Database, Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--binary", action="append", required=True)
ap.add_argument("--tenants", default="1,1000,10000")
ap.add_argument("--grants", type=int, default=50)
ap.add_argument("--idle-secs", type=float, default=10)
ap.add_argument("--settle-secs", type=float, default=5)
args = ap.parse_args()

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
TCK = os.sysconf("SC_CLK_TCK")
r = redis.Redis.from_url(REDIS_URL)


def proc_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def redis_cpu():
    info = r.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def redis_commands():
    return r.info("stats")["total_commands_processed"]


def make_idle(prefix, n):
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        t = f"idle{i}"
        pipe.sadd(f"{prefix}:tenants", t)
        pipe.hset(f"{prefix}:{{{t}}}:credits", mapping={"total": 10000, "reserved": 0, "spent": 0})
        pipe.xgroup_create(f"{prefix}:{{{t}}}:outbox", "sink", id="$", mkstream=True)
        if len(pipe) >= 3000:
            pipe.execute()
    pipe.execute()


def clean(prefix):
    for key in r.scan_iter(f"{prefix}:*", count=5000):
        r.unlink(key)


def run(binary, n):
    """Idle figures and grant lags of `binary` with `n` idle tenants."""
    os.environ["AGENTBUS_BIN"] = binary
    prefix = "bt" + secrets.token_hex(3)
    make_idle(prefix, n)
    db = Database()
    server = Server(prefix, db)
    try:
        time.sleep(args.settle_secs)
        pid = server.proc.pid
        c0, r0, k0, t0 = proc_cpu(pid), redis_cpu(), redis_commands(), time.monotonic()
        time.sleep(args.idle_secs)
        c1, r1, k1, t1 = proc_cpu(pid), redis_cpu(), redis_commands(), time.monotonic()
        took = t1 - t0
        idle = ((c1 - c0) / took * 100, (r1 - r0) / took * 100, (k1 - k0) / took)
        lags = []
        with psycopg.connect(db.url, autocommit=True) as pg:
            def rows():
                return pg.execute("SELECT count(*) FROM agents.credit_ledger WHERE tenant_id = 'active'").fetchone()[0]
            for i in range(args.grants):
                status, body = server.call("POST", "/credits/grant", body={"tenant": "active", "amount": 1})
                assert status == 200, body
                sent = time.monotonic()
                while rows() < i + 1:
                    if time.monotonic() - sent > 30:
                        raise RuntimeError("a grant never reached Postgres")
                    time.sleep(0.001)
                lags.append((time.monotonic() - sent) * 1000)
                time.sleep(0.1)
        return idle, lags
    finally:
        server.stop()
        clean(prefix)
        db.drop()


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


print("| idle tenants | binary | server CPU idle | Redis CPU idle | Redis commands/s idle | sink lag p50 | p99 |")
print("|---|---|---|---|---|---|---|")
for n in [int(x) for x in args.tenants.split(",")]:
    for binary in args.binary:
        (cpu, rcpu, cmds), lags = run(binary, n)
        print(f"| {n:,} | {os.path.basename(binary)} | {cpu:.1f}% | {rcpu:.1f}% | {cmds:,.0f} | "
              f"{statistics.median(lags):.1f} ms | {pct(lags, 0.99):.1f} ms |", flush=True)
