# Dispatcher developer commands. `make run` brings the system up on this machine, `make test` runs
# every test against the local PostgreSQL and RabbitMQ.

CARGO ?= cargo
SERVICES := ingest-api status-api dispatch-worker webhook-deliverer

.PHONY: all build run stop test test-cluster bench soak fmt lint services clean venv

# The tests' Python virtualenv (Standard Webhooks libraries, JSON Schema and Kubernetes manifest
# validators). Recreated only when tests/python/requirements.txt or constraints.txt change.
PYTHON ?= python3
VENV := build/venv
VENV_STAMP := $(VENV)/.installed
TEST_PYTHON := $(abspath $(VENV)/bin/python)

all: build

services:
	@scripts/ensure-services.sh

build:
	$(CARGO) build --workspace --bins

run: services build
	@scripts/run-local.sh

stop:
	@for s in $(SERVICES); do \
	  if [ -f .run/$$s.pid ]; then kill $$(cat .run/$$s.pid) 2>/dev/null || true; rm -f .run/$$s.pid; fi; \
	done; echo "stopped"

# Every test: unit tests beside the code and the end-to-end suite under tests/.
test: services venv
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  DISPATCHER_TEST_PYTHON=$(TEST_PYTHON) $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  DISPATCHER_TEST_PYTHON=$(TEST_PYTHON) $(CARGO) test --workspace --no-fail-fast; \
	fi

# The fault tests against clustered engines on this machine (tests/cluster/): a Postgres primary
# with a synchronous standby and a 3-node RabbitMQ cluster, started for the run and removed after
# it, whatever the outcome. Prints how long each step took.
test-cluster: services venv
	$(CARGO) build --workspace --bins
	@set -e; t0=$$(date +%s); \
	trap 'scripts/pg-replica.sh down >/dev/null 2>&1 || true; scripts/rabbit-cluster.sh down >/dev/null 2>&1 || true' EXIT; \
	scripts/pg-replica.sh up; scripts/rabbit-cluster.sh up; t1=$$(date +%s); \
	echo "test-cluster: engines up in $$((t1 - t0))s"; \
	DISPATCHER_TEST_PYTHON=$(TEST_PYTHON) $(CARGO) test -p dispatcher-e2e --test cluster -- --test-threads=1 --nocapture; \
	t2=$$(date +%s); echo "test-cluster: tests took $$((t2 - t1))s, $$((t2 - t0))s in all"

venv: $(VENV_STAMP)

$(VENV_STAMP): tests/python/requirements.txt tests/python/constraints.txt
	@# A venv whose interpreter no longer runs (its base Python changed) is built anew.
	@if ! $(VENV)/bin/python -c 'import sys' >/dev/null 2>&1; then \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	fi
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -r tests/python/requirements.txt -c tests/python/constraints.txt
	touch $@

# Load benchmark against release builds on this machine; prints a table and writes
# bench/results.json. Size it with DISPATCHER_BENCH_N and DISPATCHER_BENCH_RATE.
bench:
	@scripts/bench.sh

# A long run at a fixed rate (DISPATCHER_BENCH_RATE, default 1 000/s) for DISPATCHER_SOAK_SECONDS
# (default 600): per-minute latency and RSS, and a failure if any webhook is missing.
soak:
	@BENCH_MODE=soak BENCH_OUT=bench/soak.json scripts/bench.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# tests/cluster is `test = false`, which --all-targets leaves out.
	$(CARGO) clippy -p dispatcher-e2e --test cluster -- -D warnings

clean: stop
	rm -rf .run
