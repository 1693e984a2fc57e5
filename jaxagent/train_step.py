"""One jitted optimiser update with exact gradient accumulation, for any loss made of ``LossOutput`` terms.

``loss_fn(params, batch) -> {term name: LossOutput}``; the objective is Σ_t w_t · S_t / D_t with S_t
and D_t the term's sum and denominator over the *global* batch. The batch (leaves ``[B, ...]``) is
split into k micro-batches; a first pass adds up every term's denominator (they depend only on the
batch's masks, so XLA drops the model's forward from that pass), then each micro-batch contributes
the gradient of Σ_t w_t · S_t,micro / D_t. Any k therefore gives the gradient of one big batch.

A non-finite loss or gradient norm skips the update (the state stays the last good one) and sets
``metrics["finite"]`` to False; ``raise_if_nonfinite`` turns that into a clear error on the host.
With ``state_sharding`` / ``batch_sharding`` (``NamedSharding``s over a ``Mesh``) the step is jitted
with those in/out shardings; XLA inserts the collectives.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from jaxagent.losses import LossOutput, finalize_stats, reduce_stacked, safe_mean

LossFn = Callable[[Any, Any], Mapping[str, LossOutput]]


class NonFiniteError(FloatingPointError):
    """The loss, the gradients or the parameters stopped being finite; the message says where."""


@struct.dataclass
class TrainState:
    step: jax.Array  # updates applied so far (int32 scalar)
    params: Any
    opt_state: Any


def create_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state; under jit, so the optimizer state inherits the (sharded) parameters' layout."""
    return jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)))(params)


def shardings_of(tree: Any) -> Any:
    """The sharding of every array leaf (to pin a jitted step's in/out layouts to the current ones)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def split_micro_batches(batch: Any, k: int) -> Any:
    """Leaves ``[B, ...]`` → ``[k, B/k, ...]``; micro-batch j holds rows j, j+k, j+2k, ...

    Strided rows keep each device's contiguous block of a batch-sharded array on that device.
    """
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible into {k} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def _objective(terms: Mapping[str, LossOutput], weights: Mapping[str, float],
               denoms: Mapping[str, jax.Array]) -> jax.Array:
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"loss weights for {unknown}, but the loss function returns only {sorted(terms)}")
    return sum(weights.get(t, 1.0) * safe_mean(out.sum, denoms[t]) for t, out in terms.items())


def accumulate_gradients(loss_fn: LossFn, params: Any, batch: Any, *, num_micro_batches: int = 1,
                         weights: Mapping[str, float] | None = None,
                         micro_batch_sharding: Any = None) -> tuple[Any, jax.Array, dict[str, LossOutput]]:
    """(gradients, objective, global terms) of the weighted loss over ``batch``, in k micro-batch passes."""
    weights = dict(weights or {})
    k = num_micro_batches
    if k == 1:
        def whole(p):
            terms = loss_fn(p, batch)
            denoms = {t: jax.lax.stop_gradient(o.denom) for t, o in terms.items()}
            return _objective(terms, weights, denoms), terms
        (objective, terms), grads = jax.value_and_grad(whole, has_aux=True)(params)
        return grads, objective, dict(terms)

    micro = split_micro_batches(batch, k)
    if micro_batch_sharding is not None:
        micro = jax.lax.with_sharding_constraint(micro, micro_batch_sharding)
    frozen = jax.lax.stop_gradient(params)
    denoms = jax.lax.map(lambda mb: {t: o.denom for t, o in loss_fn(frozen, mb).items()}, micro)
    denoms = jax.tree.map(lambda d: jnp.sum(d, axis=0), denoms)

    def one(p, mb):
        terms = loss_fn(p, mb)
        return _objective(terms, weights, denoms), terms

    def body(acc, mb):
        (_, terms), g = jax.value_and_grad(one, has_aux=True)(params, mb)
        acc = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc, g)
        return acc, dict(terms)

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    acc, stacked = jax.lax.scan(body, zeros, micro)
    grads = jax.tree.map(lambda a, x: a.astype(x.dtype), acc, params)
    terms = {t: reduce_stacked(o) for t, o in stacked.items()}
    return grads, _objective(terms, weights, {t: o.denom for t, o in terms.items()}), terms


def loss_metrics(objective: jax.Array, terms: Mapping[str, LossOutput]) -> dict[str, jax.Array]:
    """``loss``, ``loss/<term>`` (unweighted means) and every term's diagnostics under its own name."""
    out = {"loss": objective}
    for t, o in terms.items():
        out[f"loss/{t}"] = safe_mean(o.sum, o.denom)
        for name, value in finalize_stats(o.stats).items():
            if name in out:
                raise ValueError(f"loss terms report the diagnostic '{name}' twice")
            out[name] = value
    return out


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, num_micro_batches: int = 1,
                    weights: Mapping[str, float] | None = None, state_sharding: Any = None,
                    batch_sharding: NamedSharding | None = None, donate: bool = True):
    """``step(state, batch) -> (state, metrics)``, jitted (with the given shardings), donating ``state``.

    ``metrics``: ``loss``, per-term losses and diagnostics, ``grad_norm`` (before clipping) and
    ``finite`` (False = the update was skipped). Shardings come as a pair: ``state_sharding`` for the
    whole ``TrainState`` (e.g. ``shardings_of(state)``) and ``batch_sharding`` for every batch leaf.
    """
    if (state_sharding is None) != (batch_sharding is None):
        raise ValueError("make_train_step: give both state_sharding and batch_sharding, or neither")
    micro_sharding = None
    if isinstance(batch_sharding, NamedSharding) and num_micro_batches > 1:
        micro_sharding = NamedSharding(batch_sharding.mesh, PartitionSpec(None, *batch_sharding.spec))

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        grads, objective, terms = accumulate_gradients(
            loss_fn, state.params, batch, num_micro_batches=num_micro_batches, weights=weights,
            micro_batch_sharding=micro_sharding)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updated = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
        finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
        # lax.select, not jnp.where: jnp.where's jitted helper is numbered by the process's earlier traces, so the
        # step's program (and its persistent-cache key) would differ from one run of a phase to the next
        new_state = jax.tree.map(lambda new, old: jax.lax.select(finite, new, old), updated, state)
        return new_state, {**loss_metrics(objective, terms), "grad_norm": grad_norm, "finite": finite}

    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if state_sharding is None:
        return jax.jit(step, **kwargs)
    jitted = jax.jit(step, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None),
                     **kwargs)

    def placed_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        # A batch made by another jitted function (a rollout, a slice of one) arrives in whatever layout XLA
        # chose there; jit refuses a committed argument whose layout differs from in_shardings.
        return jitted(state, jax.device_put(batch, batch_sharding))
    return placed_step


def raise_if_nonfinite(metrics: Mapping[str, Any], step: int) -> None:
    """Raise ``NonFiniteError`` on the host if the update at ``step`` was skipped for a NaN / inf."""
    if bool(metrics["finite"]):
        return
    terms = ", ".join(f"{k[5:]}={float(v):.4g}" for k, v in metrics.items() if k.startswith("loss/"))
    raise NonFiniteError(
        f"non-finite training loss at update {step}: loss={float(metrics['loss']):.4g} ({terms}), "
        f"grad_norm={float(metrics['grad_norm']):.4g}; the update was not applied and the last good "
        f"checkpoint is kept")
