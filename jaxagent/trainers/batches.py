"""Training batches from trajectories: packed episodes, token masks, advantages, reference log-probs; the losses.

A batch row is one episode (all its step contexts packed into one sequence, see :mod:`jaxagent.packing`);
losses are token means over every generated token of the global batch, so splitting rows into
micro-batches changes nothing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxagent import advantages as adv_lib
from jaxagent import losses
from jaxagent.experiment import RLConfig
from jaxagent.model.config import GemmaConfig
from jaxagent.packing import pack, score_packed


def token_mask(traj) -> jax.Array:
    """[B, T, G]: 1 on each step's generated tokens."""
    G = traj.tokens.shape[-1]
    return (jnp.arange(G)[None, None, :] < traj.lengths[..., None]).astype(jnp.float32)


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


def rl_batch(params, ref_params, model_cfg: GemmaConfig, rl: RLConfig, prefix_tokens, traj, pad_id: int,
             temperature: float, forced_turns: bool = False) -> dict:
    """Everything the PPO + KL (+ value) loss needs, computed once per rollout (no gradient).

    Advantages: rewards-to-go minus a Monte-Carlo baseline (bandits), or GAE on the value head at each
    step's prompt (games; an episode still running at the end of the rollout bootstraps from V = 0).
    With ``forced_turns`` (try-all / ε-greedy wrote some turns), those turns' behaviour log-probs are the
    model's log-probs of the forced text under the rollout's parameters.
    """
    packed = pack(prefix_tokens, traj, pad_id)
    ref_logp = score_packed(ref_params, model_cfg, packed, temperature=temperature)
    old_logp = traj.logprobs
    if forced_turns:
        scored = score_packed(params, model_cfg, packed, temperature=temperature)
        old_logp = jnp.where(traj.forced[..., None], scored, old_logp)
    rewards = traj.train_rewards
    if rl.normalize_rewards:
        env_part = adv_lib.normalize_rewards(traj.env_rewards)
        rewards = env_part + (traj.train_rewards - traj.env_rewards)
    batch = {"packed": packed, "mask": token_mask(traj), "old_logp": old_logp, "ref_logp": ref_logp}
    if rl.advantage == "gae":
        _, values = score_packed(params, model_cfg, packed, temperature=temperature, with_values=True)
        advantages, returns = adv_lib.gae(rewards, values, traj.done, jnp.zeros(values.shape[0]), gamma=rl.gamma,
                                          lam=rl.gae_lambda, normalize=rl.normalize_advantages)
        batch["old_values"] = values
    else:
        advantages, returns = adv_lib.rewards_to_go_mc(rewards, gamma=rl.gamma, normalize=rl.normalize_advantages,
                                                         group_size=rl.group_size)
    return {**batch, "advantages": advantages, "returns": returns}


def rl_loss(model_cfg: GemmaConfig, rl: RLConfig, temperature: float):
    with_values = rl.advantage == "gae"

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
    return {**weights, "value": rl.value_coef} if rl.advantage == "gae" else weights
