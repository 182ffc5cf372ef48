#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are up: starts them if they
# are installed and stopped, installs them from Debian's packages if they are missing. Also installs
# the tools the tests use: pdftotext (poppler-utils) reads the text of rendered PDFs, and headless
# Chromium with its chromedriver (chromium, chromium-driver) runs the dashboard's browser tests.
#
#   --drop-stale-test-queues  also removes idle queues earlier test runs left behind (CI, first)
#   --watch                   only watches the broker through a long run (see the end)
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
# Bounded: a broker out of descriptors stops accepting, its backlog fills, and a plain connect
# then waits for the kernel's SYN retries (about two minutes).
rabbit_port_open() { timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null; }
# A broker can accept TCP connections and never answer the AMQP handshake (seen with RabbitMQ
# 3.10): send the protocol header and wait, at most `$1` seconds (default 5), for the broker's
# first frame (Connection.Start, a method frame: type 1). The system Python starts faster than a
# version manager's shim on a busy machine.
rabbit_handshake() {
  local py=python3
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  timeout $((${1:-5} + 5)) "$py" - "${1:-5}" <<'PY' >/dev/null 2>&1
import socket, sys
wait = float(sys.argv[1])
s = socket.create_connection(("127.0.0.1", 5672), timeout=wait)
s.settimeout(wait)
s.sendall(b"AMQP\x00\x00\x09\x01")
frame = s.recv(1)
sys.exit(0 if frame == b"\x01" else 1)
PY
}
rabbit_up() { rabbit_port_open && rabbit_handshake "${1:-5}"; }

# The Erlang VM listening on 5672, or nothing.
rabbit_pid() {
  ss -ltnpH 'sport = :5672' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true
}

# The soft descriptor limit of the running broker, or nothing when unknown.
rabbit_nofile() {
  local pid
  pid=$(rabbit_pid)
  [ -n "$pid" ] || return 0
  awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null || true
}

# The most descriptors the broker can be given here: raising a hard limit needs a privilege
# containers often lack, so it is root's own hard limit.
rabbit_nofile_possible() {
  local hard
  hard=$(as_root sh -c 'ulimit -Hn')
  [ "$hard" = unlimited ] && hard=65536
  echo "$hard"
}

stop_rabbit() {
  local pid
  pid=$(rabbit_pid)
  # Bounded: a broker out of file descriptors does not answer rabbitmqctl either.
  as_root timeout 30 rabbitmqctl -q stop >/dev/null 2>&1 || true
  if [ -n "$pid" ]; then
    for _ in $(seq 1 30); do [ -d "/proc/$pid" ] || break; sleep 1; done
    # Only the node on 5672: tests run nodes of their own beside it.
    if [ -d "/proc/$pid" ]; then as_root kill -9 "$pid" 2>/dev/null || true; sleep 2; fi
  fi
}

# The test suite runs two tests at a time, each with four services holding broker connections,
# and quorum queues keep segment files open: a broker started with the common soft limit of
# 1 024 descriptors (about 830 sockets) runs out of them and then stops answering handshakes.
# Debian's wrapper starts the broker through `su rabbitmq`, whose PAM session sets the limits, so
# the limit goes in limits.d rather than in this shell.
start_rabbit() {
  if [ -d /etc/security/limits.d ] && id rabbitmq >/dev/null 2>&1; then
    local most
    most=$(rabbit_nofile_possible)
    printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$most" "$most" |
      as_root tee /etc/security/limits.d/rabbitmq-nofile.conf >/dev/null
  fi
  as_root rabbitmq-server -detached || true
  wait_for RabbitMQ rabbit_up
  # The port opens before the broker accepts AMQP sessions.
  wait_for RabbitMQ "as_root rabbitmqctl await_startup"
}

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

# A test that dies before its clean-up leaves its queues (prefix `t` and 16 hex digits) behind,
# and each quorum queue holds broker descriptors for good. Removes those no consumer uses (quorum
# queues do not support delete-if-unused). Not for a machine where another test run is going on:
# its delay queues have no consumers either.
drop_stale_test_queues() {
  local dropped
  dropped=$(as_root timeout 60 rabbitmqctl -q eval '
    Stale = [Q || Q <- rabbit_amqqueue:list(),
                  {resource, _, queue, N} <- [amqqueue:get_name(Q)],
                  re:run(N, "^t[0-9a-f]{16}[.]") =/= nomatch,
                  rabbit_amqqueue:info(Q, [consumers]) =:= [{consumers, 0}]],
    length([ok || Q <- Stale,
                  element(1, rabbit_amqqueue:delete(Q, false, false, <<"ensure-services">>)) =:= ok]).' \
    2>/dev/null || echo "?")
  echo "removed $dropped queues left behind by earlier test runs"
}

# `--watch`: keeps RabbitMQ answering through a long test run (CI runs it beside `make test`).
# A broker that stops answering the handshake mid-run would fail every later test. Three missed
# handshakes in a row, 15 s apart and each given 10 s, restart it; a broker that is only slow
# answers within that. The dead-letter supervisor is checked every minute. Each action is
# printed, so a failure in the run can be matched to it. A TERM lets a restart finish first.
if [ "${1:-}" = --watch ]; then
  set +e
  stopping=0
  sleeper=
  trap 'stopping=1; [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null' TERM INT
  misses=0
  ticks=0
  while [ "$stopping" = 0 ]; do
    sleep 15 &
    sleeper=$!
    wait "$sleeper"
    [ "$stopping" = 0 ] || break
    if rabbit_up 10; then misses=0; else misses=$((misses + 1)); fi
    if [ "$misses" -ge 3 ]; then
      echo "$(date -u +%T) RabbitMQ stopped answering the AMQP handshake; restarting it" >&2
      stop_rabbit
      start_rabbit
      misses=0
    fi
    ticks=$((ticks + 1))
    if [ $((ticks % 4)) -eq 0 ]; then restore_dlx_supervisor >&2; fi
  done
  exit 0
fi

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

if rabbit_port_open && ! rabbit_handshake; then
  # Listening but not answering: restart the broker this script manages.
  echo "RabbitMQ accepts connections but does not answer the AMQP handshake; restarting it"
  stop_rabbit
fi

if rabbit_up && [ "${1:-}" = --drop-stale-test-queues ]; then
  # Before any restart below: deleting a queue whose dead-letter worker is still starting (as
  # every queue's is right after a restart) is what loses the dead-letter supervisor.
  drop_stale_test_queues
fi

if ! rabbit_up; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "installing RabbitMQ from Debian's packages"
    apt_install rabbitmq-server
  fi
  echo "starting RabbitMQ"
  start_rabbit
fi

# Restarted only when it would get more: where the limit cannot be raised, the broker keeps
# running (each restart cuts off everything using it).
nofile=$(rabbit_nofile)
if [ -n "$nofile" ] && [ "$nofile" -lt 4096 ] && command -v rabbitmq-server >/dev/null 2>&1 &&
  [ "$(rabbit_nofile_possible)" -gt "$nofile" ]; then
  echo "RabbitMQ runs with $nofile file descriptors; restarting it with more"
  stop_rabbit
  start_rabbit
  echo "RabbitMQ now runs with $(rabbit_nofile) file descriptors"
fi

restore_dlx_supervisor
if ! command -v pdftotext >/dev/null 2>&1; then
  echo "installing poppler-utils (pdftotext) from Debian's packages"
  apt_install poppler-utils
fi
if [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing Chromium and chromedriver (chromium, chromium-driver) from Debian's packages"
  apt_install chromium chromium-driver
fi
echo "PostgreSQL and RabbitMQ are up"
