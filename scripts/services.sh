#!/usr/bin/env bash
# Makes sure local Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) answer:
# starts them when installed but stopped, installs them from Debian's packages
# when missing. Safe to run again and again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

wait_for() {
  local what=$1 check=$2
  for _ in $(seq 1 60); do
    if $check; then return 0; fi
    sleep 0.5
  done
  echo "services: $what did not come up" >&2
  return 1
}

# Redis
if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "services: installing redis-server" >&2
    apt_install redis-server redis-tools
  fi
  redis_up || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_for Redis redis_up
fi

# PostgreSQL
fresh_pg=""
if ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "services: installing postgresql" >&2
    apt_install postgresql postgresql-client
    fresh_pg=1
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_up || $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for PostgreSQL pg_up
fi

# A cluster this script installed gets trust auth on loopback, so the default
# DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres) works.
if [ -n "$fresh_pg" ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! $SUDO grep -q "agentbus-local" "$hba"; then
    tmp=$(mktemp)
    { echo "host all all 127.0.0.1/32 trust # agentbus-local"; echo "host all all ::1/128 trust # agentbus-local"; $SUDO cat "$hba"; } > "$tmp"
    $SUDO cp "$tmp" "$hba" && rm -f "$tmp"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
fi

if ! psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -qtAc 'select 1' >/dev/null 2>&1; then
  echo "services: PostgreSQL is up but DATABASE_URL does not let us in; set DATABASE_URL" >&2
  exit 1
fi
