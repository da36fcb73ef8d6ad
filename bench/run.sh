#!/usr/bin/env bash
# Runs the benchmark suite against local Redis/PostgreSQL and writes
# bench/RESULTS.md: the machine, the commands, and medians of several runs.
# Usage: bench/run.sh [runs-per-measurement]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
scripts/services.sh
cargo build --release --quiet
bin=./target/release/agentbus
export AGENTBUS_PREFIX="bench"
export AGENTBUS_MAX_ITEMS=1000000
export AGENTBUS_JOB_RETENTION_SECS=60
# The sink scenario writes into a database of its own, made afresh.
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export DATABASE_URL="${admin_url%/*}/agentbus_bench"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS agentbus_bench WITH (FORCE)"
psql "$admin_url" -qc "CREATE DATABASE agentbus_bench"
# Start from (and leave) an empty bench keyspace.
clean() { redis-cli --scan --pattern 'bench:*' | xargs -r -n 500 redis-cli del >/dev/null; }
clean

out=bench/RESULTS.md.tmp
{
  echo "# Benchmark results"
  echo
  echo "Written by \`bench/run.sh $runs\` on $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD)."
  echo "Every figure is the median of $runs runs; compare figures as ratios within one run of the script."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores, shared)"
  echo "- Memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- Kernel: $(uname -r)"
  echo "- Redis: $(redis-server --version | awk '{print $3}' | cut -d= -f2) (loopback, no persistence)"
  echo "- PostgreSQL: $(psql --version | awk '{print $3}') (loopback)"
  echo "- agentbus: release build, $(rustc --version)"
  echo
  echo "## Results"
  echo
  jobs_table=$("$bin" bench jobs --runs "$runs")
  echo "$jobs_table"
  clean
  echo
  echo "### BullMQ beside it: the same Redis, the same shape, this run (median of $runs runs)"
  echo
  if command -v node >/dev/null && command -v npm >/dev/null; then
    (cd bench/bullmq && npm ci --no-audit --no-fund --silent >/dev/null)
    echo "| peer | shape | items/s | Redis CPU per item | command |"
    echo "|---|---|---|---|---|"
    bull_row=$(node bench/bullmq/bench.mjs --items 100000 --concurrency 50 --runs "$runs")
    echo "$bull_row"
    # The agentbus row of the same shape at its defaults (100000 × 50, 1/16).
    ours=$(echo "$jobs_table" | awk -F'|' '$2 ~ /100000 × 50/ && $3 ~ /^ *1\/16 *$/ {gsub(/ /, "", $4); print $4}')
    theirs=$(echo "$bull_row" | awk -F'|' '{gsub(/ /, "", $4); print $4}')
    echo
    echo "agentbus at its defaults (100000 × 50, concurrency 1, batch 16) did $ours items/s, BullMQ $theirs: $(python3 -c "print(f'{$ours / $theirs:.1f}')")× in this run."
  else
    echo "(skipped: Node.js and npm are not installed; \`apt-get install nodejs npm\` to run BullMQ beside agentbus)"
  fi
  echo
  "$bin" bench messages --runs "$runs" --agents 100 --rate 1000 --secs 5
  "$bin" bench messages --runs "$runs" --agents 100 --rate 2000 --secs 5
  clean
  "$bin" bench invoke --runs "$runs" --calls 2000 --concurrency 1
  "$bin" bench invoke --runs "$runs" --calls 5000 --concurrency 16
  clean
  "$bin" bench sink --runs "$runs" --backlog 100000 --rate 10000 --secs 5
  clean
  echo "### Many tenants at once: one Redis vs a local 3-master Redis Cluster (median of $runs runs)"
  echo
  echo "| target | load | throughput | command |"
  echo "|---|---|---|---|"
  "$bin" bench tenants --runs "$runs" --tenants 8 --items 20000 --workers 8
  scripts/cluster.sh stop
  cluster_url=$(scripts/cluster.sh start)
  REDIS_URL="$cluster_url" "$bin" bench tenants --runs "$runs" --tenants 8 --items 20000 --workers 8
  scripts/cluster.sh stop
  echo
  echo "The three masters run on the same two cores as everything else (see docs/scaling.md)."
  echo
  clean
  echo "### HTTP request path (median of $runs runs)"
  echo
  echo "| server | GET /healthz req/s | CPU per request | GET /api/v1/credits req/s | CPU per request | Redis commands per request |"
  echo "|---|---|---|---|---|---|"
  bench/http.sh "$runs" "$bin"
  echo
  echo '`bench/http.sh`: `agentbus serve` without sink, rate limit off, wrk with 50 connections for 10 s; CPU is that of the server process (user + system) per request answered; Redis commands per authenticated request from `INFO stats`.'
  echo
  clean
  echo "### Under attack (one run of bench/attack.py, 512 MiB cgroup)"
  echo
  python3 bench/attack.py "$bin" --seconds 20 --p99-ms 50 --line || echo "(a bound was missed: the line above says which)"
  echo
  clean
  # Filling a million entries takes minutes: three runs are enough here.
  "$bin" bench blackboard --runs 3 --sizes 10000,100000,1000000 --samples 500
} > "$out"
clean
mv "$out" bench/RESULTS.md
echo "wrote bench/RESULTS.md"
