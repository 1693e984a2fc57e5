"""Stand-in state/params pytrees with the envs' field names, and random draws of them.

Renderers read only these fields, so they work on the envs' own pytrees and on these. Random draws cover
what a prompt can show (any step, any history, rewards beyond the two-decimal range, rounding ties) and
feed the renderers' self-checks and the property tests.
"""
from __future__ import annotations

import numpy as np
from flax import struct


@struct.dataclass
class BanditState:
    t: np.ndarray  # i32[]
    actions: np.ndarray  # i32[H], -1 where not yet
    rewards: np.ndarray  # f32[H]
    counts: np.ndarray  # i32[K]
    reward_sums: np.ndarray  # f32[K]


@struct.dataclass
class BanditParams:
    means: np.ndarray  # f32[K]


@struct.dataclass
class ContextualState:
    t: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    counts: np.ndarray
    reward_sums: np.ndarray
    user: np.ndarray  # i32[], the current user
    users: np.ndarray  # i32[H], the user of each step


@struct.dataclass
class ContextualParams:
    user_gender: np.ndarray  # i32[U], 0 female / 1 male
    user_age: np.ndarray  # i32[U]
    user_occupation: np.ndarray  # i32[U]
    user_location: np.ndarray  # i32[U]
    user_prefs: np.ndarray  # f32[U, D]
    expected_rewards: np.ndarray  # f32[U, K]


@struct.dataclass
class TicTacToeState:
    board: np.ndarray  # i32[9], 0 empty / 1 agent / 2 opponent
    legal_mask: np.ndarray  # bool[9]
    t: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    boards: np.ndarray  # i32[H, 9], the board before the agent's move at step i


def random_values(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 values mixing scales, values past ±99.99 and exact two-decimal rounding ties."""
    scale = rng.choice([0.1, 1.0, 3.0, 40.0, 200.0], size=shape)
    values = rng.normal(size=shape) * scale
    ties = (rng.integers(-3000, 3000, size=shape) + 0.5) / 100.0
    return np.where(rng.random(shape) < 0.2, ties, values).astype(np.float32)


def _history(rng: np.random.Generator, n: int, horizon: int, num_actions: int):
    t = rng.integers(0, horizon + 1, size=n).astype(np.int32)
    t = np.where(rng.random(n) < 0.1, horizon, t).astype(np.int32)
    taken = np.arange(horizon)[None, :] < t[:, None]
    actions = np.where(taken, rng.integers(0, num_actions, size=(n, horizon)), -1).astype(np.int32)
    rewards = np.where(taken, random_values(rng, (n, horizon)), 0.0).astype(np.float32)
    return t, taken, actions, rewards


def random_bandit(rng: np.random.Generator, n: int, num_arms: int, horizon: int):
    t, taken, actions, rewards = _history(rng, n, horizon, num_arms)
    onehot = (actions[..., None] == np.arange(num_arms)) & taken[..., None]
    counts = onehot.sum(1).astype(np.int32)
    sums = (onehot * rewards[..., None]).sum(1, dtype=np.float32)
    state = BanditState(t, actions, rewards, counts, sums)
    return state, BanditParams(rng.normal(size=(n, num_arms)).astype(np.float32))


def random_contextual(rng: np.random.Generator, n: int, num_arms: int, horizon: int, num_users: int,
                      pref_dim: int, num_occupations: int, num_locations: int):
    bandit, _ = random_bandit(rng, n, num_arms, horizon)
    state = ContextualState(bandit.t, bandit.actions, bandit.rewards, bandit.counts, bandit.reward_sums,
                            rng.integers(0, num_users, size=n).astype(np.int32),
                            rng.integers(0, num_users, size=(n, horizon)).astype(np.int32))
    params = ContextualParams(
        rng.integers(0, 2, size=(n, num_users)).astype(np.int32),
        rng.integers(7, 80, size=(n, num_users)).astype(np.int32),
        rng.integers(0, num_occupations, size=(n, num_users)).astype(np.int32),
        rng.integers(0, num_locations, size=(n, num_users)).astype(np.int32),
        random_values(rng, (n, num_users, pref_dim)) / np.float32(50.0),
        rng.normal(size=(n, num_users, num_arms)).astype(np.float32))
    return state, params


def random_tictactoe(rng: np.random.Generator, n: int, horizon: int = 5):
    t, taken, actions, _ = _history(rng, n, horizon, 9)
    rewards = np.where(taken, rng.choice([-1.0, 0.0, 0.0, 1.0], size=(n, horizon)), 0.0).astype(np.float32)
    board = rng.integers(0, 3, size=(n, 9)).astype(np.int32)
    boards = np.where(taken[..., None], rng.integers(0, 3, size=(n, horizon, 9)), 0).astype(np.int32)
    return TicTacToeState(board, board == 0, t, actions, rewards, boards), None
