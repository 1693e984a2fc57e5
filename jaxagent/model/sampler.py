"""Multi-turn sampling over a full-length KV cache: ``append`` (ragged prefill), ``rewind``, ``sample``, ``score``.

All functions are pure and jittable, so an agent episode can be one ``lax.scan`` over env steps that calls them.

Log-probs: ``sample`` returns, for each generated token, its log-prob under the tempered policy
``log_softmax(logits / temperature)`` over the full vocabulary (temperature 0, i.e. greedy, counts as 1).
Top-k / top-p only choose which tokens may be drawn; they are not renormalised into the log-probs, so the
policy is smooth in the parameters and ``score`` with the same temperature returns the same numbers.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxagent.model.config import GemmaConfig
from jaxagent.model.cpu_kernels import fuse_projections
from jaxagent.model.gemma import hidden_states, transformer, unembed, unstack_layers, value
from jaxagent.model.kv_cache import (KVCache, as_block, cache_block, concat_slots, gather_slots, init_cache,
                                     slot_range, stored, unstored, write_kv, write_slot)


def _last_token(lengths: jax.Array) -> jax.Array:
    """Each row's last token of a chunk of ``lengths`` tokens (the first where there are none)."""
    return jnp.maximum(lengths - 1, 0)


def append(params, cfg: GemmaConfig, cache: KVCache, tokens: jax.Array, lengths: jax.Array,
           history_len: int | None = None, unroll_layers: bool = False, shared_prefix: int = 0):
    """Prefill ``tokens[b, :lengths[b]]`` after each row's end: ``(cache, last_logits[B, V])``.

    ``last_logits[b]`` are the logits at row ``b``'s last appended token (undefined where ``lengths[b] == 0``).
    ``history_len`` (static): a bound on every row's ``cache.end``; only that many slots are read.
    ``unroll_layers`` (static): as in :func:`sample`, whose sliding-window layers read only the window's slots.
    ``shared_prefix`` (static): as in :func:`sample`.
    """
    lengths = lengths.astype(jnp.int32)
    positions = cache.end[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    if unroll_layers:
        params = unrolled(params)
    shared, own = _history_blocks(cfg, cache_block(cfg, cache, length=history_len), cache.end, shared_prefix,
                                  unroll_layers)
    h, k, v = transformer(params, cfg, tokens, positions, (*shared, tuple(zip(*own)) if unroll_layers else own),
                          last=_last_token(lengths))
    cache = write_kv(cfg, cache, k, v, positions)
    return cache.replace(end=jnp.minimum(cache.end + lengths, cache.max_len)), unembed(params, cfg, h[:, 0])


def prefill(params, cfg: GemmaConfig, tokens: jax.Array, lengths: jax.Array, max_len: int, dtype=None):
    """``append`` to a fresh cache of ``max_len`` slots, without reading the (empty) cache."""
    return _prefill(params, cfg, tokens, lengths, max_len, dtype)[:2]


def _prefill(params, cfg: GemmaConfig, tokens, lengths, max_len: int, dtype=None):
    """:func:`prefill`, plus the prompts' keys/values as the attention block :func:`cache_block` would read back."""
    lengths = lengths.astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    h, k, v = transformer(params, cfg, tokens, positions, last=_last_token(lengths))
    cache = init_cache(cfg, tokens.shape[0], max_len, dtype or params["embed"].dtype)
    cache = write_kv(cfg, cache, k, v, positions).replace(end=jnp.minimum(lengths, max_len))
    history = as_block(cfg, k.astype(cache.k.dtype), v.astype(cache.v.dtype), positions,
                       positions < cache.end[:, None])
    return cache, unembed(params, cfg, h[:, 0]), history


def _filter(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Mask all but the top-k logits, then all but the nucleus of the renormalised rest (HF's order)."""
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
        n_keep = jnp.sum(cum - jax.nn.softmax(sorted_logits, axis=-1) < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, jnp.maximum(n_keep - 1, 0), axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def _argmax(x: jax.Array) -> jax.Array:
    """``argmax(x, -1)`` (first maximum) as two vectorised reductions; XLA's fused arg-reduce is far slower on CPU."""
    top = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == top, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), axis=-1)


def _first_above(cumulative: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """Per row, the first index where ``cumulative`` (of ``weights`` >= 0) exceeds ``target``; where rounding
    leaves none, the last index of positive weight. Either way an index of positive weight."""
    first = jnp.sum(cumulative <= target[:, None], axis=-1)
    last = jnp.max(jnp.where(weights > 0, jnp.arange(weights.shape[-1]), 0), axis=-1)
    return jnp.minimum(first, last)


def _draw(logits: jax.Array, u: jax.Array) -> jax.Array:
    """Token ``i`` of each row with probability ``softmax(logits)[i]`` (``-inf``: never), found by inverting the
    cumulative distribution at ``u[B]`` ~ U[0, 1): first among blocks of about sqrt(V) tokens, then within the
    block. One uniform number per row instead of Gumbel-max's V, and two short cumulative sums instead of one
    over V: on CPU both threefry and long cumulative sums run as many small loops."""
    B, V = logits.shape
    width = math.isqrt(V - 1) + 1
    blocks = -(-V // width)
    w = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    w = jnp.pad(w, ((0, 0), (0, blocks * width - V))).reshape(B, blocks, width)
    block_w = jnp.sum(w, axis=-1)
    block_cum = jnp.cumsum(block_w, axis=-1)
    target = u * block_cum[:, -1]
    block = _first_above(block_cum, target, block_w)
    before = jnp.where(block > 0, jnp.take_along_axis(block_cum, jnp.maximum(block - 1, 0)[:, None], axis=1)[:, 0],
                       0.0)
    in_block = jnp.take_along_axis(w, block[:, None, None], axis=1)[:, 0]
    token = _first_above(jnp.cumsum(in_block, axis=-1), jnp.maximum(target - before, 0.0), in_block)
    return (block * width + token).astype(jnp.int32)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """``log_softmax(logits / temperature)[tokens]`` in float32; temperature 0 (greedy) counts as 1."""
    t = temperature if temperature > 0 else 1.0
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def sample(params, cfg: GemmaConfig, cache: KVCache, last_logits: jax.Array, key: jax.Array, *,
           max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           stop_tokens: Sequence[int] = (), history_len: int | None = None, unroll_layers: bool = False,
           shared_prefix: int = 0, history=None):
    """Decode up to ``max_new_tokens`` per row: ``(cache, tokens[B, G], logprobs[B, G], lengths[B])``.

    A row stops after emitting a stop token (which is kept and counted); its later tokens are ``pad_id`` with
    log-prob 0. Every generated token is written into the cache and ``cache.end`` advances by ``lengths``.
    The loop exits early once every row has stopped. ``temperature == 0`` is greedy.
    ``history_len`` (static): a bound on every row's ``cache.end``; decoding then reads only that many slots.
    ``unroll_layers`` (static): decode with the layers as a Python loop over per-layer weights and keys/values
    (see :func:`jaxagent.model.gemma.unstack_layers`), q/k/v and gate/up fused into one matmul each: faster where
    XLA copies the slices of stacked weights (XLA:CPU), at a compile time that grows with depth; sliding-window
    layers then read only the ``window - 1`` history slots they can see.
    ``shared_prefix`` (static): the first ``shared_prefix`` slots hold the same keys/values in every row (e.g. a
    prompt prefix all episodes start with); layers that read them do so from row 0 once for all rows.
    ``history``: the slots before each row's end as :func:`jaxagent.model.kv_cache.cache_block` reads them, where the
    caller has them at hand (:func:`generate` passes the keys/values its prefill computed, so the cache is only
    written, and not at all where the caller drops it); ``history_len`` is then unused.
    """
    B, G = last_logits.shape[0], max_new_tokens
    stops = jnp.asarray(tuple(stop_tokens) or (-1,), jnp.int32)
    start = cache.end
    L, K, hd = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    gen_positions = start[:, None] + jnp.arange(G, dtype=jnp.int32)[None, :]
    if history is None:
        history = cache_block(cfg, cache, length=history_len)
    shared, history = _history_blocks(cfg, history, start, shared_prefix, unroll_layers)
    gen_k, gen_v = stored(cfg, jnp.zeros((L, B, G, K, hd), cache.k.dtype), jnp.zeros((L, B, G, K, hd), cache.v.dtype))
    # Step i writes the same buffer slot in every row (in place, no per-row scatter); the cache itself is only
    # read while decoding and receives the new tokens once at the end.
    if unroll_layers:
        # One buffer per layer holds the history and the new tokens; step i writes its slot before attention
        # reads the buffer: one softmax part per layer and no per-step copy of the buffer.
        params = unrolled(params)
        widths = tuple(slots.shape[1] for _, _, slots, _ in history)
        buffers = tuple(zip(*(concat_slots(cfg, (k, v), (gen_k[0], gen_v[0])) for k, v, _, _ in history)))
        key_positions = tuple(jnp.concatenate([slots, gen_positions], axis=1) for _, _, slots, _ in history)
        filled = tuple(jnp.concatenate([ok, jnp.ones((B, G), bool)], axis=1) for _, _, _, ok in history)

        def decode(buffers, tok, i):
            block = (*buffers, key_positions,
                     tuple(f & (jnp.arange(w + G) <= w + i) for f, w in zip(filled, widths)))
            h, k, v = transformer(params, cfg, tok[:, None], (start + i)[:, None], (*shared, block),
                                  write_slot=tuple(w + i for w in widths))
            return h, (k, v)
    else:
        # Scanned layers: a buffer written inside the scan would be copied through it at every step, so the
        # stacked history is only read and the step's keys/values are stored after the layers.
        buffers = (gen_k, gen_v)

        def decode(buffers, tok, i):
            block = (*buffers, gen_positions, jnp.broadcast_to(jnp.arange(G) < i, (B, G)))
            h, k, v = transformer(params, cfg, tok[:, None], (start + i)[:, None], (*shared, history, block))
            return h, write_slot(cfg, *buffers, k, v, i)

    if temperature > 0:
        uniforms = jax.random.uniform(key, (G, B))  # drawn at once: a threefry call is a loop of small ops on CPU

    def body(state):
        i, buffers, logits, toks, logps, lengths, done = state
        if temperature > 0:
            tok = _draw(_filter(logits / temperature, top_k, top_p), uniforms[i])
        else:
            tok = _argmax(logits)
        tok = jnp.where(done, cfg.pad_id, tok).astype(jnp.int32)
        lp = jnp.where(done, 0.0, token_logprobs(logits, tok, temperature))
        h, buffers = decode(buffers, tok, i)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        logps = jax.lax.dynamic_update_slice(logps, lp[:, None], (0, i))
        active = ~done
        done = done | (active & jnp.isin(tok, stops))
        return (i + 1, buffers, unembed(params, cfg, h[:, 0]), toks, logps, lengths + active, done)

    def cond(state):
        return (state[0] < G) & ~jnp.all(state[-1])

    state = (jnp.int32(0), buffers, last_logits.astype(jnp.float32),
             jnp.full((B, G), cfg.pad_id, jnp.int32), jnp.zeros((B, G), jnp.float32), jnp.zeros((B,), jnp.int32),
             jnp.zeros((B,), bool))
    _, (gen_k, gen_v), _, toks, logps, lengths, _ = jax.lax.while_loop(cond, body, state)
    if unroll_layers:
        gen_k, gen_v = (jnp.stack(a) for a in zip(*(slot_range(cfg, k, v, w) for k, v, w in zip(gen_k, gen_v, widths))))
    cache = write_kv(cfg, cache, *unstored(cfg, gen_k, gen_v), gen_positions)
    return cache.replace(end=jnp.minimum(start + lengths, cache.max_len)), toks, logps, lengths


def unrolled(params) -> dict:
    """Parameters for a Python loop over layers: per-layer weights, q/k/v and gate/up fused
    (:func:`jaxagent.model.cpu_kernels.fuse_projections`), and the output embedding as its own ``[D, V]`` copy
    (XLA:CPU multiplied by the transposed ``[V, D]`` embedding 1.7-4x slower). ``append`` and ``sample`` with
    ``unroll_layers`` accept them as they are (prepare them once for many calls)."""
    if isinstance(params["layers"], tuple):
        return params
    return dict(params, layers=tuple(map(fuse_projections, unstack_layers(params["layers"]))),
                unembed=params["embed"].T)


def _history_blocks(cfg: GemmaConfig, history, start: jax.Array, shared_prefix: int, per_layer: bool):
    """``(shared, own)``: the attention blocks of ``history`` (a :func:`~jaxagent.model.kv_cache.cache_block`)
    read while appending or decoding from ``start``. ``shared`` is ``()`` or one block of the first
    ``shared_prefix`` slots, taken from row 0 and read once for all query rows; ``own`` holds the rest of each
    row's slots. With ``per_layer``, ``own`` is a list of per-layer blocks where, if the window is under half of
    the history, a sliding-window layer reads only the ``window - 1`` slots before ``start`` (gathered per row)
    and no shared slots."""
    hist_k, hist_v, slots, valid = history
    P = shared_prefix if shared_prefix < slots.shape[1] else 0
    shared = ((*slot_range(cfg, hist_k[:, :1], hist_v[:, :1], 0, P), slots[:1, :P], valid[:, :P]),) if P else ()
    own = (*slot_range(cfg, hist_k, hist_v, P), slots[:, P:], valid[:, P:])
    if not per_layer:
        return shared, own
    seen = cfg.sliding_window - 1
    layers = [(k, v, own[2], own[3]) for k, v in zip(unstack_layers(own[0]), unstack_layers(own[1]))]
    reads_shared = [True] * len(layers)
    if 2 * seen <= slots.shape[1]:  # the gather is a copy: worth it only where it skips most of the history
        window = start[:, None] + jnp.arange(-seen, 0, dtype=jnp.int32)
        at = jnp.maximum(window, 0)
        layers[0::2] = [(*gather_slots(cfg, k, v, at), window, window >= 0)
                        for k, v in zip(unstack_layers(hist_k)[0::2], unstack_layers(hist_v)[0::2])]
        reads_shared[0::2] = [False] * len(layers[0::2])
    if shared:
        (k, v, shared_slots, shared_valid), = shared
        shared = ((tuple(a if r else None for a, r in zip(unstack_layers(k), reads_shared)),
                   tuple(a if r else None for a, r in zip(unstack_layers(v), reads_shared)),
                   shared_slots, shared_valid),)
    return shared, layers


def score(params, cfg: GemmaConfig, tokens: jax.Array, *, temperature: float = 1.0, positions=None,
          with_values: bool = False):
    """Log-probs of ``tokens[:, t]`` given ``tokens[:, :t]``, as ``[B, T]`` float32 with column 0 set to 0.

    Differentiable in ``params``. With ``with_values``, also the value head on every position's hidden state.
    """
    B, T = tokens.shape
    params = cfg.compute_params(params)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    h, _ = hidden_states(params, cfg, tokens, positions)
    logits = unembed(params, cfg, h[:, :-1])
    logp = jnp.concatenate([jnp.zeros((B, 1), jnp.float32),
                            token_logprobs(logits, tokens[:, 1:], temperature)], axis=1)
    return (logp, value(params, h)) if with_values else logp


def score_continuations(params, cfg: GemmaConfig, prompts: jax.Array, prompt_lengths: jax.Array,
                        continuations: jax.Array, continuation_lengths: jax.Array, *, temperature: float = 1.0):
    """``[N, C]``: the log-probability of each continuation ``continuations[c, :continuation_lengths[c]]`` right
    after each right-padded prompt. Each prompt is prefilled once; every continuation then attends to its keys and
    values (one pass over ``N * C`` short rows, not over ``N * C`` whole prompts)."""
    N, (C, M) = prompts.shape[0], continuations.shape
    params = cfg.compute_params(params)
    _, last_logits, history = _prefill(params, cfg, prompts, prompt_lengths, prompts.shape[1])
    rows = jnp.tile(continuations, (N, 1))  # row n * C + c: prompt n, continuation c
    positions = jnp.repeat(prompt_lengths.astype(jnp.int32), C)[:, None] + jnp.arange(M, dtype=jnp.int32)
    hist_k, hist_v, slots, valid = history
    h, _, _ = transformer(params, cfg, rows, positions, ((hist_k, hist_v, slots, jnp.repeat(valid, C, axis=0)),))
    first = token_logprobs(jnp.repeat(last_logits, C, axis=0), rows[:, 0], temperature)
    rest = token_logprobs(unembed(params, cfg, h[:, :-1]), rows[:, 1:], temperature)
    logp = jnp.concatenate([first[:, None], rest], axis=1)
    counted = jnp.arange(M) < jnp.tile(continuation_lengths, N)[:, None]
    return jnp.sum(jnp.where(counted, logp, 0.0), axis=1).reshape(N, C)


@functools.partial(jax.jit, static_argnames=("cfg", "max_len", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "stop_tokens", "unroll_layers"))
def generate(params, cfg: GemmaConfig, prompts: jax.Array, prompt_lengths: jax.Array, key: jax.Array, *,
             max_len: int, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: tuple[int, ...] = (), unroll_layers: bool = False):
    """One jitted call: fresh cache, prefill of right-padded ``prompts``, then ``sample``. With ``unroll_layers``
    the prompts are prefilled with the unrolled layers too, and ``params`` may come from :func:`unrolled` already
    (prepared once for many calls)."""
    params = cfg.compute_params(params)
    if unroll_layers:
        params = unrolled(params)
    cache, logits, history = _prefill(params, cfg, prompts, prompt_lengths, max_len)
    return sample(params, cfg, cache, logits, key, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_k=top_k, top_p=top_p, stop_tokens=stop_tokens, unroll_layers=unroll_layers, history=history)


append_jit = jax.jit(append, static_argnames=("cfg", "history_len", "unroll_layers", "shared_prefix"),
                     donate_argnames=("cache",))
sample_jit = jax.jit(sample, static_argnames=("cfg", "max_new_tokens", "temperature", "top_k", "top_p",
                                              "stop_tokens", "history_len", "unroll_layers", "shared_prefix"),
                     donate_argnames=("cache",))
score_jit = jax.jit(score, static_argnames=("cfg", "temperature", "with_values"))
score_continuations_jit = jax.jit(score_continuations, static_argnames=("cfg", "temperature"))
