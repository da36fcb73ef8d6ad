#!/usr/bin/env bash
# Stops the real PostgreSQL (immediate mode: like a crash) in the middle of a
# load run whose sink mirrors into it, and starts it again. The run must still
# pass: the sink backs off while Postgres is gone, nothing is dropped, and
# its copy matches Redis and the ledger at the end. The test suite covers
# the same through a TCP proxy; this is the real thing, so it runs alone
# (CI runs it after the tests). Needs a built target/debug/agentbus.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${AGENTBUS_BIN:-target/debug/agentbus}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  # CI's machine has one (scripts/services.sh installs it): not finding it
  # there is a failure, not a reason to pass.
  if [ "${CI:-}" = "true" ]; then
    echo "pg-restart: no Debian PostgreSQL cluster to restart, and CI expects one" >&2
    exit 1
  fi
  echo "pg-restart: no Debian PostgreSQL cluster to restart; skipped (outside CI)" >&2
  exit 0
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
pg() { $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main "$@"; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
# Whatever happens, Postgres is running again when this script ends.
trap 'pg_up || pg start || true' EXIT

db="agentbus_pgrestart_$RANDOM"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
out=$(mktemp)
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" AGENTBUS_PREFIX="pgrestart$RANDOM" \
  "$bin" load --tenant busy --items 20000 --workers 8 --processes 2 --work-ms 0-2 \
  --verify-sink --json >"$out" &
load=$!

sleep 1.5
if ! kill -0 "$load" 2>/dev/null; then
  echo "pg-restart: the load run ended before Postgres stopped; make it longer" >&2
  cat "$out"
  exit 1
fi
echo "pg-restart: stopping PostgreSQL (immediate) mid-run"
pg stop -m immediate
sleep 3
echo "pg-restart: starting PostgreSQL again"
pg start
for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done

status=0
wait "$load" || status=$?
cat "$out"
rm -f "$out"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
if [ "$status" -ne 0 ]; then
  echo "pg-restart: the load run failed (exit $status)" >&2
  exit 1
fi
echo "pg-restart: PASS"
