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


def _slot_axes(cfg: GemmaConfig) -> tuple[int, int]:
    """The slot axis of stored keys and of stored values, counted from the end."""
    return (-1 if cpu_kernels.active(cfg) else -2), -2


def stored(cfg: GemmaConfig, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys/values ``[..., T, K, hd]`` of a chunk in the stored layout."""
    return tuple(jnp.moveaxis(a, -3, axis) for a, axis in zip((k, v), _slot_axes(cfg)))


def unstored(cfg: GemmaConfig, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of :func:`stored`: ``[..., T, K, hd]``."""
    return tuple(jnp.moveaxis(a, axis, -3) for a, axis in zip((k, v), _slot_axes(cfg)))


def slot_range(cfg: GemmaConfig, k: jax.Array, v: jax.Array, start: int, stop: int | None = None):
    """Stored keys/values cut to slots ``start .. stop - 1`` (static bounds)."""
    stop = v.shape[-2] if stop is None else stop
    return tuple(jax.lax.slice_in_dim(a, start, stop, axis=a.ndim + axis) for a, axis in zip((k, v), _slot_axes(cfg)))


def gather_slots(cfg: GemmaConfig, k: jax.Array, v: jax.Array, at: jax.Array):
    """Stored per-row keys/values ``[B, ...]`` at slots ``at [B, N]`` of each row."""
    def gather(a, axis):
        axis += a.ndim
        return jnp.take_along_axis(a, jnp.expand_dims(at, [d for d in range(1, a.ndim) if d != axis]), axis=axis)
    return tuple(gather(a, axis) for a, axis in zip((k, v), _slot_axes(cfg)))


def concat_slots(cfg: GemmaConfig, a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]):
    """Stored keys/values ``a`` followed, slot-wise, by ``b``."""
    return tuple(jnp.concatenate([x, y], axis=x.ndim + axis) for x, y, axis in zip(a, b, _slot_axes(cfg)))


def write_slot(cfg: GemmaConfig, k: jax.Array, v: jax.Array, new_k: jax.Array, new_v: jax.Array, slot):
    """Stored keys/values with the chunk ``new_k, new_v [..., T, K, hd]`` written from ``slot`` on (every row)."""
    new = stored(cfg, new_k.astype(k.dtype), new_v.astype(v.dtype))
    return tuple(jax.lax.dynamic_update_slice_in_dim(a, n, slot, a.ndim + axis)
                 for a, n, axis in zip((k, v), new, _slot_axes(cfg)))


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

    def write(into, chunk, axis):
        at = [slice(None)] * into.ndim
        at[1], at[into.ndim + axis] = rows, positions
        # Advanced indices split by a slice put their [B, T] dims first: the chunk goes in as [B, T, L, K, hd].
        return into.at[tuple(at)].set(jnp.moveaxis(chunk, 0, 2).astype(into.dtype), mode="drop")
    new_k, new_v = (write(*args) for args in zip((cache.k, cache.v), (k, v), _slot_axes(cfg)))
    return cache.replace(k=new_k, v=new_v)


def rewind(cache: KVCache, positions: jax.Array) -> KVCache:
    """Set each row's end back to ``positions[b]`` (never forward); later slots are ignored and overwritten."""
    return cache.replace(end=jnp.clip(positions.astype(jnp.int32), 0, cache.end))
