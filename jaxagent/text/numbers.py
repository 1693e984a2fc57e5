"""Numbers in prompts: two-decimal values and their lookup-table index, identical on host and in jit.

A value x is shown as k/100 with k = round-half-even(float32(x) * 100) in float32 arithmetic, clipped to
±9999 (so ±99.99 is the widest value shown), written without a negative zero: -0.004 -> "0.00".
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

HUNDREDTHS_LIMIT = 9999  # |k| <= this, i.e. values are clipped to [-99.99, 99.99]
NUM_HUNDREDTHS = 2 * HUNDREDTHS_LIMIT + 1


def hundredths(x: float) -> int:
    """Host: the clipped integer k of a value (see module docstring)."""
    k = np.rint(np.float32(x) * np.float32(100.0))
    return int(np.clip(k, -HUNDREDTHS_LIMIT, HUNDREDTHS_LIMIT))


def format_hundredths(k: int) -> str:
    sign = "-" if k < 0 else ""
    return f"{sign}{abs(k) // 100}.{abs(k) % 100:02d}"


def format_value(x: float) -> str:
    """Host: a value as shown in prompts, e.g. 0.3 -> "0.30"."""
    return format_hundredths(hundredths(x))


def all_values() -> list[str]:
    """Every value string, in table order (index = k + HUNDREDTHS_LIMIT)."""
    return [format_hundredths(k) for k in range(-HUNDREDTHS_LIMIT, HUNDREDTHS_LIMIT + 1)]


def value_index(x) -> jnp.ndarray:
    """Jit: the table index of a value (float32 arithmetic, same rounding as :func:`hundredths`)."""
    k = jnp.round(jnp.asarray(x, jnp.float32) * jnp.float32(100.0))
    return (jnp.clip(k, -HUNDREDTHS_LIMIT, HUNDREDTHS_LIMIT) + HUNDREDTHS_LIMIT).astype(jnp.int32)
