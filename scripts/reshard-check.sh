#!/usr/bin/env bash
# Reshards the local cluster under load: while `agentbus load` runs a job for
# one tenant, every slot of the master holding that tenant moves to another
# master (redis-cli --cluster reshard). The load must still pass: no item
# lost, none charged twice, credits exact, and the sink's copy in Postgres
# must match. Needs scripts/cluster.sh and a built target/debug/agentbus.
set -euo pipefail
cd "$(dirname "$0")/.."
url=$(scripts/cluster.sh start)
first=${AGENTBUS_CLUSTER_PORT:-7000}
bin=${AGENTBUS_BIN:-target/debug/agentbus}
prefix="reshard$RANDOM"
tenant="busy$RANDOM"
out=$(mktemp)

REDIS_URL="$url" AGENTBUS_PREFIX="$prefix" "$bin" load --tenant "$tenant" \
  --items 60000 --workers 20 --work-ms 0-2 --fail-rate 0.01 --verify-sink --json >"$out" &
load=$!

# Wait until the job is running, then move its node's slots away.
sleep 2
slot=$(redis-cli -p "$first" cluster keyslot "$prefix:{$tenant}:credits")
nodes=$(redis-cli -p "$first" cluster nodes)
owner=$(echo "$nodes" | awk -v s="$slot" '$3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1]; if (s >= r[1] && s <= r[2]) print $1 } }')
target=$(echo "$nodes" | awk -v o="$owner" '$3 ~ /master/ && $1 != o { print $1; exit }')
count=$(echo "$nodes" | awk -v o="$owner" '$1 == o { n = 0; for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1]; n += r[2] - r[1] + 1 } print n }')
echo "reshard: tenant $tenant is in slot $slot on $owner; moving its $count slots to $target"
# The point is a reshard *under load*: the run must still be going on both
# sides of it, or this check proves nothing.
if ! kill -0 "$load" 2>/dev/null; then
  echo "reshard: the load ended before the reshard began" >&2
  exit 1
fi
redis-cli --cluster reshard "127.0.0.1:$first" --cluster-from "$owner" --cluster-to "$target" \
  --cluster-slots "$count" --cluster-yes >/dev/null
if ! kill -0 "$load" 2>/dev/null; then
  echo "reshard: the load ended before the reshard finished; make it longer" >&2
  exit 1
fi
new_owner=$(redis-cli -p "$first" cluster nodes | awk -v s="$slot" '$3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1]; if (s >= r[1] && s <= r[2]) print $1 } }')
echo "reshard: slot $slot now on $new_owner"

status=0
wait "$load" || status=$?
cat "$out"
rm -f "$out"
if [ "$status" -ne 0 ]; then
  echo "reshard: the load run failed (exit $status)" >&2
  exit 1
fi
if [ "$new_owner" = "$owner" ]; then
  echo "reshard: the slot did not move" >&2
  exit 1
fi
echo "reshard: PASS"
