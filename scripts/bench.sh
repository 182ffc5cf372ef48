#!/usr/bin/env bash
# `make bench` and `make soak`: release build, a fresh database and AMQP prefix, the four services
# on loopback ports, then the load generator. Results: bench/results.json (bench/soak.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
# Statements per dispatch come from pg_stat_statements, which Postgres loads only at start-up.
preload=$(psql -h 127.0.0.1 -U postgres -Atc "SHOW shared_preload_libraries")
if [[ "$preload" != *pg_stat_statements* ]]; then
  echo "loading pg_stat_statements (restarts the local PostgreSQL once)"
  psql -h 127.0.0.1 -U postgres -qc "ALTER SYSTEM SET shared_preload_libraries = '${preload:+$preload,}pg_stat_statements'"
  ver=$(ls /etc/postgresql | head -n1)
  pg_ctlcluster "$ver" main restart
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
fi
# The email phase sends to a local SMTP server (aiosmtpd from the tests' virtualenv).
make -s venv
cargo build --release --bins -q
BIN="${CARGO_TARGET_DIR:-target}/release"
export DISPATCHER__RENDER__HELPER
if [ -n "${DISPATCHER__RENDER__HELPER:-}" ]; then
  # A helper chosen by the caller (the release build's, say, for a batch-ingest run without the
  # whole-program link; its PDF figures are then not the shipped helper's).
  :
elif [ -n "${BENCH_BASELINE:-}" ] || [ "${BENCH_MODE:-}" = closed ]; then
  # The closed-loop phases render text templates only, which never reach the PDF helper: the
  # release build's helper does, without the whole-program link (a long build of its own).
  DISPATCHER__RENDER__HELPER="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/dispatch-render"
else
  # The PDF helper as the image ships it: whole-program optimised (see Cargo.toml's release-lto).
  cargo build --profile release-lto -p dispatcher-render --bin dispatch-render -q
  DISPATCHER__RENDER__HELPER="$(cd "${CARGO_TARGET_DIR:-target}/release-lto" && pwd)/dispatch-render"
fi
RUN=.run/bench
mkdir -p "$RUN"

