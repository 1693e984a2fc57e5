"""Classic baselines as jittable policies: ``action = policy(key, state, params)``.

Every policy is a pure function of the env state (counts, reward sums, history), so any baseline runs under
``vmap`` against any pool of instances and needs no state of its own. Build one with
``baselines.make(name, env, **options)``; names: ``random``, ``greedy``, ``epsilon-greedy``, ``ucb``,
``thompson-gaussian``, ``thompson-beta``, ``linucb`` (contextual) and ``minimax`` (tic-tac-toe).

Bandit baselines follow BanditBench: an arm never pulled is played first (lowest index), then the arm with
the best score; ties go to the lowest index. UCB has two forms: BanditBench's
``mean + sqrt(alpha * ln(t) / n)`` (``form="banditbench"``, alpha 0.5) and the RLFT paper's thought-cloning
rationale ``mean + sqrt(1 / n)`` (``form="rationale"``).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from envs_jax.core import (EnvError, Environment, check_choice, check_float, normal_from_uniform,
                           random_true_index, uniform_index, uniforms)
from envs_jax.games import tictactoe as game


def _means(state) -> tuple[jax.Array, jax.Array]:
    n = state.counts.astype(jnp.float32)
    return n, state.reward_sums / jnp.maximum(n, 1.0)


def _untried_first(state, scores: jax.Array) -> jax.Array:
    """The lowest-index arm never pulled, else the arm with the best score (lowest index on ties)."""
    untried = state.counts == 0
    return jnp.where(jnp.any(untried), jnp.argmax(untried), jnp.argmax(scores)).astype(jnp.int32)


def _is_game(env: Environment) -> bool:
    return env.kind == "game"


def _is_bandit(env: Environment) -> bool:
    return env.kind in ("bandit", "contextual_bandit")


@dataclasses.dataclass(frozen=True)
class Random:
    """A uniformly random arm (or, in tic-tac-toe, a uniformly random legal move)."""
    num_actions: int
    legal_only: bool = False

    def __call__(self, key, state, params):
        u = uniforms(key, 1)[0]
        if self.legal_only:
            return random_true_index(u, state.legal_mask)
        return uniform_index(u, self.num_actions)


@dataclasses.dataclass(frozen=True)
class Greedy:
    """Try every arm once, then the best empirical mean."""

    def __call__(self, key, state, params):
        return _untried_first(state, _means(state)[1])


@dataclasses.dataclass(frozen=True)
class EpsilonGreedy:
    """With probability ``epsilon`` a uniformly random arm, else greedy (every arm once first)."""
    num_actions: int
    epsilon: float = 0.1

    def __call__(self, key, state, params):
        u = uniforms(key, 2)
        explore = u[0] < self.epsilon
        rand = uniform_index(u[1], self.num_actions)
        return jnp.where(explore, rand, Greedy()(key, state, params))


@dataclasses.dataclass(frozen=True)
class UCB:
    """Every arm once, then argmax of mean + bonus; bonus sqrt(alpha ln t / n) or sqrt(1 / n)."""
    alpha: float = 0.5
    form: str = "banditbench"

    def scores(self, state) -> jax.Array:
        n, mean = _means(state)
        n = jnp.maximum(n, 1.0)
        if self.form == "rationale":
            bonus = jnp.sqrt(1.0 / n)
        else:
            total = jnp.maximum(jnp.sum(state.counts), 1).astype(jnp.float32)
            bonus = jnp.sqrt(self.alpha * jnp.log(total) / n)
        return mean + bonus

    def __call__(self, key, state, params):
        return _untried_first(state, self.scores(state))


@dataclasses.dataclass(frozen=True)
class ThompsonGaussian:
    """Gaussian Thompson sampling with a N(0, prior_std^2) prior on each mean and known reward noise.

    Unset ``prior_std`` / ``noise_std`` take the instance's ``sigma`` when it has one (the Gaussian bandit
    draws means ~ N(0, sigma) and rewards with noise sigma), else 1.
    """
    prior_std: float | None = None
    noise_std: float | None = None

    def __call__(self, key, state, params):
        n, _ = _means(state)
        sigma = getattr(params, "sigma", None)
        default = jnp.float32(1.0) if sigma is None else jnp.asarray(sigma, jnp.float32)
        noise = default if self.noise_std is None else jnp.float32(self.noise_std)
        prior = default if self.prior_std is None else jnp.float32(self.prior_std)
        noise, prior = jnp.maximum(noise, 1e-3), jnp.maximum(prior, 1e-3)
        precision = 1.0 / prior ** 2 + n / noise ** 2
        mean = (state.reward_sums / noise ** 2) / precision
        z = normal_from_uniform(uniforms(key, mean.shape[-1]))
        sample = mean + z / jnp.sqrt(precision)
        return jnp.argmax(sample).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ThompsonBeta:
    """Beta-Bernoulli Thompson sampling with a Beta(alpha_prior, beta_prior) prior (rewards in [0, 1])."""
    alpha_prior: float = 1.0
    beta_prior: float = 1.0

    def __call__(self, key, state, params):
        n, _ = _means(state)
        s = jnp.clip(state.reward_sums, 0.0, n)
        sample = jax.random.beta(key, self.alpha_prior + s, self.beta_prior + n - s)
        return jnp.argmax(sample).astype(jnp.int32)


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``x`` with ``a @ x = b`` for symmetric positive-definite ``a [..., D, D]`` and ``b [..., D, M]``: Gauss-Jordan
    elimination without pivoting (stable for SPD matrices), as D steps of elementwise work. Not
    ``jnp.linalg.solve``: XLA:CPU runs that as a LAPACK call that deadlocks beside other parallel work in the same
    program at some batch sizes (LinUCB over 160 instances with their keys split hung; 128 ran in 0.3 s)."""
    D = a.shape[-1]
    for k in range(D):
        pivot = a[..., k:k + 1, k:k + 1]
        row, rhs = a[..., k:k + 1, :] / pivot, b[..., k:k + 1, :] / pivot
        column = a[..., :, k:k + 1]
        is_k = (jnp.arange(D) == k)[:, None]
        a = jnp.where(is_k, row, a - column * row)
        b = jnp.where(is_k, rhs, b - column * rhs)
    return b


