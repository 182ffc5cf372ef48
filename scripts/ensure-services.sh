#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are up: starts them if they
# are installed and stopped, installs them from Debian's packages if they are missing. Also installs
# the tools the tests use: pdftotext (poppler-utils) reads the text of rendered PDFs, and headless
# Chromium with its chromedriver (chromium, chromium-driver) runs the dashboard's browser tests.
# With `--watch` it then stays, and keeps the broker answering (see the end).
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

wait_for() { # name, command
  for _ in $(seq 1 60); do
    if eval "$2" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "$1 did not come up" >&2
  return 1
}

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }
rabbit_port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
# A broker can accept TCP connections and never answer the AMQP handshake (seen with RabbitMQ
# 3.10): send the protocol header and wait, at most 5 s, for the broker's first frame
# (Connection.Start, a method frame: type 1).
rabbit_handshake() {
  timeout 6 python3 - <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.create_connection(("127.0.0.1", 5672), timeout=5)
s.settimeout(5)
s.sendall(b"AMQP\x00\x00\x09\x01")
frame = s.recv(1)
sys.exit(0 if frame == b"\x01" else 1)
PY
}
rabbit_up() { rabbit_port_open && rabbit_handshake; }

installed_apt=0
apt_install() {
  if [ "$installed_apt" -eq 0 ]; then as_root apt-get update -qq; installed_apt=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"
}

if ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL from Debian's packages"
    apt_install postgresql postgresql-client
    ver=$(ls /etc/postgresql | head -n1)
    # Local development and CI only: trust connections from this machine.
    as_root sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(host\s+all\s+all\s+::1\/128\s+)\S+/\1trust/; s/^(local\s+all\s+all\s+)\S+/\1trust/' \
      "/etc/postgresql/$ver/main/pg_hba.conf"
  fi
  ver=$(ls /etc/postgresql | head -n1)
  echo "starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || as_root pg_ctlcluster "$ver" main start
  wait_for PostgreSQL pg_up
fi

stop_rabbit() {
  # Bounded: a broker out of file descriptors does not answer rabbitmqctl either.
  as_root timeout 30 rabbitmqctl -q stop >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do rabbit_port_open || break; sleep 1; done
  if rabbit_port_open; then
    # Only the node on 5672: tests run nodes of their own beside it.
    as_root kill -9 "$(rabbit_pid)" 2>/dev/null || true
    sleep 2
  fi
}

# The test suite runs two tests at a time, each with four services holding broker connections,
# and quorum queues keep segment files open: a broker started with the common soft limit of
# 1 024 descriptors (about 830 sockets) runs out of them and then stops answering handshakes.
# Start it with as many descriptors as this machine's hard limit allows.
# Debian's wrapper starts the broker through `su rabbitmq`, whose PAM session sets the limits, so
# the limit goes in limits.d rather than in this shell.
start_rabbit() {
  if [ -d /etc/security/limits.d ] && id rabbitmq >/dev/null 2>&1; then
    # Raising a hard limit needs a privilege containers often lack: use the one root has.
    hard=$(as_root sh -c 'ulimit -Hn')
    [ "$hard" = unlimited ] && hard=65536
    printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$hard" "$hard" |
      as_root tee /etc/security/limits.d/rabbitmq-nofile.conf >/dev/null
  fi
  as_root rabbitmq-server -detached || true
  wait_for RabbitMQ rabbit_up
  # The port opens before the broker accepts AMQP sessions.
  wait_for RabbitMQ "as_root rabbitmqctl await_startup"
}

# The Erlang VM listening on 5672, or nothing.
rabbit_pid() {
  ss -ltnpH 'sport = :5672' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}

# The soft descriptor limit of the running broker, or nothing when unknown.
rabbit_nofile() {
  local pid
  pid=$(rabbit_pid)
  [ -n "$pid" ] || return 0
  awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null || true
}

