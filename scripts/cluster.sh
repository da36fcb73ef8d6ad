#!/usr/bin/env bash
# A local 3-master Redis Cluster on loopback, for tests and benchmarks.
#   scripts/cluster.sh start   # ports 7000-7002 (AGENTBUS_CLUSTER_PORT to change the first)
#   scripts/cluster.sh stop
# Prints the REDIS_URL to use: redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002
set -euo pipefail
first=${AGENTBUS_CLUSTER_PORT:-7000}
ports=("$first" "$((first + 1))" "$((first + 2))")
dir=${TMPDIR:-/tmp}/agentbus-cluster
url="redis+cluster://$(printf '127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//')"

up() { redis-cli -p "${ports[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }

case "${1:-start}" in
  start)
    if up; then echo "$url"; exit 0; fi
    command -v redis-server >/dev/null || { echo "cluster: redis-server is not installed (scripts/services.sh)" >&2; exit 1; }
    for p in "${ports[@]}"; do
      mkdir -p "$dir/$p"
      redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
      # A fresh cluster: no cluster state, no data left by an earlier one.
      rm -f "$dir/$p/nodes.conf" "$dir/$p/"*.rdb "$dir/$p/"*.aof
      redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
        --dir "$dir/$p" --save "" --appendonly no --daemonize yes \
        --logfile "$dir/$p/redis.log" >/dev/null
    done
    for p in "${ports[@]}"; do
      for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    if ! created=$(redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") \
      --cluster-replicas 0 --cluster-yes 2>&1); then
      echo "$created" >&2
      exit 1
    fi
    for _ in $(seq 1 100); do up && break; sleep 0.1; done
    up || { echo "cluster: did not reach cluster_state:ok" >&2; exit 1; }
    echo "$url"
    ;;
  stop)
    for p in "${ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2
    ;;
esac
