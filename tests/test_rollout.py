"""Expert episodes and the exploration overrides in the agent episode (the episode itself, against a host loop that
plays it, is in test_episode.py)."""
import dataclasses

import jax
import numpy as np

import envs_jax
from jaxagent.experts import ExplorationOverride, Expert
from jaxagent.model import GemmaConfig, init_params
from jaxagent.rollout import AgentLoop
from jaxagent.text.bandit_prompt import BanditRenderer
from jaxagent.text.parse import ActionParser
from jaxagent.text.render import PromptOptions
from jaxagent.text.tokenizer import shipped_tokenizer
from jaxagent.trainers.sft import label_every_turn, sft_batch

TOK = shipped_tokenizer()
CFG = GemmaConfig(vocab_size=TOK.vocab_size, num_layers=2, d_model=32, ffw_dim=64, num_heads=2, num_kv_heads=1,
                  head_dim=16, sliding_window=32, query_pre_attn_scalar=16)
HORIZON, K, G, B = 6, 3, 8, 3


def make_loop(**kw):
    env = envs_jax.make_env("bandit-gaussian", num_arms=K, horizon=HORIZON)
    renderer = BanditRenderer(K, HORIZON, TOK, PromptOptions(max_len=512))
    parser = ActionParser(TOK, renderer.labels)
    loop = AgentLoop(env, renderer, parser, CFG, num_steps=HORIZON, max_new_tokens=G, stop_tokens=TOK.stop_ids,
                     **{"history_segments": 1, **kw})
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(1), B))
    return loop, pool


def row(tree, b, t=None):
    return jax.tree.map(lambda x: np.asarray(x)[b] if t is None else np.asarray(x)[b, t], tree)


def test_expert_episode_parses_back_to_the_expert_actions():
    loop, pool = make_loop(temperature=0.0)
    expert = Expert("ucb", TOK, loop.renderer.labels, HORIZON, stats=True)
    loop = dataclasses.replace(loop, max_new_tokens=expert.width)
    traj = jax.jit(lambda p, k: loop.expert_rollout(expert, p, k))(pool, jax.random.key(3))
    assert bool(traj.valid.all())
    # UCB tries every arm once first, in label order
    np.testing.assert_array_equal(np.asarray(traj.actions)[:, :K], np.tile(np.arange(K), (B, 1)))
    text = TOK.decode(traj.tokens[0, K, : traj.lengths[0, K]])
    assert "We select actions according to the highest UCB value." in text


def test_try_all_takes_over_the_first_turns_with_the_exploration_rationale():
    loop, pool = make_loop(temperature=1.0)
    exploration = ExplorationOverride(TOK, loop.renderer.labels, HORIZON, try_all=True, epsilon=0.0)
    loop = dataclasses.replace(loop, exploration=exploration, max_new_tokens=exploration.width)
    params = init_params(CFG, jax.random.key(0), std=0.5)
    traj = jax.jit(loop.rollout)(params, pool, jax.random.key(4))
    forced = np.asarray(traj.forced)
    assert forced[:, :K].all() and not forced[:, K:].any()
    np.testing.assert_array_equal(np.asarray(traj.actions)[:, :K], np.tile(np.arange(K), (B, 1)))
    assert bool(traj.valid[:, :K].all())
    text = TOK.decode(traj.tokens[0, 1, : traj.lengths[0, 1]])
    assert text == (f"We have not yet selected all actions. Action {loop.renderer.labels[1]} has not been tried "
                    f"yet, let's explore it.\nACTION={loop.renderer.labels[1]}<end_of_turn>")


def test_epsilon_greedy_forces_about_epsilon_of_the_turns():
    loop, pool = make_loop(temperature=1.0)
    exploration = ExplorationOverride(TOK, loop.renderer.labels, HORIZON, try_all=False, epsilon=0.3)
    _, state = loop.env.reset(jax.random.key(0), row(pool, 0))
    forced, _ = jax.vmap(exploration, in_axes=(0, None))(jax.random.split(jax.random.key(5), 4000), state)
    assert abs(float(forced.mean()) - 0.3) < 0.03


def test_sft_with_action_noise_labels_every_turn_with_the_experts_text():
    loop, pool = make_loop(temperature=0.0)
    expert = Expert("greedy", TOK, loop.renderer.labels, HORIZON, stats=False)
    noise = ExplorationOverride(TOK, loop.renderer.labels, HORIZON, try_all=False, epsilon=0.5)
    loop = dataclasses.replace(loop, exploration=noise, max_new_tokens=max(expert.width, noise.width))
    played = jax.jit(lambda p, k: loop.expert_rollout(expert, p, k))(pool, jax.random.key(6))
    traj = jax.jit(label_every_turn, static_argnums=(0, 3))(expert, played, jax.random.key(7), TOK.pad_id)
    noisy = np.asarray(played.forced)
    assert 0 < noisy.mean() < 1 and not np.asarray(traj.forced).any()
    np.testing.assert_array_equal(traj.actions, played.actions)
    mask = np.asarray(sft_batch(loop.renderer.prefix[0], traj, TOK.pad_id)["mask"])
    lengths = np.asarray(traj.lengths)
    np.testing.assert_array_equal(mask.sum(-1), lengths)
    disagreements = 0
    # every turn, noisy or not, is the greedy expert's text given the (noisy) history it saw
    for b, t in np.ndindex(*lengths.shape):
        state = row(traj.states, b, t)
        text = TOK.decode(traj.tokens[b, t, : lengths[b, t]])
        if state.counts.any():
            means = np.where(state.counts > 0, state.reward_sums / np.maximum(state.counts, 1), -np.inf)
            best = int(np.argmax(means))
            assert text == expert.text(state.counts, state.reward_sums, best)
            disagreements += int(traj.actions[b, t] != best)
        else:
            assert text.endswith("<end_of_turn>") and "has not been tried yet" in text
    assert disagreements > 0  # some played actions are the noise's, not the labels'
