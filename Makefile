# Dispatcher developer commands. `make run` brings the system up on this machine, `make test` runs
# every test against the local PostgreSQL and RabbitMQ.

CARGO ?= cargo
SERVICES := ingest-api status-api dispatch-worker webhook-deliverer

.PHONY: all build run stop test unit e2e fmt lint services clean

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
test: services
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: stop
	rm -rf .run
