"""Decision-making metrics (all jittable): regret, action coverage, greediness, invalid actions,
tic-tac-toe outcomes, the frequency-bias and knowing-doing measures of the RLFT paper's analyses, and the mean
with a 95% confidence interval (Student t) over seeds or episodes.

Per-step arrays are ``[..., T]`` with time last (one row per episode).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def cumulative_regret(expected_reward: jax.Array, best_expected_reward: jax.Array) -> jax.Array:
    """Σ_{s≤t} (μ* − μ_{a_s}): the expected reward of the best arm minus that of the executed one."""
    gap = jnp.asarray(best_expected_reward, jnp.float32) - jnp.asarray(expected_reward, jnp.float32)
    return jnp.cumsum(gap, axis=-1)


def action_coverage(actions: jax.Array, num_actions: int) -> jax.Array:
    """C_t = |{a : N_t(a) > 0}| / K, the fraction of the K actions chosen at least once up to step t."""
    chosen = jax.nn.one_hot(actions, num_actions, dtype=jnp.float32)  # [..., T, K]
    return jnp.sum(jax.lax.cummax(chosen, axis=chosen.ndim - 2), axis=-1) / num_actions


def greedy_actions(actions: jax.Array, rewards: jax.Array, num_actions: int) -> tuple[jax.Array, jax.Array]:
    """(greedy, defined) per step: ``greedy`` = the action has the best empirical mean reward among the
    actions tried before this step (ties count as greedy); ``defined`` = at least one had been tried."""
    chosen = jax.nn.one_hot(actions, num_actions, dtype=jnp.float32)  # [..., T, K]
    paid = chosen * jnp.asarray(rewards, jnp.float32)[..., None]
    counts = jnp.cumsum(chosen, axis=-2) - chosen                     # N(a) before step t
    means = (jnp.cumsum(paid, axis=-2) - paid) / jnp.maximum(counts, 1.0)
    tried = counts > 0
    best = jnp.max(jnp.where(tried, means, -jnp.inf), axis=-1)
    mine = jnp.sum(chosen * means, axis=-1)
    mine_tried = jnp.sum(chosen * tried, axis=-1) > 0
    defined = jnp.any(tried, axis=-1)
    return mine_tried & (mine >= best) & defined, defined


def greedy_rate_by_step(actions: jax.Array, rewards: jax.Array, num_actions: int) -> jax.Array:
    """[..., T]: the greedy-action rate of each row over its steps up to t (steps with a tried action only)."""
    greedy, defined = greedy_actions(actions, rewards, num_actions)
    return jnp.cumsum(greedy, axis=-1) / jnp.maximum(jnp.cumsum(defined, axis=-1), 1)


def greedy_action_rate(actions: jax.Array, rewards: jax.Array, num_actions: int) -> jax.Array:
    """Fraction of steps (with at least one action already tried) whose action is a greedy one."""
    greedy, defined = greedy_actions(actions, rewards, num_actions)
    return jnp.sum(greedy) / jnp.maximum(jnp.sum(defined), 1)


def action_entropy(probs: jax.Array) -> jax.Array:
    """H(π) = −Σ_a π(a) log π(a) in nats over the last axis (0 log 0 = 0)."""
    p = jnp.asarray(probs, jnp.float32)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def frequency_fractions(probs: jax.Array, frequent: jax.Array, greedy: jax.Array) -> dict[str, jax.Array]:
    """The frequency-bias split of an action distribution ``probs [..., K]``: the probability of the most
    frequent action of the context, of the greedy one (best mean reward so far) and of all others. Where one
    action is both, it counts as greedy (so frequent always means worse than greedy)."""
    p = jnp.asarray(probs, jnp.float32)
    greedy_p = jnp.take_along_axis(p, greedy[..., None], axis=-1)[..., 0]
    frequent_p = jnp.where(frequent == greedy, 0.0, jnp.take_along_axis(p, frequent[..., None], axis=-1)[..., 0])
    return {"frequent": frequent_p, "greedy": greedy_p, "other": jnp.sum(p, axis=-1) - frequent_p - greedy_p}


def ucb_scores(counts: jax.Array, reward_sums: jax.Array) -> jax.Array:
    """The UCB value of each arm that the UCB rationale teaches: mean + sqrt(1 / n), +inf for an untried arm."""
    n = jnp.asarray(counts, jnp.float32)
    means = jnp.asarray(reward_sums, jnp.float32) / jnp.maximum(n, 1.0)
    return jnp.where(n > 0, means + jnp.sqrt(1.0 / jnp.maximum(n, 1.0)), jnp.inf)


DOING = ("optimal", "greedy", "other")


def knowing_doing(stated: jax.Array, counts: jax.Array, reward_sums: jax.Array, action: jax.Array):
    """The knowing-doing split of one decision (any leading axes): ``stated [..., K]`` is the model's UCB value of
    each arm (+inf: "untried", NaN: not stated), ``counts``/``reward_sums [..., K]`` the history before the step.

    Returns ``(parsed, knows, doing)``: every arm stated; the arm of the highest stated value is a best arm by
    the true UCB values (:func:`ucb_scores`, compared at the two decimals the model writes); and the index in
    :data:`DOING` of the executed ``action``: optimal (a best arm by true UCB), greedy (a best arm by true UCB
    among the arms tried so far, where that is not optimal: exploiting while an arm is untried) or other."""
    true = ucb_scores(counts, reward_sums)
    rounded = jnp.where(jnp.isinf(true), true, jnp.round(true * 100.0))
    best = rounded == jnp.max(rounded, axis=-1, keepdims=True)
    tried_rounded = jnp.where(jnp.isinf(true), -jnp.inf, rounded)
    best_tried = (tried_rounded == jnp.max(tried_rounded, axis=-1, keepdims=True)) & ~jnp.isinf(true)
    parsed = jnp.all(~jnp.isnan(stated), axis=-1)
    choice = jnp.argmax(jnp.where(jnp.isnan(stated), -jnp.inf, stated), axis=-1)

    def holds(mask, arm):
        return jnp.take_along_axis(mask, arm[..., None], axis=-1)[..., 0]

    knows = parsed & holds(best, choice)
    doing = jnp.where(holds(best, action), 0, jnp.where(holds(best_tried, action), 1, 2)).astype(jnp.int32)
    return parsed, knows, doing


def pearson(x: jax.Array, y: jax.Array) -> jax.Array:
    """The correlation coefficient of two 1-D samples (NaN if either is constant)."""
    x = jnp.asarray(x, jnp.float32) - jnp.mean(x)
    y = jnp.asarray(y, jnp.float32) - jnp.mean(y)
    return jnp.sum(x * y) / jnp.sqrt(jnp.sum(x * x) * jnp.sum(y * y))


def invalid_rate(valid: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of (unmasked) steps whose generation held no valid ``ACTION=X``."""
    invalid = 1.0 - jnp.asarray(valid, jnp.float32)
    mask = jnp.ones_like(invalid) if mask is None else jnp.asarray(mask, jnp.float32)
    return jnp.sum(invalid * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def rollout_summary(traj, num_actions: int) -> dict[str, jax.Array]:
    """Means over a rollout's rows, logged while training: rewards per row (env and shaped), invalid rate,
    generated length, final regret and coverage."""
    return {"env_reward": traj.env_rewards.sum(1).mean(), "train_reward": traj.train_rewards.sum(1).mean(),
            "invalid_rate": invalid_rate(traj.valid, traj.active), "generated_length": traj.lengths.mean(),
            "regret": cumulative_regret(traj.expected_reward, traj.best_expected_reward)[:, -1].mean(),
            "coverage": action_coverage(traj.actions, num_actions)[:, -1].mean()}


def game_outcomes(rewards: jax.Array, dones: jax.Array) -> dict[str, jax.Array]:
    """Return and win / draw / loss fractions of the episodes that *finished* in ``[N, T]`` auto-reset
    rollouts (``dones[n, t]`` = an episode ended with step t). Episodes still running at the end are
    left out; all values are NaN if none finished."""
    rewards = jnp.asarray(rewards, jnp.float32)
    dones = jnp.asarray(dones, bool)

    def walk(running, x):
        r, d = x
        total = running + r
        return jnp.where(d, 0.0, total), total

    _, totals = jax.lax.scan(walk, jnp.zeros(rewards.shape[0]), (rewards.T, dones.T))
    totals = totals.T  # running episode return at every step; the episode's return where done
    count = jnp.sum(dones)

    def frac(hit):
        return jnp.where(count > 0, jnp.sum(hit & dones) / jnp.maximum(count, 1), jnp.nan)

    return {"episodes": count,
            "return": jnp.where(count > 0, jnp.sum(jnp.where(dones, totals, 0.0)) / jnp.maximum(count, 1), jnp.nan),
            "win": frac(totals > 0), "draw": frac(totals == 0), "loss": frac(totals < 0)}


def first_episode_return(rewards: jax.Array, dones: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(finished, return)`` ``[N]`` of each row's first episode in ``[N, T]`` rollouts: whether it ended within
    the T steps, and the sum of its rewards (up to its end)."""
    dones = jnp.asarray(dones, bool)
    ended_before = jnp.cumsum(dones, axis=-1) - dones  # episodes finished before step t
    in_first = ended_before == 0
    return jnp.any(dones, axis=-1), jnp.sum(jnp.where(in_first, jnp.asarray(rewards, jnp.float32), 0.0), axis=-1)


def won_first_game(rewards: jax.Array, dones: jax.Array) -> jax.Array:
    """[N]: the row's first game finished with a positive return (a win)."""
    finished, total = first_episode_return(rewards, dones)
    return finished & (total > 0)


def did_not_lose_first_game(rewards: jax.Array, dones: jax.Array) -> jax.Array:
    """[N]: the row's first game finished with a return of at least 0 (a win or a draw)."""
    finished, total = first_episode_return(rewards, dones)
    return finished & (total >= 0)


def regret_below(expected_reward: jax.Array, best_expected_reward: jax.Array, threshold: float) -> jax.Array:
    """[N]: the row's final cumulative regret is below ``threshold``."""
    return cumulative_regret(expected_reward, best_expected_reward)[..., -1] < threshold


@partial(jax.jit, static_argnames="iterations")
def student_t_ppf(q: float | jax.Array, df: int | jax.Array, iterations: int = 60) -> jax.Array:
    """The q-quantile (q > 0.5) of Student's t with ``df`` degrees of freedom.

    P(T > t) = ½ I_x(df/2, ½) with x = df / (df + t²); I_x is increasing in x, so x is found by
    bisection on (0, 1) and t = sqrt(df (1 − x) / x).
    """
    df = jnp.asarray(df, jnp.float32)
    target = 2.0 * (1.0 - q)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        too_high = jax.scipy.special.betainc(df / 2, 0.5, mid) > target
        return jnp.where(too_high, lo, mid), jnp.where(too_high, mid, hi)

    lo, hi = jax.lax.fori_loop(0, iterations, halve, (jnp.float32(0.0), jnp.float32(1.0)))
    x = 0.5 * (lo + hi)
    return jnp.sqrt(df * (1.0 - x) / x)


def mean_ci95(x: jax.Array, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """(mean, half-width of the 95% confidence interval) along ``axis``, with the t-distribution."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[axis]
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values along axis {axis}, got {n}")
    sem = jnp.std(x, axis=axis, ddof=1) / jnp.sqrt(n)
    return jnp.mean(x, axis=axis), student_t_ppf(0.975, n - 1) * sem
