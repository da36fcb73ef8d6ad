#!/usr/bin/env python3
# Registry listing cost at 8K instances of one agent (bench/RESULTS.md, "Under attack"):
# limit=1 vs limit=1000, by agent and by status. Usage: bench/registry_listing.py BINARY
import http.client, json, os, statistics, subprocess, sys, time, uuid
binary = sys.argv[1]; port = 18198
admin = uuid.uuid4().hex * 2; prefix = "regb" + uuid.uuid4().hex[:6]
env = dict(os.environ, AGENTBUS_PREFIX=prefix, AGENTBUS_ADMIN_TOKEN=admin, AGENTBUS_NO_SINK="true",
           AGENTBUS_RATE_LIMIT="0", AGENTBUS_BIND=f"127.0.0.1:{port}", AGENTBUS_MAX_INSTANCES="20000")
tok = subprocess.run([binary, "token", "create", "--tenant", "r"], env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]
p = subprocess.Popen([binary, "serve"], env=env, stderr=subprocess.DEVNULL)
time.sleep(1)
c = http.client.HTTPConnection("127.0.0.1", port)
H = {"authorization": "Bearer " + tok, "content-type": "application/json"}
def req(m, path, body=None):
    c.request(m, path, body=json.dumps(body) if body else None, headers=H); r = c.getresponse(); r.read(); return r.status
for n in range(8000):
    req("POST", "/api/v1/agents/register", {"agent_id": "x", "instance_id": f"x{n}"})
out = {}
for path in ["/api/v1/agents?agent_id=x&limit=1", "/api/v1/agents?agent_id=x&limit=1000", "/api/v1/agents?status=running&limit=1", "/api/v1/agents?limit=1"]:
    t = []
    for _ in range(21):
        t0 = time.perf_counter(); assert req("GET", path) == 200; t.append((time.perf_counter() - t0) * 1000)
    out[path] = round(statistics.median(t), 2)
print(json.dumps(out))
p.terminate()
subprocess.run(["redis-cli", "--no-raw", "eval", "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 1", "0", prefix + ":*"], capture_output=True)
