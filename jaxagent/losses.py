"""Training losses, each returning a ``LossOutput(sum, denom, stats)``.

A loss never divides by its own batch size. It returns the *sum* of its per-item terms and the
*denominator* that sum is averaged over (e.g. the number of unmasked tokens), so that gradient
accumulation over micro-batches is exact: the loss of the global batch is Σ sums / Σ denominators,
whatever the split (see ``train_step``). Diagnostics travel the same way as ``Stat`` values
(sums + weights, or running min / max) and are reduced once over the global batch.

Inputs are per-token arrays ``[B, G]`` over the generated tokens of ``B`` step contexts: log-probs
of the current policy (``logp``), of the behaviour policy that sampled the tokens (``old_logp``)
and of the frozen reference policy (``ref_logp``); ``mask`` marks the tokens that count (the
generated ones for RL, the target ones for SFT); ``advantages`` is ``[B]``, one per step context,
broadcast over that context's tokens. Losses are unweighted; the trainer weighs the terms (β for
``kl``, a coefficient for ``value``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Stat:
    """A diagnostic reducible over micro-batches: ``mean`` (value = sum, weight = count), ``min`` or ``max``."""

    value: jax.Array
    weight: jax.Array
    reduce: str = struct.field(pytree_node=False, default="mean")


@struct.dataclass
class LossOutput:
    sum: jax.Array
    denom: jax.Array
    stats: dict[str, Stat]


def safe_mean(total: jax.Array, denom: jax.Array) -> jax.Array:
    """``total / denom``, and 0 where nothing was counted (an all-masked batch)."""
    return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1), 0.0)


def _masked_stats(name: str, x: jax.Array, mask: jax.Array) -> dict[str, Stat]:
    count = mask.sum()
    return {
        f"{name}_mean": Stat(jnp.sum(x * mask), count, "mean"),
        f"{name}_min": Stat(jnp.min(jnp.where(mask > 0, x, jnp.inf)), count, "min"),
        f"{name}_max": Stat(jnp.max(jnp.where(mask > 0, x, -jnp.inf)), count, "max"),
    }


def reduce_stacked(out: LossOutput) -> LossOutput:
    """Reduce a ``LossOutput`` whose leaves carry a leading micro-batch axis to one global output."""
    ops = {"mean": jnp.sum, "min": jnp.min, "max": jnp.max}
    stats = {k: Stat(ops[s.reduce](s.value, axis=0), jnp.sum(s.weight, axis=0), s.reduce)
             for k, s in out.stats.items()}
    return LossOutput(jnp.sum(out.sum, axis=0), jnp.sum(out.denom, axis=0), stats)


def finalize_stats(stats: dict[str, Stat]) -> dict[str, jax.Array]:
    """Plain values: means divided by their weights; min / max as they are; NaN where nothing was counted."""
    out = {}
    for k, s in stats.items():
        value = s.value / jnp.where(s.weight > 0, s.weight, 1) if s.reduce == "mean" else s.value
        out[k] = jnp.where(s.weight > 0, value, jnp.nan)
    return out


def _f32(*xs: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def ppo_clip(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
             epsilon: float = 0.2, epsilon_low: float | None = None,
             epsilon_high: float | None = None) -> LossOutput:
    """PPO's clipped surrogate per token: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), ρ = exp(logp − old_logp).

    Stats: ``clip_fraction`` (tokens whose clipped term is the active one, i.e. get no gradient),
    the ratio's mean / min / max and ``approx_kl`` = mean((ρ−1) − log ρ) between behaviour and current.
    """
    logp, old_logp, mask = _f32(logp, old_logp, mask)
    low = epsilon if epsilon_low is None else epsilon_low
    high = epsilon if epsilon_high is None else epsilon_high
    adv = jnp.asarray(advantages, jnp.float32)[:, None]
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - low, 1.0 + high) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    count = mask.sum()
    stats = {
        "clip_fraction": Stat(jnp.sum((clipped < unclipped) * mask), count),
        "approx_kl": Stat(jnp.sum(((ratio - 1.0) - log_ratio) * mask), count),
        **_masked_stats("ratio", ratio, mask),
    }
    return LossOutput(jnp.sum(per_token * mask), count, stats)


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(π ‖ π_ref) from log-probs of tokens sampled from π.

    ``k1`` = log π − log π_ref (unbiased, can be negative); ``k3`` = (r − 1) − log r with
    r = π_ref/π (unbiased, never negative, lower variance).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_r = ref_logp - logp
        return jnp.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator '{estimator}' (known: k1, k3)")


def kl(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, *, estimator: str = "k3") -> LossOutput:
    """Per-token KL to the frozen reference policy (weighted by β in the objective). Stat: ``kl``."""
    logp, ref_logp, mask = _f32(logp, ref_logp, mask)
    total = jnp.sum(kl_estimate(logp, ref_logp, estimator) * mask)
    count = mask.sum()
    return LossOutput(total, count, {"kl": Stat(jax.lax.stop_gradient(total), count)})


def value(values: jax.Array, returns: jax.Array, mask: jax.Array | None = None, *,
          old_values: jax.Array | None = None, clip: float | None = None) -> LossOutput:
    """½ squared error of the value head ``[B]`` against the returns, optionally PPO-clipped.

    With ``clip``, the prediction may move at most ``clip`` from ``old_values`` (the values at
    rollout time) and the larger of the clipped and plain errors is taken.
    """
    values, returns = _f32(values, returns)
    mask = jnp.ones_like(values) if mask is None else jnp.asarray(mask, jnp.float32)
    err = jnp.square(values - returns)
    stats = {}
    if clip is not None:
        if old_values is None:
            raise ValueError("value loss: clip needs old_values")
        old_values = jnp.asarray(old_values, jnp.float32)
        moved = old_values + jnp.clip(values - old_values, -clip, clip)
        clipped_err = jnp.square(moved - returns)
        stats["value_clip_fraction"] = Stat(jnp.sum((clipped_err > err) * mask), mask.sum())
        err = jnp.maximum(err, clipped_err)
    stats["value_mean"] = Stat(jax.lax.stop_gradient(jnp.sum(values * mask)), mask.sum())
    return LossOutput(0.5 * jnp.sum(err * mask), mask.sum(), stats)


def sft_nll(logp: jax.Array, mask: jax.Array) -> LossOutput:
    """Negative log-likelihood of the target tokens (log-probs of the tokens in the data)."""
    logp, mask = _f32(logp, mask)
    return LossOutput(-jnp.sum(logp * mask), mask.sum(), {})


def entropy(token_entropies: jax.Array, mask: jax.Array) -> LossOutput:
    """Mean per-token entropy: a diagnostic, or a bonus with a negative weight.

    Pass exact per-token entropies, or ``-logp`` of tokens sampled on-policy (an unbiased estimate that needs no
    full-vocabulary pass; what RLFT logs).
    """
    token_entropies, mask = _f32(token_entropies, mask)
    total = jnp.sum(token_entropies * mask)
    count = mask.sum()
    return LossOutput(total, count, {"entropy": Stat(jax.lax.stop_gradient(total), count)})
