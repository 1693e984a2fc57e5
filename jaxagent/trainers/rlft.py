"""RLFT: PPO-clipped RL fine-tuning on the model's own chain of thought, with a KL penalty to the starting policy.

Each rollout plays ``rollout.envs_per_rollout`` agent episodes with the current policy (the whole episode in one
jitted function, :mod:`jaxagent.rollout`); the training reward is the env reward plus the shaping terms (−5 for
an invalid action, an optional exploration bonus). From the rollout, once and without gradient: the packed
episodes, the reference policy's log-probs, the advantages (``rl.advantage``). Then ``rl.epochs`` passes of
mini-batch updates minimise

    PPO-clip(ratio, advantage) + β · KL(π ‖ π_ref) [+ c · value loss]

over every generated token, the ratio taken against the behaviour policy's log-probs recorded while sampling.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from envs_jax.yaml_config import ConfigError
from jaxagent import advantages as adv_lib
from jaxagent import losses, metrics
from jaxagent.experiment_config import RLConfig
from jaxagent.model.config import GemmaConfig
from jaxagent.packing import pack, score_packed, token_mask
from jaxagent.runlog import RunLog
from jaxagent.trainers.loop import (Phase, check_batch_split, check_growing_history, draw, episodes_per_update,
                                    micro_batches, run_phase, split_updates)


class Advantage(NamedTuple):
    """``estimate(rl, rewards [B, T], traj, values [B, T] | None) -> (advantages, returns)``."""
    estimate: Callable
    needs_values: bool


def _rewards_to_go_mc(rl, rewards, traj, values):
    return adv_lib.rewards_to_go_mc(rewards, gamma=rl.gamma, normalize=rl.normalize_advantages,
                                    group_size=rl.group_size)


def _gae(rl, rewards, traj, values):
    # An episode still running at the end of the rollout bootstraps from V = 0.
    return adv_lib.gae(rewards, values, traj.done, jnp.zeros(values.shape[0]), gamma=rl.gamma, lam=rl.gae_lambda,
                       normalize=rl.normalize_advantages)


# rl.advantage -> estimator: Monte-Carlo rewards-to-go minus a per-step baseline (bandits), or GAE on the value
# head at each step's prompt (games).
ADVANTAGES = {"rewards_to_go_mc": Advantage(_rewards_to_go_mc, False), "gae": Advantage(_gae, True)}


def rl_batch(params, ref_params, model_cfg: GemmaConfig, rl: RLConfig, prefix_tokens, traj, pad_id: int,
             temperature: float, forced_turns: bool = False) -> dict:
    """Everything the loss needs, computed once per rollout (no gradient). With ``forced_turns`` (try-all /
    ε-greedy wrote some turns), those turns' behaviour log-probs are the model's log-probs of the forced text
    under the rollout's parameters."""
    packed = pack(prefix_tokens, traj, pad_id)
    ref_logp = score_packed(ref_params, model_cfg, packed, temperature=temperature)
    old_logp = traj.logprobs
    if forced_turns:
        scored = score_packed(params, model_cfg, packed, temperature=temperature)
        old_logp = jnp.where(traj.forced[..., None], scored, old_logp)
    rewards = traj.train_rewards
    if rl.normalize_rewards:
        rewards = adv_lib.normalize_rewards(traj.env_rewards) + (traj.train_rewards - traj.env_rewards)
    batch = {"packed": packed, "mask": token_mask(traj), "old_logp": old_logp, "ref_logp": ref_logp}
    advantage, values = ADVANTAGES[rl.advantage], None
    if advantage.needs_values:
        _, values = score_packed(params, model_cfg, packed, temperature=temperature, with_values=True)
        batch["old_values"] = values
    advantages, returns = advantage.estimate(rl, rewards, traj, values)
    return {**batch, "advantages": advantages, "returns": returns}


def rl_loss(model_cfg: GemmaConfig, rl: RLConfig, temperature: float):
    with_values = ADVANTAGES[rl.advantage].needs_values

    def loss_fn(params, batch):
        out = score_packed(params, model_cfg, batch["packed"], temperature=temperature, with_values=with_values)
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


def train(exp, params, directory: Path, log: RunLog, evaluate=None):
    cfg, loop = exp.cfg, exp.train_loop
    rl, r = cfg.rl, cfg.rollout
    check_growing_history(loop)
    episodes = episodes_per_update(rl.batch_size, loop.num_steps, r.envs_per_rollout)
    updates_per_rollout = r.envs_per_rollout // episodes * rl.epochs
    if rl.num_updates % updates_per_rollout:
        raise ConfigError(f"config key 'rl.num_updates': {rl.num_updates} is not a multiple of the "
                          f"{updates_per_rollout} updates each rollout gives")
    k = micro_batches(rl.micro_batch_size, episodes, loop.num_steps, "rl.micro_batch_size")
    check_batch_split(episodes // k, exp.mesh, "rl.batch_size")
    key = jax.random.key(cfg.run.seed + 1)
    pool = exp.pool(jax.random.fold_in(key, 1), cfg.env.pool_size)
    prefix, ref_params = exp.renderer.prefix[0], params
    play = loop.rollout_on(exp.mesh)

    @jax.jit
    def make_batch(key, params, ref_params, pool):
        k_draw, k_play = jax.random.split(key)
        traj = play(params, draw(pool, k_draw, r.envs_per_rollout, rl.group_size), k_play)
        batch = rl_batch(params, ref_params, exp.model_cfg, rl, prefix, traj, exp.tokenizer.pad_id,
                         loop.temperature, forced_turns=loop.exploration is not None)
        return batch, metrics.rollout_summary(traj, exp.env.num_actions)

    def make_data(key, params):
        batch, stats = make_batch(key, params, ref_params, pool)
        minibatches = split_updates(batch, r.envs_per_rollout // episodes)
        return minibatches * rl.epochs, {f"rollout/{k}": float(v) for k, v in stats.items()}

    phase = Phase("rlft", rl_loss(exp.model_cfg, rl, loop.temperature), make_data, rl.num_updates,
                  rl.learning_rate, num_micro_batches=k, weights=rl_weights(rl))
    return run_phase(exp, phase, params, directory, jax.random.fold_in(key, 2), log, evaluate)
