#!/usr/bin/env python3
"""What one tenant's big jobs cost everyone else (issue 20, bounded script
time): for each binary (runs alternate), `agentbus serve` (no sink) on the
same Redis; tenant A spawns a job of --items items through REST and cancels
it, back to back, for --secs seconds; meanwhile tenant B's client calls
`GET /api/v1/credits` one request at a time. Reported:

- the bystander's latency p50 / p99 / max (ms) and how many requests it made;
- the spawner's spawn and cancel times (median, ms) and cycles done;
- Redis's SLOWLOG over the window (threshold 1 ms): the longest command
  (µs) and the longest script call (EVALSHA), and how many calls took
  longer than 5 ms, by script; and how often Redis's main thread was
  preempted (a call running then lasts a time slice longer: on a 2-core
  machine shared with the server and this script, that is the tail).

With `--broadcast N`, tenant A instead registers N instances of one job
(REST, 8 threads) and broadcasts to them back to back (`POST
/jobs/{id}/broadcast`, a `--payload-bytes` payload, at most `--cycles`
broadcasts); "spawn_ms" is then the broadcast's time and "cancel_ms" 0.

Usage: bench/spawn_bystander.py --binary old=PATH --binary new=PATH [--runs 3] [--chunks 100,200]
       bench/spawn_bystander.py --binary ... --broadcast 10000 --payload-bytes 100 [--cycles 50]
"""

import argparse
import collections
import json
import os
import pathlib
import secrets
import statistics
import sys
import threading
import time
import urllib.request

import redis

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "clients" / "python" / "tests"))
from conftest import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--binary", action="append", required=True)
ap.add_argument("--items", type=int, default=100_000)
ap.add_argument("--secs", type=float, default=20)
ap.add_argument("--runs", type=int, default=1)
ap.add_argument("--chunks", default="",
                help="AGENTBUS_SPAWN_CHUNK values to run each binary with, e.g. 100,200 (default: its own)")
ap.add_argument("--slowlog-us", type=int, default=1000,
                help="SLOWLOG threshold (0: every command, for the per-script distribution)")
ap.add_argument("--broadcast", type=int, default=0,
                help="instances to broadcast to, back to back (instead of spawning)")
ap.add_argument("--payload-bytes", type=int, default=100)
ap.add_argument("--cycles", type=int, default=0, help="stop after this many cycles (0: --secs only)")
ap.add_argument("--contract", action="append", default=[],
                help="contract.json files naming script SHAs (default: this checkout's)")
args = ap.parse_args()

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = {}
for c in args.contract or [ROOT / "clients" / "python" / "tests" / "fixtures" / "contract.json"]:
    NAMES.update({sha: name for name, sha in json.load(open(c))["script_sha1"].items()})


def command_name(entry):
    words = entry["command"].split(b" ")
    if words[0].upper() == b"EVALSHA" and len(words) > 1:
        return NAMES.get(words[1].decode(), words[1][:8].decode())
    return words[0].decode(errors="replace")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
r = redis.Redis.from_url(REDIS_URL)


def request(url, method="GET", token=None, body=None, timeout=120):
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def preemptions():
    """Times Redis's main thread was descheduled against its will (Linux):
    a script running when that happens takes a time slice longer."""
    pid = r.info("server")["process_id"]
    for line in open(f"/proc/{pid}/task/{pid}/status"):
        if line.startswith("nonvoluntary_ctxt_switches"):
            return int(line.split()[1])
    return 0


def by_name(entries):
    out = collections.defaultdict(list)
    for e in entries:
        out[command_name(e)].append(e["duration"])
    return out


