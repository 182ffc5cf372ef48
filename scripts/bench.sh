#!/usr/bin/env bash
# `make bench` and `make soak`: release build, a fresh database and AMQP prefix, the four services
# on loopback ports, then the load generator. Results: bench/results.json (bench/soak.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
# The email phase sends to a local SMTP server (aiosmtpd from the tests' virtualenv).
make -s venv
cargo build --release --bins -q
BIN="${CARGO_TARGET_DIR:-target}/release"
RUN=.run/bench
mkdir -p "$RUN"

db="dispatcher_bench"
prefix="dispatcher-bench"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"

export DISPATCHER__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$db"
export DISPATCHER__DATABASE__POOL_SIZE=24
export DISPATCHER__AMQP__PREFIX="$prefix"
export DISPATCHER__INGEST__LISTEN=127.0.0.1:18080
export DISPATCHER__STATUS__LISTEN=127.0.0.1:18081
export DISPATCHER__WORKER__LISTEN=127.0.0.1:19091
export DISPATCHER__DELIVERER__LISTEN=127.0.0.1:19092
export DISPATCHER__STATUS__PUBLIC_URL=http://127.0.0.1:18081
export DISPATCHER__DELIVERY__ALLOW_HTTP=true
export DISPATCHER__DELIVERY__ALLOW_HOSTS=127.0.0.1
export DISPATCHER__RATE_LIMIT__REQUESTS_PER_SECOND=0
export RUST_LOG=warn

"$BIN/dispatchctl" migrate >/dev/null
account=$("$BIN/dispatchctl" accounts create --email bench@dispatcher.local)
email=bench@dispatcher.local
password=$(printf '%s' "$account" | python3 -c 'import json, sys; print(json.load(sys.stdin)["password"])')

pids=()
names=(ingest-api status-api dispatch-worker webhook-deliverer)
drop_queues() {
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." || true); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}
drop_queues
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Remove the run's queues and database.
  drop_queues
  # BENCH_KEEP_DB=1 keeps the database for a look at stage timings afterwards.
  if [ -z "${BENCH_KEEP_DB:-}" ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  fi
}
trap cleanup EXIT
# A real SMTP server on loopback for the email phase; its first line is its port.
exec {smtp_out}< <(PYTHONUNBUFFERED=1 exec build/venv/bin/python tests/python/smtp_sink.py --quiet)
smtp_pid=$!
pids+=("$smtp_pid")
read -r -t 20 smtp_port <&"$smtp_out"
export DISPATCHER__SMTP__URL="smtp://127.0.0.1:$smtp_port"
export DISPATCHER__SMTP__FROM="Dispatcher bench <bench@dispatcher.local>"
export DISPATCHER__SMTP__POOL_SIZE=16
for n in "${names[@]}"; do
  "$BIN/$n" >"$RUN/$n.log" 2>&1 &
  pids+=($!)
done
for port in 18080 18081 19091 19092; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
done

BENCH_PIDS="ingest-api=${pids[1]},status-api=${pids[2]},dispatch-worker=${pids[3]},webhook-deliverer=${pids[4]}" \
BENCH_SMTP_PID="$smtp_pid" \
BENCH_INGEST_URL=http://127.0.0.1:18080 BENCH_STATUS_URL=http://127.0.0.1:18081 BENCH_EMAIL="$email" BENCH_PASSWORD="$password" \
BENCH_OUT="${BENCH_OUT:-bench/results.json}" BENCH_DISPATCHCTL="$BIN/dispatchctl" \
  "$BIN/dispatcher-bench"
