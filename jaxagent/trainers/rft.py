"""SFT-POS, SFT-ALL and RFT: the EEF paper's baselines, on tasks with one expert episode each.

SFT-POS clones the expert's successful episodes (loss on the expert's turns only), SFT-ALL all of them. RFT starts
from SFT-POS and iterates: play the policy ``N`` times from every training task (``eef.rollouts_per_task``), keep
the successful episodes, fine-tune on the expert's successes and every success found so far. Every iteration
reports the held-out success rate and the simulations used so far (policy episodes and the env steps played in
them), so that methods compare at matched budgets. EEF (:mod:`jaxagent.trainers.eef`) is this loop with another
exploration step.

Each fine-tuning resumes from its own checkpoints, and each finished iteration leaves its repository and record in
its directory: a run killed at any point continues at the iteration it stopped, with the same data.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from envs_jax.yaml_config import ConfigError
from jaxagent import storage
from jaxagent.model import load_policy
from jaxagent.model.policy import Policy
from jaxagent.packing import token_mask
from jaxagent.runlog import RunLog
from jaxagent.trainers import expert_file
from jaxagent.trainers.expert_tasks import (Repository, Simulator, Tasks, opening_tasks, sft_batch_fn, simulations,
                                            take, write_json)
from jaxagent.trainers.loop import Phase, check_batch_split, run_phase
from jaxagent.trainers.setup import checkpoint_path
from jaxagent.trainers.sft import sft_loss


@dataclasses.dataclass
class Context:
    """One run's parts: the experiment, its simulator, the held-out tasks, the starting parameters."""
    exp: object
    log: RunLog
    directory: Path
    sim: Simulator
    eval_tasks: Tasks
    base_params: object
    to_batch: Callable
    loss_fn: Callable  # one object for every fine-tuning: they share one compiled update
    expert: Callable | None  # (simulator, tasks, key) -> (episodes, env keys), one compiled rollout for every
    # seed; None with eef.expert_file

    @classmethod
    def build(cls, exp, directory: Path, log: RunLog) -> "Context":
        e = exp.cfg.eef
        check_batch_split(e.batch_size, exp.mesh, "eef.batch_size")
        check_batch_split(e.rollout_chunk, exp.mesh, "eef.rollout_chunk")
        if e.num_restarts >= exp.train_loop.num_steps:
            raise ConfigError(f"config key 'eef.num_restarts': {e.num_restarts} restarts need episodes of more than "
                              f"{e.num_restarts} steps, and this env's last at most {exp.train_loop.num_steps}")
        eval_tasks = opening_tasks(exp, jax.random.key(exp.cfg.eval.seed), e.eval_tasks)
        return cls(exp, log, directory, Simulator(exp), eval_tasks, exp.init_params, sft_batch_fn(exp),
                   sft_loss(exp.model_cfg), make_expert(exp))

    def save_policy(self, params, directory: Path) -> None:
        """The method's final parameters as ``directory/policy`` (``jaxagent eval``/``export`` read it)."""
        target = storage.durable(directory / "policy")
        if not target.exists():
            Policy(self.exp.model_cfg, params).save(target)

    def evaluate(self, params) -> np.ndarray:
        """bool [eval tasks]: the greedy policy succeeds (same tasks and env keys for every method)."""
        return self.sim.success_rate(params, self.eval_tasks, jax.random.key(self.exp.cfg.eval.seed + 1))


@dataclasses.dataclass
class Seeded:
    """One seed's training tasks and the expert's episode on each."""
    seed: int
    key: jax.Array
    tasks: Tasks
    expert: object  # Trajectory [N, T], env states kept at every step
    expert_keys: jax.Array  # [N, T] the key of each of the expert's env steps
    expert_success: np.ndarray  # bool [N]

    @property
    def expert_lengths(self) -> np.ndarray:
        return np.asarray(self.expert.active.sum(axis=1))


def make_expert(exp) -> Callable:
    """``(simulator, tasks, key) -> (episodes, env keys)`` of the expert: the env kind's jittable expert
    (``eef.expert``, with ``eef.expert_blunder``) or, with ``eef.expert_checkpoint``, that policy played greedily
    (e.g. a bigger model)."""
    e, s = exp.cfg.eef, exp.cfg.sft
    if e.expert_file is not None:  # its episodes come with their tasks (see prepare)
        _no_blunder(exp, "eef.expert_file")
        return None
    if e.expert_checkpoint is not None:
        return _policy_expert(exp, e.expert_checkpoint)
    if e.expert not in exp.kind.experts:
        raise ConfigError(f"config key 'eef.expert': {e.expert!r} is not an expert for {exp.cfg.env.name} "
                          f"(expected one of {exp.kind.experts})")
    expert = exp.kind.expert(exp.env, exp.tokenizer, exp.labels, e.expert, reasoning=s.target == "thought_cloning",
                             stats=s.rationale_stats, blunder=e.expert_blunder)
    return lambda sim, tasks, key: sim.expert(expert, tasks, key)


