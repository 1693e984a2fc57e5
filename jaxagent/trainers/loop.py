"""What every trainer shares: batch sizes in step contexts, the fit loop {make data → updates}, logging,
checkpoints and resume.

One iteration draws its data with ``fold_in(key, updates so far)``, so a run resumed from a checkpoint
(saved only between iterations) continues exactly as the uninterrupted run would have.

Batch sizes are given in step contexts, as in the paper. A trainer's batch unit is one packed episode (all its step
contexts in one row, see :mod:`jaxagent.packing`; sizes rounded to whole episodes) or, for RLFT with
``rl.batch_unit: context``, one step context (:mod:`jaxagent.contexts`; sizes exact).
"""
from __future__ import annotations

import collections
import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from envs_jax.yaml_config import ConfigError
from jaxagent.checkpoint import Checkpointer
from jaxagent.model.sharding import row_shards
from jaxagent.optim import make_optimizer
from jaxagent.runlog import RunLog, progress
from jaxagent.train_step import (TrainState, create_train_state, make_train_step, raise_if_nonfinite, shardings_of,
                                 split_micro_batches)


def episodes_per_update(batch_size: int, num_steps: int, episodes_per_rollout: int | None = None) -> int:
    """The whole episodes closest to ``batch_size`` step contexts (a divisor of ``episodes_per_rollout`` if given:
    the paper's 128 contexts of 50-step episodes, 16 per rollout, become 2 episodes = 100 contexts)."""
    if episodes_per_rollout is None:
        return max(1, round(batch_size / num_steps))
    divisors = [d for d in range(1, episodes_per_rollout + 1) if episodes_per_rollout % d == 0]
    return min(divisors, key=lambda d: abs(d * num_steps - batch_size))


def micro_batches(micro_batch_size: int | None, episodes: int, num_steps: int, key: str) -> int:
    if micro_batch_size is None:
        return 1
    per = episodes_per_update(micro_batch_size, num_steps)
    if episodes % per:
        raise ConfigError(f"config key '{key}': {micro_batch_size} contexts = {per} episodes, which does not "
                          f"divide the {episodes} episodes of an update")
    return episodes // per


def check_batch_split(rows: int, mesh, key: str, unit: str = "episodes") -> None:
    shards = row_shards(mesh)
    if rows % shards:
        raise ConfigError(f"config key '{key}': an update's {rows} {unit} do not split over the mesh's "
                          f"data x fsdp = {shards} devices")


def check_growing_history(loop) -> None:
    """A packed episode's history only grows: training needs the whole history in the prompt."""
    if not loop.rewinds:
        r = loop.renderer
        raise ConfigError(f"config key 'prompt.history_window': packed episodes need the whole history in the "
                          f"prompt, got a window of {r.window} of the {r.horizon} steps; windows apply to evaluation "
                          f"and to RLFT with rl.batch_unit: context")


