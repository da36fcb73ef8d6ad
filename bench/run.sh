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
  "$bin" bench jobs --runs "$runs"
} > "$out"
mv "$out" bench/RESULTS.md
echo "wrote bench/RESULTS.md"
