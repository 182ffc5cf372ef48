#!/usr/bin/env bash
# A PostgreSQL primary and a synchronous streaming replica on this machine, from the installed
# PostgreSQL binaries, for the failover fault test and `database.read_url`. It never touches the
# server on 5432.
#
#   scripts/pg-replica.sh up            a healthy pair: primary on 5442, synchronous standby on
#                                       5443 (idempotent; a pair left failed over is rebuilt)
#   scripts/pg-replica.sh down          stop both and delete their data
#   scripts/pg-replica.sh status        role and replication state of each node
#   scripts/pg-replica.sh stop-primary  kill the primary as a crash would (pg_ctl -m immediate)
#   scripts/pg-replica.sh promote       promote the standby to primary, waiting until it writes
#   scripts/pg-replica.sh pause-replay  stop applying WAL on the standby (it still receives and
#   scripts/pg-replica.sh resume-replay   confirms it), to make replica reads visibly stale
#   scripts/pg-replica.sh urls          database.url (both hosts, read-write) and database.read_url
#
# Data lives under $PG_REPLICA_DIR (default /tmp/dispatcher-pg-replica), owned by the `postgres`
# user; both nodes trust user postgres from loopback. Ports: $PG_PRIMARY_PORT (5442) and
# $PG_STANDBY_PORT (5443).
#
# Synchronous by default: once the standby streams, the primary gets
# `synchronous_standby_names = 'standby'` (and `synchronous_commit = on`), so a commit is
# acknowledged only after the standby has flushed it to disk. `PG_REPLICA_SYNC=0` leaves the
# standby asynchronous. The setting is made with ALTER SYSTEM on the primary after the base
# backup, so the standby does not inherit it: promoted, it accepts writes at once instead of
# waiting for a standby of its own (it then runs alone, as the README's "Running at scale" says).
#
# Every wait is bounded (PG_REPLICA_TIMEOUT seconds, default 30).
set -euo pipefail

DIR="${PG_REPLICA_DIR:-/tmp/dispatcher-pg-replica}"
P1="${PG_PRIMARY_PORT:-5442}"
P2="${PG_STANDBY_PORT:-5443}"
SYNC="${PG_REPLICA_SYNC:-1}"
TIMEOUT="${PG_REPLICA_TIMEOUT:-30}"
BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
PRIMARY="$DIR/primary"
STANDBY="$DIR/standby"

[ -x "$BIN/initdb" ] || { echo "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin" >&2; exit 1; }
if [ "$P1" = 5432 ] || [ "$P2" = 5432 ]; then
  echo "port 5432 belongs to the main server; pick other ports" >&2
  exit 2
fi

# The server refuses to run as root: everything runs as `postgres` (or the caller, if not root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

psql_at() { # port, sql: one value, unaligned
  as_pg "$BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "$2"
}

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2 >/dev/null 2>&1; }

