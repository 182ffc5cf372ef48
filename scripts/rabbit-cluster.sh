#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, from the installed RabbitMQ, for the scale-out fault
# tests and `BENCH_CLUSTER=1 make bench`. It never touches the broker on 5672.
#
#   scripts/rabbit-cluster.sh up        start the three nodes and join them (idempotent)
#   scripts/rabbit-cluster.sh down      stop them and delete their data
#   scripts/rabbit-cluster.sh status    cluster status as node 1 sees it
#   scripts/rabbit-cluster.sh stop N    stop node N (1-3) abruptly, as a crash would
#   scripts/rabbit-cluster.sh start N   start node N again (it rejoins with its data)
#   scripts/rabbit-cluster.sh urls      the three AMQP URLs, comma-separated
#   scripts/rabbit-cluster.sh queues    every queue: name, the node number leading it, messages
#
# Node N is `dispatcher-N@localhost`, AMQP on 127.0.0.1:(5700+N), Erlang distribution on
# 25700+N, data under $RABBIT_CLUSTER_DIR (default /tmp/dispatcher-rabbit-cluster/node-N). Quorum
# queues declared on it are replicated on all three nodes (the default initial group size is the
# cluster size when it is 3).
set -euo pipefail

DIR="${RABBIT_CLUSTER_DIR:-/tmp/dispatcher-rabbit-cluster}"
LIB=/usr/lib/rabbitmq/bin
NODES=(1 2 3)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -E "$@"; fi; }

node_name() { echo "dispatcher-$1@localhost"; }
amqp_port() { echo $((5700 + $1)); }

# The environment of node $1: its own name, ports, directories and an empty plugin list (the
# management plugin would want port 15672, which the main broker may hold).
node_env() {
  local n=$1 d="$DIR/node-$1"
  mkdir -p "$d/mnesia" "$d/log"
  : >"$d/enabled_plugins"
  echo "[]." >"$d/advanced.config"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
cluster_formation.peer_discovery_backend = classic_config
EOF
  echo "RABBITMQ_NODENAME=$(node_name "$n")" \
    "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1" \
    "RABBITMQ_NODE_PORT=$(amqp_port "$n")" \
    "RABBITMQ_DIST_PORT=$((25700 + n))" \
    "RABBITMQ_MNESIA_BASE=$d/mnesia" \
    "RABBITMQ_LOG_BASE=$d/log" \
    "RABBITMQ_PID_FILE=$d/pid" \
    "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins" \
    "RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf" \
    "RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config" \
    "ERL_EPMD_ADDRESS=127.0.0.1"
}

ctl() { # node, args...
  local n=$1
  shift
  as_root env $(node_env "$n") "$LIB/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

handshake() { # port: the broker answers the AMQP protocol header within 5 s
  timeout 6 python3 - "$1" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.settimeout(5)
s.sendall(b"AMQP\x00\x00\x09\x01")
sys.exit(0 if s.recv(1) == b"\x01" else 1)
PY
}

start_node() {
  local n=$1
  if handshake "$(amqp_port "$n")"; then return 0; fi
  as_root env $(node_env "$n") "$LIB/rabbitmq-server" -detached
  for _ in $(seq 1 60); do
    if handshake "$(amqp_port "$n")"; then
      ctl "$n" -q await_startup >/dev/null
      return 0
    fi
    sleep 1
  done
  echo "node $n did not start; its log: $DIR/node-$n/log" >&2
  return 1
}

join() { # node n joins node 1's cluster unless it is already in it
  local n=$1
  if ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$n")\""; then
    return 0
  fi
  ctl "$n" -q stop_app
  ctl "$n" -q join_cluster "$(node_name 1)"
  ctl "$n" -q start_app
}

case "${1:-}" in
  up)
    command -v "$LIB/rabbitmq-server" >/dev/null || { echo "RabbitMQ is not installed" >&2; exit 1; }
    for n in "${NODES[@]}"; do node_env "$n" >/dev/null; start_node "$n"; done
    for n in 2 3; do join "$n"; done
    echo "cluster up: $(node_name 1), $(node_name 2), $(node_name 3) on $(amqp_port 1), $(amqp_port 2), $(amqp_port 3)"
    ;;
  down)
    for n in "${NODES[@]}"; do
      if [ -f "$DIR/node-$n/pid" ]; then
        ctl "$n" -q stop >/dev/null 2>&1 || as_root kill "$(cat "$DIR/node-$n/pid")" 2>/dev/null || true
      fi
    done
    as_root rm -rf "$DIR"
    echo "cluster down"
    ;;
  status)
    ctl 1 cluster_status
    ;;
  stop)
    n=${2:?node number}
    # A crash, not a goodbye: the node's Erlang VM is killed.
    as_root kill -9 "$(cat "$DIR/node-$n/pid")"
    ;;
  start)
    start_node "${2:?node number}"
    ;;
  queues)
    # Asked of the first node that answers, since any one of them may be down.
    for n in "${NODES[@]}"; do
      if handshake "$(amqp_port "$n")" &&
        out=$(as_root timeout 20 env $(node_env "$n") "$LIB/rabbitmqctl" -n "$(node_name "$n")" \
          -q list_queues --no-table-headers name leader messages 2>/dev/null); then
        echo "$out" | sed -E 's/dispatcher-([0-9])@localhost/\1/'
        exit 0
      fi
    done
    echo "no cluster node answers" >&2
    exit 1
    ;;
  urls)
    echo "amqp://guest:guest@127.0.0.1:$(amqp_port 1)/%2f,amqp://guest:guest@127.0.0.1:$(amqp_port 2)/%2f,amqp://guest:guest@127.0.0.1:$(amqp_port 3)/%2f"
    ;;
  *)
    echo "usage: $0 up|down|status|stop N|start N|queues|urls" >&2
    exit 2
    ;;
esac
