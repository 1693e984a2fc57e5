"""SFT: behaviour or thought cloning of an expert (the RLFT paper's UCB / greedy / minimax baselines).

Every update plays fresh expert episodes on instances drawn from the training pool, packs them, and minimises
the mean negative log-likelihood of the expert's own tokens (``sft.target``: its rationale and action, or the
action alone). Turns an exploration override played (``sft.action_noise``) are relabelled with the expert's
text for the state they saw, so the data covers states the expert alone would not reach.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from envs_jax.yaml_config import ConfigError
from jaxagent import losses
from jaxagent.experts import ExplorationOverride
from jaxagent.model.config import GemmaConfig
from jaxagent.packing import pack, score_packed, token_mask
from jaxagent.runlog import RunLog
from jaxagent.trainers.loop import (Phase, check_batch_split, check_growing_history, draw, episodes_per_update,
                                    micro_batches, run_phase)


def sft_expert(exp):
    """The expert ``sft.expert`` names, checked against the env (bandit experts or minimax for games)."""
    s = exp.cfg.sft
    if s.expert not in exp.kind.experts:
        raise ConfigError(f"config key 'sft.expert': {s.expert!r} is not an expert for {exp.cfg.env.name} "
                          f"(expected one of {exp.kind.experts})")
    return exp.kind.expert(exp.env, exp.tokenizer, exp.labels, s.expert, reasoning=s.target == "thought_cloning",
                           stats=s.rationale_stats)


def label_every_turn(expert, traj, key, pad_id: int):
    """The trajectory with every turn's text replaced by the expert's for the state that turn saw (DAgger-style
    relabelling: the history keeps the actions actually played); no turn counts as forced any more."""
    B, T, G = traj.tokens.shape
    states = jax.tree.map(lambda x: x.reshape((B * T,) + x.shape[2:]), traj.states)
    _, (tokens, lengths) = jax.vmap(expert.act, in_axes=(0, 0, None))(jax.random.split(key, B * T), states, None)
    tokens = jnp.pad(tokens, ((0, 0), (0, G - tokens.shape[1])), constant_values=pad_id)
    return traj.replace(tokens=tokens.reshape(B, T, G), lengths=lengths.reshape(B, T),
                        forced=jnp.zeros_like(traj.forced))


def sft_batch(prefix_tokens, traj, pad_id: int) -> dict:
    """Packed episodes and a loss mask on the expert's own turns (not on turns an exploration override wrote)."""
    mask = token_mask(traj) * (1.0 - traj.forced[..., None].astype(jnp.float32))
    return {"packed": pack(prefix_tokens, traj, pad_id), "mask": mask}


def sft_loss(model_cfg: GemmaConfig):
    def loss_fn(params, batch):
        logp = score_packed(params, model_cfg, batch["packed"])
        G = logp.shape[-1]
        return {"sft": losses.sft_nll(logp.reshape(-1, G), batch["mask"].reshape(-1, G))}
    return loss_fn


def train(exp, params, directory: Path, log: RunLog, evaluate=None):
    cfg, s = exp.cfg, exp.cfg.sft
    check_growing_history(exp.train_loop)
    expert = sft_expert(exp)
    if s.action_noise and not exp.kind.arms:
        raise ConfigError(f"config key 'sft.action_noise': applies to bandits only, not {cfg.env.name}")
    noise = ExplorationOverride(exp.tokenizer, exp.labels, exp.env.horizon, try_all=False,
                                epsilon=s.action_noise) if s.action_noise else None
    loop = dataclasses.replace(exp.train_loop, exploration=noise)
    episodes = episodes_per_update(s.batch_size, loop.num_steps)
    k = micro_batches(s.micro_batch_size, episodes, loop.num_steps, "sft.micro_batch_size")
    check_batch_split(episodes // k, exp.mesh, "sft.batch_size")
    key = jax.random.key(cfg.run.seed)
    pool = exp.pool(jax.random.fold_in(key, 1), cfg.env.pool_size)
    prefix = exp.renderer.prefix[0]

    @jax.jit
    def make_batch(key, pool):
        k_draw, k_play, k_label = jax.random.split(key, 3)
        traj = loop.expert_rollout(expert, draw(pool, k_draw, episodes), k_play)
        if noise is not None:
            traj = label_every_turn(expert, traj, k_label, exp.tokenizer.pad_id)
        return sft_batch(prefix, traj, exp.tokenizer.pad_id)

    phase = Phase("sft", sft_loss(exp.model_cfg), lambda key, _: ([make_batch(key, pool)], {}), s.num_updates,
                  s.learning_rate, num_micro_batches=k)
    return run_phase(exp, phase, params, directory, jax.random.fold_in(key, 2), log, evaluate)