def _no_blunder(exp, expert_key: str) -> None:
    if exp.cfg.eef.expert_blunder:
        raise ConfigError(f"config key 'eef.expert_blunder': applies to the env kind's experts, not to {expert_key}")


def _policy_expert(exp, checkpoint: str) -> Callable:
    _no_blunder(exp, "eef.expert_checkpoint")
    policy = load_policy(checkpoint_path(checkpoint, "eef.expert_checkpoint"), exp.cfg.model.dtype, mesh=exp.mesh)
    if policy.cfg.vocab_size < exp.tokenizer.vocab_size:
        raise ConfigError(f"config key 'eef.expert_checkpoint': its vocabulary ({policy.cfg.vocab_size}) is smaller "
                          f"than the tokenizer's {exp.tokenizer.vocab_size} tokens")
    loop = dataclasses.replace(exp.eval_loop, exploration=None,
                               model_cfg=dataclasses.replace(policy.cfg, kernels=exp.cfg.model.kernels))
    play = jax.jit(loop.rollout)
    return lambda sim, tasks, key: sim.recorded(lambda p, s, k, e: play(policy.params, p, k, s, e), tasks, key)


def prepare(ctx: Context, seed: int) -> Seeded:
    """The seed's tasks and expert episodes: made here (and written to ``expert_episodes_seed_<seed>.jsonl``), or
    the first ``eef.train_tasks`` episodes of ``eef.expert_file`` for every seed."""
    exp, e = ctx.exp, ctx.exp.cfg.eef
    key = jax.random.key(seed)
    if e.expert_file is not None:
        tasks, expert, keys = expert_file.read(e.expert_file, exp, e.train_tasks)
    else:
        tasks = opening_tasks(exp, jax.random.fold_in(key, 0), e.train_tasks)
        expert, keys = ctx.expert(ctx.sim, tasks, jax.random.fold_in(key, 1))
        ctx.directory.mkdir(parents=True, exist_ok=True)
        expert_file.write(ctx.directory / f"expert_episodes_seed_{seed}.jsonl", exp, tasks, expert, keys)
    return Seeded(seed, key, tasks, expert, keys, np.asarray(ctx.sim.success(expert)))


def expert_repository(seeded: Seeded, successes_only: bool) -> Repository:
    keep = seeded.expert_success if successes_only else np.ones_like(seeded.expert_success)
    return Repository().add(seeded.expert, token_mask(seeded.expert), keep)


def finetune(ctx: Context, params, repo: Repository, updates: int, directory: Path, key, name: str):
    """``updates`` SFT updates on episodes drawn from ``repo`` (resuming from ``directory``'s checkpoints)."""
    exp, e = ctx.exp, ctx.exp.cfg.eef

    def make_data(key, params):
        traj, mask = repo.sample(key, e.batch_size)
        return [ctx.to_batch(traj, mask)], {"data/episodes": float(len(repo))}

    phase = Phase(name, ctx.loss_fn, make_data, updates, e.learning_rate)
    return run_phase(exp, phase, params, directory, key, ctx.log)


def _cloned(ctx: Context, seeded: Seeded, method: str, successes_only: bool):
    """SFT on the expert's episodes from the base: (params, result)."""
    directory = ctx.directory / method / f"seed_{seeded.seed}"
    repo = expert_repository(seeded, successes_only)
    if len(repo) == 0:
        key = "eef.expert_checkpoint" if ctx.exp.cfg.eef.expert_checkpoint else "eef.expert_blunder"
        raise ConfigError(f"config key '{key}': the expert succeeded on none of the "
                          f"{len(seeded.expert_success)} training tasks (seed {seeded.seed}): nothing to clone")
    done = directory / "result.json"
    start = time.perf_counter()
    params = finetune(ctx, ctx.base_params, repo, ctx.exp.cfg.eef.sft_updates, directory,
                      jax.random.fold_in(seeded.key, 2), f"{method}/seed_{seeded.seed}")
    if done.exists():
        return params, json.loads(done.read_text())
    per_task = ctx.evaluate(params)
    result = {"success": float(per_task.mean()), "per_task": per_task.tolist(), "wall_s": time.perf_counter() - start,
              "simulations": {"episodes": 0, "steps": 0}, "episodes": len(repo),
              "per_iteration": [{"iteration": 0, "success": float(per_task.mean()), "episodes": 0, "steps": 0}]}
    ctx.save_policy(params, directory)
    write_json(done, result)
    return params, result


