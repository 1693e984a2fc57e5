"""The two training phases: SFT on expert episodes (thought or behaviour cloning) and RLFT (PPO + KL).

Batch sizes are counted in step contexts, as in the paper (128 contexts per update), and rounded to whole
episodes, the unit the packed scorer works on; in RLFT to a divisor of ``rollout.envs_per_rollout`` (the
paper's 128 contexts of 50-step episodes, 16 per rollout, become 2 episodes = 100 contexts per update).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxagent.checkpoint import Checkpointer
from envs_jax.yaml_config import ConfigError
from jaxagent.experts import Expert, ExplorationOverride, MinimaxExpert
from jaxagent.model.sharding import row_shards
from jaxagent.optim import make_optimizer
from jaxagent.runlog import RunLog
from jaxagent.train_step import create_train_state, make_train_step, shardings_of
from jaxagent.trainers import batches
from jaxagent.trainers.loop import fit, resume, split_updates


def episodes_per_update(batch_size: int, num_steps: int, episodes_per_rollout: int | None = None) -> int:
    if episodes_per_rollout is None:
        return max(1, round(batch_size / num_steps))
    divisors = [d for d in range(1, episodes_per_rollout + 1) if episodes_per_rollout % d == 0]
    return min(divisors, key=lambda d: abs(d * num_steps - batch_size))


def micro_batches(micro_batch_size: int | None, episodes: int, num_steps: int, key: str) -> int:
    if micro_batch_size is None:
        return 1
    per = episodes_per_update(micro_batch_size, num_steps)
    if episodes % per:
        raise ConfigError(f"config key '{key}': {micro_batch_size} contexts = {per} episodes, which does not "
                          f"divide the {episodes} episodes of an update")
    return episodes // per


def _phase_optim(optim, learning_rate):
    if learning_rate is None:
        return optim
    return dataclasses.replace(optim, learning_rate=learning_rate,
                               final_learning_rate=min(optim.final_learning_rate, learning_rate))


def _check_batch_split(episodes: int, mesh, key: str) -> None:
    shards = row_shards(mesh)
    if episodes % shards:
        raise ConfigError(f"config key '{key}': an update's {episodes} episodes do not split over the mesh's "
                          f"data x fsdp = {shards} devices")


def _check_growing_history(loop) -> None:
    """Training scores each episode as one packed sequence (:mod:`jaxagent.packing`), whose history only grows."""
    if not loop.rewinds:
        r = loop.renderer
        raise ConfigError(f"config key 'prompt.history_window': training needs the whole history in the prompt "
                          f"(packed episodes), got a window of {r.window} of the {r.horizon} steps; windows "
                          f"apply to evaluation only")


def _draw(pool, key, n: int, group_size: int = 1):
    """``n`` instances from the pool: ``n / group_size`` distinct ones, each repeated ``group_size`` times in a row."""
    size = jax.tree.leaves(pool)[0].shape[0]
    idx = jax.random.choice(key, size, (n // group_size,), replace=size < n // group_size)
    return jax.tree.map(lambda x: jnp.repeat(x[idx], group_size, axis=0), pool)


def sft_expert(exp):
    """The expert ``sft.expert`` names, checked against the env (bandit experts or minimax for games)."""
    s = exp.cfg.sft
    allowed = ("ucb", "greedy") if exp.bandit else ("minimax",)
    if s.expert not in allowed:
        raise ConfigError(f"config key 'sft.expert': {s.expert!r} is not an expert for {exp.cfg.env.name} "
                          f"(expected one of {allowed})")
    reasoning = s.target == "thought_cloning"
    if exp.bandit:
        return Expert(s.expert, exp.tokenizer, exp.labels, exp.env.horizon, stats=s.rationale_stats,
                      reasoning=reasoning)
    return MinimaxExpert(exp.env, exp.tokenizer, exp.labels, reasoning)


def label_every_turn(expert, traj, key, pad_id: int):
    """The trajectory with every turn's text replaced by the expert's for the state that turn saw (DAgger-style
    relabelling: the history keeps the actions actually played); no turn counts as forced any more."""
    B, T, G = traj.tokens.shape
    states = jax.tree.map(lambda x: x.reshape((B * T,) + x.shape[2:]), traj.states)
    _, (tokens, lengths) = jax.vmap(expert.act, in_axes=(0, 0, None))(jax.random.split(key, B * T), states, None)
    tokens = jnp.pad(tokens, ((0, 0), (0, G - tokens.shape[1])), constant_values=pad_id)
    return traj.replace(tokens=tokens.reshape(B, T, G), lengths=lengths.reshape(B, T),
                        forced=jnp.zeros_like(traj.forced))


def train_sft(exp, params, directory: Path, log: RunLog, evaluate=None):
    cfg, loop = exp.cfg, exp.train_loop
    s = cfg.sft
    _check_growing_history(loop)
    expert = sft_expert(exp)
    # Action noise widens the states the expert's data covers (e.g. a greedy expert that saw several arms);
    # every turn, the noisy ones included, is labelled with the expert's text for the state it saw.
    if s.action_noise and not exp.bandit:
        raise ConfigError(f"config key 'sft.action_noise': applies to bandits only, not {cfg.env.name}")
    noise = ExplorationOverride(exp.tokenizer, exp.labels, exp.env.horizon, try_all=False,
                                epsilon=s.action_noise) if s.action_noise else None
    loop = dataclasses.replace(loop, exploration=noise)
    episodes = episodes_per_update(s.batch_size, loop.num_steps)
    k = micro_batches(s.micro_batch_size, episodes, loop.num_steps, "sft.micro_batch_size")
    _check_batch_split(episodes // k, exp.mesh, "sft.batch_size")
    key = jax.random.key(cfg.run.seed)
    pool = exp.pool(jax.random.fold_in(key, 1), cfg.env.pool_size)
    prefix = exp.renderer.prefix[0]

    @jax.jit
    def make_batch(key, pool):
        k_draw, k_play, k_label = jax.random.split(key, 3)
        traj = loop.expert_rollout(expert, _draw(pool, k_draw, episodes), k_play)
        if noise is not None:
            traj = label_every_turn(expert, traj, k_label, exp.tokenizer.pad_id)
        return batches.sft_batch(prefix, traj, exp.tokenizer.pad_id)

    optimizer = make_optimizer(_phase_optim(cfg.optim, s.learning_rate), s.num_updates)
    checkpointer = Checkpointer(directory / "checkpoints", keep=cfg.run.keep_checkpoints)
    state = resume(checkpointer, create_train_state(params, optimizer))
    step_fn = make_train_step(batches.sft_loss(exp.model_cfg), optimizer, num_micro_batches=k,
                              state_sharding=shardings_of(state), batch_sharding=exp.batch_sharding())
    state = fit("sft", state, total_updates=s.num_updates, key=jax.random.fold_in(key, 2),
                make_data=lambda key, _: ([make_batch(key, pool)], {}), train_step=step_fn, log=log,
                checkpointer=checkpointer, checkpoint_every=cfg.run.checkpoint_every, log_every=cfg.run.log_every,
                on_eval=evaluate, eval_every=cfg.eval.every)
    checkpointer.close()
    return state.params


def train_rlft(exp, params, directory: Path, log: RunLog, evaluate=None):
    cfg, loop = exp.cfg, exp.train_loop
    rl, r = cfg.rl, cfg.rollout
    _check_growing_history(loop)
    episodes = episodes_per_update(rl.batch_size, loop.num_steps, r.envs_per_rollout)
    updates_per_rollout = r.envs_per_rollout // episodes * rl.epochs
    if rl.num_updates % updates_per_rollout:
        raise ConfigError(f"config key 'rl.num_updates': {rl.num_updates} is not a multiple of the "
                          f"{updates_per_rollout} updates each rollout gives")
    k = micro_batches(rl.micro_batch_size, episodes, loop.num_steps, "rl.micro_batch_size")
    _check_batch_split(episodes // k, exp.mesh, "rl.batch_size")
    key = jax.random.key(cfg.run.seed + 1)
    pool = exp.pool(jax.random.fold_in(key, 1), cfg.env.pool_size)
    prefix, ref_params = exp.renderer.prefix[0], params
    play = loop.rollout_on(exp.mesh)

    @jax.jit
    def make_batch(key, params, ref_params, pool):
        k_draw, k_play = jax.random.split(key)
        traj = play(params, _draw(pool, k_draw, r.envs_per_rollout, rl.group_size), k_play)
        batch = batches.rl_batch(params, ref_params, exp.model_cfg, rl, prefix, traj, exp.tokenizer.pad_id,
                                 loop.temperature, forced_turns=loop.exploration is not None)
        stats = {"rollout/env_reward": traj.env_rewards.sum(1).mean(),
                 "rollout/train_reward": traj.train_rewards.sum(1).mean(),
                 "rollout/invalid_rate": 1.0 - traj.valid.mean(),
                 "rollout/generated_length": traj.lengths.mean(),
                 "rollout/regret": (traj.best_expected_reward - traj.expected_reward).sum(1).mean(),
                 "rollout/coverage": jax.nn.one_hot(traj.actions, exp.env.num_actions).max(1).mean()}
        return batch, stats

    def make_data(key, params):
        batch, stats = make_batch(key, params, ref_params, pool)
        minibatches = split_updates(batch, r.envs_per_rollout // episodes)
        return minibatches * rl.epochs, {k: float(v) for k, v in stats.items()}

    optimizer = make_optimizer(_phase_optim(cfg.optim, rl.learning_rate), rl.num_updates)
    checkpointer = Checkpointer(directory / "checkpoints", keep=cfg.run.keep_checkpoints)
    state = resume(checkpointer, create_train_state(params, optimizer))
    step_fn = make_train_step(batches.rl_loss(exp.model_cfg, rl, loop.temperature), optimizer,
                              num_micro_batches=k, weights=batches.rl_weights(rl),
                              state_sharding=shardings_of(state), batch_sharding=exp.batch_sharding())
    state = fit("rlft", state, total_updates=rl.num_updates, key=jax.random.fold_in(key, 2), make_data=make_data,
                train_step=step_fn, log=log, checkpointer=checkpointer, checkpoint_every=cfg.run.checkpoint_every,
                log_every=cfg.run.log_every, on_eval=evaluate, eval_every=cfg.eval.every)
    checkpointer.close()
    return state.params
