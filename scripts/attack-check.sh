#!/usr/bin/env bash
# Every hostile class of issue 15 at once for 15 s against `agentbus serve`
# (the debug build the tests made) in a 512 MiB memory cgroup: it must
# survive, stay under the limit, answer no attack 5xx and keep answering
# another tenant. Latency is not judged here (a debug build on a shared
# machine); bench/run.sh runs it on the release build with --p99-ms 50.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/agentbus}
[ -x "$bin" ] || cargo build --bin agentbus
python3 bench/attack.py "$bin" --seconds 15 --idle-seconds 3 --mem-mib 512
