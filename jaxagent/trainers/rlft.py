"""RLFT: PPO-clipped RL fine-tuning on the model's own chain of thought, with a KL penalty to the starting policy.

Each rollout plays ``rollout.envs_per_rollout`` agent episodes with the current policy (the whole episode in one
jitted function, :mod:`jaxagent.rollout`); the training reward is the env reward plus the shaping terms (−5 for
an invalid action, an optional exploration bonus). From the rollout, once and without gradient: the batch unit's
inputs (``rl.batch_unit``: packed episodes, or step contexts scored one at a time), the reference policy's
log-probs, the advantages (``rl.advantage``). Then ``rl.epochs`` passes of mini-batch updates minimise

    PPO-clip(ratio, advantage) + β · KL(π ‖ π_ref) [+ c · value loss]

over every generated token, the ratio taken against the behaviour policy's log-probs recorded while sampling.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from envs_jax.yaml_config import ConfigError
from jaxagent import advantages as adv_lib
from jaxagent import losses, metrics
from jaxagent.contexts import final_values, score_contexts, step_contexts
from jaxagent.experiment_config import RLConfig
from jaxagent.model.config import GemmaConfig
from jaxagent.packing import pack, score_packed, token_mask
from jaxagent.runlog import RunLog
from jaxagent.trainers.loop import (Phase, check_batch_split, check_growing_history, draw, episodes_per_update,
                                    micro_batches, run_phase, split_updates)
from jaxagent.trainers.setup import inference_of


class Advantage(NamedTuple):
    """``estimate(rl, rewards [B, T], traj, values [B, T] | None, last_values [B] | None) -> (advantages,
    returns)``; ``last_values``: V of the state after each row's last step."""
    estimate: Callable
    needs_values: bool


def _rewards_to_go_mc(rl, rewards, traj, values, last_values):
    return adv_lib.rewards_to_go_mc(rewards, gamma=rl.gamma, normalize=rl.normalize_advantages,
                                    group_size=rl.group_size)


def _gae(rl, rewards, traj, values, last_values):
    # An episode still running at the end of the rollout bootstraps from the value of the state it reached.
    return adv_lib.gae(rewards, values, traj.done, last_values, gamma=rl.gamma, lam=rl.gae_lambda,
                       normalize=rl.normalize_advantages)


# rl.advantage -> estimator: Monte-Carlo rewards-to-go minus a per-step baseline (bandits), or GAE on the value
# head at each step's prompt (games).
ADVANTAGES = {"rewards_to_go_mc": Advantage(_rewards_to_go_mc, False), "gae": Advantage(_gae, True)}


# rl.batch_unit -> the scorer of its inputs: (params, cfg, inputs, temperature=, with_values=) -> log-probs
# [B, T, G] (and values [B, T]), for inputs built from [B, T] steps
SCORERS = {"episode": score_packed, "context": score_contexts}


def unit_inputs(rl: RLConfig, renderer, traj, env_params, pad_id: int):
    """The batch unit's inputs for a rollout: its packed episodes, or its step contexts."""
    if rl.batch_unit == "episode":
        return pack(renderer.prefix[0], traj, pad_id)
    return step_contexts(renderer, traj, env_params, pad_id)


def rl_batch(params, ref_params, model_cfg: GemmaConfig, rl: RLConfig, inputs, traj, temperature: float,
             forced_turns: bool = False, renderer=None, env_params=None) -> dict:
    """Everything the loss needs, computed once per rollout (no gradient), laid out ``[B, T, ...]``. With
    ``forced_turns`` (try-all / ε-greedy wrote some turns), those turns' behaviour log-probs are the model's
    log-probs of the forced text under the rollout's parameters. Advantages from the value head bootstrap
    unfinished episodes from the states they reached, rendered by ``renderer`` on ``env_params``."""
    scorer = SCORERS[rl.batch_unit]
    ref_logp = scorer(ref_params, model_cfg, inputs, temperature=temperature)
    old_logp = traj.logprobs
    if forced_turns:
        scored = scorer(params, model_cfg, inputs, temperature=temperature)
        old_logp = jnp.where(traj.forced[..., None], scored, old_logp)
    rewards = traj.train_rewards
    if rl.normalize_rewards:
        rewards = adv_lib.normalize_rewards(traj.env_rewards) + (traj.train_rewards - traj.env_rewards)
    batch = {"inputs": inputs, "mask": token_mask(traj), "old_logp": old_logp, "ref_logp": ref_logp}
    advantage, values, last_values = ADVANTAGES[rl.advantage], None, None
    if advantage.needs_values:
        _, values = scorer(params, model_cfg, inputs, temperature=temperature, with_values=True)
        batch["old_values"] = values
        last_values = final_values(params, model_cfg, renderer, traj, env_params, temperature=temperature)
    advantages, returns = advantage.estimate(rl, rewards, traj, values, last_values)
    return {**batch, "advantages": advantages, "returns": returns}


def rl_loss(model_cfg: GemmaConfig, rl: RLConfig, temperature: float):
    with_values, scorer = ADVANTAGES[rl.advantage].needs_values, SCORERS[rl.batch_unit]

    def loss_fn(params, batch):
        out = scorer(params, model_cfg, batch["inputs"], temperature=temperature, with_values=with_values)
        logp, values = out if with_values else (out, None)
        G = logp.shape[-1]
        flat = lambda x: x.reshape(-1, G)
        mask = flat(batch["mask"])
        terms = {} if values is None else {
            "value": losses.value(values.reshape(-1), batch["returns"].reshape(-1),
                                  old_values=batch["old_values"].reshape(-1), clip=rl.value_clip)}
        return {**terms,
            "ppo": losses.ppo_clip(flat(logp), flat(batch["old_logp"]), batch["advantages"].reshape(-1), mask,
                                   epsilon=rl.epsilon, epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high),
            "kl": losses.kl(flat(logp), flat(batch["ref_logp"]), mask, estimator=rl.kl_estimator),
            "entropy": losses.entropy(-jax.lax.stop_gradient(flat(logp)), mask),
        }
    return loss_fn


