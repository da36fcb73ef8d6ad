#!/usr/bin/env python3
"""Every hostile class of issue 15 at once against one `agentbus serve`
held to a memory limit, while another tenant reads its credits.

Usage: bench/attack.py BINARY [--seconds N] [--mem-mib M] [--p99-ms MS]

Starts BINARY serve (no sink, rate limit off so the attacker is not slowed
by it; the per-address auth-failure limit stays on) in a memory cgroup of
M MiB when this machine lets us make one, measures the bystander's
GET /credits latency idle, then under attack for N seconds, and prints one
JSON line: peak RSS, p50/p99 idle and under attack, answers per class.
Exits 1 when the server died, its peak RSS reached the limit, an attack was
answered 5xx, or (with --p99-ms) the bystander's p99 under attack is above
it. Standard library only, so CI needs nothing installed.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("--seconds", type=float, default=20)
ap.add_argument("--idle-seconds", type=float, default=5)
ap.add_argument("--mem-mib", type=int, default=512)
ap.add_argument("--p99-ms", type=float, default=None)
ap.add_argument("--port", type=int, default=18190)
ap.add_argument("--line", action="store_true", help="one Markdown sentence instead of JSON")
ap.add_argument("--only", default=None, help="comma-separated attack numbers (diagnosis)")
args = ap.parse_args()

PORT = args.port
PREFIX = "attack" + uuid.uuid4().hex[:8]
ADMIN = uuid.uuid4().hex + uuid.uuid4().hex
env = dict(
    os.environ,
    AGENTBUS_PREFIX=PREFIX,
    AGENTBUS_ADMIN_TOKEN=ADMIN,
    AGENTBUS_RATE_LIMIT="0",
    AGENTBUS_NO_SINK="true",
    AGENTBUS_BIND=f"127.0.0.1:{PORT}",
    RUST_LOG="error",
)


def cli(*a):
    out = subprocess.run([args.binary, *a], env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def redis_cmd(*parts):
    """One command to Redis over RESP (the attacker with Redis access)."""
    host, port = "127.0.0.1", 6379
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    hp = url.split("://", 1)[-1].split("/", 1)[0].split(",")[0]
    if ":" in hp:
        host, port = hp.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    msg = b"*%d\r\n" % len(parts)
    for p in parts:
        p = p if isinstance(p, bytes) else str(p).encode()
        msg += b"$%d\r\n%s\r\n" % (len(p), p)
    s.sendall(msg)
    reply = s.recv(65536)
    s.close()
    return reply


# ---- the server, in a memory cgroup when we may make one
cgroup = None
base = "/sys/fs/cgroup/memory"
if os.access(base, os.W_OK):
    cgroup = f"{base}/agentbus-{PREFIX}"
    os.mkdir(cgroup)
    with open(f"{cgroup}/memory.limit_in_bytes", "w") as f:
        f.write(str(args.mem_mib * 1024 * 1024))
server = subprocess.Popen([args.binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def cleanup():
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if cgroup and os.path.isdir(cgroup):
        os.rmdir(cgroup)


import atexit  # noqa: E402

atexit.register(cleanup)
if cgroup:
    with open(f"{cgroup}/cgroup.procs", "w") as f:
        f.write(str(server.pid))
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", PORT)).close()
        break
    except OSError:
        time.sleep(0.05)

attacker = cli("token", "create", "--tenant", "attacker")
bystander = cli("token", "create", "--tenant", "bystander")
cli("credits", "grant", "--tenant", "attacker", "--amount", "100000")
cli("credits", "grant", "--tenant", "bystander", "--amount", "10")


def request(conn, method, path, token=None, body=None, raw=None):
    headers = {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        headers["content-type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    return resp.status, payload


# Each party from its own loopback address, as they would be from their own
# hosts: the per-address auth-failure limit must not lock out the others.
ATTACKER, GUESSER, BYSTANDER = "127.0.0.3", "127.0.0.4", "127.0.0.2"


def call(method, path, token=None, body=None, raw=None, source=ATTACKER, parse=True):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60, source_address=(source, 0))
    try:
        status, payload = request(conn, method, path, token, body, raw)
    finally:
        conn.close()
    if not parse:
        # The attacker's own CPU is the machine's too: no JSON parse it does not need.
        return status, None
    try:
        return status, json.loads(payload or b"null")
    except ValueError:
        return status, None


# ---- what the attacker prepares (paid for, within every limit)
MIB = 1024 * 1024
big = "x" * (MIB - 64)
job = {"orchestrator_agent": "orc", "worker_agent": "w", "task": "t", "items": [0] * 12}
st, spawned = call("POST", "/api/v1/jobs", attacker, job)
assert st == 201, (st, spawned)
results_job = spawned["id"]
st, claimed = call("POST", f"/api/v1/jobs/{results_job}/claim?worker_instance_id=w1&count=12", attacker)
for item in claimed["items"]:
    call("POST", f"/api/v1/jobs/{results_job}/items/{item['item_id']}/complete", attacker, {"output": big})
for inst in ("rx", "tx"):
    call("POST", "/api/v1/agents/register", attacker, {"agent_id": "a", "instance_id": inst})
for n in range(12):
    call("POST", "/api/v1/agents/rx/messages", attacker,
         {"from_instance_id": "tx", "message_type": "m", "payload": {"n": n, "pad": big}})
inbox = f"{PREFIX}:{{attacker}}:inbox:rx"
for _ in range(20):
    redis_cmd("XADD", inbox, "*", "id", uuid.uuid4().hex, "from", "tx", "type", "m", "payload", b"\xc1\xc1")

chain = {"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [0],
         "stages": [{"name": f"s{i}", "items": 1, "depends_on": [f"s{i + 1}"]} for i in range(8000)]}
chain_body = json.dumps(chain).encode()
widest = {"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [0] * 100000,
          "stages": [{"name": f"s{i}", "items": 100000,
                      "depends_on": [f"s{j}" for j in range(max(0, i - 32), i)]} for i in range(200)]}
widest_body = json.dumps(widest).encode()
flood_body = b'{"orchestrator_agent":"o","worker_agent":"w","task":"t","items":[' + b"0," * (7 * MIB) + b"0]}"

answers = {}
lock = threading.Lock()
stop = threading.Event()
died = threading.Event()


def note(cls, status):
    with lock:
        answers.setdefault(cls, Counter())[str(status)] += 1


def attack(cls, fn):
    def run():
        while not stop.is_set():
            try:
                note(cls, fn())
            except ConnectionRefusedError:
                died.set()
                note(cls, "refused")
                time.sleep(0.1)
            except (OSError, http.client.HTTPException) as e:
                note(cls, type(e).__name__)
    return threading.Thread(target=run, daemon=True)


def post_raw(path, token, raw):
    return lambda: call("POST", path, token, raw=raw, parse=False)[0]


def get(path):
    return lambda: call("GET", path, attacker, parse=False)[0]


def ended_claim():
    st, j = call("POST", "/api/v1/jobs", attacker, {**job, "items": [0]})
    if st != 201:
        return st
    jid = j["id"]
    # Its one item taken first, so the next claim waits until the cancel.
    call("POST", f"/api/v1/jobs/{jid}/claim?worker_instance_id=w9&count=1", attacker)
    t = threading.Timer(0.2, lambda: call("POST", f"/api/v1/jobs/{jid}/cancel", attacker, {"reason": "r"}))
    t.start()
    st, _ = call("POST", f"/api/v1/jobs/{jid}/claim?worker_instance_id=w9&count=1&wait_ms=5000", attacker)
    t.join()
    return st


def slowloris():
    socks = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", PORT), source_address=(ATTACKER, 0))
        s.sendall(b"GET /api/v1/credits HTTP/1.1\r\nhost: x\r\n")
        socks.append(s)
    time.sleep(2)
    closed = 0
    for s in socks:
        s.settimeout(15)
        try:
            closed += s.recv(1) == b""
        except OSError:
            closed += 1
        s.close()
    return f"closed {closed}/100"


def auth_guess():
    return call("GET", "/api/v1/tokens", uuid.uuid4().hex * 2, source=GUESSER)[0]


n_reg = [0]


def register():
    n_reg[0] += 1
    return call("POST", "/api/v1/agents/register", attacker,
                {"agent_id": "flood", "instance_id": f"f{n_reg[0]}-{random.randrange(10**9)}"})[0]


attacks = [
    attack("simulate chain of 8000 stages", post_raw("/api/v1/jobs/simulate", attacker, chain_body)),
    attack("simulate 10^12 items", lambda: call("POST", "/api/v1/jobs/simulate", attacker,
           {**job, "items": 1, "stages": [{"name": "s", "items": 10**12}]})[0]),
    attack("simulate the largest allowed graph", post_raw("/api/v1/jobs/simulate", attacker, widest_body)),
    attack("spawn with 14 MiB of items", post_raw("/api/v1/jobs", attacker, flood_body)),
    attack("read 12 MiB of results", get(f"/api/v1/jobs/{results_job}/results?limit=1000")),
    attack("list 12 MiB inbox with poison", get("/api/v1/agents/rx/messages?limit=500")),
    attack("receive 500 from that inbox", post_raw("/api/v1/agents/rx/messages/receive?count=500", attacker, b"")),
    attack("register instances past the limit", register),
    attack("list one agent of 10K", get("/api/v1/agents?agent_id=flood&limit=1")),
    attack("claim waiting on a job that ends", ended_claim),
    attack("half-sent headers", slowloris),
    attack("admin token guesses", auth_guess),
]

# ---- RSS sampling and the bystander
peak = [0]


def rss_kib():
    try:
        with open(f"/proc/{server.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kib())
        time.sleep(0.05)


def bystand(seconds, halt):
    def connect():
        return http.client.HTTPConnection("127.0.0.1", PORT, timeout=30, source_address=(BYSTANDER, 0))

    conn = connect()
    lat, failures = [], Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end and not halt.is_set():
        t0 = time.perf_counter()
        try:
            st, _ = request(conn, "GET", "/api/v1/credits", bystander)
        except (OSError, http.client.HTTPException) as e:
            failures[type(e).__name__] += 1
            conn = connect()
            continue
        lat.append((time.perf_counter() - t0) * 1000)
        if st != 200:
            failures[str(st)] += 1
        time.sleep(0.01)
    return lat, failures


def pct(v, p):
    v = sorted(v)
    return round(v[min(len(v) - 1, int(len(v) * p))], 2) if v else None


def bystander_process(out, idle_done):
    """Its own process: the attacker's threads hold this one's GIL."""
    idle = bystand(args.idle_seconds, threading.Event())
    idle_done.set()
    under = bystand(args.seconds, threading.Event())
    out.put((idle, under))


def cpu_seconds():
    """CPU used so far by the server, Redis and this (attacking) process."""
    tck = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        srv = (int(fields[11]) + int(fields[12])) / tck
    except OSError:
        srv = 0.0
    info = redis_cmd("INFO", "cpu").decode(errors="replace")
    red = sum(float(line.split(":")[1]) for line in info.splitlines()
              if line.startswith(("used_cpu_sys:", "used_cpu_user:")))
    me = os.times()
    return srv, red, me.user + me.system


ctx = multiprocessing.get_context("fork")
out, idle_done = ctx.Queue(), ctx.Event()
proc = ctx.Process(target=bystander_process, args=(out, idle_done))
proc.start()
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
idle_done.wait()
rss_idle = rss_kib()
cpu0, t0 = cpu_seconds(), time.monotonic()
only = set(args.only.split(",")) if args.only else None
for n, a in enumerate(attacks):
    if only is None or str(n) in only:
        a.start()
(idle, idle_fail), (under, under_fail) = out.get()
cpu1, t1 = cpu_seconds(), time.monotonic()
proc.join()
stop.set()
for a in attacks:
    if a.is_alive():
        a.join(timeout=90)
alive = server.poll() is None and not died.is_set()
try:
    with open(f"/proc/{server.pid}/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = peak[0]
peak_kib = max(peak[0], hwm)
cleanup()
redis_keys = redis_cmd("EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end return n", 0, PREFIX + ":*")

summary = {
    "alive": alive,
    "memory_limit_mib": args.mem_mib,
    "cgroup": bool(cgroup),
    "rss_idle_mib": round(rss_idle / 1024, 1),
    "peak_rss_mib": round(peak_kib / 1024, 1),
    "bystander_idle_ms": {"p50": pct(idle, 0.5), "p99": pct(idle, 0.99), "n": len(idle)},
    "bystander_under_attack_ms": {"p50": pct(under, 0.5), "p99": pct(under, 0.99), "n": len(under),
                                  "failures": dict(under_fail)},
    "cpu_share_under_attack": {
        name: round((b - a) / (t1 - t0), 2) for name, a, b in zip(("server", "redis", "attacker"), cpu0, cpu1)
    },
    "answers": {k: dict(v) for k, v in answers.items()},
}
if args.line:
    i, u = summary["bystander_idle_ms"], summary["bystander_under_attack_ms"]
    print(f"Server alive: {alive}; peak RSS {summary['peak_rss_mib']} MiB of {args.mem_mib}; "
          f"bystander GET /credits p50/p99 idle {i['p50']}/{i['p99']} ms, "
          f"under attack {u['p50']}/{u['p99']} ms.")
else:
    print(json.dumps(summary, indent=1))
bad = []
if not alive:
    bad.append("the server died")
if peak_kib >= args.mem_mib * 1024:
    bad.append("peak RSS reached the limit")
if under_fail or idle_fail:
    bad.append("the bystander was refused")
for cls, v in answers.items():
    if any(k.startswith("5") for k in v):
        bad.append(f"{cls}: answered 5xx")
if args.p99_ms is not None and (pct(under, 0.99) or 0) > args.p99_ms:
    bad.append(f"bystander p99 above {args.p99_ms} ms")
if bad:
    print("FAIL: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
