"""Optimisers: global-norm clipping, then Adafactor or AdamW on a warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import optax

from envs_jax.yaml_config import ConfigError
from jaxagent.experiment_config import OptimConfig


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps`` updates, then cosine decay to
    ``final_learning_rate`` at update ``total_steps`` (and constant after)."""
    if total_steps <= cfg.warmup_steps:
        raise ConfigError(f"config key 'optim.warmup_steps': a phase of {total_steps} updates is not longer than "
                          f"optim.warmup_steps={cfg.warmup_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=total_steps, end_value=cfg.final_learning_rate)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax chain for ``cfg`` over a run of ``total_steps`` updates.

    Adafactor uses an absolute step size by default (``adafactor_param_scale=False``): the paper's
    1e-4 is a learning rate, not Adafactor's relative step scaled by each parameter's RMS.
    """
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adafactor":
        opt = optax.adafactor(learning_rate=schedule, decay_rate=cfg.adafactor_decay_rate,
                              multiply_by_parameter_scale=cfg.adafactor_param_scale,
                              weight_decay_rate=cfg.weight_decay or None)
    elif cfg.name == "adamw":
        opt = optax.adamw(learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer optim.name={cfg.name!r} (known: adafactor, adamw)")
    if cfg.clip_norm is None:
        return opt
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
