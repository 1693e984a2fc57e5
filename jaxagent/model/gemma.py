"""Gemma 2 as pure functions of a parameter pytree, with the layers stacked and scanned in local/global pairs.

Parameters (``L`` layers, all layer tensors stacked on a leading ``L`` axis)::

    embed [V, D]                  tied input/output embedding
    final_norm [D]
    layers/attn_norm, post_attn_norm, ffw_norm, post_ffw_norm [L, D]     RMSNorm weights, used as (1 + w)
    layers/q [L, D, H, hd]   layers/k, layers/v [L, D, K, hd]   layers/o [L, H, hd, D]
    layers/gate, layers/up [L, D, F]   layers/down [L, F, D]
    value_head/w [D], value_head/b []   (optional) scalar value of the last hidden state

Layer ``2i`` uses the sliding window, layer ``2i + 1`` attends globally, as in every Gemma 2 size.
The KV cache and its layouts are in :mod:`jaxagent.model.kv_cache`; the decode kernels tuned for CPU, and the
choice between them and the plain forms here, in :mod:`jaxagent.model.cpu_kernels`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxagent.model import cpu_kernels
from jaxagent.model.config import GemmaConfig
from jaxagent.model.kv_cache import KVCache, cache_block, write_kv, write_slot as write_stored_slot

NEG_INF = -2.0 ** 30



def param_shapes(cfg: GemmaConfig, value_head: bool = False) -> dict:
    L, D, F, H, K, hd = cfg.num_layers, cfg.d_model, cfg.ffw_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layers = {"attn_norm": (L, D), "q": (L, D, H, hd), "k": (L, D, K, hd), "v": (L, D, K, hd), "o": (L, H, hd, D),
              "post_attn_norm": (L, D), "ffw_norm": (L, D), "gate": (L, D, F), "up": (L, D, F), "down": (L, F, D),
              "post_ffw_norm": (L, D)}
    shapes = {"embed": (cfg.vocab_size, D), "final_norm": (D,), "layers": layers}
    if value_head:
        shapes["value_head"] = {"w": (D,), "b": ()}
    return shapes


def init_params(cfg: GemmaConfig, key: jax.Array, dtype=jnp.float32, *, std: float = 0.02,
                value_head: bool = False) -> dict:
    """Random weights: N(0, std) matrices and embedding, zero norms (i.e. unit scale) and a zero value head."""
    shapes = param_shapes(cfg, value_head)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda s: isinstance(s, tuple))[0]]
    out = []
    for path, shape, k in zip(paths, leaves, keys):
        if "norm" in path or "value_head" in path:
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((std * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding of ``x[B, T, N, hd]`` (halves rotated, as in Gemma and HF)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq
    sin, cos = jnp.sin(angles).astype(x.dtype), jnp.cos(angles).astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def _qk(q, k, cfg: GemmaConfig):
    """Scores ``[Bk, K, G, R*T, S]`` of queries ``[Bk, R*T, K, G, hd]`` against stored keys (``[Bk, K, S, hd]``,
    or ``[Bk, K, hd, S]`` with the CPU kernels)."""
    on_cpu = cpu_kernels.active(cfg)
    if on_cpu and q.shape[1] == 1:
        return cpu_kernels.decode_scores(q, k)
    # Queries first, as [Bk, K, G*R*T, hd]: XLA:CPU otherwise made the stored keys the dot's left operand,
    # contracting their non-minor axis, which ran 3-4x slower.
    Bk, RT, K, G, hd = q.shape
    q = jnp.transpose(q, (0, 2, 3, 1, 4)).reshape(Bk, K, G * RT, hd)
    scores = jnp.einsum("bkqh,bkhs->bkqs" if on_cpu else "bkqh,bksh->bkqs", q, k,
                        preferred_element_type=jnp.float32)
    return scores.reshape(Bk, K, G, RT, -1)


def _pv(p, v, cfg: GemmaConfig):
    """Output ``[Bk, R*T, K, G, hd]`` of probabilities ``[Bk, K, G, R*T, S]`` over stored values ``[Bk, K, S, hd]``."""
    if p.shape[3] == 1:  # decoding: unlike the scores, this one is faster as a batched dot than as a multiply-reduce
        out = cpu_kernels.decode_values(p, v) if cpu_kernels.active(cfg) else None
        return jnp.einsum("bkgs,bksh->bkgh", p[:, :, :, 0], v)[:, None] if out is None else out
    Bk, K, G, RT, S = p.shape
    out = jnp.einsum("bkqs,bksh->bkqh", p.reshape(Bk, K, G * RT, S), v)  # probabilities first, as in _qk
    return jnp.transpose(out.reshape(Bk, K, G, RT, -1), (0, 3, 1, 2, 4))


def _to_rows(stat: jax.Array, rows: int) -> jax.Array:
    """``[Bk, K, G, R*T, 1]`` per-query statistics of a shared block -> ``[B, K, G, T, 1]``, ``B = Bk * R``."""
    Bk, K, G, RT, _ = stat.shape
    stat = stat.reshape(Bk, K, G, rows // Bk, RT * Bk // rows)
    return jnp.moveaxis(stat, 3, 1).reshape(rows, K, G, -1, 1)


def _from_rows(stat: jax.Array, shared_by: int) -> jax.Array:
    """Inverse of :func:`_to_rows` for a block shared by ``shared_by`` consecutive query rows."""
    B, K, G, T, _ = stat.shape
    stat = stat.reshape(B // shared_by, shared_by, K, G, T)
    return jnp.moveaxis(stat, 1, 3).reshape(B // shared_by, K, G, shared_by * T, 1)


def dense(x: jax.Array, w: jax.Array, cfg: GemmaConfig, out_dtype=None) -> jax.Array:
    """``x[..., D] @ w[D, F]``."""
    if cpu_kernels.active(cfg):
        return cpu_kernels.dense(x, w, out_dtype)
    return jnp.matmul(x, w, preferred_element_type=out_dtype)


def _project(x: jax.Array, w: jax.Array, cfg: GemmaConfig) -> jax.Array:
    """``x[B, T, D]`` by ``w[D, N, hd]`` -> ``[B, T, N, hd]``."""
    return dense(x, w.reshape(w.shape[0], -1), cfg).reshape(*x.shape[:-1], *w.shape[1:])


def _take_tokens(a: jax.Array, at: jax.Array) -> jax.Array:
    """``a[b, at[b]]`` for each row, keeping the token axis: ``[B, T, ...]`` -> ``[B, 1, ...]``."""
    return jnp.take_along_axis(a, at.reshape(-1, 1, *(1,) * (a.ndim - 2)), axis=1)


def _attention(p, cfg: GemmaConfig, x, positions, blocks, window, self_mask=None, write_slot=None, query_at=None):
    """Attention of the chunk ``x[B, T, D]`` over stored key/value ``blocks`` and over the chunk itself.

    Each block is ``(k, v, key_positions [Bk, S], valid [B, S])``, keys and values stored for ``Bk`` rows as in
    :mod:`jaxagent.model.kv_cache`, where ``Bk``
    divides ``B``: block row ``i`` is shared by query rows ``i * B/Bk ...`` (e.g. one episode's history seen by
    each of its steps), without repeating it. All blocks and the chunk are parts of one softmax. Returns the
    output and the chunk's keys/values ``[B, T, K, hd]`` for the caller to store; with ``write_slot``, the chunk's
    keys/values are first written into the last block (a per-row buffer, ``Bk = B``) at that slot, attended there,
    and the updated buffer's keys/values are returned instead. With ``query_at [B]``, only that token of each row
    queries (the output is ``[B, 1, D]``); every token's keys/values are still returned.
    """
    B = x.shape[0]
    K, G = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    if "qkv" in p:
        q, k, v = jnp.split(_project(x, p["qkv"], cfg), (cfg.num_heads, cfg.num_heads + K), axis=2)
    else:
        q, k, v = (_project(x, p[name], cfg) for name in "qkv")
    q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    q = (q * jnp.asarray(cfg.query_scale, q.dtype)).reshape(*q.shape[:2], K, G, cfg.head_dim)
    q_positions = positions
    if query_at is not None:
        q, q_positions = _take_tokens(q, query_at), _take_tokens(positions, query_at)
        self_mask = None if self_mask is None else _take_tokens(self_mask, query_at)
    T = q.shape[1]
    if write_slot is not None:
        # Written before it is read, the buffer is updated in place; a separate read of the old buffer (attending
        # to the chunk apart) made XLA:CPU copy it at every decode step.
        *blocks, (bk, bv, key_positions, valid) = blocks
        k, v = write_stored_slot(cfg, bk, bv, k, v, write_slot)
        blocks = (*blocks, (k, v, key_positions, valid))

    def scores_of(bk, key_positions, valid):
        """Masked, soft-capped scores ``[Bk, K, G, R*T, S]`` of a block shared by ``R`` query rows."""
        Bk, S = key_positions.shape
        R = B // Bk
        scores = _qk(q.reshape(Bk, R * T, K, G, cfg.head_dim), bk, cfg)
        qpos = q_positions.reshape(Bk, 1, 1, R, T, 1)
        kpos = key_positions.reshape(Bk, 1, 1, 1, 1, S)
        ok = (kpos <= qpos) & valid.reshape(Bk, 1, 1, R, 1, S)
        if window is not None:
            ok &= qpos - kpos < window
        capped = _softcap(scores, cfg.attn_logit_softcap).reshape(Bk, K, G, R, T, S)
        return jnp.where(ok, capped, NEG_INF).reshape(scores.shape)

    def self_scores():
        scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
        qpos, kpos = q_positions[:, None, None, :, None], positions[:, None, None, None, :]
        ok = kpos <= qpos if self_mask is None else self_mask[:, None, None]
        if window is not None:
            ok &= qpos - kpos < window
        return jnp.where(ok, _softcap(scores, cfg.attn_logit_softcap), NEG_INF)

    # One softmax over all blocks, without concatenating them: shared max, per-block exp and sums.
    scores = [scores_of(bk, kp, ok) for bk, _, kp, ok in blocks] + ([self_scores()] if write_slot is None else [])
    shared_by = [B // s.shape[0] for s in scores]
    top = functools.reduce(jnp.maximum, [_to_rows(jnp.max(s, axis=-1, keepdims=True), B) for s in scores])
    weights = [jnp.exp(s - _from_rows(top, r)) for s, r in zip(scores, shared_by)]
    total = sum(_to_rows(jnp.sum(w, axis=-1, keepdims=True), B) for w in weights)
    parts = [_pv((w / _from_rows(total, r)).astype(x.dtype), bv, cfg).reshape(B, T, K, G, cfg.head_dim)
             for w, r, (_, bv, _, _) in zip(weights, shared_by, blocks)]
    if write_slot is None:
        parts.append(jnp.einsum("bkgts,bskh->btkgh", (weights[-1] / total).astype(x.dtype), v))
    out = functools.reduce(jnp.add, parts).reshape(B, T, cfg.num_heads, cfg.head_dim)
    return dense(out.reshape(B, T, -1), p["o"].reshape(-1, p["o"].shape[-1]), cfg), k, v



def _layer(p, cfg: GemmaConfig, x, positions, blocks, window, self_mask=None, write_slot=None, query_at=None):
    eps = cfg.rms_norm_eps
    h, k, v = _attention(p, cfg, rms_norm(x, p["attn_norm"], eps), positions, blocks, window, self_mask,
                         write_slot, query_at)
    if query_at is not None:
        x = _take_tokens(x, query_at)
    x = x + rms_norm(h, p["post_attn_norm"], eps)
    h = rms_norm(x, p["ffw_norm"], eps)
    if "gate_up" in p:
        gate, up = jnp.split(dense(h, p["gate_up"], cfg), 2, axis=-1)
    else:
        gate, up = dense(h, p["gate"], cfg), dense(h, p["up"], cfg)
    h = jax.nn.gelu(gate, approximate=True) * up
    return x + rms_norm(dense(h, p["down"], cfg), p["post_ffw_norm"], eps), k, v


def _pairs(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0] // 2, 2, *a.shape[1:])


def transformer(params, cfg: GemmaConfig, tokens, positions, blocks=(), self_mask=None, write_slot=None,
                last=None):
    """Final-normed hidden states ``[B, T, D]`` and the chunk's keys/values ``[L, B, T, K, hd]``.

    ``blocks``: stored keys/values the chunk attends to besides itself, each ``(k, v, key_positions [Bk, S],
    valid [B, S])`` with ``[L, Bk, ...]`` keys and values (see :func:`jaxagent.model.kv_cache.as_block`);
    ``Bk`` divides ``B`` and block row ``i`` serves query rows ``i * B/Bk`` to ``(i + 1) * B/Bk - 1``.
    Within the chunk, token ``t`` attends to token ``s`` when ``positions[s] <= positions[t]``, or, if given,
    where ``self_mask[b, t, s]`` (bool ``[B, T, T]``, e.g. several episodes packed in one row); the sliding
    window applies to positions either way.
    ``write_slot`` (decoding into a buffer): the last block is a per-row buffer (``Bk = B``) that receives the
    chunk's keys/values at that slot before attention reads it (its ``valid`` must include the chunk's slots);
    the updated buffer's keys/values are returned in place of the chunk's.
    With ``params["layers"]`` and the blocks' keys/values as :func:`unstack_layers` tuples, the layers run as a
    Python loop instead of a scan; written buffers then come back as such tuples too. A block's key positions
    and valid mask, and ``write_slot``, may then also be per-layer tuples (buffers of different widths), and its
    keys/values ``None`` for layers that do not read it.
    ``last [B]`` (e.g. prefilling, where only each row's last token is unembedded): the hidden states are only
    those of token ``last[b]`` of each row, ``[B, 1, D]``; the final layer's attention output and MLP then run
    for that token alone.
    """
    embed = params["embed"]
    x = embed[tokens] * jnp.asarray(math.sqrt(cfg.d_model), embed.dtype)

    def run_layers(x, layers, kvs, query_at=None):
        """Apply ``layers[i]`` in order (even ``i``: sliding window); ``kvs[n][0|1][i]`` is block ``n``'s k/v.
        ``query_at``: the tokens the last of ``layers`` keeps (see ``last``)."""
        new_kv = []
        for i, p in enumerate(layers):
            layer_blocks = [(bk[i], bv[i], _of_layer(kp, i), _of_layer(ok, i))
                            for (bk, bv), (_, _, kp, ok) in zip(kvs, blocks) if bk[i] is not None]
            x, k, v = _layer(p, cfg, x, positions, layer_blocks, (cfg.sliding_window, None)[i % 2], self_mask,
                             _of_layer(write_slot, i), query_at if i == len(layers) - 1 else None)
            new_kv.append((k, v))
        return x, tuple(zip(*new_kv))

    def stacked(x, kvs):
        return x, tuple(jnp.stack(a) for a in kvs)

    if isinstance(params["layers"], tuple):
        x, (new_k, new_v) = run_layers(x, params["layers"], [(bk, bv) for bk, bv, _, _ in blocks], last)
        if write_slot is None:
            x, (new_k, new_v) = stacked(x, (new_k, new_v))
    else:
        # Under differentiation, keep only the weight matmuls' outputs: the [.., T, S] attention scores are cheaper
        # to recompute in the backward pass than to store for every layer; remat="full" keeps only each pair's input.
        policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if cfg.remat == "dots"
                  else jax.checkpoint_policies.nothing_saveable)
        pair_step = jax.checkpoint(lambda x, xs: stacked(*run_layers(x, unstack_layers(xs[0]), xs[1])),
                                   prevent_cse=False, policy=policy)
        # Layers run in (sliding, global) pairs; after them runs apart a layer left over (an odd count) or, for
        # ``last``, the final pair, whose second layer then runs for the ``last`` tokens only.
        L = cfg.num_layers
        paired = L - (L % 2 or (0 if last is None else 2))
        layers, kvs = params["layers"], [(bk, bv) for bk, bv, _, _ in blocks]
        parts = []
        if paired:
            xs = jax.tree.map(lambda a: _pairs(a[:paired]), (layers, kvs))
            x, (k, v) = jax.lax.scan(pair_step, x, xs)
            parts.append((k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:])))
        if paired < L:
            rest_layers, rest_kvs = jax.tree.map(lambda a: a[paired:], (layers, kvs))
            x, rest = stacked(*run_layers(x, unstack_layers(rest_layers), rest_kvs, last))
            parts.append(rest)
        new_k, new_v = (jnp.concatenate(a) for a in zip(*parts))
    return rms_norm(x, params["final_norm"], cfg.rms_norm_eps), new_k, new_v


def _of_layer(x, i: int):
    return x[i] if isinstance(x, tuple) else x


def unstack_layers(tree) -> tuple:
    """A tree of ``[L, ...]`` layer arrays as a tuple of ``L`` per-layer trees.

    With ``params["layers"]`` (and the blocks' keys/values) unstacked, :func:`transformer` runs its layers as a
    Python loop: a decode loop then reads every layer's weights where they lie instead of slicing the stacked
    arrays at each step, which XLA:CPU does by copying. Compile time grows with depth in exchange.
    """
    return tuple(jax.tree.map(lambda a: a[i], tree) for i in range(jax.tree.leaves(tree)[0].shape[0]))


def hidden_states(params, cfg: GemmaConfig, tokens, positions, cache: KVCache | None = None,
                  history_len: int | None = None):
    """Final-normed hidden states ``[B, T, D]`` and the cache with the chunk's keys/values written at ``positions``.

    With a cache, the chunk attends to slots ``< cache.end`` (of which only the first ``history_len`` are read,
    if given) and to itself; ``cache.end`` is left unchanged (``sampler.append`` advances it). Slots at or past
    ``max_len`` are dropped.
    """
    blocks = () if cache is None else (cache_block(cfg, cache, length=history_len),)
    h, k, v = transformer(params, cfg, tokens, positions, blocks)
    return h, None if cache is None else write_kv(cfg, cache, k, v, positions)


def unembed(params, cfg: GemmaConfig, h: jax.Array) -> jax.Array:
    """Logits (float32, final soft-cap applied) of final hidden states ``h[..., D]``; with ``params["unembed"]``
    (the embedding transposed, ``[D, V]``, see :func:`jaxagent.model.sampler.unrolled`), from that copy."""
    logits = dense(h, params["unembed"] if "unembed" in params else params["embed"].T, cfg, jnp.float32)
    return _softcap(logits, cfg.final_logit_softcap)


def value(params, h: jax.Array) -> jax.Array:
    """Scalar value head on final hidden states ``h[..., D]`` (float32)."""
    vh = params["value_head"]
    return jnp.einsum("...d,d->...", h.astype(jnp.float32), vh["w"].astype(jnp.float32)) + vh["b"]


def forward(params, cfg: GemmaConfig, tokens, positions, cache: KVCache | None = None):
    """``(logits[B, T, V] float32, cache)``; without a cache, attention is causal by ``positions`` within ``tokens``."""
    h, cache = hidden_states(params, cfg, tokens, positions, cache)
    return unembed(params, cfg, h), cache
