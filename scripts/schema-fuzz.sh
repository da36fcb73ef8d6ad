#!/usr/bin/env bash
# Schema-based fuzzing: schemathesis generates valid and invalid requests
# from the served OpenAPI document and sends them to a real `agentbus serve`
# (own key prefix, own database). It fails on any 5xx, on a server panic,
# and on a rejected (4xx) request that wrote anything to Redis (seen through
# keyspace notifications, scripts/schema_fuzz_hooks.py). Bounded: a fixed
# number of examples per operation, `timeout` as the backstop. Runs against
# a single Redis (notifications are per node).
#
# Usage: scripts/schema-fuzz.sh [max-examples per operation, default 50]
# Needs a built target/debug/agentbus; installs schemathesis into a venv
# under ~/.cache/agentbus on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${AGENTBUS_BIN:-target/debug/agentbus}
examples=${1:-50}
venv=${AGENTBUS_ST_VENV:-$HOME/.cache/agentbus/st-venv}
if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/python" -c "import redis" 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q python3 python3-venv python3-pip >/dev/null
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis>=4,<5' 'redis>=5,<8'
fi
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
case "$REDIS_URL" in
  redis+cluster://*) echo "schema-fuzz: needs a single Redis, not a cluster" >&2; exit 2 ;;
esac
saved_notify=$(redis-cli -u "$REDIS_URL" CONFIG GET notify-keyspace-events | tail -n 1)

db="agentbus_schemafuzz_$RANDOM"
port=$((20000 + RANDOM % 20000))
admin="admin-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n")"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export AGENTBUS_PREFIX="schemafuzz$RANDOM"
# Limits out of the way: schemathesis is one busy client. No background
# writer either (sink, reaper, reclaimer): every write is a request's.
export AGENTBUS_RATE_LIMIT=0 AGENTBUS_CONCURRENCY_LIMIT=0 AGENTBUS_NO_SINK=true
export AGENTBUS_REAP_INTERVAL_MS=86400000 AGENTBUS_RECLAIM_INTERVAL_MS=86400000
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  redis-cli -u "$REDIS_URL" CONFIG SET notify-keyspace-events "$saved_notify" >/dev/null || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$AGENTBUS_PREFIX*" \
    | xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT

psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
"$bin" migrate up >/dev/null
token=$("$bin" token create --tenant fuzz 2>/dev/null)
"$bin" credits grant --tenant fuzz --amount 1000000 >/dev/null
# The fuzzer sends thousands of deliberately unauthenticated requests from
# one address: the per-address failure limit (tested in tests/hostile.rs)
# would answer them all 429 and hide the endpoints' own answers.
AGENTBUS_AUTH_FAILURE_LIMIT=0 AGENTBUS_ADMIN_TOKEN="$admin" "$bin" serve --bind "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

run() {
  # `timeout` is the backstop; --max-examples is the bound. One worker:
  # CPython 3.11's ast module is not thread-safe under hypothesis.
  timeout 900 "$venv/bin/st" run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --checks not_a_server_error,rejected_requests_change_nothing --max-examples "$examples" --seed 1 \
    --phases examples,coverage,fuzzing,stateful --request-timeout 35 \
    --workers 1 --no-color --generation-database none \
    --report-dir "$work/report" "$@" 2>&1 | cut -c1-400 | tee -a "$work/st.log"
}
export SCHEMATHESIS_HOOKS="$PWD/scripts/schema_fuzz_hooks.py"
status=0
echo "schema-fuzz: tenant token, every operation"
run -H "Authorization: Bearer $token" --exclude-path-regex "^/api/v1/(tokens|credits/grant)" || status=1
echo "schema-fuzz: admin token, admin operations"
run -H "Authorization: Bearer $admin" --include-path-regex "^/api/v1/(tokens|credits/grant)" || status=1

# The check that rejected requests write nothing must have seen the writes
# of accepted ones, or it proves nothing.
if ! grep -qE "schema-fuzz: [1-9][0-9]* writes by accepted requests observed" "$work/st.log"; then
  echo "schema-fuzz: the Redis write watcher saw no write at all" >&2
  status=1
fi
if grep -q "panicked" "$work/server.log"; then
  echo "schema-fuzz: the server panicked" >&2
  grep -B2 -A10 "panicked" "$work/server.log" >&2
  status=1
fi
if ! kill -0 "$server" 2>/dev/null; then
  echo "schema-fuzz: the server died" >&2
  tail -50 "$work/server.log" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "schema-fuzz: PASS (no 5xx, no panic, no write from a rejected request)"
exit "$status"
