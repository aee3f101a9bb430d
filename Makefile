# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run run-embedding test typecheck bench unit sim clean redis

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

run: $(STAMP)
	$(PY) -m serveplane.cli run examples/quickstart.yaml

TORCH_STAMP := $(VENV)/.installed-torch

$(TORCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[torch]'
	touch $@

run-embedding: $(TORCH_STAMP)
	$(PY) -m serveplane.cli run examples/embedding/embedding.yaml

test: $(TEST_STAMP) redis typecheck
	$(PY) -m pytest tests -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

typecheck: $(TEST_STAMP)
	$(PY) -m mypy serveplane

unit: $(TEST_STAMP)
	$(PY) -m pytest tests/unit -q

# The control-plane simulator: `make sim SEEDS=100000` runs many seeds, `make sim SEED=n`
# replays one with every event printed.
SEEDS ?= 1000
sim: $(TEST_STAMP)
	$(PY) -m tests.sim $(if $(SEED),--seed $(SEED) -v,--seeds $(SEEDS))

bench: $(TEST_STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
