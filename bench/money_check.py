#!/usr/bin/env python3
"""Issue 16's findings, replayed against one `agentbus` binary.

Starts `agentbus serve` (with its sink) on a fresh Postgres database and a
key prefix of its own, plays each input a careless or hostile client might
send, and reports what the server answered, what Redis and Postgres hold
afterwards, and what `agentbus verify` says. Prints one JSON object.

Usage: bench/money_check.py BINARY [--port 18093]
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import threading
import time
import uuid

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("--port", type=int, default=18093)
args = ap.parse_args()

PREFIX = "money" + uuid.uuid4().hex[:8]
ADMIN = uuid.uuid4().hex + uuid.uuid4().hex
ADMIN_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DB = "agentbus_" + PREFIX
DB_URL = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB
env = dict(
    os.environ,
    AGENTBUS_PREFIX=PREFIX,
    AGENTBUS_ADMIN_TOKEN=ADMIN,
    AGENTBUS_RATE_LIMIT="0",
    AGENTBUS_BIND=f"127.0.0.1:{args.port}",
    DATABASE_URL=DB_URL,
    RUST_LOG="error",
)


def psql(sql, url=None):
    out = subprocess.run(["psql", url or DB_URL, "-Atqc", sql], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def redis(*parts):
    out = subprocess.run(["redis-cli", *map(str, parts)], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def cli(*a, check=True):
    return subprocess.run([args.binary, *a], env=env, check=check, capture_output=True, text=True)


psql(f'CREATE DATABASE "{DB}"', ADMIN_URL)
cli("migrate", "up")
server = subprocess.Popen([args.binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def cleanup():
    if server.poll() is None:
        server.terminate()
        server.wait(timeout=10)
    for key in subprocess.run(["redis-cli", "--scan", "--pattern", f"{PREFIX}:*"],
                              capture_output=True, text=True).stdout.split():
        redis("DEL", key)
    psql(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', ADMIN_URL)


import atexit  # noqa: E402

atexit.register(cleanup)
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", args.port)).close()
        break
    except OSError:
        time.sleep(0.05)


def call(method, path, token, body=None, timeout=15):
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=timeout)
    headers = {"authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    except (ConnectionError, http.client.HTTPException) as e:
        return "dropped", str(e)


def tenant(name, credits):
    token = cli("token", "create", "--tenant", name).stdout.strip().splitlines()[-1]
    if credits:
        call("POST", "/api/v1/credits/grant", ADMIN, {"tenant": name, "amount": str(credits)})
    return token


def key(t, suffix):
    return f"{PREFIX}:{{{t}}}:{suffix}"


def settle():
    time.sleep(1.5)


def verify():
    out = cli("verify", "--wait-secs", "5", check=False)
    return "OK" if out.returncode == 0 else "differences"


report = {"binary": args.binary}

# 1a. Cancel with U+0000 in the reason.
tok = tenant("nulcancel", 100)
_, job = call("POST", "/api/v1/jobs", tok, {"orchestrator_agent": "orc", "worker_agent": "w",
                                            "task": "t", "items": [1, 2]})
job_id = job["id"]
status, _ = call("POST", f"/api/v1/jobs/{job_id}/cancel", tok, {"reason": "bad\u0000reason"})
settle()
report["cancel_nul"] = {
    "status": status,
    "redis_job": redis("HGET", key("nulcancel", f"job:{job_id}"), "status"),
    "postgres_job": psql(f"SELECT status FROM agents.jobs WHERE id = '{job_id}'"),
    "cancellation_rows": psql(f"SELECT COUNT(*) FROM agents.job_cancellations WHERE job_id = '{job_id}'"),
}

# 1b. Admin grant with U+0000 in the reason.
tenant("nulgrant", 0)
status, _ = call("POST", "/api/v1/credits/grant", ADMIN,
                 {"tenant": "nulgrant", "amount": "50", "reason": "promo\u0000"})
settle()
report["grant_nul"] = {
    "status": status,
    "redis_total": redis("HGET", key("nulgrant", "credits"), "total"),
    "ledger_total": psql("SELECT COALESCE(SUM(amount), 0) FROM agents.credit_ledger "
                         "WHERE tenant_id = 'nulgrant' AND operation = 'grant'"),
}

# 1c. An invocation answered with U+0000 in its error.
tok = tenant("nulinvoke", 100)
for inst in ("caller", "target"):
    call("POST", "/api/v1/agents/register", tok, {"agent_id": inst, "instance_id": inst})
answer = {}


def target_answers():
    for _ in range(50):
        s, page = call("POST", "/api/v1/agents/target/messages/receive?count=1&wait_ms=200", tok)
        msgs = page.get("messages", []) if isinstance(page, dict) else []
        for m in msgs:
            invoke_id = m.get("invoke_id")
            if invoke_id:
                answer["status"] = call("POST", "/api/v1/invocations/respond", tok,
                                        {"invoke_id": invoke_id, "error": "boom\u0000"})[0]
                answer["invoke_id"] = invoke_id
                return


th = threading.Thread(target=target_answers)
th.start()
status, body = call("POST", "/api/v1/invocations", tok, {"caller_instance_id": "caller",
                                                         "target_instance_id": "target",
                                                         "request_payload": {"q": 1},
                                                         "timeout_seconds": 3})
th.join()
settle()
iid = answer.get("invoke_id", "")
report["invoke_error_nul"] = {
    "respond_status": answer.get("status"),
    "redis_status": redis("HGET", key("nulinvoke", f"invoke:{iid}"), "status") if iid else None,
    "audit_status": psql(f"SELECT status FROM agents.invoke_audit WHERE invoke_id = '{iid}'"),
}

# 3. Blackboard sum past i64: 1100 values of 9e9.
tok = tenant("bbsum", 5000)
codes = {}
for i in range(1100):
    s, _ = call("PUT", f"/api/v1/namespaces/totals/entries/k{i}", tok, {"value": 9_000_000_000})
    codes[s] = codes.get(s, 0) + 1
s, agg = call("GET", "/api/v1/namespaces/totals/aggregate", tok)
report["blackboard_sum"] = {
    "write_statuses": codes,
    "aggregate_status": s,
    "sum": agg.get("sum") if isinstance(agg, dict) else agg,
    "expected": 9_000_000_000 * 1100,
}

# 4. Amounts.
report["amounts"] = {
    text: call("POST", "/api/v1/credits/grant", ADMIN, {"tenant": "amounts", "amount": text})[0]
    for text in ["79228162514264337593543950335", "1.000000000000000000000000000001", "1_0", "+5"]
}
report["amounts"]["AGENTBUS_PRICES=job_item=79228162514264337593543950335"] = subprocess.run(
    [args.binary, "credits", "show", "--tenant", "x"],
    env=dict(env, AGENTBUS_PRICES="job_item=79228162514264337593543950335"),
    capture_output=True, text=True).returncode

# 5. Item id past u64; a broadcast with credit for two of three recipients.
tok = tenant("wrong", 100)
_, job = call("POST", "/api/v1/jobs", tok, {"orchestrator_agent": "orc", "worker_agent": "w",
                                            "task": "t", "items": [1]})
job_id = job["id"]
report["item_id_past_u64"] = call(
    "POST", f"/api/v1/jobs/{job_id}/items/99999999999999999999-0/complete", tok, {"output": 1})[0]
tok = tenant("bcast", 0)
crowd = str(uuid.uuid4())
for inst in ("sender", "r1", "r2", "r3"):
    call("POST", "/api/v1/agents/register", tok,
         {"agent_id": "w", "instance_id": inst, "job_id": crowd})
call("POST", "/api/v1/credits/grant", ADMIN, {"tenant": "bcast", "amount": "4"})
s, _ = call("POST", f"/api/v1/jobs/{crowd}/broadcast", tok, {"from_instance_id": "sender"})
delivered = sum(int(redis("XLEN", key("bcast", f"inbox:{r}")) or 0) for r in ("r1", "r2", "r3"))
report["broadcast_short"] = {
    "status": s,
    "delivered": delivered,
    "spent": redis("HGET", key("bcast", "credits"), "spent"),
}

# 6. A refused invocation: is it audited, does the answer name it?
tok = tenant("refused", 100)
call("POST", "/api/v1/agents/register", tok, {"agent_id": "c", "instance_id": "caller"})
s, body = call("POST", "/api/v1/invocations", tok, {"caller_instance_id": "caller",
                                                    "target_instance_id": "ghost"})
settle()
report["refused_invoke"] = {
    "status": s,
    "invoke_id_in_body": bool(isinstance(body, dict) and body.get("error", {}).get("invoke_id")),
    "audit_rows": psql("SELECT COUNT(*) FROM agents.invoke_audit a JOIN agents.invoke_tenants t "
                       "USING (invoke_id) WHERE t.tenant_id = 'refused'"),
}

# 2. A pending invocation's record: does it expire before it ends?
tok = tenant("pending", 100)
for inst in ("caller", "mute"):
    call("POST", "/api/v1/agents/register", tok, {"agent_id": inst, "instance_id": inst})
th = threading.Thread(target=lambda: call("POST", "/api/v1/invocations", tok, {
    "caller_instance_id": "caller", "target_instance_id": "mute", "timeout_seconds": 2}))
th.start()
time.sleep(0.5)
pending = redis("ZRANGE", key("pending", "invokes:pending"), 0, -1).split()
ttl = redis("TTL", key("pending", f"invoke:{pending[0]}")) if pending else None
th.join()
report["pending_invoke_ttl_secs"] = ttl

report["verify"] = verify()
print(json.dumps(report, indent=1))
