"""The environment contract (gymnax 1.0 style) and the small helpers every env shares.

``obs, state = env.reset(key, params)``;
``obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)``.
``params`` is data (a ``flax.struct`` dataclass of arrays), so a pool of instances is a batched ``params``
under ``vmap``; ``env.sample_params(key)`` draws one instance and ``env.default_params`` is a fixed one.
Everything is jittable and vmappable over keys, states, actions and params. Stepping a finished episode is a
no-op that returns reward 0 (pgx's rule); auto-reset lives in one wrapper (``envs_jax.wrappers.AutoReset``).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32


class EnvError(ValueError):
    """A bad environment name, option value or data file; the message names it."""


#: What an env is, for code that treats kinds differently (prompts, experts, metrics): a bandit (per-arm counts
#: and rewards), a contextual bandit (a bandit whose best arm depends on a context) or a two-player game.
KINDS = ("bandit", "contextual_bandit", "game")


class Environment:
    """Base class. Subclasses set ``name``, ``kind``, ``version``, ``num_actions``, ``horizon`` and implement the
    methods."""

    name: str = ""
    kind: str = ""  # one of KINDS
    version: str = "v0"
    num_actions: int
    horizon: int
    #: False when ``reset`` ignores its key; ``AutoReset`` then skips deriving a reset key (a hash per step).
    reset_uses_key: bool = True
    #: The options that change the traced ``step``/``reset`` (shapes, static rules). Envs with equal
    #: ``(type, static_options)`` can share one compiled function over a stacked ``params`` pool.
    static_options: tuple = ()

    @property
    def default_params(self) -> Any:
        raise NotImplementedError

    def sample_params(self, key: jax.Array) -> Any:
        raise NotImplementedError

    def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
        raise NotImplementedError

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any):
        raise NotImplementedError

    def observation(self, state: Any, params: Any) -> jax.Array:
        raise NotImplementedError

    @property
    def signature(self) -> tuple:
        return (type(self).__name__,) + tuple(self.static_options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.static_options)
        return f"<{type(self).__name__} {self.name!r} {self.version} ({opts})>"


# --------------------------------------------------------------------------------------------- options
def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise EnvError(f"option {name!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, minimum: float = -np.inf, maximum: float = np.inf,
                min_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise EnvError(f"option {name!r} must be a number, got {value!r}")
    v = float(value)
    low_ok = v >= minimum if min_inclusive else v > minimum
    if not (np.isfinite(v) and low_ok and v <= maximum):
        lo = f"{'>=' if min_inclusive else '>'} {minimum}" if np.isfinite(minimum) else ""
        hi = f"<= {maximum}" if np.isfinite(maximum) else ""
        rng = " and ".join(s for s in (lo, hi) if s)
        raise EnvError(f"option {name!r} must be a finite number {rng}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise EnvError(f"option {name!r} must be one of {list(choices)}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------ randomness
def uniforms(key: jax.Array, n: int) -> jax.Array:
    """``n`` independent U[0, 1) floats from ``key`` — one Threefry block per two floats.

    ``jax.random.uniform(key, (n,))`` spends a whole Threefry block on each 32-bit word; here both words of a
    block are used, which halves the hashing in the hot step. Other PRNG implementations fall back to
    ``jax.random.bits``. The key must not be reused by the caller (as always in JAX).
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            bits = jax.random.bits(key, (n,), jnp.uint32)
            return _to_unit(bits)
        data = jax.random.key_data(key)
    else:  # a raw uint32[2] threefry key (jax.random.PRNGKey)
        data = key
    m = n + (n % 2)
    words = threefry_2x32(data, jnp.arange(m, dtype=jnp.uint32))
    return _to_unit(words[:n])


def _to_unit(bits: jax.Array) -> jax.Array:
    """uint32 -> float32 in [0, 1) from the top 23 bits (the construction jax.random.uniform uses)."""
    mant = (bits >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
    return jax.lax.bitcast_convert_type(mant, jnp.float32) - jnp.float32(1.0)


def normal_from_uniform(u: jax.Array) -> jax.Array:
    """A standard normal from a U[0, 1) float by the inverse CDF (as jax.random.normal does)."""
    lo = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))
    v = jnp.clip(2.0 * u - 1.0, lo, 1.0)
    return jnp.float32(np.sqrt(2.0)) * jax.lax.erf_inv(v)


def uniform_index(u: jax.Array, n: int) -> jax.Array:
    """An index in [0, n) from a U[0, 1) float."""
    return jnp.minimum((u * n).astype(jnp.int32), n - 1)


def random_true_index(u: jax.Array, mask: jax.Array) -> jax.Array:
    """A uniformly random index among the True entries of ``mask`` (last axis), from one U[0, 1) float.

    With no True entry it returns 0. One float instead of a categorical's one Gumbel per entry.
    """
    counts = jnp.cumsum(mask.astype(jnp.int32), axis=-1)
    n = counts[..., -1]
    k = jnp.minimum((u * n).astype(jnp.int32), jnp.maximum(n - 1, 0))
    return jnp.argmax(counts > k[..., None], axis=-1).astype(jnp.int32)


def as_action(action: Any) -> jax.Array:
    """Actions are int32; a float action is truncated towards zero only if integral, else made invalid."""
    a = jnp.asarray(action)
    if jnp.issubdtype(a.dtype, jnp.integer):
        return a.astype(jnp.int32)
    af = a.astype(jnp.float32)
    integral = (jnp.floor(af) == af) & (jnp.abs(af) < 2 ** 30)
    return jnp.where(integral, af, -1.0).astype(jnp.int32)
