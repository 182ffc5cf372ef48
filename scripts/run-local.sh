#!/usr/bin/env bash
# `make run`: migrate, create a demo account, start the four services in the background.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/debug"
RUN=.run
mkdir -p "$RUN"

export DISPATCHER__DATABASE__URL="${DISPATCHER__DATABASE__URL:-postgres://postgres@127.0.0.1:5432/dispatcher}"
# Local demo only: allow plain-http callbacks to this machine (e.g. `dispatchctl listen`).
export DISPATCHER__DELIVERY__ALLOW_HTTP="${DISPATCHER__DELIVERY__ALLOW_HTTP:-true}"
export DISPATCHER__DELIVERY__ALLOW_HOSTS="${DISPATCHER__DELIVERY__ALLOW_HOSTS:-127.0.0.1,localhost}"

db=$(printf '%s' "$DISPATCHER__DATABASE__URL" | sed -E 's#.*/([^/?]+)(\?.*)?$#\1#')
if ! psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE \"$db\""
fi
"$BIN/dispatchctl" migrate >/dev/null

if [ ! -s "$RUN/demo-account.json" ]; then
  if ! "$BIN/dispatchctl" accounts create --email demo@dispatcher.local > "$RUN/demo-account.json" 2>"$RUN/account.err"; then
    # The account exists from an earlier run whose credentials were removed: issue a new password.
    pw=$("$BIN/dispatchctl" accounts rotate-password --email demo@dispatcher.local | sed -E 's/.*"password":"([^"]+)".*/\1/')
    secret=$(psql -h 127.0.0.1 -U postgres -d "$db" -Atc "SELECT webhook_secret FROM accounts WHERE email = 'demo@dispatcher.local'")
    id=$(psql -h 127.0.0.1 -U postgres -d "$db" -Atc "SELECT id FROM accounts WHERE email = 'demo@dispatcher.local'")
    printf '{"accountId":"%s","email":"demo@dispatcher.local","password":"%s","webhookSecret":"%s"}\n' "$id" "$pw" "$secret" > "$RUN/demo-account.json"
  fi
fi

for svc in ingest-api status-api dispatch-worker webhook-deliverer; do
  if [ -f "$RUN/$svc.pid" ] && kill -0 "$(cat "$RUN/$svc.pid")" 2>/dev/null; then
    kill "$(cat "$RUN/$svc.pid")" && sleep 1
  fi
  nohup "$BIN/$svc" >"$RUN/$svc.log" 2>&1 &
  echo $! > "$RUN/$svc.pid"
done

for port in 8080 8081 9091 9092; do
  for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "service on :$port is not ready; see $RUN/*.log" >&2; exit 1; }
done

echo "Dispatcher is running: ingest http://127.0.0.1:8080, status http://127.0.0.1:8081 (logs in $RUN/)"
echo "Dashboard: http://127.0.0.1:8081/ui/ (sign in with the demo account's email and password)"
echo "Demo account (also in $RUN/demo-account.json):"
cat "$RUN/demo-account.json"
