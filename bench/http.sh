#!/usr/bin/env bash
# The HTTP request path: `agentbus serve` (no sink, rate limit off) under wrk,
# 50 connections for 10 s, on GET /healthz and an authenticated
# GET /api/v1/credits: requests/s, the server's CPU per request and the
# Redis commands per request (INFO stats, so run it on an otherwise idle Redis).
# Usage: bench/http.sh RUNS BINARY...  — prints one Markdown row per binary
# (medians of RUNS runs; with several binaries, runs alternate between them
# so they share the machine's state alike).
set -euo pipefail
runs=$1
shift
command -v wrk >/dev/null || { echo "| (wrk not installed: apt-get install wrk) | | | | |"; exit 0; }
export AGENTBUS_PREFIX=benchhttp AGENTBUS_RATE_LIMIT=0 AGENTBUS_NO_SINK=true
AGENTBUS_ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export AGENTBUS_ADMIN_TOKEN
port=18090
tck=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
commands() { redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" info stats | awk -F: '/^total_commands_processed/ {print $2 + 0}'; }
# One wrk run: "requests/s cpu-µs-per-request redis-commands-per-request".
load() { # pid url [header]
  local c0 c1 r0 r1 out
  c0=$(cpu "$1")
  r0=$(commands)
  if [ $# -gt 2 ]; then out=$(wrk -t2 -c50 -d10s -H "$3" "$2"); else out=$(wrk -t2 -c50 -d10s "$2"); fi
  c1=$(cpu "$1")
  r1=$(commands)
  echo "$out" | awk -v c="$((c1 - c0))" -v t="$tck" -v rc="$((r1 - r0))" '
    /requests in/ {n = $1} /Requests\/sec/ {r = $2}
    END {printf "%d %.1f %.2f\n", r, c * 1000000 / t / n, rc / n}'
}
for _ in $(seq "$runs"); do
  n=0
  for bin in "$@"; do
    n=$((n + 1))
    token=$("$bin" token create --tenant bench 2>/dev/null | tail -1)
    "$bin" serve --bind "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs "localhost:$port/healthz" >/dev/null && break; sleep 0.1; done
    load "$pid" "http://127.0.0.1:$port/healthz" >>"$work/h$n"
    load "$pid" "http://127.0.0.1:$port/api/v1/credits" "authorization: Bearer $token" >>"$work/c$n"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
n=0
for bin in "$@"; do
  n=$((n + 1))
  printf '| %s | %s | %s µs | %s | %s µs | %s |\n' "$(basename "$bin")" \
    "$(cut -d' ' -f1 "$work/h$n" | median)" "$(cut -d' ' -f2 "$work/h$n" | median)" \
    "$(cut -d' ' -f1 "$work/c$n" | median)" "$(cut -d' ' -f2 "$work/c$n" | median)" \
    "$(cut -d' ' -f3 "$work/c$n" | median)"
done
