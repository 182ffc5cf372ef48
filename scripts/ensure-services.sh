#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are up: starts them if they
# are installed and stopped, installs them from Debian's packages if they are missing. Also installs
# the tools the tests use: pdftotext (poppler-utils) reads the text of rendered PDFs, and headless
# Chromium with its chromedriver (chromium, chromium-driver) runs the dashboard's browser tests.
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

if rabbit_port_open && ! rabbit_handshake; then
  # Listening but not answering: restart the broker this script manages.
  echo "RabbitMQ accepts connections but does not answer the AMQP handshake; restarting it"
  # Bounded: a broker out of file descriptors does not answer rabbitmqctl either.
  as_root timeout 30 rabbitmqctl -q stop >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do rabbit_port_open || break; sleep 1; done
  if rabbit_port_open; then as_root pkill -f beam.smp || true; sleep 2; fi
fi

if ! rabbit_up; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "installing RabbitMQ from Debian's packages"
    apt_install rabbitmq-server
  fi
  echo "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  wait_for RabbitMQ rabbit_up
  # The port opens before the broker accepts AMQP sessions.
  wait_for RabbitMQ "as_root rabbitmqctl await_startup"
fi

# RabbitMQ 3.10 stops supervising at-least-once dead-lettering when a quorum queue is deleted
# while its dead-letter worker is still starting (the restarted worker cannot find the queue, and
# the supervisor gives up after that second crash). From then on every new delay queue fails to
# start and published retries are refused until the broker restarts. Check for it and put the
# supervisor back.
if command -v rabbitmqctl >/dev/null 2>&1; then
  dlx=$(as_root rabbitmqctl -q eval 'whereis(rabbit_fifo_dlx_sup).' 2>/dev/null || echo unknown)
  if [ "$dlx" = "undefined" ]; then
    echo "RabbitMQ lost its dead-letter supervisor; restarting it"
    as_root rabbitmqctl -q eval 'supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup).' >/dev/null
  fi
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
