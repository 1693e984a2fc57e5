"""The jitted agent episode against a slow host loop: host strings, host tokenizer, fresh-cache generation, regex."""
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

import envs_jax
from cpu_devices import run_on_cpu_devices
from jaxagent.experts import ExplorationOverride, Expert
from jaxagent.model import GemmaConfig, init_params
from jaxagent.model.sampler import generate
from jaxagent.rollout import AgentLoop
from jaxagent.text.bandit_prompt import BanditRenderer
from jaxagent.text.parse import ActionParser
from jaxagent.text.render import PromptOptions
from jaxagent.text.tokenizer import shipped_tokenizer
from jaxagent.trainers.batches import sft_batch
from jaxagent.trainers.phases import label_every_turn

TOK = shipped_tokenizer()
CFG = GemmaConfig(vocab_size=TOK.vocab_size, num_layers=2, d_model=32, ffw_dim=64, num_heads=2, num_kv_heads=1,
                  head_dim=16, sliding_window=32, query_pre_attn_scalar=16)
HORIZON, K, G, B = 6, 3, 8, 3


def make_loop(**kw):
    env = envs_jax.make_env("bandit-gaussian", num_arms=K, horizon=HORIZON)
    renderer = BanditRenderer(K, HORIZON, TOK, PromptOptions(max_len=512))
    parser = ActionParser(TOK, renderer.labels)
    loop = AgentLoop(env, renderer, parser, CFG, num_steps=HORIZON, max_new_tokens=G, stop_tokens=TOK.stop_ids, **kw)
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(1), B))
    return loop, pool


def row(tree, b, t=None):
    return jax.tree.map(lambda x: np.asarray(x)[b] if t is None else np.asarray(x)[b, t], tree)


def test_rollout_is_token_exact_against_host_loop():
    loop, pool = make_loop(temperature=0.0, exploration_bonus=1.0)
    params = init_params(CFG, jax.random.key(0), std=0.5)
    traj = jax.jit(loop.rollout)(params, pool, jax.random.key(2))
    prefix = list(np.asarray(loop.renderer.prefix[0]))
    for b in range(B):
        history = []
        for t in range(HORIZON):
            state, env_params = row(traj.states, b, t), row(pool, b)
            history += list(traj.line_tokens[b, t, : traj.line_lengths[b, t]])
            tail = list(traj.tail_tokens[b, t, : traj.tail_lengths[b, t]])
            expected_prompt = TOK.encode(loop.renderer.render_text(state, env_params))
            assert prefix + history + tail == expected_prompt
            ids = jnp.asarray([expected_prompt], jnp.int32)
            _, gen, _, n = generate(params, CFG, ids, jnp.asarray([len(expected_prompt)]), jax.random.key(0),
                                    max_len=len(expected_prompt) + G, max_new_tokens=G, stop_tokens=TOK.stop_ids)
            n = int(n[0])
            assert traj.tokens[b, t, :n].tolist() == gen[0, :n].tolist() and traj.lengths[b, t] == n
            action = loop.parser.parse_reference(gen[0, :n].tolist())
            assert bool(traj.valid[b, t]) == (action is not None)
            if action is not None:
                assert traj.actions[b, t] == action
            assert state.actions[t] == -1 and (t == 0 or state.actions[t - 1] == traj.actions[b, t - 1])
            new_arm = state.counts[traj.actions[b, t]] == 0
            shaped = traj.env_rewards[b, t] + 1.0 * new_arm - 5.0 * (action is None)
            np.testing.assert_allclose(traj.train_rewards[b, t], shaped, rtol=1e-6)


def test_unrolled_decode_plays_the_same_episode():
    params = init_params(CFG, jax.random.key(0), std=0.5)
    trajs = []
    for unroll in (False, True):
        loop, pool = make_loop(temperature=1.0, unroll_layers=unroll)
        trajs.append(jax.jit(loop.rollout)(params, pool, jax.random.key(3)))
    scanned, unrolled = trajs
    np.testing.assert_array_equal(unrolled.tokens, scanned.tokens)
    np.testing.assert_array_equal(unrolled.actions, scanned.actions)
    np.testing.assert_allclose(unrolled.logprobs, scanned.logprobs, atol=1e-5)


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


def _per_device_against_one_device_each():
    """(Run with 2 CPU devices.) ``rollout_per_device`` plays each device's rows as ``rollout`` alone would with
    that device's folded key; both devices get the same two env instances, so only their keys differ."""
    from jaxagent.model import make_mesh

    assert jax.device_count() == 2
    loop, _ = make_loop(temperature=1.0, unroll_layers=True)
    rows = jax.vmap(loop.env.sample_params)(jax.random.split(jax.random.key(1), 2))
    pool = jax.tree.map(lambda a: jnp.concatenate([a, a]), rows)
    params, key = init_params(CFG, jax.random.key(0), std=0.5), jax.random.key(5)
    got = loop.rollout_per_device(make_mesh(data=2))(params, pool, key)
    assert [s.data.shape for s in got.tokens.addressable_shards] == [(2, HORIZON, G)] * 2
    for i in range(2):
        want = jax.jit(loop.rollout)(params, rows, jax.random.fold_in(key, i))
        np.testing.assert_array_equal(got.tokens[2 * i:2 * i + 2], want.tokens)
        np.testing.assert_array_equal(got.actions[2 * i:2 * i + 2], want.actions)
        np.testing.assert_allclose(got.logprobs[2 * i:2 * i + 2], want.logprobs, atol=1e-5)
    assert int(got.prefix_length) == loop.renderer.prefix[1]
    assert not np.array_equal(got.tokens[:2], got.tokens[2:])
    print("ok")


def test_rollout_per_device_plays_each_devices_rows_on_their_own():
    assert run_on_cpu_devices(2, [__file__, "--per-device"]).strip().endswith("ok")


if __name__ == "__main__" and "--per-device" in sys.argv:
    _per_device_against_one_device_each()
