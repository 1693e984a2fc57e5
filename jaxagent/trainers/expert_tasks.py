"""What the EEF paper's methods share: tasks, expert episodes on them, the policy's episodes from any of their
states, success, and the repository of training episodes.

A task is an initial env state with the agent to move: a reset, then ``eef.opening_plies`` random moves (in a game
each answered by the opponent). Every episode played from a task or from a state along an expert episode is that
one episode (no reset after it ends), so success rates and simulation counts are true. Rollouts run in chunks of a
fixed number of rows (the last one padded), so one compiled program serves every batch size.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.yaml_config import ConfigError
from jaxagent.packing import pack


@struct.dataclass
class Opening:
    """How each task's state was reached, enough to replay it exactly: a reset, then moves."""
    reset_keys: jax.Array  # [N] keys
    actions: jax.Array     # [N, P] the moves; -1 past a task's plies
    keys: jax.Array        # [N, P] each move's env step key


@struct.dataclass
class Tasks:
    params: object  # env params, batched [N]
    states: object  # initial env states, batched [N]
    opening: Opening | None = None

    def __len__(self) -> int:
        return int(jax.tree.leaves(self.params)[0].shape[0])


def play_opening(env, params, reset_keys, step_keys, choose):
    """``(states, ended, Opening)``: rows reset with ``reset_keys`` then stepped with ``step_keys [N, P]``, the move
    of ply ``p`` being ``choose(p, states)`` (-1: the row stays where it is); ``ended`` marks rows whose episode a
    move ended."""
    n = reset_keys.shape[0]
    _, states = jax.vmap(env.reset)(reset_keys, params)
    ended, moves = jnp.zeros((n,), bool), []
    for ply in range(step_keys.shape[1]):
        action = jnp.asarray(choose(ply, states), jnp.int32)
        _, moved, _, terminated, truncated, _ = jax.vmap(env.step)(step_keys[:, ply], states,
                                                                  jnp.maximum(action, 0), params)
        playing = action >= 0
        ended = ended | (playing & (terminated | truncated))
        states = jax.tree.map(lambda a, b: jnp.where(playing.reshape((n,) + (1,) * (a.ndim - 1)), a, b), moved,
                              states)
        moves.append(action)
    actions = jnp.stack(moves, axis=1) if moves else jnp.zeros((n, 0), jnp.int32)
    return states, ended, Opening(reset_keys, actions, step_keys)


def opening_tasks(exp, key, n: int) -> Tasks:
    """``n`` tasks: env instances from the env's distribution, each reset and played ``p`` random (legal) moves
    into, ``p`` drawn from ``eef.opening_plies``."""
    plies = exp.cfg.eef.opening_plies
    loop = exp.train_loop
    k_params, k_reset, k_count, k_moves, k_steps = jax.random.split(key, 5)
    count = jax.random.choice(k_count, jnp.asarray(plies, jnp.int32), (n,))
    move_keys = jax.random.split(k_moves, (max(plies), n))

    def choose(ply, states):
        random = jax.vmap(loop.random_legal_action)(move_keys[ply], states)
        return jnp.where(ply < count, random, -1)

    params = exp.pool(k_params, n)
    states, ended, opening = play_opening(exp.env, params, jax.random.split(k_reset, n),
                                          jax.random.split(k_steps, (n, max(plies))), choose)
    if bool(jnp.any(ended)):
        raise ConfigError(f"config key 'eef.opening_plies': {list(plies)} random moves end "
                          f"{int(ended.sum())} of {n} episodes before the task starts")
    return Tasks(params, states, opening)


def take(tree, index):
    """Rows ``index`` of a batched pytree (a numpy or jax index array); scalars (shared by all rows) as they are."""
    return jax.tree.map(lambda x: x[index] if x.ndim else x, tree)


def success_fn(exp):
    """``success(traj) -> bool [B]``: the env kind's predicate ``eef.success`` on whole episodes."""
    e = exp.cfg.eef
    predicates = exp.kind.successes
    if e.success not in predicates:
        raise ConfigError(f"config key 'eef.success': {e.success!r} is not a success predicate of "
                          f"{exp.cfg.env.name} (expected one of {list(predicates)})")
    if e.success == "regret_below" and e.success_threshold is None:
        raise ConfigError("config key 'eef.success_threshold': regret_below needs a threshold")
    return lambda traj: predicates[e.success](traj, e.success_threshold)