@dataclasses.dataclass(frozen=True)
class LinUCB:
    """Disjoint LinUCB (Li et al. 2010; BanditBench alpha 0.5) on the users' preference vectors:
    A_a = I + sum x x^T and b_a = sum r x over the steps that chose a, recomputed from the history."""
    num_arms: int
    alpha: float = 0.5

    def scores(self, state, params) -> jax.Array:
        prefs = params.user_prefs
        d = prefs.shape[-1]
        h = state.actions.shape[0]
        seen = (jnp.arange(h) < state.t)[:, None] & (state.actions[:, None] == jnp.arange(self.num_arms))
        m = seen.astype(jnp.float32)                                          # [H, K]
        x = prefs[jnp.clip(state.users, 0, prefs.shape[0] - 1)]              # [H, D]
        a_mat = jnp.eye(d) + jnp.einsum("hk,hd,he->kde", m, x, x)           # [K, D, D]
        b = jnp.einsum("hk,hd,h->kd", m, x, state.rewards)                 # [K, D]
        ctx = prefs[state.user]                                              # [D]
        both = spd_solve(a_mat, jnp.stack([b, jnp.broadcast_to(ctx, (self.num_arms, d))], axis=-1))  # [K, D, 2]
        theta, a_inv_x = both[..., 0], both[..., 1]
        return theta @ ctx + self.alpha * jnp.sqrt(jnp.maximum(jnp.sum(a_inv_x * ctx, -1), 0.0))

    def __call__(self, key, state, params):
        return jnp.argmax(self.scores(state, params)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Minimax:
    """Tic-tac-toe minimax (depth-aware: win soonest, lose latest); ties broken at random."""
    random_ties: bool = True

    def __call__(self, key, state, params):
        agent = game.bits_of(state.board == 1)
        opp = game.bits_of(state.board == 2)
        best = game.optimal_moves(agent, opp) & state.legal_mask
        if self.random_ties:
            return random_true_index(uniforms(key, 1)[0], best)
        return jnp.argmax(best).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------- registry
def _random(env, **o):
    return Random(env.num_actions, legal_only=_is_game(env))


def _bandit_only(cls: Callable) -> Callable:
    def build(env, **o):
        if not _is_bandit(env):
            raise EnvError(f"baseline {cls.__name__} needs a bandit environment, not {env.name!r}")
        return cls(**o)
    build.__wrapped__ = cls
    return build


def _epsilon(env, epsilon: float = 0.1):
    if not _is_bandit(env):
        raise EnvError(f"baseline 'epsilon-greedy' needs a bandit environment, not {env.name!r}")
    return EpsilonGreedy(env.num_actions, check_float("epsilon", epsilon, 0.0, 1.0))


def _ucb(env, alpha: float = 0.5, form: str = "banditbench"):
    if not _is_bandit(env):
        raise EnvError(f"baseline 'ucb' needs a bandit environment, not {env.name!r}")
    return UCB(check_float("alpha", alpha, 0.0), check_choice("form", form, ("banditbench", "rationale")))


def _thompson_gaussian(env, prior_std: float | None = None, noise_std: float | None = None):
    if not _is_bandit(env):
        raise EnvError(f"baseline 'thompson-gaussian' needs a bandit environment, not {env.name!r}")
    return ThompsonGaussian(
        None if prior_std is None else check_float("prior_std", prior_std, 0.0, min_inclusive=False),
        None if noise_std is None else check_float("noise_std", noise_std, 0.0, min_inclusive=False))


def _thompson_beta(env, alpha_prior: float = 1.0, beta_prior: float = 1.0):
    if not _is_bandit(env):
        raise EnvError(f"baseline 'thompson-beta' needs a bandit environment, not {env.name!r}")
    return ThompsonBeta(check_float("alpha_prior", alpha_prior, 0.0, min_inclusive=False),
                        check_float("beta_prior", beta_prior, 0.0, min_inclusive=False))


def _linucb(env, alpha: float = 0.5):
    if env.kind != "contextual_bandit":
        raise EnvError(f"baseline 'linucb' needs the contextual bandit, not {env.name!r}")
    return LinUCB(env.num_arms, check_float("alpha", alpha, 0.0))


def _minimax(env, random_ties: bool = True):
    if not _is_game(env):
        raise EnvError(f"baseline 'minimax' needs tic-tac-toe, not {env.name!r}")
    return Minimax(bool(random_ties))


def _greedy(env):
    if not _is_bandit(env):
        raise EnvError(f"baseline 'greedy' needs a bandit environment, not {env.name!r}")
    return Greedy()


BASELINES: dict[str, Callable[..., Any]] = {
    "random": _random, "greedy": _greedy, "epsilon-greedy": _epsilon, "ucb": _ucb,
    "thompson-gaussian": _thompson_gaussian, "thompson-beta": _thompson_beta, "linucb": _linucb,
    "minimax": _minimax,
}


def make(name: str, env: Environment, **options: Any) -> Callable[[jax.Array, Any, Any], jax.Array]:
    """The baseline ``name`` for ``env``; unknown names/options or a wrong env raise :class:`EnvError`."""
    if name not in BASELINES:
        raise EnvError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    builder = BASELINES[name]
    allowed = [p for p in inspect.signature(builder).parameters if p != "env"]
    for key in options:
        if key not in allowed:
            raise EnvError(f"unknown option {key!r} for baseline {name!r} (options: {', '.join(allowed) or 'none'})")
    return builder(env, **options)
