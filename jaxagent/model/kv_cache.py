"""The KV cache: its data, its two key layouts, and the operations on it.

The cache is full length (slot ``s`` holds position ``s``), so sliding windows are a mask and a row can be rewound.
Values are stored ``[L, B, K, S, hd]``. Keys are stored the same way, or with the slot axis last
(``[L, B, K, hd, S]``) where the CPU kernels run (:mod:`jaxagent.model.cpu_kernels`): a decode step's scores
then stream over contiguous slots. An attention block is ``(k, v, key_positions [B, S], valid [B, S])`` with
keys and values in the cache's layout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxagent.model import cpu_kernels
from jaxagent.model.config import GemmaConfig


@struct.dataclass
class KVCache:
    """Keys and values of every layer (see the module for their layouts); row ``b`` holds positions
    ``0 .. end[b] - 1``."""
    k: jax.Array
    v: jax.Array
    end: jax.Array  # i32[B]

    @property
    def max_len(self) -> int:
        return self.v.shape[3]


def key_slot_axis(cfg: GemmaConfig) -> int:
    """The slot axis of stored keys, counted from the end."""
    return -1 if cpu_kernels.active(cfg) else -2


def stored(cfg: GemmaConfig, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys/values ``[..., T, K, hd]`` of a chunk in the stored layout."""
    return jnp.moveaxis(k, -3, key_slot_axis(cfg)), jnp.moveaxis(v, -3, -2)


def unstored(cfg: GemmaConfig, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of :func:`stored`: ``[..., T, K, hd]``."""
    return jnp.moveaxis(k, key_slot_axis(cfg), -3), jnp.moveaxis(v, -2, -3)


def slot_range(cfg: GemmaConfig, k: jax.Array, v: jax.Array, start: int, stop: int | None = None):
    """Stored keys/values cut to slots ``start .. stop - 1`` (static bounds)."""
    stop = v.shape[-2] if stop is None else stop
    axis = k.ndim + key_slot_axis(cfg)
    return jax.lax.slice_in_dim(k, start, stop, axis=axis), jax.lax.slice_in_dim(v, start, stop, axis=v.ndim - 2)


def gather_slots(cfg: GemmaConfig, k: jax.Array, v: jax.Array, at: jax.Array):
    """Stored per-row keys/values ``[B, K, .., S, ..]`` at slots ``at [B, N]`` of each row."""
    key_at = at[:, None, None, :] if key_slot_axis(cfg) == -1 else at[:, None, :, None]
    return (jnp.take_along_axis(k, key_at, axis=k.ndim + key_slot_axis(cfg)),
            jnp.take_along_axis(v, at[:, None, :, None], axis=v.ndim - 2))


def concat_slots(cfg: GemmaConfig, a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]):
    """Stored keys/values ``a`` followed, slot-wise, by ``b``."""
    return (jnp.concatenate([a[0], b[0]], axis=a[0].ndim + key_slot_axis(cfg)),
            jnp.concatenate([a[1], b[1]], axis=a[1].ndim - 2))


def write_slot(cfg: GemmaConfig, k: jax.Array, v: jax.Array, new_k: jax.Array, new_v: jax.Array, slot):
    """Stored keys/values with the chunk ``new_k, new_v [..., T, K, hd]`` written from ``slot`` on (every row)."""
    new_k, new_v = stored(cfg, new_k.astype(k.dtype), new_v.astype(v.dtype))
    return (jax.lax.dynamic_update_slice_in_dim(k, new_k, slot, k.ndim + key_slot_axis(cfg)),
            jax.lax.dynamic_update_slice_in_dim(v, new_v, slot, v.ndim - 2))


def init_cache(cfg: GemmaConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    L, K, hd = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    k, v = stored(cfg, *(jnp.zeros((L, batch, max_len, K, hd), dtype),) * 2)
    return KVCache(k, v, jnp.zeros((batch,), jnp.int32))


def cache_block(cfg: GemmaConfig, cache: KVCache, end: jax.Array | None = None, length: int | None = None):
    """The cache as an attention block: slots ``< end`` (default ``cache.end``) are valid. ``length`` (static, a
    bound on ``end``): only the first ``length`` slots are read."""
    end = cache.end if end is None else end
    length = cache.max_len if length is None else min(length, cache.max_len)
    slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (end.shape[0], length))
    return (*slot_range(cfg, cache.k, cache.v, 0, length), slots, slots < end[:, None])


def as_block(cfg: GemmaConfig, k: jax.Array, v: jax.Array, key_positions: jax.Array, valid: jax.Array):
    """Keys/values ``[L, B, T, K, hd]`` returned by :func:`jaxagent.model.gemma.transformer` as an attention
    block for another call."""
    return (*stored(cfg, k, v), key_positions, valid)


def write_kv(cfg: GemmaConfig, cache: KVCache, k: jax.Array, v: jax.Array, positions: jax.Array) -> KVCache:
    """Store ``k, v [L, B, T, K, hd]`` at slots ``positions [B, T]`` of every layer; slots at or past
    ``max_len`` are dropped."""
    rows = jnp.broadcast_to(jnp.arange(positions.shape[0])[:, None], positions.shape)
    # Advanced indices split by a slice put their [B, T] dims first: values are [B, T, L, K, hd].
    k = jnp.moveaxis(k, 0, 2).astype(cache.k.dtype)
    v = jnp.moveaxis(v, 0, 2).astype(cache.v.dtype)
    key_at = (slice(None), rows, slice(None), slice(None), positions) if key_slot_axis(cfg) == -1 else \
        (slice(None), rows, slice(None), positions)
    return cache.replace(k=cache.k.at[key_at].set(k, mode="drop"),
                         v=cache.v.at[:, rows, :, positions].set(v, mode="drop"))


def rewind(cache: KVCache, positions: jax.Array) -> KVCache:
    """Set each row's end back to ``positions[b]`` (never forward); later slots are ignored and overwritten."""
    return cache.replace(end=jnp.clip(positions.astype(jnp.int32), 0, cache.end))
