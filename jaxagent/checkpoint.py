"""Training checkpoints (Orbax): parameters, optimizer state, RNG key, update count and data position.

Saving step n and restoring it continues the run exactly as if it had never stopped: everything
the next update depends on is in the checkpoint (the data position is whatever the trainer needs
to find its next batch, e.g. ``{"rollout": 12}``). Only finite states are saved, and Orbax keeps
the newest ``keep`` checkpoints, so the last good one always survives a failing run.
Parameters are a separate item, so evaluation and export can restore them alone.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxagent import storage
from jaxagent.model.config import CheckpointError
from jaxagent.train_step import NonFiniteError, TrainState


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint where one was asked for; the message names the directory (and step)."""


class Restored(NamedTuple):
    state: TrainState
    rng: jax.Array
    data_position: dict
    step: int


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree``: restored arrays land with the same layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _shapes_by_path(tree: Any) -> dict[str, tuple]:
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


ITEMS = ("params", "opt_state", "meta")  # one Orbax item each, a subdirectory of every step; the RNG key's
# data is in meta (a host value, the same in every process of a multi-host run)


def is_step_directory(path: str | Path) -> bool:
    """``path`` is one step of a :class:`Checkpointer` (e.g. ``runs/NAME/sft/checkpoints/80``)."""
    path = Path(path)
    return path.name.isdigit() and all((path / item).is_dir() for item in ("params", "meta"))


def _all_finite(tree: Any) -> bool:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


class Checkpointer:
    """An Orbax ``CheckpointManager`` over ``directory`` holding step-numbered training checkpoints."""

    def __init__(self, directory: str | Path, *, keep: int = 3, create: bool = True, async_save: bool = True):
        self.directory = storage.durable(directory)
        if not create and not self.directory.is_dir():
            raise CheckpointNotFoundError(f"checkpoint directory not found: {self.directory}")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state: TrainState, rng: jax.Array, data_position: dict | None = None) -> int:
        """Save ``state`` under its update count; refuse a non-finite state (earlier checkpoints stay)."""
        step = int(state.step)
        if not _all_finite((state.params, state.opt_state)):
            last = self.latest_step()
            raise NonFiniteError(f"not saving the checkpoint of update {step} in {self.directory}: it holds "
                                 f"NaN or inf values; the last good checkpoint is update {last}")
        typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
        key_data = np.asarray(jax.random.key_data(rng) if typed else rng)
        meta = {"step": step, "data_position": dict(data_position or {}),
                "rng_impl": str(jax.random.key_impl(rng)) if typed else None, "rng_shape": list(key_data.shape),
                "rng_key_data": key_data.ravel().tolist()}
        self._manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)
        return step

    def _resolve(self, step: int | None) -> int:
        self._manager.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointNotFoundError(f"no checkpoint in {self.directory}")
        elif step not in self.all_steps():
            raise CheckpointNotFoundError(f"no checkpoint of update {step} in {self.directory} "
                                          f"(available: {self.all_steps()})")
        return step

    def restore(self, like: TrainState, step: int | None = None) -> Restored:
        """The full training state at ``step``, laid out like ``like``; by default the latest readable one: a
        checkpoint that cannot be read (truncated or damaged on disk) is reported in one line, set aside as
        ``<step>.unreadable`` (kept, not deleted) and the one before it is used."""
        if step is not None:
            return self._restore(like, self._resolve(step))
        self._resolve(None)  # waits for pending saves; none at all is an error
        steps = sorted(self.all_steps(), reverse=True)
        for newer, older in zip(steps, steps[1:] + [None]):
            try:
                return self._restore(like, newer)
            except Exception as e:  # whatever the storage layer raises for a damaged file
                if older is None:
                    raise CheckpointError(f"{self.directory}: no readable checkpoint; the last one, update "
                                          f"{newer}, fails with {type(e).__name__}: {str(e).splitlines()[0]}") from e
                print(f"jaxagent: checkpoint of update {newer} in {self.directory} is unreadable "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); set aside as {newer}.unreadable, "
                      f"resuming from update {older}", file=sys.stderr)
                self._set_aside(newer)

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(self.directory / f"{step}.unreadable")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self._manager.reload()

    def _restore(self, like: TrainState, step: int) -> Restored:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        out = self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(like.params)),
            opt_state=ocp.args.StandardRestore(_abstract(like.opt_state))))
        key_data = jnp.asarray(np.asarray(meta["rng_key_data"], np.uint32).reshape(meta["rng_shape"]))
        rng = jax.random.wrap_key_data(key_data, impl=meta["rng_impl"]) if meta["rng_impl"] else key_data
        step_count = jax.device_put(jnp.int32(meta["step"]), like.step.sharding)  # the same layout as ``like``
        state = TrainState(step_count, out["params"], out["opt_state"])
        return Restored(state, rng, meta["data_position"], step)

    def restore_params(self, like_params: Any, step: int | None = None) -> Any:
        """Only the parameters at ``step`` (default: the latest), e.g. for evaluation or export. Parameters of
        another model (a missing, extra or differently shaped array) are refused before anything is read."""
        step = self._resolve(step)
        self._check_param_shapes(like_params, step)
        out = self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(like_params))))
        return out["params"]

    def _check_param_shapes(self, like_params: Any, step: int) -> None:
        handler = ocp.StandardCheckpointHandler()
        try:
            stored = _shapes_by_path(dict(handler.metadata(self.directory / str(step) / "params")))
        finally:
            handler.close()
        wanted = _shapes_by_path(like_params)
        for name in sorted(stored.keys() | wanted.keys()):
            if stored.get(name) != wanted.get(name):
                raise CheckpointError(f"{self.directory / str(step)}: parameter {name} is stored with shape "
                                      f"{stored.get(name)}, the model wants {wanted.get(name)}")

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
