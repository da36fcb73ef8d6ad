#!/usr/bin/env python3
"""bench/verify_jobs.py NEW OLD N: times `agentbus verify` over one tenant with N ended jobs, for two binaries
(same Redis data, same database): what the per-job reads cost."""
import json, os, subprocess, sys, time, uuid, http.client, socket
new, old, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
prefix = "vb" + uuid.uuid4().hex[:6]
db = "agentbus_" + prefix
admin = "postgres://postgres@127.0.0.1:5432/postgres"
url = f"postgres://postgres@127.0.0.1:5432/{db}"
token = uuid.uuid4().hex * 2
env = dict(os.environ, AGENTBUS_PREFIX=prefix, DATABASE_URL=url, AGENTBUS_ADMIN_TOKEN=token,
           AGENTBUS_RATE_LIMIT="0", AGENTBUS_BIND="127.0.0.1:18111", RUST_LOG="error")
subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{db}"'], check=True)
subprocess.run([new, "migrate", "up"], env=env, check=True, capture_output=True)
srv = subprocess.Popen([new, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", 18111)).close(); break
    except OSError: time.sleep(0.1)
tok = subprocess.run([new, "token", "create", "--tenant", "vb"], env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]
c = http.client.HTTPConnection("127.0.0.1", 18111)
def call(m, p, body=None, t=tok):
    c.request(m, p, body=json.dumps(body) if body is not None else None,
              headers={"authorization": f"Bearer {t}", "content-type": "application/json"})
    r = c.getresponse(); return r.status, r.read()
call("POST", "/api/v1/credits/grant", {"tenant": "vb", "amount": "100000"}, token)
for i in range(n):
    s, b = call("POST", "/api/v1/jobs", {"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [1]})
    jid = json.loads(b)["id"]
    call("POST", f"/api/v1/jobs/{jid}/cancel", {"reason": "bench"})
time.sleep(3)
res = {}
for label, b in (("old", old), ("new", new)) * 3:
    t0 = time.time()
    out = subprocess.run([b, "verify", "--wait-secs", "10"], env=env, capture_output=True, text=True)
    res.setdefault(label, []).append(time.time() - t0)
    assert out.returncode == 0, out.stdout[-500:] + out.stderr[-500:]
srv.terminate(); srv.wait()
subprocess.run(["psql", admin, "-qc", f'DROP DATABASE "{db}" WITH (FORCE)'])
keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{prefix}:*"], capture_output=True, text=True).stdout.split()
for i in range(0, len(keys), 500): subprocess.run(["redis-cli", "DEL", *keys[i:i+500]], capture_output=True)
import statistics
print(json.dumps({k: round(statistics.median(v), 3) for k, v in res.items()}), n)
