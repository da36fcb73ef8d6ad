#!/usr/bin/env python3
"""What idle tenants cost (issue 20): for each count of idle tenants and
each binary (runs alternate between binaries), `agentbus serve` with its
sink on a fresh Postgres database, on the same Redis:

- idle: 10 s with nothing happening — the server's CPU (% of one core, from
  /proc), Redis's CPU (% of one core, INFO cpu) and Redis commands/s
  (INFO stats; run it on an otherwise idle Redis);
- sink lag: one active tenant receives --grants grants through REST, one
  every 100 ms; lag is from the grant's answer to its ledger row being
  visible in Postgres (polled every millisecond): p50 and p99;
- the active tenant's throughput: `agentbus load --items 100000 --workers
  50` (the binary's own load test, its workers in-process) on the same
  prefix while the server runs: items/s end to end (median of
  --load-runs).

Idle tenants are made directly in Redis, as a grant leaves them (the
tenants set, a credits hash, an outbox stream with the sink's group), so a
100,000-tenant run starts in seconds; the chores' first-sweep marks are set
as on a deployment that has run before (a first sweep visits everyone
once). The idle window starts once the server's start-up work is done
(the sink's start sweep): Redis below 500 commands/s over 2 s, or 180 s.

Usage: bench/tenants_idle.py --binary old=PATH --binary new=PATH [--tenants 1,1000,10000,100000]
(needs psycopg and pytest in the running Python: pip install "psycopg[binary]" pytest)
"""

import argparse
import json
import os
import subprocess
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
ap.add_argument("--load-items", type=int, default=100000)
ap.add_argument("--load-workers", type=int, default=50)
ap.add_argument("--load-runs", type=int, default=1, help="load test runs per row (median)")
ap.add_argument("--alternate", type=int, default=0,
                help="instead: the first binary's active-tenant load with 1 and with the largest --tenants idle "
                     "tenants, two servers side by side, runs alternating, this many each")
args = ap.parse_args()

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
TCK = os.sysconf("SC_CLK_TCK")
CLUSTER = REDIS_URL.startswith("redis+cluster://")
if CLUSTER:
    # Figures are summed over the masters; keys are written through the cluster.
    from redis.cluster import ClusterNode, RedisCluster

    hosts = [h.split(":") for h in REDIS_URL[len("redis+cluster://"):].split(",")]
    nodes = [redis.Redis(host=h, port=int(p)) for h, p in hosts]
    r = RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in hosts])
else:
    r = redis.Redis.from_url(REDIS_URL)
    nodes = [r]


def proc_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def redis_cpu():
    return sum(i["used_cpu_sys"] + i["used_cpu_user"] for i in (n.info("cpu") for n in nodes))


def redis_commands():
    return sum(n.info("stats")["total_commands_processed"] for n in nodes)


def shard(name):
    """keys.rs ready_shard: FNV-1a (32 bit) modulo 16."""
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % 16


def make_idle(prefix, n):
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        t = f"idle{i}"
        # The registry as each binary keeps it: sharded (new) and one set (old).
        pipe.sadd(f"{prefix}:tenants:{shard(t)}", t)
        pipe.sadd(f"{prefix}:tenants", t)
        pipe.hset(f"{prefix}:{{{t}}}:credits", mapping={"total": 10000, "reserved": 0, "spent": 0})
        pipe.xgroup_create(f"{prefix}:{{{t}}}:outbox", "sink", id="$", mkstream=True)
        if len(pipe) >= 3000:
            pipe.execute()
    pipe.execute()
    for chore in ("reap", "reclaim"):
        r.set(f"{prefix}:due:{chore}:swept", 0)


def settle(pid):
    """Waits out the server's start-up work; returns how long it took and
    the Redis commands it cost."""
    k0, t0 = redis_commands(), time.monotonic()
    while time.monotonic() - t0 < 180:
        a = redis_commands()
        time.sleep(2)
        if (redis_commands() - a) / 2 < 500:
            break
    return time.monotonic() - t0, redis_commands() - k0


def load(binary, prefix):
    env = dict(os.environ, REDIS_URL=REDIS_URL, AGENTBUS_PREFIX=prefix, RUST_LOG="warn")
    out = subprocess.run([binary, "load", "--items", str(args.load_items), "--workers", str(args.load_workers),
                          "--tenant", "loadtenant", "--json"], env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["credits_exact"] and report["lost"] == 0, report
    return report["items_per_sec"]


def clean(prefix):
    for n in nodes:
        for key in n.scan_iter(f"{prefix}:*", count=5000):
            n.unlink(key)


def run(binary, n):
    """Idle figures and grant lags of `binary` with `n` idle tenants."""
    os.environ["AGENTBUS_BIN"] = binary
    prefix = "bt" + secrets.token_hex(3)
    make_idle(prefix, n)
    db = Database()
    server = Server(prefix, db)
    try:
        pid = server.proc.pid
        start = settle(pid)
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
        return idle, lags, start, statistics.median(load(binary, prefix) for _ in range(args.load_runs))
    finally:
        server.stop()
        clean(prefix)
        db.drop()


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


def alternate():
    label, _, path = args.binary[0].rpartition("=")
    os.environ["AGENTBUS_BIN"] = path
    counts = [1, max(int(x) for x in args.tenants.split(","))]
    setups = []
    try:
        for n in counts:
            prefix = "bt" + secrets.token_hex(3)
            make_idle(prefix, n)
            db = Database()
            server = Server(prefix, db)
            setups.append((n, prefix, db, server))
            settle(server.proc.pid)
        rates = {n: [] for n in counts}
        for _ in range(args.alternate):
            for n, prefix, _, _ in setups:
                rates[n].append(load(path, prefix))
        print("| idle tenants | binary | runs (items/s) | median |")
        print("|---|---|---|---|")
        for n in counts:
            print(f"| {n:,} | {label or path} | {', '.join(f'{x:,.0f}' for x in rates[n])} "
                  f"| {statistics.median(rates[n]):,.0f} |")
    finally:
        for _, prefix, db, server in setups:
            server.stop()
            clean(prefix)
            db.drop()


if args.alternate:
    alternate()
    sys.exit(0)

print("| idle tenants | binary | start-up work | server CPU idle | Redis CPU idle | Redis commands/s idle "
      "| sink lag p50 | p99 | active tenant items/s |")
print("|---|---|---|---|---|---|---|---|---|")
for n in [int(x) for x in args.tenants.split(",")]:
    for binary in args.binary:
        label, _, path = binary.rpartition("=")
        (cpu, rcpu, cmds), lags, (took, cost), rate = run(path, n)
        print(f"| {n:,} | {label or path} "
              f"| {took:.0f} s, {cost:,} cmds | {cpu:.1f}% | {rcpu:.1f}% | {cmds:,.0f} | "
              f"{statistics.median(lags):.1f} ms | {pct(lags, 0.99):.1f} ms | {rate:,.0f} |", flush=True)
