# Two set-up commands: `make demo` runs the quickstart, `make test` runs the test suite.
# Each creates the local virtualenv .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench base clean

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

# Remakes the quickstart's shipped starting point (configs/nano_base.yaml; about an hour on 2 CPU cores).
base: $(BIN)/jaxagent
	$(BIN)/jaxagent train configs/nano_base.yaml
	$(BIN)/jaxagent train configs/nano_base.yaml run.name=base-reading model.checkpoint=runs/base-clone/policy \
		sft.action_noise=0.5 sft.num_updates=2500 sft.learning_rate=3e-3 run.checkpoint_every=250 eval.every=2500
	$(BIN)/jaxagent export configs/nano_base.yaml checkpoint=runs/base-reading/policy \
		out=jaxagent/assets/nano-greedy-base

clean:
	rm -rf $(VENV) runs .pytest_cache .jax_cache
