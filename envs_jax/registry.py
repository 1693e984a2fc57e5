"""Named environments: ``env, params = envs_jax.make(name, **options)``. Names are part of the public API."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from envs_jax.core import EnvError, Environment

_REGISTRY: dict[str, Callable[..., Environment]] = {}


def register(name: str, factory: Callable[..., Environment], *, overwrite: bool = False) -> None:
    """Register ``factory(**options) -> Environment`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise EnvError(f"environment name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise EnvError(f"environment {name!r} is already registered")
    _REGISTRY[name] = factory


def registered_envs() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def make_env(name: str, **options: Any) -> Environment:
    """The environment object alone (no params)."""
    if name not in _REGISTRY:
        raise EnvError(f"unknown environment {name!r}; registered: {', '.join(registered_envs())}")
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [k for k in params if k != "self"]
        for key in options:
            if key not in params:
                raise EnvError(f"unknown option {key!r} for environment {name!r} (options: {', '.join(known)})")
    return factory(**options)


def make(name: str, **options: Any) -> tuple[Environment, Any]:
    """``(env, default_params)`` for a registered name; bad names or options raise :class:`EnvError`."""
    env = make_env(name, **options)
    return env, env.default_params


def _register_builtins() -> None:
    from envs_jax.bandits import BernoulliBandit, GaussianBandit
    from envs_jax.contextual import ContextualMovieLens
    from envs_jax.tictactoe import TicTacToe

    register("bandit-gaussian", GaussianBandit)
    register("bandit-bernoulli", BernoulliBandit)
    register("contextual-movielens", ContextualMovieLens)
    register("tictactoe", TicTacToe)
