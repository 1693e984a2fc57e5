"""Random draws of the envs' own state and params pytrees (numpy leaves, batched over a leading axis).

They cover what a prompt can show (any step, any history, rewards beyond the two-decimal range, rounding ties),
not only the states an episode reaches, and feed the renderers' self-checks and the property tests.
"""
from __future__ import annotations

import numpy as np

from envs_jax.bandits import BanditParams, BanditState
from envs_jax.contextual import ContextualState, MovieLensParams
from envs_jax.games.tictactoe import GameState
from envs_jax.tictactoe import TicTacToeState


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
    params = MovieLensParams(
        rng.integers(0, 2, size=(n, num_users)).astype(np.int32),
        rng.integers(7, 80, size=(n, num_users)).astype(np.int32),
        rng.integers(0, num_occupations, size=(n, num_users)).astype(np.int32),
        rng.integers(0, num_locations, size=(n, num_users)).astype(np.int32),
        random_values(rng, (n, num_users, pref_dim)) / np.float32(50.0),
        rng.normal(size=(n, num_users, num_arms)).astype(np.float32),
        np.ones(n, np.float32))
    return state, params


def random_tictactoe(rng: np.random.Generator, n: int, horizon: int = 5):
    t, taken, actions, _ = _history(rng, n, horizon, 9)
    rewards = np.where(taken, rng.choice([-1.0, 0.0, 0.0, 1.0], size=(n, horizon)), 0.0).astype(np.float32)
    board = rng.integers(0, 3, size=(n, 9)).astype(np.int32)
    boards = np.where(taken[..., None], rng.integers(0, 3, size=(n, horizon, 9)), 0).astype(np.int32)
    # The game core's view of the board (the agent moving first); prompts show only the fields above it.
    bits = 1 << np.arange(9, dtype=np.int32)
    game = GameState(x=((board == 1) * bits).sum(1, dtype=np.int32), o=((board == 2) * bits).sum(1, dtype=np.int32),
                     current_player=np.zeros(n, np.int32), winner=np.full(n, -1, np.int32),
                     terminated=np.zeros(n, bool), legal_action_mask=board == 0, rewards=np.zeros((n, 2), np.float32))
    none = np.zeros(n, np.int32)
    state = TicTacToeState(board, board == 0, t, actions, rewards, boards, winner=none, terminated=none.astype(bool),
                           agent_player=none, game=game)
    return state, None
