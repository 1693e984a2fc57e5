"""Auto-reset: the one place where a finished episode is replaced by a fresh one.

``AutoReset(env)`` wraps an :class:`~envs_jax.core.Environment`; ``auto_reset(step, init)`` wraps a pure
two-player game core (``envs_jax.games``). Both select between the stepped and the fresh state with
:func:`select_tree`, whose batching rule skips the whole-state select when no row of the batch is done —
so carrying long history arrays costs nothing extra on the steps where no episode ends.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from envs_jax.core import Environment


def _where_tree(done: jax.Array, new: Any, old: Any) -> Any:
    def sel(x, y):
        d = jnp.reshape(done, done.shape + (1,) * (jnp.ndim(y) - done.ndim))
        return jnp.where(d, x, y)
    return jax.tree.map(sel, new, old)


@custom_vmap
def select_tree(done: jax.Array, new: Any, old: Any) -> Any:
    """``where(done, new, old)`` leaf by leaf (``done`` a scalar bool; ``new``/``old`` pytrees of one shape)."""
    return _where_tree(done, new, old)


@select_tree.def_vmap
def _select_tree_vmap(axis_size, in_batched, done, new, old):
    done_b, new_b, old_b = in_batched

    def bcast(x, b):
        return x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))

    new = jax.tree.map(bcast, new, new_b)
    old = jax.tree.map(bcast, old, old_b)
    if not done_b:  # one flag for the whole batch
        out = jax.lax.cond(done, lambda: new, lambda: old)
    else:
        out = jax.lax.cond(jnp.any(done), lambda: _where_tree(done, new, old), lambda: old)
    return out, jax.tree.map(lambda _: True, out)


class AutoReset(Environment):
    """Resets the episode inside ``step`` when it ends.

    The returned reward, ``terminated``, ``truncated`` and ``info`` are those of the step that was taken (the
    finished episode's last step); the returned ``obs`` and ``state`` are the new episode's. The new episode
    runs on the same ``params`` (instance). The reset key is derived from the step key only when the env's
    ``reset`` uses one.
    """

    def __init__(self, env: Environment):
        self.env = env

    def __getattr__(self, name: str) -> Any:
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    name = property(lambda self: self.env.name)
    kind = property(lambda self: self.env.kind)
    version = property(lambda self: self.env.version)
    num_actions = property(lambda self: self.env.num_actions)
    horizon = property(lambda self: self.env.horizon)
    static_options = property(lambda self: self.env.static_options)
    reset_uses_key = property(lambda self: self.env.reset_uses_key)

    @property
    def default_params(self):
        return self.env.default_params

    def sample_params(self, key):
        return self.env.sample_params(key)

    def reset(self, key, params):
        return self.env.reset(key, params)

    def observation(self, state, params):
        return self.env.observation(state, params)

    def step(self, key, state, action, params):
        if self.env.reset_uses_key:
            key, key_reset = jax.random.split(key)
        else:
            key_reset = key
        obs, stepped, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        obs_reset, state_reset = self.env.reset(key_reset, params)
        done = jnp.logical_or(terminated, truncated)
        state = select_tree(done, state_reset, stepped)
        obs = select_tree(done, obs_reset, obs)
        return obs, state, reward, terminated, truncated, info

    def __repr__(self) -> str:
        return f"AutoReset({self.env!r})"


def auto_reset(step: Callable[..., Any], init: Callable[[], Any],
               done: Callable[[Any], jax.Array] = lambda s: s.terminated) -> Callable[..., tuple[Any, Any]]:
    """Auto-reset for a pure game core: ``wrapped(state, *args) -> (next_state, stepped_state)``.

    ``next_state`` is ``init()`` where the step ended the game and the stepped state elsewhere;
    ``stepped_state`` (the state before the reset: final rewards, winner) costs nothing when unused.
    """
    def wrapped(state, *args):
        stepped = step(state, *args)
        return select_tree(done(stepped), init(), stepped), stepped
    return wrapped