def sft_pos(ctx: Context, seeded: Seeded) -> dict:
    return _cloned(ctx, seeded, "sft_pos", True)[1]


def sft_all(ctx: Context, seeded: Seeded) -> dict:
    return _cloned(ctx, seeded, "sft_all", False)[1]


def iterate(ctx: Context, seeded: Seeded, name: str, explore: Callable) -> dict:
    """SFT-POS, then ``eef.iterations`` rounds of {``explore(ctx, seeded, params, key) -> (episodes, masks,
    keep, diagnostics, simulations)``; fine-tune on the expert's successes and everything kept so far}."""
    e = ctx.exp.cfg.eef
    directory = ctx.directory / name / f"seed_{seeded.seed}"
    base, first = _cloned(ctx, seeded, "sft_pos", True)
    params, repo = base, expert_repository(seeded, True)
    record, used, wall = [first["per_iteration"][0]], {"episodes": 0, "steps": 0}, 0.0
    for it in range(1, e.iterations + 1):
        it_dir = directory / f"iteration_{it}"
        key = jax.random.fold_in(seeded.key, 100 + it)
        progress = it_dir / "progress.json"
        if progress.exists():  # finished before a restart: its parameters and data come back from disk
            entry = json.loads(progress.read_text())
            params = _finetuned(ctx, params, base, repo, it_dir, key, name, seeded, it, entry["skipped"])
            repo = Repository.load(it_dir / "repository.npz", seeded.expert)
        else:
            start = time.perf_counter()
            episodes, masks, keep, diagnostics, sims = explore(ctx, seeded, params, jax.random.fold_in(key, 0))
            repo = repo.add(episodes, masks, keep)
            skipped = not bool(np.any(keep))
            if skipped:
                print(f"{name} seed {seeded.seed} iteration {it}: no successful episode found; the iteration "
                      f"keeps the parameters it started from")
            params = _finetuned(ctx, params, base, repo, it_dir, key, name, seeded, it, skipped)
            per_task = ctx.evaluate(params)
            entry = {"iteration": it, "success": float(per_task.mean()), "per_task": per_task.tolist(),
                     "episodes": used["episodes"] + sims["episodes"], "steps": used["steps"] + sims["steps"],
                     "kept": int(np.sum(keep)), "repository": len(repo), "skipped": skipped, **diagnostics,
                     "wall_s": time.perf_counter() - start}
            it_dir.mkdir(parents=True, exist_ok=True)
            repo.save(it_dir / "repository.npz")
            write_json(progress, entry)
        ctx.log.scalars(it, {k: v for k, v in entry.items() if isinstance(v, (int, float))},
                        prefix=f"{name}/seed_{seeded.seed}/")
        used, wall = {"episodes": entry["episodes"], "steps": entry["steps"]}, wall + entry["wall_s"]
        record.append({k: v for k, v in entry.items() if k != "per_task"})
    ctx.save_policy(params, directory)
    return {"success": record[-1]["success"], "per_task": entry["per_task"], "simulations": used, "wall_s": wall,
            "per_iteration": record}


def _finetuned(ctx, params, base, repo, it_dir, key, name, seeded, it, skipped: bool):
    if skipped:
        return params
    start = params if ctx.exp.cfg.eef.finetune_from == "continue" else base
    return finetune(ctx, start, repo, ctx.exp.cfg.eef.updates_per_iteration, it_dir, jax.random.fold_in(key, 1),
                    f"{name}/seed_{seeded.seed}/iteration_{it}")


def explore_rollouts(per_task: int):
    """RFT's exploration: ``per_task`` policy episodes from every training task; the successful ones are kept."""
    def explore(ctx: Context, seeded: Seeded, params, key):
        index = np.repeat(np.arange(len(seeded.tasks)), per_task)
        tasks = take(seeded.tasks, index)
        traj = ctx.sim.policy(params, tasks, tasks.states, key)
        success = np.asarray(ctx.sim.success(traj))
        solved = np.zeros(len(seeded.tasks), bool)
        np.logical_or.at(solved, index, success)
        return traj, token_mask(traj), success, {"tasks_solved": int(solved.sum())}, simulations(traj)
    return explore


def rft(ctx: Context, seeded: Seeded, per_task: int | None = None) -> dict:
    """RFT with ``eef.rollouts_per_task`` episodes per task, or RFT×N (``per_task = N``; its own directory
    ``rft_xN`` unless N is that setting, when it is the same run as RFT's)."""
    default = ctx.exp.cfg.eef.rollouts_per_task
    name = "rft" if per_task in (None, default) else f"rft_x{per_task}"
    return iterate(ctx, seeded, name, explore_rollouts(per_task or default))
