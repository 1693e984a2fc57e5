"""``"contextual-movielens"``: a movie-recommendation contextual bandit (BanditBench's MovieLens task).

Each step a user arrives (the context: gender, age, occupation, location and a preference vector) and the agent
recommends one of ``num_arms`` movies; the reward is the user's rating from a low-rank model of the ratings
(plus optional Gaussian noise). One instance (``params``) is a table of ``num_users`` users drawn from the
population; users arrive uniformly at random from that table. The population comes from real ml-100k / ml-1m
files in ``data_dir`` or, by default, from the synthetic generator (see ``envs_jax.movielens``).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.bandits import BanditState, empty_history, record
from envs_jax.core import (EnvError, Environment, as_action, check_choice, check_float, check_int,
                           normal_from_uniform, uniform_index, uniforms)
from envs_jax.movielens import MovieLensData, load_movielens, synthetic_movielens


@struct.dataclass
class MovieLensParams:
    user_gender: jax.Array       # i32[U]: 0 female, 1 male
    user_age: jax.Array          # i32[U]
    user_occupation: jax.Array   # i32[U]: index into env.occupations
    user_location: jax.Array     # i32[U]: index into env.locations
    user_prefs: jax.Array        # f32[U, D]: "true implicit preference" vector
    expected_rewards: jax.Array  # f32[U, K]: expected rating of each movie for each user
    noise_std: jax.Array         # f32[]: reward noise


@struct.dataclass
class ContextualState(BanditState):
    user: jax.Array   # i32[]: the current user (index into the params' user table)
    users: jax.Array  # i32[H]: the user at step i; -1 where not yet


def _fields(state: BanditState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(BanditState)}


class ContextualMovieLens(Environment):
    name = "contextual-movielens"
    kind = "contextual_bandit"
    version = "v0"

    def __init__(self, num_arms: int = 5, horizon: int = 50, num_users: int = 100, data_dir: str | None = None,
                 rank: int = 10, split: str = "all", train_users: int | None = None, noise_std: float = 0.0,
                 seed: int = 0, synthetic_users: int = 1000):
        self.num_arms = check_int("num_arms", num_arms, 2)
        self.num_actions = self.num_arms
        self.horizon = check_int("horizon", horizon, 1)
        self.num_users = check_int("num_users", num_users, 1)
        rank = check_int("rank", rank, 1)
        self.split = check_choice("split", split, ("all", "train", "eval"))
        self.noise_std = check_float("noise_std", noise_std, 0.0)
        seed = check_int("seed", seed, 0)
        if data_dir is None:
            data = synthetic_movielens(self.num_arms, check_int("synthetic_users", synthetic_users, 2), rank, seed)
        else:
            if not isinstance(data_dir, (str, bytes)) and not hasattr(data_dir, "__fspath__"):
                raise EnvError(f"option 'data_dir' must be a path, got {data_dir!r}")
            data = load_movielens(data_dir, self.num_arms, rank, seed)
        self.data: MovieLensData = data
        # BanditBench: train users are the first 100 (ml-100k) / 200 (ml-1m) after shuffling, eval the rest.
        default_train = 200 if data.num_users > 3000 else 100
        n_train = check_int("train_users", default_train if train_users is None else train_users, 1)
        n_train = min(n_train, data.num_users - 1) if self.split != "all" else n_train
        lo, hi = {"all": (0, data.num_users), "train": (0, n_train), "eval": (n_train, data.num_users)}[self.split]
        if hi - lo < self.num_users:
            raise EnvError(f"option 'num_users': {self.num_users} users per instance, but the {self.split!r} "
                           f"split of {data.source} has only {hi - lo}")
        self.pool = np.arange(lo, hi)
        self.movie_titles = data.movie_titles
        self.occupations = data.occupations
        self.locations = data.locations
        self.feature_dim = int(data.user_prefs.shape[1])
        self.static_options = (("num_arms", self.num_arms), ("horizon", self.horizon),
                               ("num_users", self.num_users), ("feature_dim", self.feature_dim))

    # ------------------------------------------------------------------------------------------ params
    def _params(self, rows) -> MovieLensParams:
        d = self.data
        take = (lambda a: jnp.asarray(a)[rows])
        return MovieLensParams(
            user_gender=take(d.user_gender), user_age=take(d.user_age), user_occupation=take(d.user_occupation),
            user_location=take(d.user_location), user_prefs=take(d.user_prefs),
            expected_rewards=take(d.expected_rewards), noise_std=jnp.float32(self.noise_std))

    @property
    def default_params(self) -> MovieLensParams:
        return self._params(jnp.asarray(self.pool[: self.num_users]))

    def sample_params(self, key) -> MovieLensParams:
        rows = jax.random.choice(key, jnp.asarray(self.pool), (self.num_users,), replace=False)
        return self._params(rows)

    # --------------------------------------------------------------------------------------- dynamics
    def reset(self, key, params: MovieLensParams):
        user = uniform_index(uniforms(key, 2)[0], self.num_users)
        base = empty_history(self.horizon, self.num_arms)
        state = ContextualState(**_fields(base), user=user, users=jnp.full((self.horizon,), -1, jnp.int32))
        return self.observation(state, params), state

    def observation(self, state: ContextualState, params: MovieLensParams) -> jax.Array:
        """f32[D]: the current user's preference vector."""
        return params.user_prefs[state.user]

    def step(self, key, state: ContextualState, action, params: MovieLensParams):
        K = self.num_arms
        a = as_action(action)
        u = uniforms(key, 4)
        invalid = jnp.logical_or(a < 0, a >= K)
        a = jnp.where(invalid, uniform_index(u[1], K), a)
        row = params.expected_rewards[state.user]
        mean = jnp.sum(jnp.where(jnp.arange(K) == a, row, 0.0))
        live = state.t < self.horizon
        reward = jnp.where(live, mean + params.noise_std * normal_from_uniform(u[0]), 0.0)
        users = state.users.at[state.t].set(state.user, mode="drop")
        base = record(state, a, reward, live, K)
        next_user = jnp.where(live, uniform_index(u[2], self.num_users), state.user)
        new = ContextualState(**_fields(base),
                              user=next_user, users=users)
        info = {"expected_reward": jnp.where(live, mean, 0.0),
                "best_expected_reward": jnp.where(live, jnp.max(row), 0.0),
                "invalid": jnp.logical_and(invalid, live)}
        terminated = new.t >= self.horizon
        return self.observation(new, params), new, reward, terminated, jnp.bool_(False), info
