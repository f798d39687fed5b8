# phasegate — make targets in the kubebuilder spirit.
# `make demo` and `make test` do every set-up step themselves on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONUNBUFFERED := 1

STATE       := $(CURDIR)/.state
KUBECONFIG_LOCAL := $(STATE)/cluster/kubeconfig

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*##/ {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Set-up

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@echo "[setup] installing phasegate and its test dependencies into $(VENV)" >&2
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Python virtualenv with phasegate installed (editable).

.PHONY: binaries
binaries: ## Build etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok (cached, once).
	@hack/cluster/build-binaries.sh >/dev/null

.PHONY: helm
helm: ## Build the pinned helm from the Go module proxy if missing (chart lint/render and the chart e2e test).
	@hack/install-helm.sh >/dev/null

.PHONY: prometheus
prometheus: ## Install Prometheus from Debian packages if missing (for the Prometheus source tests).
	@hack/install-prometheus.sh

##@ Local control plane

.PHONY: cluster
cluster: venv binaries ## Start (or reuse) the local control plane; prints the KUBECONFIG to use.
	@$(PY) hack/cluster/localcluster.py up

.PHONY: cluster-down
cluster-down: ## Stop every process of the local control plane and remove its state.
	@test -x $(PY) && $(PY) hack/cluster/localcluster.py down || true

##@ Development

.PHONY: crds
crds: venv ## Generate crds/ from the pydantic models.
	@$(PY) -m phasegate.api.crd > crds/phasegate.dev_tradingstrategies.yaml
	@cp crds/phasegate.dev_tradingstrategies.yaml charts/phasegate/crds/
	@echo "wrote crds/phasegate.dev_tradingstrategies.yaml"

.PHONY: install
install: venv ## Apply the CRD to the cluster of the current KUBECONFIG.
	@$(PY) -m phasegate.cli.main install-crds

.PHONY: uninstall
uninstall: venv ## Delete the CRD (and every TradingStrategy) from the current cluster.
	kubectl delete -f crds/phasegate.dev_tradingstrategies.yaml --ignore-not-found

.PHONY: run
run: venv ## Run the operator locally against the current KUBECONFIG.
	$(VENV)/bin/phasegate run

##@ Tests

.PHONY: lint
lint: venv ## Ruff, mypy (phasegate.api and phasegate.policy) and the import-layer contracts (lint-imports).
	@rc=0; \
	echo "[lint] ruff check ." >&2; $(VENV)/bin/ruff check . || rc=1; \
	echo "[lint] mypy" >&2; $(VENV)/bin/mypy || rc=1; \
	echo "[lint] lint-imports" >&2; $(VENV)/bin/lint-imports || rc=1; \
	exit $$rc

.PHONY: test
test: venv binaries prometheus helm lint ## Lint, then the whole suite: unit, property and end-to-end against a real control plane.
	PHASEGATE_REQUIRE_HELM=1 PHASEGATE_HELM="$$(hack/install-helm.sh)" $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## Unit and property tests only (no cluster).
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: venv binaries prometheus helm ## End-to-end tests only.
	PHASEGATE_REQUIRE_HELM=1 PHASEGATE_HELM="$$(hack/install-helm.sh)" $(PY) -m pytest -m e2e $(PYTEST_ARGS)

.PHONY: bench
bench: venv binaries ## Benchmarks (halt latency, breach-to-halt, leader failover); prints their figures.
	$(PY) -m benchmarks.run

.PHONY: bench-failover
bench-failover: venv binaries ## The leader-failover benchmark alone (BENCH_FAILOVERS=10 per series; about 6 minutes).
	$(PY) -m benchmarks.failover

.PHONY: bench-pass
bench-pass: venv ## One evaluation's CPU and memory, in process, no cluster (BENCH_PASS_N, BENCH_PASS_PROFILE=1, BENCH_PASS_MEMORY=1); seconds.
	$(PY) -m benchmarks.pass_cost

.PHONY: bench-scale
bench-scale: venv binaries ## Scale: BENCH_SCALE_N (1000) live strategies on one operator; apiserver load, lag, RSS/CPU, halts.
	$(PY) -m benchmarks.scale

##@ Demo

.PHONY: demo
demo: venv binaries ## Local control plane + operator + a demo strategy climbing the ladder, then a crash halts it.
	@$(PY) hack/demo.py up

.PHONY: demo-down
demo-down: ## Stop everything `make demo` started.
	@test -x $(PY) && $(PY) hack/demo.py down || true

.PHONY: clean
clean: cluster-down ## Remove local state and the virtualenv (the binary cache is kept).
	rm -rf $(STATE) $(VENV) .pytest_cache .hypothesis
