# Two set-up commands: `make demo` runs the quickstart, `make test` runs the test suite.
# Each creates the local virtualenv .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench base base-tictactoe mutants clean

$(BIN)/jaxagent: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/jaxagent

demo: $(BIN)/jaxagent
	$(BIN)/jaxagent train configs/quickstart.yaml

# Two test processes (each test file runs whole in one of them): compiling dominates the suite and XLA compiles
# one program on one core, so two processes use both cores of a 2-core host. Files are handed out in the order
# tests/conftest.py gives them (the longest first), so that the processes finish together.
TEST_WORKERS ?= 2
test: $(BIN)/jaxagent
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The benchmarks' peers: gymnax, pgx and torch come with the test extras; tunix goes in without its dependencies
# (it pins an old safetensors and heavy extras), with the modules its sampler imports.
TUNIX := google-tunix einops jaxtyping wadler_lindig google-metrax clu wrapt perfetto
bench: $(BIN)/jaxagent
	$(BIN)/pip install -q --no-deps $(TUNIX)
	$(BIN)/jaxagent bench all --json runs/bench.json

# Sampled mutation testing of rollout, batches, packing and setup against their tests (not part of `make test`:
# each mutant reruns its tests in a scratch copy, hours in all on 2 CPU cores); see tests/mutants.py for options.
mutants: $(BIN)/jaxagent
	$(BIN)/python tests/mutants.py

# Remakes the quickstart's shipped starting point, jaxagent/assets/nano-greedy-base (about an hour on 2 CPU
# cores), with the quickstart's env, prompt and rationale: the nano model thought-cloned on the greedy expert,
# 800 updates on the expert's own episodes, then 2,500 with half the turns played by a random arm, every turn
# labelled with the expert's text for the history it saw.
BASE := $(BIN)/jaxagent train configs/quickstart.yaml trainer=sft
base: $(BIN)/jaxagent
	$(BASE) model.checkpoint=null model.preset=nano sft.num_updates=800 sft.learning_rate=5e-3 \
		eval.every=200 run.checkpoint_every=200 run.name=base-clone
	$(BASE) model.checkpoint=runs/base-clone/policy sft.action_noise=0.5 sft.num_updates=2500 \
		sft.learning_rate=3e-3 eval.every=2500 run.checkpoint_every=250 run.name=base-reading
	$(BIN)/jaxagent export configs/quickstart.yaml checkpoint=runs/base-reading/policy \
		out=jaxagent/assets/nano-greedy-base

# Remakes the EEF experiments' tic-tac-toe starting point, jaxagent/assets/nano-tictactoe-base (about 18 minutes on
# 2 CPU cores): nano-greedy-base cloned for 250 updates on random legal play (the expert with every move random) from
# 512 tasks, so that it knows the prompt's format and legal moves but not how to play.
base-tictactoe: $(BIN)/jaxagent
	$(BIN)/jaxagent train configs/eef/tictactoe.yaml trainer=sft_all model.checkpoint=shipped:nano-greedy-base \
		eef.expert_blunder=1.0 eef.train_tasks=512 eef.eval_tasks=64 eef.sft_updates=250 eef.seeds=[0] \
		optim.learning_rate=3e-3 run.checkpoint_every=50 run.name=base-tictactoe
	$(BIN)/jaxagent export configs/eef/tictactoe.yaml checkpoint=runs/base-tictactoe/sft_all/seed_0/policy \
		out=jaxagent/assets/nano-tictactoe-base

clean:
	rm -rf $(VENV) runs .pytest_cache .jax_cache .test_cache
