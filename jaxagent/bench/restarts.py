"""``jaxagent bench restarts``: EEF's restarts from expert states, all in batched jitted rollouts, against
restarting by replaying each expert prefix in turn through the same episode code.

Task: tic-tac-toe against the optimal opponent from tasks after one or two random moves, the expert playing
random legal moves (so that most games fail and are restarted at every agent move), the shipped
nano-tictactoe-base, G = 8 tokens per move.
- ours: each restart starts from the env state the expert episode recorded at that step; all restarts of all
  failed episodes go through fixed-size batched rollouts (``AgentLoop.rollout(start=...)``), one compiled program;
- replay: one restart at a time, as a harness without env snapshots must: the task's state, the expert's first k
  actions stepped through the env, then the same jitted episode from the state reached (batch 1).
Restarts per second both ways (ours: the median of 3 calls; replay: 48 restarts in turn) and their ratio; compile
time apart (replay: its first restart, compile included).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxagent.bench import median_seconds
from jaxagent.experiment_config import load_experiment
from jaxagent.runlog import RunLog
from jaxagent.trainers import eef, rft
from jaxagent.trainers.expert_tasks import Tasks, states_at, take
from jaxagent.trainers.setup import build

SETTING = ["trainer=eef", "env.name=tictactoe", "env.options={opponent: optimal}",
           "model.checkpoint=shipped:nano-tictactoe-base", "model.tokenizer=shipped", "sft.target=behaviour_cloning",
           "rollout.max_new_tokens=8", "eef.success=not_lose", "eef.opening_plies=[1, 2]",
           "eef.expert_blunder=1.0", "eef.num_restarts=4", "eef.rollout_chunk=64"]


def _ours(ctx, seeded, params, task, steps, key) -> None:
    starts = states_at(seeded.expert, task, steps)
    traj = ctx.sim.policy(params, Tasks(take(seeded.tasks.params, task), starts), starts, key)
    jax.block_until_ready(traj.tokens)


def _replay(exp, seeded, params, task, steps, key) -> None:
    step = jax.jit(exp.env.step)
    rollout = jax.jit(exp.train_loop.rollout)
    for r, (i, k) in enumerate(zip(task, steps)):
        env_params, state = take(seeded.tasks.params, i), take(seeded.tasks.states, i)
        for t in range(k):
            keys = jax.random.split(jax.random.fold_in(key, r * 8 + t))
            _, state, *_ = step(keys[1], state, seeded.expert.actions[i, t], env_params)
        one_row = lambda tree: jax.tree.map(lambda x: x[None], tree)
        jax.block_until_ready(rollout(params, one_row(env_params), jax.random.fold_in(key, r), one_row(state)).tokens)


def run(quick: bool = False) -> dict:
    tasks, replayed = (64, 8) if quick else (256, 48)
    with tempfile.TemporaryDirectory() as scratch:
        cfg = load_experiment(None, SETTING + [f"eef.train_tasks={tasks}", f"run.output_dir={scratch}"])
        exp = build(cfg)
        with RunLog(scratch, cfg, seeds={}) as log:
            ctx = rft.Context.build(exp, Path(scratch), log)
            seeded = rft.prepare(ctx, 0)
    steps, valid, _ = eef.restart_plan(seeded, cfg.eef.num_restarts)
    valid[:, 0] = False  # the restarts along failed expert episodes only
    task, column = np.nonzero(valid)
    steps = steps[task, column]
    params = exp.init_params

    start = time.perf_counter()
    _ours(ctx, seeded, params, task, steps, jax.random.key(0))
    ours_first = time.perf_counter() - start
    keys = iter(jax.random.split(jax.random.key(1), 3))
    ours_s = median_seconds(lambda: _ours(ctx, seeded, params, task, steps, next(keys)), 3)

    start = time.perf_counter()
    _replay(exp, seeded, params, task[:1], steps[:1], jax.random.key(0))
    replay_first = time.perf_counter() - start
    start = time.perf_counter()
    _replay(exp, seeded, params, task[:replayed], steps[:replayed], jax.random.key(1))
    replay_s = time.perf_counter() - start

    out = {"restarts": int(task.size), "failed_expert_episodes": int((~seeded.expert_success).sum()),
           "ours_restarts_per_s": task.size / ours_s, "replay_restarts_per_s": min(replayed, task.size) / replay_s,
           "ours_compile_s": ours_first - ours_s, "replay_compile_s": replay_first, "replayed": min(replayed, task.size),
           "device": str(jax.devices()[0])}
    out["ratio"] = out["ours_restarts_per_s"] / out["replay_restarts_per_s"]
    print(f"{'restarts':>9} {'ours /s':>9} {'replay /s':>10} {'ratio':>7} {'compile ours/replay':>20}")
    print(f"{out['restarts']:>9} {out['ours_restarts_per_s']:>9.1f} {out['replay_restarts_per_s']:>10.1f} "
          f"{out['ratio']:>7.1f} {out['ours_compile_s']:>9.1f} / {out['replay_compile_s']:<9.1f}")
    return out
