"""envs_jax: pure-JAX decision-making environments (bandits, a MovieLens contextual bandit, tic-tac-toe),
classic baseline policies and vectorised sweeps — usable on their own, gymnax-style.

    env, params = envs_jax.make("bandit-gaussian", num_arms=10, sigma=1.0)
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Imports only jax, flax.struct and numpy (the sweep module and its typed YAML configs add PyYAML and,
lazily, matplotlib); no module imports ``jaxagent``.
"""
from envs_jax.core import EnvError, Environment
from envs_jax.registry import make, make_env, register, registered_envs
from envs_jax.registry import _register_builtins
from envs_jax.wrappers import AutoReset, auto_reset

_register_builtins()
del _register_builtins

from envs_jax import baselines  # noqa: E402  (needs the registered envs' modules)

__version__ = "0.1.0"
__all__ = ["EnvError", "Environment", "AutoReset", "auto_reset", "make", "make_env", "register",
           "registered_envs", "baselines"]