if rabbit_port_open && ! rabbit_handshake; then
  # Listening but not answering: restart the broker this script manages.
  echo "RabbitMQ accepts connections but does not answer the AMQP handshake; restarting it"
  stop_rabbit
fi

if ! rabbit_up; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "installing RabbitMQ from Debian's packages"
    apt_install rabbitmq-server
  fi
  echo "starting RabbitMQ"
  start_rabbit
fi

nofile=$(rabbit_nofile)
if [ -n "$nofile" ] && [ "$nofile" -lt 4096 ] && command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ runs with $nofile file descriptors; restarting it with more"
  stop_rabbit
  start_rabbit
  echo "RabbitMQ now runs with $(rabbit_nofile) file descriptors"
fi

# RabbitMQ 3.10 stops supervising at-least-once dead-lettering when a quorum queue is deleted
# while its dead-letter worker is still starting (the restarted worker cannot find the queue, and
# the supervisor gives up after that second crash). From then on every new delay queue fails to
# start and published retries are refused until the broker restarts. Check for it and put the
# supervisor back.
restore_dlx_supervisor() {
  command -v rabbitmqctl >/dev/null 2>&1 || return 0
  local dlx
  dlx=$(as_root timeout 30 rabbitmqctl -q eval 'whereis(rabbit_fifo_dlx_sup).' 2>/dev/null || echo unknown)
  if [ "$dlx" = "undefined" ]; then
    echo "RabbitMQ lost its dead-letter supervisor; restarting it"
    as_root timeout 30 rabbitmqctl -q eval 'supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup).' >/dev/null || true
  fi
}
restore_dlx_supervisor

# `--drop-stale-test-queues` (CI, before its run): a test that dies before its clean-up leaves
# its queues (prefix `t` and 16 hex digits) behind, and each quorum queue holds broker
# descriptors for good. Removes those no consumer uses. Not for a machine where another test
# run is going on: its delay queues have no consumers either.
if [ "${1:-}" = --drop-stale-test-queues ] && command -v rabbitmqctl >/dev/null 2>&1; then
  dropped=$(as_root timeout 60 rabbitmqctl -q eval '
    Stale = [Q || Q <- rabbit_amqqueue:list(),
                  {resource, _, queue, N} <- [amqqueue:get_name(Q)],
                  re:run(N, "^t[0-9a-f]{16}[.]") =/= nomatch,
                  rabbit_amqqueue:info(Q, [consumers]) =:= [{consumers, 0}]],
    length([ok || Q <- Stale,
                  element(1, rabbit_amqqueue:delete(Q, false, false, <<"ensure-services">>)) =:= ok]).' \
    2>/dev/null || echo "?")
  echo "removed $dropped queues left behind by earlier test runs"
fi
if ! command -v pdftotext >/dev/null 2>&1; then
  echo "installing poppler-utils (pdftotext) from Debian's packages"
  apt_install poppler-utils
fi
if [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing Chromium and chromedriver (chromium, chromium-driver) from Debian's packages"
  apt_install chromium chromium-driver
fi
echo "PostgreSQL and RabbitMQ are up"

# `--watch`: keep RabbitMQ answering through a long test run (CI runs it beside `make test`).
# A broker that stops answering the handshake mid-run would fail every later test: two missed
# handshakes 10 s apart restart it, and the dead-letter supervisor is checked every minute.
# Each action is printed, so a failure in the run can be matched to it.
if [ "${1:-}" = --watch ]; then
  set +e
  misses=0
  ticks=0
  while sleep 10; do
    if rabbit_up; then misses=0; else misses=$((misses + 1)); fi
    if [ "$misses" -ge 2 ]; then
      echo "$(date -u +%T) RabbitMQ stopped answering the AMQP handshake; restarting it" >&2
      stop_rabbit
      start_rabbit
      misses=0
    fi
    ticks=$((ticks + 1))
    if [ $((ticks % 6)) -eq 0 ]; then restore_dlx_supervisor >&2; fi
  done
fi
