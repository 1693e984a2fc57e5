# Two set-up commands: `make demo` runs the quickstart, `make test` runs the test suite.
# Each creates the local virtualenv .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/jaxagent: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/jaxagent

demo: $(BIN)/jaxagent
	$(BIN)/jaxagent train configs/quickstart.yaml

test: $(BIN)/jaxagent
	$(BIN)/python -m pytest

bench: $(BIN)/jaxagent
	$(BIN)/jaxagent bench all --json runs/bench.json

clean:
	rm -rf $(VENV) runs .pytest_cache .jax_cache