def run(label, binary, chunk):
    os.environ["AGENTBUS_BIN"] = binary
    prefix = f"bench-spawn-{secrets.token_hex(4)}"
    env = {"AGENTBUS_MAX_ITEMS": str(args.items), "AGENTBUS_MAX_INSTANCES": str(max(args.broadcast + 1, 10_000))}
    if chunk:
        env["AGENTBUS_SPAWN_CHUNK"] = chunk
    server = Server(prefix, None, env)
    try:
        spawner = server.tenant("spawner", 10_000_000)
        bystander = server.tenant("bystander", 100)
        body = json.dumps({
            "orchestrator_agent": "orch", "worker_agent": "w", "task": "big",
            "items": [{"n": i, "text": "an item of a large job"} for i in range(args.items)],
        }).encode()
        base = f"{server.url}/api/v1"
        crowd = None
        if args.broadcast:
            crowd = "00000000-0000-4000-8000-00000000b0ad"
            names = ["sender"] + [f"r{i}" for i in range(args.broadcast)]

            def register(part):
                for name in part:
                    status, _ = request(f"{base}/agents/register", "POST", spawner,
                                        {"agent_id": "crowd", "instance_id": name, "job_id": crowd})
                    assert status == 201
            threads = [threading.Thread(target=register, args=(names[i::8],)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            body = json.dumps({"from_instance_id": "sender", "message_type": "note",
                               "payload": {"text": "x" * args.payload_bytes}}).encode()
        stop = threading.Event()
        lat = []

        def bystand():
            while not stop.is_set():
                t0 = time.perf_counter()
                request(f"{base}/credits", token=bystander)
                lat.append((time.perf_counter() - t0) * 1000)

        r.config_set("slowlog-log-slower-than", args.slowlog_us)
        r.config_set("slowlog-max-len", 1000000)
        r.slowlog_reset()
        preempted = preemptions()
        th = threading.Thread(target=bystand)
        th.start()
        spawns, cancels = [], []
        deadline = time.time() + args.secs
        while time.time() < deadline and not (args.cycles and len(spawns) >= args.cycles):
            if crowd:
                t0 = time.perf_counter()
                status, out = request(f"{base}/jobs/{crowd}/broadcast", "POST", spawner, body)
                spawns.append((time.perf_counter() - t0) * 1000)
                cancels.append(0)
                assert status == 200 and out["sent"] == args.broadcast, out
                continue
            t0 = time.perf_counter()
            status, job = request(f"{base}/jobs", "POST", spawner, body)
            spawns.append((time.perf_counter() - t0) * 1000)
            assert status == 201, job
            t0 = time.perf_counter()
            status, out = request(f"{base}/jobs/{job['id']}/cancel", "POST", spawner,
                                  {"reason": "bench"})
            cancels.append((time.perf_counter() - t0) * 1000)
            assert status == 200 and out["cancelled_items"] == args.items, out
        stop.set()
        th.join()
        preempted = preemptions() - preempted
        slow = r.slowlog_get(1000000)
        r.config_set("slowlog-log-slower-than", 10000)
        scripts = [e for e in slow if e["command"].split(b" ")[0].upper() in (b"EVALSHA", b"EVAL")]
        # SLOWLOG RESET (before the window) logs itself when the log was long.
        slow = [e for e in slow if not e["command"].startswith(b"SLOWLOG")]
        longest = max(slow, key=lambda e: e["duration"], default=None)
        longest_script = max((e["duration"] for e in scripts), default=0)
        return {
            "binary": label,
            "bystander_requests": len(lat),
            "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(pct(lat, 0.99), 2),
            "max_ms": round(max(lat), 1),
            "cycles": len(spawns),
            "spawn_ms": round(statistics.median(spawns)),
            "cancel_ms": round(statistics.median(cancels), 1),
            "longest_us": longest["duration"] if longest else 0,
            "longest_cmd": command_name(longest) if longest else "",
            "longest_script_us": longest_script,
            "redis_preempted": preempted,
            "logged": dict(collections.Counter(command_name(e) for e in slow).most_common(6)),
            "calls_over_5ms": sum(1 for e in slow
                                  if e["duration"] > 5000 and not e["command"].startswith(b"SLOWLOG")),
            "script_us_p50_p99_p999_max": {
                name: [pct(d, 0.5), pct(d, 0.99), pct(d, 0.999), max(d), len(d)]
                for name, d in by_name(scripts).items()
            },
            "over_5ms": [(e["duration"], e["command"][:90].decode(errors="replace"))
                         for e in slow if e["duration"] > 5000 and not e["command"].startswith(b"SLOWLOG")],
            "over_5ms_by": dict(collections.Counter(command_name(e) for e in slow if e["duration"] > 5000)),
        }
    finally:
        server.proc.terminate()
        server.proc.wait()
        for k in r.scan_iter(f"{prefix}:*", count=1000):
            r.unlink(k)


configs = []
for b in args.binary:
    label, path = b.split("=", 1)
    for chunk in (args.chunks.split(",") if args.chunks else [""]):
        configs.append((f"{label}/{chunk}" if chunk else label, path, chunk))
results = []
for i in range(args.runs):
    for label, path, chunk in configs:
        res = run(label, path, chunk)
        print(json.dumps(res), flush=True)
        results.append(res)
for label, _, _ in configs:
    rows = [x for x in results if x["binary"] == label]
    med = {k: statistics.median(x[k] for x in rows)
           for k in ("p50_ms", "p99_ms", "max_ms", "spawn_ms", "cancel_ms", "longest_us",
                     "longest_script_us", "calls_over_5ms")}
    print(label, "median of", len(rows), json.dumps(med))
