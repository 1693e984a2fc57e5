"""Decode kernels tuned for XLA:CPU, and the one place that chooses them.

:func:`active` decides, from ``GemmaConfig.kernels``: ``"auto"`` (the default) takes these kernels on the CPU
backend and the plain forms of :mod:`jaxagent.model.gemma` elsewhere; ``"cpu"`` or ``"plain"`` forces either.
With them:

- stored keys keep the slot axis last (:mod:`jaxagent.model.kv_cache`), and a decode step's scores are a sum of
  scaled key rows (:func:`decode_scores`);
- a decode step reads the values once per query head while they fit in one core's L2 (:func:`decode_values`);
- every weight matmul is :func:`dense`, whose backward computes the weight gradient as one dot;
- an episode with a growing history decodes in :data:`HISTORY_SEGMENTS` parts, each over only the cache slots its
  histories can fill (see ``AgentLoop._segments``).

Unrolled layers with fused projections (``unroll_layers=True``, :func:`jaxagent.model.sampler.unrolled`) are
chosen by the caller: they decode faster on CPU, at a compile time that grows with depth.
Both forms give the same greedy tokens, and log-probs within float32 rounding (``tests/test_model_kernels.py``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

HISTORY_SEGMENTS = 8
PER_HEAD_VALUES_BYTES = 2 ** 21  # about one core's L2 cache; see decode_values


def active(cfg) -> bool:
    """Whether the model described by ``cfg`` (a ``GemmaConfig``) runs with the CPU kernels."""
    return cfg.kernels == "cpu" or (cfg.kernels == "auto" and jax.default_backend() == "cpu")


def decode_scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """Scores ``[Bk, K, G, 1, S]`` of one query per row ``[Bk, 1, K, G, hd]`` against slot-last keys
    ``[Bk, K, hd, S]``: a sum of ``hd`` scaled key rows is one elementwise loop over contiguous slots, which
    XLA:CPU vectorises; as a batched dot (many ``[G, hd] x [hd, S]`` products) it ran 3-5x slower."""
    q, k = q[:, 0].astype(jnp.float32), k.astype(jnp.float32)
    terms = (q[..., h, None] * k[:, :, None, h] for h in range(k.shape[2]))
    return functools.reduce(jnp.add, terms)[:, :, :, None, :]


def decode_values(p: jax.Array, v: jax.Array) -> jax.Array | None:
    """Output ``[Bk, 1, K, G, hd]`` of one query's probabilities ``[Bk, K, G, 1, S]`` over values
    ``[Bk, K, S, hd]`` as one matrix-vector product per query head: while the values stay in cache for the next
    head, XLA:CPU ran these 1.2-1.7x faster than one ``[G, S] x [S, hd]`` product per row and kv head. Past
    :data:`PER_HEAD_VALUES_BYTES`, reading the values ``G`` times from memory made them up to 1.5x slower:
    ``None`` then (the plain form)."""
    if v.size * v.dtype.itemsize > PER_HEAD_VALUES_BYTES:
        return None
    heads = [jnp.einsum("bks,bksh->bkh", p[:, :, g, 0], v) for g in range(p.shape[2])]
    return jnp.stack(heads, axis=2)[:, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """``x[..., D] @ w[D, F]``. Its backward computes the weight gradient as one dot over all rows, which spares
    XLA:CPU a transposing copy of the output gradient fused with its elementwise producer (the slowest part of
    the backward pass there)."""
    return jnp.matmul(x, w, preferred_element_type=out_dtype)


def _dense_fwd(x, w, out_dtype):
    return dense(x, w, out_dtype), (x, w)


def _dense_bwd(out_dtype, residuals, dy):
    x, w = residuals
    dw = jnp.einsum("nd,nf->df", x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]).astype(x.dtype))
    return (dy @ w.T.astype(dy.dtype)).astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def fuse_projections(layer: dict) -> dict:
    """One layer's weights with q/k/v and gate/up each concatenated into one matrix (fewer, larger matmuls)."""
    fused = {name: w for name, w in layer.items() if name not in ("q", "k", "v", "gate", "up")}
    return dict(fused, qkv=jnp.concatenate([layer["q"], layer["k"], layer["v"]], axis=1),
                gate_up=jnp.concatenate([layer["gate"], layer["up"]], axis=1))