# Waits up to TIMEOUT seconds for `$@` to succeed; says what it waited for when it gives up.
wait_until() { # description, command...
  local what=$1
  shift
  local deadline=$((SECONDS + TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "timed out after ${TIMEOUT}s waiting for: $what" >&2
  return 1
}

running() { [ -f "$1/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }

start_node() { # data dir, port
  running "$1" && return 0
  as_pg "$BIN/pg_ctl" -D "$1" -l "$1/server.log" -w -t "$TIMEOUT" -o "-p $2" start >/dev/null
}

in_recovery() { [ "$(psql_at "$1" 'SELECT pg_is_in_recovery()')" = t ]; }
writable() { [ "$(psql_at "$1" 'SELECT pg_is_in_recovery()')" = f ]; }

# Is the standby streaming from the primary, in the mode asked for?
streaming() {
  local want=async
  [ "$SYNC" = 1 ] && want=sync
  [ "$(psql_at "$P1" "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby' AND state = 'streaming'")" = "$want" ]
}

healthy() {
  ready "$P1" && ready "$P2" && writable "$P1" && in_recovery "$P2" && streaming
}

init_primary() {
  as_pg mkdir -p "$DIR"
  as_pg "$BIN/initdb" -D "$PRIMARY" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  cat <<EOF | as_pg tee -a "$PRIMARY/postgresql.conf" >/dev/null
# scripts/pg-replica.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 5
wal_keep_size = '256MB'
hot_standby = on
# The tests' services open a few pools each.
max_connections = 300
shared_buffers = '128MB'
fsync = on
EOF
  cat <<EOF | as_pg tee "$PRIMARY/pg_hba.conf" >/dev/null
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
EOF
}

clone_standby() {
  as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$STANDBY" \
    --write-recovery-conf --wal-method=stream --checkpoint=fast >/dev/null
  # The standby connects as `standby`, the name synchronous_standby_names lists.
  echo "primary_conninfo = 'host=127.0.0.1 port=$P1 user=postgres application_name=standby'" |
    as_pg tee -a "$STANDBY/postgresql.auto.conf" >/dev/null
}

make_sync() {
  if [ "$SYNC" = 1 ]; then
    psql_at "$P1" "ALTER SYSTEM SET synchronous_standby_names = 'standby'" >/dev/null
    psql_at "$P1" "ALTER SYSTEM SET synchronous_commit = 'on'" >/dev/null
  else
    psql_at "$P1" "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null
  fi
  psql_at "$P1" "SELECT pg_reload_conf()" >/dev/null
}

down() {
  for d in "$STANDBY" "$PRIMARY"; do
    if running "$d"; then as_pg "$BIN/pg_ctl" -D "$d" -m immediate -w -t "$TIMEOUT" stop >/dev/null || true; fi
  done
  rm -rf "$DIR"
}

up() {
  if [ -d "$PRIMARY" ] && [ -d "$STANDBY" ]; then
    start_node "$PRIMARY" "$P1" || true
    start_node "$STANDBY" "$P2" || true
    # A standby that has not attached yet gets a moment; anything else (a pair left failed
    # over by the fault test, a missing node) is rebuilt from scratch, which takes seconds.
    if ready "$P1" && writable "$P1" && in_recovery "$P2"; then
      make_sync
      if TIMEOUT=$((TIMEOUT < 10 ? TIMEOUT : 10)) wait_until "standby streaming" streaming; then
        echo "pair up (already): primary 127.0.0.1:$P1, standby 127.0.0.1:$P2 ($(mode))"
        return 0
      fi
    fi
    echo "the pair is not in its healthy shape; rebuilding it"
  fi
  down
  init_primary
  start_node "$PRIMARY" "$P1"
  wait_until "primary on $P1" ready "$P1"
  clone_standby
  start_node "$STANDBY" "$P2"
  wait_until "standby on $P2" ready "$P2"
  make_sync
  wait_until "standby streaming ($(mode)) from the primary" streaming
  echo "pair up: primary 127.0.0.1:$P1, standby 127.0.0.1:$P2 ($(mode))"
}

mode() { if [ "$SYNC" = 1 ]; then echo synchronous; else echo asynchronous; fi; }

status() {
  for n in "primary:$P1" "standby:$P2"; do
    local name=${n%%:*} port=${n##*:} role
    if ! ready "$port"; then
      echo "$name 127.0.0.1:$port down"
      continue
    fi
    if in_recovery "$port"; then role="in recovery (standby)"; else role="read-write (primary)"; fi
    echo "$name 127.0.0.1:$port $role"
  done
  if ready "$P1" && writable "$P1"; then
    psql_at "$P1" "SELECT '  replication: ' || application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication" || true
  fi
}

case "${1:-}" in
  up) up ;;
  down)
    down
    echo "pair down"
    ;;
  status) status ;;
  stop-primary)
    # A crash: no shutdown checkpoint, connections dropped at once.
    as_pg "$BIN/pg_ctl" -D "$PRIMARY" -m immediate -w -t "$TIMEOUT" stop >/dev/null
    echo "primary on $P1 stopped (immediate)"
    ;;
  promote)
    if writable "$P2" 2>/dev/null; then
      echo "standby on $P2 is already a primary"
      exit 0
    fi
    as_pg "$BIN/pg_ctl" -D "$STANDBY" -w -t "$TIMEOUT" promote >/dev/null
    wait_until "the promoted standby accepting writes" writable "$P2"
    echo "standby on $P2 promoted"
    ;;
  pause-replay) psql_at "$P2" "SELECT pg_wal_replay_pause()" >/dev/null ;;
  resume-replay) psql_at "$P2" "SELECT pg_wal_replay_resume()" >/dev/null ;;
  urls)
    db="${2:-dispatcher}"
    echo "DISPATCHER__DATABASE__URL=postgresql://postgres@127.0.0.1:$P1,127.0.0.1:$P2/$db?target_session_attrs=read-write"
    echo "DISPATCHER__DATABASE__READ_URL=postgresql://postgres@127.0.0.1:$P2/$db"
    ;;
  *)
    echo "usage: $0 up|down|status|stop-primary|promote|pause-replay|resume-replay|urls [DB]" >&2
    exit 2
    ;;
esac
