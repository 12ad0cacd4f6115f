# The two commands: `make up` (run the platform on this machine) and `make test` (run every test).
# Everything else is a helper of those two, or an operator's shortcut.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK ?= dev
MODELS := service/models
LOCALENV_VAR_DIR ?= $(CURDIR)/var

# System packages the tests and the local environment run for real, and what a minimal Debian 12
# lacks around them: venv support, ps (testinfra), ss (testinfra sockets), CA certificates.
APT_PACKAGES := postgresql-15 postgresql-client-15 redis-server redis-tools nginx prometheus \
	prometheus-node-exporter prometheus-postgres-exporter prometheus-redis-exporter wrk openssl curl \
	ca-certificates python3-venv procps iproute2

.PHONY: help deps system-deps timescaledb venv model grpc-protoset test test-docker docker-engine stack-up stack-preview stack-down stack-status \
	up down status bench bench-gateway bench-peers preview deploy lint clean pristine-check

help:
	@echo "make up       run the platform on this machine (prints URL and a ready curl)"
	@echo "make down     stop what make up started"
	@echo "make status   show each process and URL of the local environment"
	@echo "make test     install everything needed, then run all tests"
	@echo "make bench    benchmark one service process (ratios against a bare-aiohttp baseline), then the gateway"
	@echo "make bench-gateway   only the gateway vs direct part (runs make up first)"
	@echo "make bench-peers     the service beside MLServer, BentoML and LitServe on the same model (table, JSON, picture)"
	@echo "make model    (re)build the demo models into $(MODELS)/"
	@echo "make grpc-protoset   recompile the vendored gRPC protocol (service/prediction_service/oip_grpc/) after changing it"
	@echo "make timescaledb   give PostgreSQL 15 the pinned TimescaleDB (package, else build from TIMESCALEDB_SOURCE)"
	@echo "make preview|deploy STACK=dev|staging|prod   pulumi preview / up for one stack"
	@echo "make pristine-check   make test and make up on a pristine Debian 12 container, timed (root, Docker);"
	@echo "                      no engine inside (Docker suite skipped); PRISTINE_DOCKER=1: an engine inside, all suites"
	@echo "make stack-up|stack-preview|stack-down|stack-status STACK=dev|staging|prod   a stack on this Docker engine, as pulumi up/preview/destroy would change it (no Pulumi CLI)"
	@echo "make test-docker   only the Docker suite (tests/docker: images, stacks, drills)"

deps: system-deps venv

# Installs only what is missing; as root via apt-get, otherwise names the packages in one line.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing system packages:$$missing — run: sudo apt-get install$$missing"; exit 1; fi; \
	echo "==> apt-get install$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null

# TimescaleDB for the system PostgreSQL 15: nothing when installed at the pinned version, else Timescale's
# apt package, else a build from the pinned archive (~1-2 min); else a notice and the partitioning
# fallback (an error when CI=true). See scripts/install-timescaledb.sh.
timescaledb: system-deps
	@scripts/install-timescaledb.sh

venv: $(STAMP)

# A .venv without a working pip (python3-venv was missing, an interrupted run) is made again.
$(STAMP): requirements.txt requirements-dev.txt service/requirements.txt
	@echo "==> creating $(VENV) and installing pinned requirements"
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "python3-venv is missing: run make system-deps as root (or sudo apt-get install python3-venv)"; exit 1; }
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } || { rm -rf $(VENV); exit 1; }
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -r requirements-dev.txt
	@touch $@

model: $(STAMP)
	@echo "==> training demo models into $(MODELS)/"
	@$(BIN)/python service/training/train_demo_models.py --out $(MODELS)

$(MODELS)/.built: service/training/train_demo_models.py | $(STAMP)
	@$(MAKE) --no-print-directory model
	@touch $@

# The Open Inference Protocol's gRPC descriptor, compiled from the vendored .proto by protoc (grpcio-tools)
# and committed: the service image needs no compiler. tests/service checks that it is current.
OIP_GRPC := service/prediction_service/oip_grpc
GRPC_PROTOSET ?= $(OIP_GRPC)/open_inference_grpc.protoset
grpc-protoset:
	@$(BIN)/python -m grpc_tools.protoc -I $(OIP_GRPC) --descriptor_set_out=$(GRPC_PROTOSET) open_inference_grpc.proto