db="dispatcher_bench"
prefix="dispatcher-bench"
# A fresh database with its schema and the bench account ($email, $password).
fresh_database() {
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
  "$BIN/dispatchctl" migrate >/dev/null
  account=$("$BIN/dispatchctl" accounts create --email bench@dispatcher.local)
  email=bench@dispatcher.local
  password=$(printf '%s' "$account" | python3 -c 'import json, sys; print(json.load(sys.stdin)["password"])')
}

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
fresh_database

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
svc_pids=()
start_services() {
  svc_pids=()
  for n in "${names[@]}"; do
    "$BIN/$n" >"$RUN/$n.log" 2>&1 &
    svc_pids+=($!)
    pids+=($!)
  done
  for port in 18080 18081 19091 19092; do
    for _ in $(seq 1 100); do
      curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
      sleep 0.2
    done
  done
}
stop_services() {
  for p in "${svc_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${svc_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
run_bench() {
  BENCH_PIDS="ingest-api=${svc_pids[0]},status-api=${svc_pids[1]},dispatch-worker=${svc_pids[2]},webhook-deliverer=${svc_pids[3]}" \
  BENCH_SMTP_PID="$smtp_pid" \
  BENCH_INGEST_URL=http://127.0.0.1:18080 BENCH_STATUS_URL=http://127.0.0.1:18081 BENCH_EMAIL="$email" BENCH_PASSWORD="$password" \
  BENCH_OUT="${BENCH_OUT:-bench/results.json}" BENCH_DISPATCHCTL="$BIN/dispatchctl" \
  BENCH_METRICS_URLS=http://127.0.0.1:18080,http://127.0.0.1:18081,http://127.0.0.1:19091,http://127.0.0.1:19092 \
    "$BIN/dispatcher-bench"
}

if [ -n "${BENCH_BASELINE:-}" ]; then
  # BENCH_BASELINE=<commit>: the closed-loop phases (16 and 64 clients) against that commit's
  # services and against this tree's, alternately, BENCH_ROUNDS times (default 2), each on a
  # fresh database; this tree's load generator drives both. Prints the medians and the ratio.
  base_rev=$(git rev-parse --short "$BENCH_BASELINE")
  base_bin="$RUN/baseline-$base_rev"
  if [ ! -x "$base_bin/ingest-api" ]; then
    echo "building $base_rev's services (once; kept in $base_bin)"
    rm -rf "$RUN/baseline-src"
    git worktree prune
    git worktree add -q --detach "$RUN/baseline-src" "$base_rev"
    (cd "$RUN/baseline-src" && cargo build --release --bins -q)
    mkdir -p "$base_bin"
    # The services and the PDF helper the worker starts from its own directory.
    for n in "${names[@]}" dispatch-render; do cp "$BIN/$n" "$base_bin/"; done
    git worktree remove --force "$RUN/baseline-src"
    # The shared target directory holds the baseline's build now, newer than this tree's
    # sources: make them newer again, or cargo would take the baseline's artifacts as fresh.
    git ls-files -z '*.rs' '*.sql' '*.toml' '*.html' | xargs -0 touch
    cargo build --release --bins -q
  fi
  current_bin="$BIN"
  for round in $(seq 1 "${BENCH_ROUNDS:-2}"); do
    for build in baseline current; do
      BIN="$current_bin"
      fresh_database
      drop_queues
      if [ "$build" = baseline ]; then BIN="$base_bin"; fi
      echo "== round $round: $build"
      # BENCH_CURRENT_ENV="KEY=value ...": settings for this tree's services only, so that one
      # run compares two configurations (with BENCH_BASELINE=HEAD, of the same code).
      if [ "$build" = current ]; then
        for kv in ${BENCH_CURRENT_ENV:-}; do export "$kv"; done
      fi
      start_services
      for kv in ${BENCH_CURRENT_ENV:-}; do unset "${kv%%=*}"; done
      BIN="$current_bin" BENCH_MODE=closed BENCH_OUT="$RUN/closed-$build-$round.json" run_bench >"$RUN/closed-$build-$round.log"
      stop_services
    done
  done
  BIN="$current_bin"
  python3 - "$RUN" "${BENCH_ROUNDS:-2}" "$base_rev" "$(git rev-parse --short HEAD)" "${BENCH_OUT:-bench/results-baseline.json}" <<'PY'
import json, statistics, sys
run, rounds, base_rev, head, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
runs = {b: [json.load(open(f"{run}/closed-{b}-{r}.json")) for r in range(1, rounds + 1)]
        for b in ("baseline", "current")}
def med(build, clients, f):
    return statistics.median(f(next(p for p in r["end_to_end_closed_loop"] if p["clients"] == clients))
                             for r in runs[build])
fields = [
    ("delivered/s", lambda p: p["delivered_per_second"]),
    ("accepted/s", lambda p: p["accepted_per_second"]),
    ("ingest p50 ms", lambda p: p["ingest_latency"]["p50_ms"]),
    ("submit→webhook p50 ms", lambda p: p["submit_to_webhook"]["p50_ms"]),
    ("in flight at half-time", lambda p: p["backlog"]["in_flight_by_quarter"][1]),
    ("in flight at last accept", lambda p: p["backlog"]["in_flight_by_quarter"][3]),
    ("machine CPU-ms/dispatch", lambda p: p["cost"]["cpu_ms_per_dispatch"]["machine"]),
    ("Postgres CPU-ms/dispatch", lambda p: p["cost"]["cpu_ms_per_dispatch"]["postgres"]),
    ("PG rows written/dispatch",
     lambda p: sum(p["cost"]["postgres_rows_written_per_dispatch_by_table"].values())),
]
summary = {"baseline": base_rev, "current": head, "rounds": rounds, "clients": {}}
print(f"{'':<26}" + "".join(f"{c:>28}" for c in ("16 clients", "64 clients")))
print(f"{'':<26}" + f"{base_rev + ' / ' + head:>28}" * 2)
for name, f in fields:
    cells = []
    for clients in (16, 64):
        b, c = med("baseline", clients, f), med("current", clients, f)
        summary["clients"].setdefault(str(clients), {})[name] = {"baseline": b, "current": c}
        cells.append(f"{b:>12.2f} /{c:>10.2f}" + f"{'':>5}")
    print(f"{name:<26}" + "".join(f"{x:>28}" for x in cells))
for clients in (16, 64):
    d = summary["clients"][str(clients)]["delivered/s"]
    d["ratio"] = d["current"] / d["baseline"]
    print(f"e2e rate at {clients} clients, current / baseline: {d['ratio']:.2f}")
summary["runs"] = runs
json.dump(summary, open(out, "w"), indent=2)
print(f"written to {out}")
PY
  exit 0
fi

if [ -z "${BENCH_CLUSTER:-}" ]; then
  start_services
  run_bench
  exit 0
fi

# BENCH_CLUSTER=1: the sustained end-to-end phase against the single broker on 5672, then
# against the 3-node cluster (quorum queues replicated three times), each on a fresh database.
cluster_was_up=1
scripts/rabbit-cluster.sh queues >/dev/null 2>&1 || cluster_was_up=0
scripts/rabbit-cluster.sh up
for nodes in 1 3; do
  if [ "$nodes" = 3 ]; then
    fresh_database
    export DISPATCHER__AMQP__URLS="$(scripts/rabbit-cluster.sh urls)"
    export DISPATCHER__AMQP__PREFIX="$prefix-cluster"
  fi
  echo "== $nodes broker node(s)"
  start_services
  BENCH_MODE=e2e BENCH_OUT="$RUN/e2e-$nodes-nodes.json" run_bench
  stop_services
done
if [ "$cluster_was_up" = 0 ]; then scripts/rabbit-cluster.sh down; fi
python3 - "$RUN/e2e-1-nodes.json" "$RUN/e2e-3-nodes.json" "${BENCH_OUT:-bench/results-cluster.json}" <<'PY'
import json, sys
one, three = (json.load(open(p)) for p in sys.argv[1:3])
rate = lambda r: r["end_to_end_sustained"]["dispatches_per_second"]
cpu = lambda r: r["end_to_end_sustained"]["machine_cpu_seconds_per_1000_dispatches"]
out = {"one_node": one, "three_nodes": three, "three_to_one_ratio": rate(three) / rate(one)}
json.dump(out, open(sys.argv[3], "w"), indent=2)
print(f"{'broker':<22}{'e2e dispatches/s':>18}{'machine CPU-s / 1000':>22}")
print(f"{'1 node (5672)':<22}{rate(one):>18.0f}{cpu(one):>22.2f}")
print(f"{'3-node cluster':<22}{rate(three):>18.0f}{cpu(three):>22.2f}")
print(f"three nodes / one node: {out['three_to_one_ratio']:.2f}  ({sys.argv[3]})")
PY
