"""K-armed bandits: ``"bandit-gaussian"`` and ``"bandit-bernoulli"`` (BanditBench's tasks, as in the RLFT paper).

One instance (``params``) is the vector of arm means; an episode is ``horizon`` pulls. The state keeps the full
action/reward history (what a text prompt renders) plus per-arm counts and reward sums. An action outside
[0, K) is invalid: a uniformly random arm is pulled instead and ``info["invalid"]`` says so. Reaching the horizon
is ``terminated`` (the horizon is part of the task: the prompt tells the agent how many steps it has).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import (Environment, as_action, check_choice, check_float, check_int, normal_from_uniform,
                           uniform_index, uniforms)


@struct.dataclass
class BanditParams:
    means: jax.Array  # f32[K]: expected reward of each arm


@struct.dataclass
class GaussianBanditParams(BanditParams):
    sigma: jax.Array  # f32[]: reward-noise standard deviation


@struct.dataclass
class BanditState:
    t: jax.Array            # i32[]: steps taken so far
    actions: jax.Array      # i32[H]: executed action at step i; -1 where not yet taken
    rewards: jax.Array      # f32[H]: env reward at step i; 0 where not yet
    counts: jax.Array       # i32[K]: pulls per arm
    reward_sums: jax.Array  # f32[K]: summed reward per arm


def empty_history(horizon: int, num_arms: int) -> BanditState:
    return BanditState(t=jnp.int32(0), actions=jnp.full((horizon,), -1, jnp.int32),
                       rewards=jnp.zeros((horizon,), jnp.float32), counts=jnp.zeros((num_arms,), jnp.int32),
                       reward_sums=jnp.zeros((num_arms,), jnp.float32))


def record(state: BanditState, action: jax.Array, reward: jax.Array, live: jax.Array, num_arms: int):
    """The history after pulling ``action`` for ``reward`` (no change where ``live`` is False).

    History writes are single-element in-place updates (``mode="drop"`` ignores t == H), not whole-array
    selects: carrying the history costs O(1) per step.
    """
    hit = jnp.logical_and(jnp.arange(num_arms) == action, live)
    return state.replace(
        t=state.t + live.astype(jnp.int32),
        actions=state.actions.at[state.t].set(action, mode="drop"),
        rewards=state.rewards.at[state.t].set(reward, mode="drop"),
        counts=state.counts + hit.astype(jnp.int32),
        reward_sums=state.reward_sums + jnp.where(hit, reward, 0.0),
    )


class _Bandit(Environment):
    kind = "bandit"
    reset_uses_key = False
    reward_distribution: str  # named in prompts

    def __init__(self, num_arms: int, horizon: int):
        self.num_arms = check_int("num_arms", num_arms, 2)
        self.num_actions = self.num_arms
        self.horizon = check_int("horizon", horizon, 1)

    def _reward(self, u: jax.Array, mean: jax.Array, params) -> jax.Array:
        raise NotImplementedError

    def reset(self, key, params):
        state = empty_history(self.horizon, self.num_arms)
        return self.observation(state, params), state

    def observation(self, state: BanditState, params) -> jax.Array:
        """f32[2K+1]: pull counts, empirical mean reward per arm (0 if unpulled), steps taken."""
        n = state.counts.astype(jnp.float32)
        mean = state.reward_sums / jnp.maximum(n, 1.0)
        return jnp.concatenate([n, mean, state.t.astype(jnp.float32)[None]])

    def step(self, key, state: BanditState, action, params):
        K = self.num_arms
        a = as_action(action)
        u = uniforms(key, 2)
        invalid = jnp.logical_or(a < 0, a >= K)
        a = jnp.where(invalid, uniform_index(u[1], K), a)
        onehot = jnp.arange(K) == a
        mean = jnp.sum(jnp.where(onehot, params.means, 0.0))
        live = state.t < self.horizon
        reward = jnp.where(live, self._reward(u[0], mean, params), 0.0)
        state = record(state, a, reward, live, K)
        info = {
            "expected_reward": jnp.where(live, mean, 0.0),
            "best_expected_reward": jnp.where(live, jnp.max(params.means), 0.0),
            "invalid": jnp.logical_and(invalid, live),
        }
        terminated = state.t >= self.horizon
        return self.observation(state, params), state, reward, terminated, jnp.bool_(False), info


class GaussianBandit(_Bandit):
    """Rewards ~ N(mean_a, sigma). Means ~ N(0, mean_std) (BanditBench; default mean_std = sigma) or U(0, 1)."""

    name = "bandit-gaussian"
    reward_distribution = "Gaussian"
    version = "v0"

    def __init__(self, num_arms: int = 5, sigma: float = 1.0, mean_sampler: str = "normal",
                 mean_std: float | None = None, horizon: int = 50):
        super().__init__(num_arms, horizon)
        self.sigma = check_float("sigma", sigma, 0.0)
        self.mean_sampler = check_choice("mean_sampler", mean_sampler, ("normal", "uniform"))
        self.mean_std = self.sigma if mean_std is None else check_float("mean_std", mean_std, 0.0)
        self.static_options = (("num_arms", self.num_arms), ("horizon", self.horizon))

    @property
    def default_params(self) -> GaussianBanditParams:
        return self.sample_params(jax.random.key(0))

    def sample_params(self, key) -> GaussianBanditParams:
        if self.mean_sampler == "normal":
            means = self.mean_std * jax.random.normal(key, (self.num_arms,), jnp.float32)
        else:
            means = jax.random.uniform(key, (self.num_arms,), jnp.float32)
        return GaussianBanditParams(means=means, sigma=jnp.float32(self.sigma))

    def _reward(self, u, mean, params):
        return mean + params.sigma * normal_from_uniform(u)


class BernoulliBandit(_Bandit):
    """Rewards ~ Bernoulli(p_a): one best arm (random index) at 0.5 + gap/2, every other at 0.5 - gap/2."""

    name = "bandit-bernoulli"
    reward_distribution = "Bernoulli"
    version = "v0"

    def __init__(self, num_arms: int = 5, gap: float = 0.2, horizon: int = 50):
        super().__init__(num_arms, horizon)
        self.gap = check_float("gap", gap, 0.0, 1.0)
        self.static_options = (("num_arms", self.num_arms), ("horizon", self.horizon))

    @property
    def default_params(self) -> BanditParams:
        return self.sample_params(jax.random.key(0))

    def sample_params(self, key) -> BanditParams:
        best = jax.random.randint(key, (), 0, self.num_arms)
        means = jnp.where(jnp.arange(self.num_arms) == best, 0.5 + self.gap / 2, 0.5 - self.gap / 2)
        return BanditParams(means=means.astype(jnp.float32))

    def _reward(self, u, mean, params):
        return (u < mean).astype(jnp.float32)