# The Docker suite (tests/docker) needs an engine: as root one is installed and started if none
# answers; where that cannot be (not root, an unprivileged container) the suite is skipped with one
# line, except under CI (CI=true), where it fails.
test: deps timescaledb $(MODELS)/.built
	@scripts/docker-engine.sh start || [ "$$CI" != true ]
	@echo "==> pytest (the Docker suites and the others side by side: scripts/run-tests.sh)"
	@BIN=$(BIN) scripts/run-tests.sh

test-docker: deps $(MODELS)/.built
	@scripts/docker-engine.sh start
	@$(BIN)/pytest tests/docker

docker-engine:
	@scripts/docker-engine.sh start

# A stack on this machine's Docker engine, changed the way `pulumi up` would change it, without the Pulumi
# CLI (stack_emulator/; users deploy with pulumi up). The plan is printed before it is applied; the stack's
# state lives in var/stacks/<stack>/. STACK_PORTS=free publishes on free loopback ports. stack-down:
# KEEP_VOLUMES=1 keeps the data, EXCLUDE_PROTECTED=1 keeps what is protected, UNPROTECT=1 removes it too.
stack-up: deps $(MODELS)/.built
	@$(BIN)/python -m stack_emulator check $(STACK)
	@scripts/docker-engine.sh start
	@$(BIN)/python -m stack_emulator up $(STACK)

stack-preview: deps
	@$(BIN)/python -m stack_emulator preview $(STACK)

stack-down: venv
	@$(BIN)/python -m stack_emulator down $(STACK)

stack-status: venv
	@$(BIN)/python -m stack_emulator status $(STACK)

up: deps timescaledb $(MODELS)/.built
	@scripts/localenv.sh up

down:
	@scripts/localenv.sh down

status:
	@scripts/localenv.sh status

# One service process against a bare-aiohttp baseline (starts its own throwaway servers), then the
# whole local environment: through the TLS gateway vs straight to one instance.
bench: deps timescaledb $(MODELS)/.built
	@$(BIN)/python -m bench
	@$(MAKE) --no-print-directory bench-gateway

bench-gateway: up
	@set -a && source "$(LOCALENV_VAR_DIR)/localenv.env" && set +a && \
	$(BIN)/python -m bench --gateway "$$LOCALENV_URL" --direct "$${LOCALENV_SERVICE_URLS%% *}" \
		--api-key "$$PREDICTION_API_KEY"

# The service as deployed beside MLServer, BentoML and LitServe and a bare aiohttp + onnxruntime baseline,
# same model, one core each (bench/peers). Each peer's pinned venv is made once under var/bench/peers-venvs/
# (minutes from the package index the first time). Writes var/bench/peers.{json,md,png}.
bench-peers: deps timescaledb $(MODELS)/.built
	@$(BIN)/python -m bench.peers

preview deploy: venv
	@command -v pulumi >/dev/null || { echo "pulumi CLI not found: install it from pulumi.com/docs/install to $@ stack '$(STACK)'"; exit 1; }
	@pulumi whoami >/dev/null 2>&1 || { echo "not logged in: run pulumi login (or pulumi login --local) first"; exit 1; }
	@pulumi stack select $(STACK) >/dev/null 2>&1 || pulumi stack init $(STACK)
	@PATH="$(CURDIR)/$(BIN):$$PATH" pulumi $(if $(filter deploy,$@),up,preview) --stack $(STACK)

# Before each release (not in CI: it repeats the whole suite inside a container): the two commands as a
# new user runs them, on a debootstrapped Debian 12 with the clone under /root. Needs root and Docker.
# PRISTINE_DOCKER=1: with a Docker engine inside the container too, so the Docker suite runs there.
pristine-check:
	@scripts/pristine-check.sh

lint: deps
	@$(BIN)/ansible-lint --offline roles playbooks

clean:
	rm -rf $(VENV) $(MODELS)
