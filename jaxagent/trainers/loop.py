"""The training loop shared by SFT and RLFT: iterate {make data → updates}, log, checkpoint, resume.

One iteration draws its data with ``fold_in(key, updates so far)``, so a run resumed from a checkpoint
(saved only between iterations) continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from jaxagent.checkpoint import Checkpointer
from jaxagent.runlog import RunLog, progress
from jaxagent.train_step import TrainState, raise_if_nonfinite, split_micro_batches


def split_updates(batch, num_updates: int) -> list:
    """A rollout's batch (rows = episodes) as ``num_updates`` equal mini-batches."""
    stacked = split_micro_batches(batch, num_updates)
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_updates)]


def fit(name: str, state: TrainState, *, total_updates: int, key: jax.Array, make_data: Callable,
        train_step: Callable, log: RunLog, checkpointer: Checkpointer, checkpoint_every: int, log_every: int,
        on_eval: Callable | None = None, eval_every: int | None = None) -> TrainState:
    """Run until ``state.step == total_updates``. ``make_data(key, params) -> (mini-batches, scalars)``."""
    bar = progress(total_updates, name, initial=int(state.step))
    last_checkpoint = last_eval = int(state.step)
    while int(state.step) < total_updates:
        start = time.perf_counter()
        batches, scalars = make_data(jax.random.fold_in(key, int(state.step)), state.params)
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
        bar.update(len(batches))
        bar.set_postfix(loss=f"{scalars['loss']:.4f}")
        if on_eval is not None and eval_every and (step - last_eval >= eval_every or step >= total_updates):
            log.scalars(step, on_eval(state.params), prefix=f"{name}/eval/")
            last_eval = step
        if step - last_checkpoint >= checkpoint_every or step >= total_updates:
            checkpointer.save(state, key, {"updates": step})
            last_checkpoint = step
    bar.close()
    checkpointer.wait()
    return state


def resume(checkpointer: Checkpointer, fresh: TrainState) -> TrainState:
    """The last checkpoint of this phase if there is one, else ``fresh``."""
    if checkpointer.latest_step() is None:
        return fresh
    return checkpointer.restore(fresh).state