def rl_weights(rl: RLConfig) -> dict:
    weights = {"ppo": 1.0, "kl": rl.beta, "entropy": 0.0}
    return {**weights, "value": rl.value_coef} if ADVANTAGES[rl.advantage].needs_values else weights


def _rows_per_update(rl: RLConfig, loop, episodes_per_rollout: int) -> tuple[int, int, int]:
    """(batch rows per update, updates per rollout, micro-batches per update) for ``rl.batch_unit``."""
    if rl.batch_unit == "episode":
        check_growing_history(loop)
        rows = episodes_per_update(rl.batch_size, loop.num_steps, episodes_per_rollout)
        return rows, episodes_per_rollout // rows, micro_batches(rl.micro_batch_size, rows, loop.num_steps,
                                                                 "rl.micro_batch_size")
    contexts = episodes_per_rollout * loop.num_steps
    if rl.batch_size > contexts:
        raise ConfigError(f"config key 'rl.batch_size': {rl.batch_size} contexts, more than a rollout's {contexts}")
    return rl.batch_size, contexts // rl.batch_size, rl.batch_size // (rl.micro_batch_size or rl.batch_size)


def first_episodes(traj, n: int, mesh) -> dict:
    """The first ``n`` rows' turns (generated tokens and lengths, actions, validity, env rewards), replicated so
    that every process holds them."""
    fields = {"tokens": traj.tokens, "lengths": traj.lengths, "actions": traj.actions, "valid": traj.valid,
              "rewards": traj.env_rewards, "active": traj.active}
    replicated = NamedSharding(mesh, PartitionSpec())
    return {k: jax.lax.with_sharding_constraint(v[:n], replicated) for k, v in fields.items()}


def transcripts(tokenizer, episodes: dict) -> list[dict]:
    """:func:`first_episodes` as records: per episode, each active turn's text, token ids, action, validity and
    env reward."""
    e = jax.tree.map(np.asarray, episodes)
    return [{"episode": i, "turns": [
        {"step": t, "text": tokenizer.decode_bytes(e["tokens"][i, t, :e["lengths"][i, t]]),
         "tokens": e["tokens"][i, t, :e["lengths"][i, t]].tolist(), "action": int(e["actions"][i, t]),
         "valid": bool(e["valid"][i, t]), "reward": float(e["rewards"][i, t])}
        for t in range(e["tokens"].shape[1]) if e["active"][i, t]]} for i in range(e["tokens"].shape[0])]


def train(exp, params, directory: Path, log: RunLog, evaluate=None):
    cfg = exp.cfg
    rl, r = cfg.rl, cfg.rollout
    loop = dataclasses.replace(exp.train_loop, inference=inference_of(r))  # SFT's expert rollouts go without
    rows, per_rollout, k = _rows_per_update(rl, loop, r.envs_per_rollout)
    updates_per_rollout = per_rollout * rl.epochs
    if rl.num_updates % updates_per_rollout:
        raise ConfigError(f"config key 'rl.num_updates': {rl.num_updates} is not a multiple of the "
                          f"{updates_per_rollout} updates each rollout gives")
    check_batch_split(rows // k, exp.mesh, "rl.batch_size", f"{rl.batch_unit}s")
    key = jax.random.key(cfg.run.seed + 1)
    pool = exp.pool(jax.random.fold_in(key, 1), cfg.env.pool_size)
    ref_params, play, pad_id = params, loop.rollout_on(exp.mesh), exp.tokenizer.pad_id

    @jax.jit
    def make_batch(key, params, ref_params, pool):
        k_draw, k_play = jax.random.split(key)
        instances = draw(pool, k_draw, r.envs_per_rollout, rl.group_size)
        traj = play(params, instances, k_play)
        inputs = unit_inputs(rl, exp.renderer, traj, instances, pad_id)
        batch = rl_batch(params, ref_params, exp.model_cfg, rl, inputs, traj, loop.temperature,
                         forced_turns=loop.exploration is not None, renderer=exp.renderer, env_params=instances)
        if rl.batch_unit == "context":  # the rollout's contexts in a random order, the remainder left out
            batch = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
            order = jax.random.permutation(jax.random.fold_in(key, 1), r.envs_per_rollout * loop.num_steps)
            batch = jax.tree.map(lambda x: x[order[: rows * per_rollout]], batch)
        episodes = first_episodes(traj, r.log_samples, exp.mesh) if r.log_samples else None
        return batch, metrics.rollout_summary(traj, exp.env.num_actions), episodes

    def make_data(key, params):
        batch, stats, episodes = make_batch(key, params, ref_params, pool)
        scalars = {f"rollout/{k}": float(v) for k, v in stats.items()}
        if r.log_samples:
            scalars["samples"] = transcripts(exp.tokenizer, episodes)
        return split_updates(batch, per_rollout) * rl.epochs, scalars

    phase = Phase("rlft", rl_loss(exp.model_cfg, rl, loop.temperature), make_data, rl.num_updates,
                  rl.learning_rate, num_micro_batches=k, weights=rl_weights(rl))
    return run_phase(exp, phase, params, directory, jax.random.fold_in(key, 2), log, evaluate)
