"""Expert episodes and the exploration overrides in the agent episode (the episode itself, against a host loop that
plays it, is in test_episode.py)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import envs_jax
from jaxagent import mechanisms
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


def test_a_vote_plays_the_majority_or_a_draw_from_the_vote_shares():
    actions = jnp.array([[2, 0, 1], [1, 0, 1], [2, 1, 0], [1, 2, 1]])  # [V=4, B=3]
    valid = jnp.array([[1, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], bool)
    # row 0: votes 2, 1, 2 -> action 2, first named by sample 0; row 1: nothing valid -> sample 0; row 2: a tie
    # between 0 and 1 goes to the lower action, named first by sample 2
    pick = mechanisms.chosen_sample(jax.random.key(0), actions, valid, 3, "majority")
    np.testing.assert_array_equal(pick, [0, 0, 2])
    draws = jax.vmap(lambda k: mechanisms.chosen_sample(k, actions, valid, 3, "sample"))(
        jax.random.split(jax.random.key(1), 4000))
    assert abs(float(np.mean(np.asarray(draws)[:, 0] == 0)) - 2 / 3) < 0.03  # sample 0 names action 2: 2 of 3 votes
    assert set(np.asarray(draws)[:, 2].tolist()) == {2, 3}


def test_votes_over_identical_answers_play_as_one_answer():
    """With top-k 1 every vote is the same answer, so the turns (and the cache the next turns read) are the single
    sample's: a check of the plumbing around the vote."""
    loop, pool = make_loop(temperature=1.0, top_k=1)
    params = init_params(CFG, jax.random.key(0), std=0.5)
    one = jax.jit(loop.rollout)(params, pool, jax.random.key(4))
    voted = jax.jit(dataclasses.replace(loop, inference=mechanisms.Inference(votes=3)).rollout)(
        params, pool, jax.random.key(4))
    for name in ("tokens", "lengths", "actions", "valid"):
        np.testing.assert_array_equal(getattr(voted, name), getattr(one, name), err_msg=name)


def test_self_correction_answers_again_after_its_first_answer_and_the_request():
    """Every turn's text is what greedy decoding writes after the prompt, the first answer and the request
    (rebuilt on the host and decoded from scratch)."""
    from jaxagent.model.sampler import generate
    loop, pool = make_loop(temperature=0.0)
    loop = dataclasses.replace(loop, inference=mechanisms.Inference(self_correction=True), num_steps=3)
    params = init_params(CFG, jax.random.key(0), std=0.5)
    traj = jax.jit(loop.rollout)(params, pool, jax.random.key(4))
    greedy = jax.jit(lambda ids: generate(params, CFG, ids[None], jnp.array([ids.shape[0]]), jax.random.key(0),
                                          max_len=ids.shape[0] + G, max_new_tokens=G, stop_tokens=TOK.stop_ids))
    request = TOK.encode(mechanisms.CORRECTION)
    eot = TOK.token_id("<end_of_turn>")
    for b, t in np.ndindex(B, 3):
        prompt = TOK.encode(loop.renderer.render_text(row(traj.states, b, t), row(pool, b)))
        _, first, _, n = greedy(jnp.asarray(prompt, jnp.int32))
        first = np.asarray(first)[0, : int(n[0])].tolist()
        closed = bool(first) and first[-1] == eot
        _, second, _, m = greedy(jnp.asarray(prompt + first + ([] if closed else [eot]) + request, jnp.int32))
        np.testing.assert_array_equal(traj.tokens[b, t, : traj.lengths[b, t]], np.asarray(second)[0, : int(m[0])])


def test_context_randomisation_shows_fresh_labels_and_maps_the_answer_back():
    """The UCB expert reads the relabelled history and names a label; the arm played is a UCB arm of the true
    history, while the text names another arm's label on some turns."""
    loop, pool = make_loop(temperature=0.0)
    expert = Expert("ucb", TOK, loop.renderer.labels, HORIZON, stats=True)
    loop = dataclasses.replace(loop, max_new_tokens=expert.width, inference=mechanisms.Inference(relabel=True))
    assert not loop.rewinds  # every prompt is rendered whole
    traj = jax.jit(lambda p, k: loop.expert_rollout(expert, p, k))(pool, jax.random.key(3))
    renamed = 0
    for b, t in np.ndindex(B, HORIZON):
        state, action = row(traj.states, b, t), int(traj.actions[b, t])
        untried = state.counts == 0
        means = state.reward_sums / np.maximum(state.counts, 1)
        ucb = np.where(untried, np.inf, means + np.sqrt(1.0 / np.maximum(state.counts, 1)))
        assert ucb[action] == ucb.max()
        said = loop.parser.parse_reference(np.asarray(traj.tokens[b, t, : traj.lengths[b, t]]))
        renamed += said != action
    assert renamed > 0
