#!/usr/bin/env python3
"""Two release binaries, the same hot paths, runs alternating between them.

For each workload it records the binary's own figure (items/s, or the
table row `agentbus bench` prints) and the Redis CPU it cost per unit of
work (`INFO cpu` before and after, user + system), which is steadier than
timings on a shared machine. Prints a markdown table of medians.

Usage: bench/ab.py OLD NEW [--runs 5] [--skip blackboard]   (the sink workload uses databases
agentbus_ab_old and agentbus_ab_new, made afresh: a binary refuses a
database a newer one has migrated)
"""

import argparse
import json
import statistics
import subprocess

ap = argparse.ArgumentParser()
ap.add_argument("old")
ap.add_argument("new")
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--skip", action="append", default=[],
                help="leave out the workloads whose name contains this (repeatable)")
args = ap.parse_args()

ENV = {"AGENTBUS_PREFIX": "ab", "AGENTBUS_MAX_ITEMS": "1000000", "AGENTBUS_JOB_RETENTION_SECS": "60",
       "RUST_LOG": "error"}
# The sink workload writes into a database of each binary's own.
for label in ("old", "new"):
    subprocess.run(["psql", "postgres://postgres@127.0.0.1:5432/postgres", "-qc",
                    f"DROP DATABASE IF EXISTS agentbus_ab_{label} WITH (FORCE)"], check=True)
    subprocess.run(["psql", "postgres://postgres@127.0.0.1:5432/postgres", "-qc",
                    f"CREATE DATABASE agentbus_ab_{label}"], check=True)


def redis_cpu():
    info = subprocess.run(["redis-cli", "INFO", "cpu"], capture_output=True, text=True).stdout
    f = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(f["used_cpu_user"]) + float(f["used_cpu_sys"])


def clean():
    keys = subprocess.run(["redis-cli", "--scan", "--pattern", "ab:*"], capture_output=True,
                          text=True).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "DEL", *keys[i:i + 500]], capture_output=True)


def run(binary, argv, label):
    import os
    before = redis_cpu()
    db = f"postgres://postgres@127.0.0.1:5432/agentbus_ab_{label}"
    out = subprocess.run([binary, *argv], env=dict(os.environ, **ENV, DATABASE_URL=db), capture_output=True,
                         text=True, check=True).stdout
    return out, redis_cpu() - before


WORKLOADS = [
    # name, argv, units of work, how to read the binary's own figure
    ("load 100000 items × 50 workers", ["load", "--items", "100000", "--workers", "50", "--json"],
     100000, lambda out: "%.0f items/s, p99 %.2f ms" % (
         json.loads(out)["items_per_sec"], json.loads(out)["claim_to_complete"]["p99_ms"])),
    ("bench invoke 2000 calls, 1 at a time", ["bench", "invoke", "--runs", "1", "--calls", "2000",
                                              "--concurrency", "1"], 2000, None),
    ("bench messages 100 agents, 2000/s for 5 s", ["bench", "messages", "--runs", "1", "--agents",
                                                   "100", "--rate", "2000", "--secs", "5"], 10000, None),
    ("bench invoke 5000 calls, 16 at a time", ["bench", "invoke", "--runs", "1", "--calls", "5000",
                                               "--concurrency", "16"], 5000, None),
    ("bench sink 100000 backlog, 10000/s for 5 s", ["bench", "sink", "--runs", "1", "--backlog",
                                                    "100000", "--rate", "10000", "--secs", "5"],
     150000, None),
    ("bench blackboard 100000 entries", ["bench", "blackboard", "--runs", "1", "--sizes", "100000",
                                         "--samples", "200"], 100000, None),
]


def row_of(out):
    """The data row of the markdown table `agentbus bench` prints."""
    rows = [l for l in out.splitlines() if l.startswith("|") and not l.startswith("|---")]
    return rows[-1] if rows else out.strip().splitlines()[-1]


WORKLOADS = [w for w in WORKLOADS if not any(s in w[0] for s in args.skip)]
results = {}
for name, argv, units, figure in WORKLOADS:
    for r in range(args.runs):
        for label, binary in (("old", args.old), ("new", args.new)):
            clean()
            out, cpu = run(binary, argv, label)
            shown = figure(out) if figure else row_of(out)
            results.setdefault((name, label), []).append((cpu / units * 1e6, shown))
clean()

print("| workload | old: Redis CPU per unit | new: Redis CPU per unit | new/old |")
print("|---|---|---|---|")
for name, _, _, _ in WORKLOADS:
    old = statistics.median(c for c, _ in results[(name, "old")])
    new = statistics.median(c for c, _ in results[(name, "new")])
    print(f"| {name} | {old:.1f} µs | {new:.1f} µs | {new / old:.2f} |")
print()
for name, _, _, _ in WORKLOADS:
    for label in ("old", "new"):
        print(f"- {name}, {label}: " + " · ".join(s for _, s in results[(name, label)]))