class Simulator:
    """Episodes of the policy (sampled at the training temperature, or greedy) or of an expert from given states,
    ``eef.rollout_chunk`` rows per compiled call; counts the policy's simulations (episodes, active steps)."""

    def __init__(self, exp):
        self.exp, self.chunk = exp, exp.cfg.eef.rollout_chunk
        self._policy = jax.jit(exp.train_loop.rollout_on(exp.mesh))
        self._greedy = jax.jit(exp.eval_loop.rollout_on(exp.mesh))
        self._experts = {}  # expert -> its jitted episode
        self.success = success_fn(exp)

    def chunks(self, play, tasks: Tasks, starts, key):
        """``play(env params, starts, key)`` over ``tasks`` in chunks of the fixed size, the last one padded."""
        n = len(tasks)
        rows = np.concatenate([np.arange(n), np.zeros((-n) % self.chunk, np.int64)])
        parts = []
        for c, first in enumerate(range(0, rows.size, self.chunk)):
            index = rows[first:first + self.chunk]
            parts.append(play(take(tasks.params, index), take(starts, index), jax.random.fold_in(key, c)))
        whole = jax.tree.map(lambda *xs: jnp.concatenate(xs) if xs[0].ndim else xs[0], *parts)
        return take(whole, np.arange(n))

    def policy(self, params, tasks: Tasks, starts, key, greedy: bool = False):
        """The policy's episodes from ``starts`` (env states, one per task row)."""
        rollout = self._greedy if greedy else self._policy
        return self.chunks(lambda p, s, k: rollout(params, p, k, s), tasks, starts, key)

    def recorded(self, play, tasks: Tasks, key):
        """``(episodes, env_keys)``: ``play(env params, starts, key, env_keys)`` from each task's initial state with
        fresh env step keys ``[N, T]``, returned so that the episodes can be written out and replayed."""
        env_keys = episode_keys(key, len(tasks), self.exp.train_loop.num_steps)
        return self.chunks(lambda p, s, k: play(p, s[0], k, s[1]), tasks, (tasks.states, env_keys), key), env_keys

    def expert(self, expert, tasks: Tasks, key):
        """The expert's episode from each task's initial state (env states kept at every step), with its env
        step keys (see :meth:`recorded`)."""
        if expert not in self._experts:
            loop = self.exp.train_loop
            self._experts[expert] = jax.jit(lambda p, s, k, e: loop.expert_rollout(expert, p, k, s, e))
        return self.recorded(self._experts[expert], tasks, key)

    def success_rate(self, params, tasks: Tasks, key) -> np.ndarray:
        """bool [N]: the greedy policy succeeds from each task."""
        return np.asarray(self.success(self.policy(params, tasks, tasks.states, key, greedy=True)))


def episode_keys(key, n: int, num_steps: int):
    """``[n, num_steps]`` env step keys for the episodes of recorded experts (replayable from the record)."""
    return jax.random.split(jax.random.fold_in(key, 1), (n, num_steps))


def simulations(traj) -> dict:
    """Episodes and the env steps actually played in them."""
    return {"episodes": int(traj.active.shape[0]), "steps": int(jnp.sum(traj.active))}


def states_at(traj, rows: np.ndarray, steps: np.ndarray):
    """The env states of episode ``rows[i]`` of ``traj`` before its step ``steps[i]``."""
    return jax.tree.map(lambda x: x[rows, steps], traj.states)


def _token_fields(traj):
    """What a repository keeps of a trajectory: the per-row episode fields, no env states."""
    return traj.replace(states=None, prefix_length=None, final_states=None)


class Repository:
    """Training episodes (token fields of spliced trajectories) and their loss masks, kept on the host."""

    def __init__(self, traj=None, mask=None):
        self.traj, self.mask = traj, mask

    def add(self, traj, mask, keep) -> "Repository":
        keep = np.asarray(keep, bool)
        rows = jax.tree.map(lambda x: np.asarray(x)[keep], _token_fields(traj))
        mask = np.asarray(mask)[keep]
        if self.traj is None:
            return Repository(rows, mask)
        return Repository(jax.tree.map(lambda a, b: np.concatenate([a, b]), self.traj, rows),
                          np.concatenate([self.mask, mask]))

    def __len__(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def sample(self, key, n: int):
        """``n`` episodes drawn uniformly with replacement."""
        index = np.asarray(jax.random.randint(key, (n,), 0, len(self)))
        return take(self.traj, index), self.mask[index]

    def save(self, path: Path) -> None:
        leaves = jax.tree.leaves(self.traj) + [self.mask]
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, *leaves)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, like) -> "Repository":
        """The repository saved at ``path``; ``like`` (a repository or trajectory) gives the tree structure."""
        with np.load(path) as data:
            leaves = [data[f"arr_{i}"] for i in range(len(data.files))]
        structure = jax.tree.structure(_token_fields(like))
        return cls(jax.tree.unflatten(structure, leaves[:-1]), leaves[-1])


def sft_batch_fn(exp):
    """Jitted ``(traj, mask) -> {"packed", "mask"}`` for :func:`jaxagent.trainers.sft.sft_loss`: every row is one
    episode from a task, so its history holds at most the horizon's lines."""
    r, pad = exp.renderer, exp.tokenizer.pad_id

    @jax.jit
    def to_batch(traj, mask):
        return {"packed": pack(r.prefix[0], traj, pad, history_width=r.horizon * r.line_width), "mask": mask}
    return to_batch


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a kill leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