def draw(pool, key, n: int, group_size: int = 1):
    """``n`` instances from the pool: ``n / group_size`` distinct ones, each repeated ``group_size`` times in a row."""
    size = jax.tree.leaves(pool)[0].shape[0]
    idx = jax.random.choice(key, size, (n // group_size,), replace=size < n // group_size)
    return jax.tree.map(lambda x: jnp.repeat(x[idx], group_size, axis=0), pool)


def split_updates(batch, num_updates: int) -> list:
    """A rollout's batch (rows = episodes) as ``num_updates`` equal mini-batches."""
    stacked = split_micro_batches(batch, num_updates)
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_updates)]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase as :func:`run_phase` runs it. ``make_data(key, params) -> (mini-batches, scalars)``;
    the scalars may carry ``"samples"``: episode records for ``<phase>/samples.jsonl``."""
    name: str
    loss_fn: Callable
    make_data: Callable
    num_updates: int
    learning_rate: float | None   # the phase's peak; None = optim.learning_rate
    num_micro_batches: int = 1
    weights: dict | None = None   # loss term → weight; None = every term 1


_STEPS: collections.OrderedDict = collections.OrderedDict()


def _train_step(phase: Phase, optim, state: TrainState, batch_sharding):
    """The jitted update for ``phase``, one per distinct setting: phases that differ only in name and data (EEF's
    iterations, the methods and seeds of a comparison, with one ``loss_fn`` object) share one program."""
    shardings = shardings_of(state)
    key = (phase.loss_fn, optim, phase.num_updates, phase.num_micro_batches,
           tuple(sorted((phase.weights or {}).items())), jax.tree.structure(shardings),
           tuple(jax.tree.leaves(shardings)), batch_sharding)
    if key not in _STEPS:
        _STEPS[key] = make_train_step(phase.loss_fn, make_optimizer(optim, phase.num_updates),
                                      num_micro_batches=phase.num_micro_batches, weights=phase.weights,
                                      state_sharding=shardings, batch_sharding=batch_sharding)
        while len(_STEPS) > 8:
            _STEPS.popitem(last=False)
    return _STEPS[key]


def run_phase(exp, phase: Phase, params, directory: Path, key: jax.Array, log: RunLog, evaluate=None):
    """Optimizer, checkpoints (resuming from the last one in ``directory``) and the fit loop; the tuned params."""
    cfg = exp.cfg
    optim = cfg.optim
    if phase.learning_rate is not None:
        optim = dataclasses.replace(optim, learning_rate=phase.learning_rate,
                                    final_learning_rate=min(optim.final_learning_rate, phase.learning_rate))
    optimizer = make_optimizer(optim, phase.num_updates)
    checkpointer = Checkpointer(directory / "checkpoints", keep=cfg.run.keep_checkpoints)
    try:
        state = resume(checkpointer, create_train_state(params, optimizer))
        step_fn = _train_step(phase, optim, state, exp.batch_sharding())
        state = fit(phase.name, state, total_updates=phase.num_updates, key=key, make_data=phase.make_data,
                    train_step=step_fn, log=log, checkpointer=checkpointer,
                    checkpoint_every=cfg.run.checkpoint_every, log_every=cfg.run.log_every, on_eval=evaluate,
                    eval_every=cfg.eval.every)
    finally:
        checkpointer.close()
    return state.params


class Preempted(Exception):
    """SIGTERM (what TPU and cloud preemption send) stopped the run after a checkpoint; the same command resumes."""


class _Termination:
    """Notes a SIGTERM for the fit loop to act on between iterations, where a checkpoint resumes exactly; all
    processes of a multi-host run act on the same iteration (any one's signal counts for all)."""

    def __enter__(self):
        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))


def fit(name: str, state: TrainState, *, total_updates: int, key: jax.Array, make_data: Callable,
        train_step: Callable, log: RunLog, checkpointer: Checkpointer, checkpoint_every: int, log_every: int,
        on_eval: Callable | None = None, eval_every: int | None = None) -> TrainState:
    """Run until ``state.step == total_updates``. ``make_data(key, params) -> (mini-batches, scalars)``. A SIGTERM
    saves a checkpoint after the iteration under way and raises :class:`Preempted`."""
    with _Termination() as termination:
        bar = progress(total_updates, name, initial=int(state.step))
        last_checkpoint = last_eval = int(state.step)
        while int(state.step) < total_updates:
            start = time.perf_counter()
            batches, scalars = make_data(jax.random.fold_in(key, int(state.step)), state.params)
            samples = scalars.pop("samples", None)
            data_seconds = time.perf_counter() - start
            for batch in batches:
                state, step_metrics = train_step(state, batch)
            step = int(state.step)
            raise_if_nonfinite(step_metrics, step)
            elapsed = time.perf_counter() - start
            scalars = {**{k: float(np.asarray(v)) for k, v in step_metrics.items()}, **scalars,
                       "time/data_s": data_seconds, "time/iteration_s": elapsed}
            if step % log_every < len(batches) or step >= total_updates:
                log.scalars(step, scalars, prefix=f"{name}/")
                if samples:
                    log.samples(step, name, samples)
            bar.update(len(batches))
            bar.set_postfix(loss=f"{scalars['loss']:.4f}")
            if on_eval is not None and eval_every and (step - last_eval >= eval_every or step >= total_updates):
                log.scalars(step, on_eval(state.params), prefix=f"{name}/eval/")
                last_eval = step
            stop = step < total_updates and termination.agreed()
            if step - last_checkpoint >= checkpoint_every or step >= total_updates or stop:
                checkpointer.save(state, key, {"updates": step})
                log.sync()
                last_checkpoint = step
            if stop:
                bar.close()
                checkpointer.wait()
                raise Preempted(f"stopped by SIGTERM after update {step} of {name}, checkpoint saved in "
                                f"{checkpointer.directory}; the same command resumes the run")
        bar.close()
        checkpointer.wait()
        return state


def resume(checkpointer: Checkpointer, fresh: TrainState) -> TrainState:
    """The last checkpoint of this phase if there is one, else ``fresh``."""
    if checkpointer.latest_step() is None:
        return fresh
    return checkpointer.restore(fresh).state
