"""Advantage estimators (``rl.advantage`` picks one, see :mod:`jaxagent.trainers.rlft`). Arrays are batch-major: ``[N, T]`` = N episodes × T steps.

- ``rewards_to_go_mc`` (bandits, fixed horizon, no value head): the discounted reward-to-go
  G_t = Σ_{t'≥t} γ^{t'−t} r_t' minus a Monte-Carlo baseline b_t = the mean of G_t over the N
  episodes of the batch at the same step t. Episodes in a batch share the horizon and differ only in
  the instance and the agent's luck, so the per-step mean is the natural state-free baseline (the
  return still to come shrinks with t, which a single batch-wide constant would not track).
  With ``group_size`` n > 1 the rows come in groups of n episodes on the same instance, and each
  episode's baseline is the mean of the other n − 1 at step t (leave-one-out): how good the instance
  is then cancels out of the advantage, leaving what the agent's choices changed.
- ``gae`` (tic-tac-toe, with a value head): generalised advantage estimation by a reverse
  ``lax.scan`` over time, with ``dones`` cutting the bootstrap where an episode ended (auto-reset
  rollouts hold several episodes per row).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_normalize(x: jax.Array, mask: jax.Array | None = None, *, center: bool = True,
                     eps: float = 1e-8) -> jax.Array:
    """(x − mean) / std over the entries where ``mask`` is set (all, by default); masked entries → 0."""
    x = jnp.asarray(x, jnp.float32)
    mask = jnp.ones_like(x) if mask is None else jnp.asarray(mask, jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    mean = jnp.sum(x * mask) / count
    var = jnp.sum(jnp.square(x - mean) * mask) / count
    out = ((x - mean) if center else x) / (jnp.sqrt(var) + eps)
    return out * mask


def normalize_rewards(rewards: jax.Array, mask: jax.Array | None = None, *, eps: float = 1e-8) -> jax.Array:
    """Scale environment rewards to unit std over the batch (not centred, so signs keep their meaning).

    Applied to the env reward before shaping terms (invalid-action penalty, exploration bonus) are
    added, so that a fixed −5 penalty weighs the same whatever the env's reward scale.
    """
    return masked_normalize(rewards, mask, center=False, eps=eps)


def discounted_rewards_to_go(rewards: jax.Array, gamma: float, dones: jax.Array | None = None) -> jax.Array:
    """G_t = r_t + γ (1 − done_t) G_{t+1}, a reverse scan over time of ``[N, T]`` rewards."""
    rewards = jnp.asarray(rewards, jnp.float32)
    cont = jnp.ones_like(rewards) if dones is None else 1.0 - jnp.asarray(dones, jnp.float32)

    def back(g_next, x):
        r, c = x
        g = r + gamma * c * g_next
        return g, g

    _, g = jax.lax.scan(back, jnp.zeros(rewards.shape[0], jnp.float32), (rewards.T, cont.T), reverse=True)
    return g.T


def rewards_to_go_mc(rewards: jax.Array, mask: jax.Array | None = None, *, gamma: float = 1.0,
                     normalize: bool = False, group_size: int = 1) -> tuple[jax.Array, jax.Array]:
    """Advantages G_t − b_t with a per-step Monte-Carlo baseline; returns (advantages, rewards-to-go).

    b_t is the mean of G_t over the batch, or with ``group_size`` n > 1 over the other episodes of the
    row's group (rows ``i*n … i*n+n−1``). ``mask`` ``[N, T]`` marks real steps (all, by default); rewards
    at masked steps must be 0 and a baseline averages only the episodes that have a step t.
    ``normalize`` divides the advantages by their std over the batch.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    mask = jnp.ones_like(rewards) if mask is None else jnp.asarray(mask, jnp.float32)
    returns = discounted_rewards_to_go(rewards * mask, gamma)
    if group_size == 1:
        baseline = (jnp.sum(returns * mask, axis=0) / jnp.maximum(mask.sum(axis=0), 1.0))[None, :]
    else:
        N, T = rewards.shape
        if N % group_size:
            raise ValueError(f"group_size {group_size} does not divide the batch's {N} episodes")
        total, count = (x.reshape(N // group_size, group_size, T) for x in (returns * mask, mask))
        others_sum = total.sum(1, keepdims=True) - total
        others_count = count.sum(1, keepdims=True) - count
        baseline = (others_sum / jnp.maximum(others_count, 1.0)).reshape(N, T)
    adv = (returns - baseline) * mask
    if normalize:
        adv = masked_normalize(adv, mask, center=True)
    return adv, returns


def gae(rewards: jax.Array, values: jax.Array, dones: jax.Array, last_value: jax.Array, *,
        gamma: float = 1.0, lam: float = 0.95, mask: jax.Array | None = None,
        normalize: bool = False) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation; returns (advantages, value targets = advantages + values).

    ``rewards``, ``values``, ``dones``: ``[N, T]``; ``dones[n, t]`` = the episode ended with step t
    (its successor is a fresh episode, so no bootstrap across). ``last_value`` ``[N]`` is V of the
    state after the last step, used where the final episode of a row is still running.
    δ_t = r_t + γ (1 − d_t) V_{t+1} − V_t;  A_t = δ_t + γ λ (1 − d_t) A_{t+1}.
    """
    rewards, values, dones, last_value = (jnp.asarray(x, jnp.float32) for x in (rewards, values, dones, last_value))
    next_values = jnp.concatenate([values[:, 1:], last_value[:, None]], axis=1)
    cont = 1.0 - dones
    deltas = rewards + gamma * cont * next_values - values

    def back(a_next, x):
        delta, c = x
        a = delta + gamma * lam * c * a_next
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros(rewards.shape[0], jnp.float32), (deltas.T, cont.T), reverse=True)
    adv = adv.T
    targets = adv + values
    if normalize:
        adv = masked_normalize(adv, mask, center=True)
    elif mask is not None:
        adv = adv * jnp.asarray(mask, jnp.float32)
    return adv, targets
