# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv first).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-all lint

$(BIN)/autofuse: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/autofuse

setup: $(BIN)/autofuse

demo: setup
	$(BIN)/autofuse demo

# default suite (fast) then the slow tests; CI runs exactly this target
test: setup
	$(BIN)/python -m pytest -q -m "not slow and not gpu"
	$(BIN)/python -m pytest -q -m "slow and not gpu" || [ $$? -eq 5 ]

# style, formatting, the import-layer contract (pyproject [tool.importlinter]) and the budget of
# function-local imports; CI runs this before the tests
lint: setup
	$(BIN)/ruff check autofuse tests benchmarks .ci
	$(BIN)/ruff format --check autofuse tests benchmarks .ci
	$(BIN)/lint-imports
	$(BIN)/python .ci/local_imports.py --max 60 > /dev/null
