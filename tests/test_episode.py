"""The jitted agent episode against a host loop that plays it: host prompt strings, the host tokenizer, a fresh-cache
``generate`` per step, the regex parser and the env's own reset and step, with the per-row keys the episode uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagent.experiment_config import load_experiment
from jaxagent.model.sampler import generate
from jaxagent.trainers.setup import build

BASE = ["model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped", "rollout.max_new_tokens=24",
        "rollout.temperature=0", "rollout.invalid_penalty=-3.0", "env.pool_size=8",
        "rollout.history_segments=2"]  # episodes in two parts: the second decodes over a larger cache bound
SETTINGS = {
    "bandit": ["env.options={num_arms: 5, horizon: 6, sigma: 0.1}", "rollout.exploration_bonus=true",
               "rollout.exploration_bonus_value=2.0", "rollout.unroll_layers=true"],
    # prompts of at most 168 tokens: the window path re-prefills the whole max_prompt_tokens budget every step
    "bandit-window": ["env.options={num_arms: 5, horizon: 6, sigma: 0.1}", "prompt.history_window=2",
                      "prompt.max_prompt_tokens=192"],
    # 8 steps against a random opponent: games end and restart inside every row
    "tictactoe": ["env.name=tictactoe", "env.options={opponent: random}", "env.num_steps=8"],
}
B, PROMPT_WIDTH = 2, 320  # the settings' longest prompt: 312 tokens (tic-tac-toe)


def _row(tree, *index):
    return jax.tree.map(lambda x: np.asarray(x)[index], tree)


def _row_step_keys(key_t, b):
    """Row ``b``'s (random action, env step, reset) keys at a step, derived from the step's key as the episode does."""
    return jax.random.split(jax.random.split(jax.random.split(key_t)[1], B)[b], 3)


def _host_episode(exp, model_params, env_params, key, b):
    """Row ``b`` of ``AgentLoop.rollout(model_params, pool, key)``, played step by step on the host."""
    loop, tok, env = exp.train_loop, exp.tokenizer, exp.env
    reset, step = jax.jit(env.reset), jax.jit(env.step)  # one program each instead of one per operation
    k_reset, k_steps = jax.random.split(key)
    _, state = reset(jax.random.split(k_reset, B)[b], env_params)
    steps = []
    for key_t in jax.random.split(k_steps, loop.num_steps):
        prompt = tok.encode(exp.renderer.render_text(state, env_params))
        ids = np.full((1, PROMPT_WIDTH), tok.pad_id, np.int32)
        ids[0, :len(prompt)] = prompt
        _, gen, logp, n = generate(model_params, exp.model_cfg, jnp.asarray(ids), jnp.asarray([len(prompt)]),
                                   jax.random.key(0), max_len=PROMPT_WIDTH + loop.max_new_tokens,
                                   max_new_tokens=loop.max_new_tokens, stop_tokens=tok.stop_ids)
        n = int(n[0])
        legal = getattr(state, "legal_mask", None)
        action = exp.parser.parse_reference(np.asarray(gen[0, :n]).tolist(),
                                            None if legal is None else np.asarray(legal))
        k_random, k_step, k_next = _row_step_keys(key_t, b)
        valid = action is not None
        if not valid and legal is None:
            action = int(jax.random.randint(k_random, (), 0, env.num_actions))
        elif not valid:
            action = int(jax.random.categorical(k_random, jnp.where(legal, 0.0, -jnp.inf)))
        _, next_state, reward, terminated, truncated, _ = step(k_step, state, action, env_params)
        done = bool(terminated | truncated)
        steps.append(dict(prompt=prompt, tokens=np.asarray(gen[0, :n]), logp=np.asarray(logp[0, :n]), action=action,
                          valid=valid, reward=float(reward), done=done, state=state))
        state = reset(k_next, env_params)[1] if done else next_state
    return steps


def _assert_same(got, want):
    want = np.asarray(want)
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def played():
    """Each setting's experiment, its rollout (jitted) and the host loop's steps for every row."""
    out = {}
    for name, overrides in SETTINGS.items():
        exp = build(load_experiment(None, BASE + overrides))
        pool = exp.pool(jax.random.key(1), B)
        key = jax.random.key(2)
        traj = jax.jit(exp.train_loop.rollout)(exp.init_params, pool, key)
        host = [_host_episode(exp, exp.init_params, _row(pool, b), key, b) for b in range(B)]
        out[name] = exp, pool, traj, host
    return out


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_episode_plays_as_the_host_loop(played, setting):
    exp, pool, traj, host = played[setting]
    for b in range(B):
        history = []
        for t, want in enumerate(host[b]):
            n = int(traj.lengths[b, t])
            assert np.asarray(traj.tokens[b, t, :n]).tolist() == want["tokens"].tolist(), (b, t)
            np.testing.assert_allclose(traj.logprobs[b, t, :n], want["logp"], atol=1e-5, rtol=0)
            assert int(traj.actions[b, t]) == want["action"] and bool(traj.valid[b, t]) == want["valid"]
            assert bool(traj.done[b, t]) == want["done"]
            np.testing.assert_allclose(traj.env_rewards[b, t], want["reward"], rtol=1e-6, atol=1e-7)
            jax.tree.map(_assert_same, _row(traj.states, b, t), want["state"])
            if exp.train_loop.rewinds:  # the cache's pieces are the host prompt, token for token
                line = traj.line_tokens[b, t, :traj.line_lengths[b, t]]
                history = [] if traj.first[b, t] else history + np.asarray(line).tolist()
                tail = np.asarray(traj.tail_tokens[b, t, :traj.tail_lengths[b, t]]).tolist()
                assert np.asarray(exp.renderer.prefix[0]).tolist() + history + tail == want["prompt"]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_the_host_loop_is_a_demanding_reference(played, setting):
    """The comparison above means something: the model writes varied, mostly valid text (bandits), prompts
    outgrow the window, and tic-tac-toe games restart inside rows."""
    exp, _, traj, host = played[setting]
    if setting.startswith("bandit"):
        assert np.asarray(traj.valid).mean() > 0.8 and len(np.unique(np.asarray(traj.lengths))) > 1
    if setting == "bandit-window":
        assert not exp.train_loop.rewinds
    if setting == "tictactoe":
        done = np.asarray(traj.done)
        assert done[:, :-1].any(axis=1).all() and np.asarray(traj.first)[:, 1:].any(axis=1).all()


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_training_reward_is_the_env_reward_shaped_by_the_configured_terms(played, setting):
    exp, _, traj, _ = played[setting]
    invalid = 1.0 - np.asarray(traj.valid, np.float32)
    bonus = np.zeros_like(invalid)
    if setting.startswith("bandit"):
        states = jax.tree.map(np.asarray, traj.states)
        if setting == "bandit":
            first_pull = np.take_along_axis(states.counts, np.asarray(traj.actions)[..., None], axis=-1)[..., 0] == 0
            bonus = 2.0 * first_pull
        # the env's own record of its rewards (the next state's history) holds the env reward, unshaped
        np.testing.assert_array_equal(states.rewards[:, -1, :-1], np.asarray(traj.env_rewards)[:, :-1])
    np.testing.assert_allclose(traj.train_rewards, np.asarray(traj.env_rewards) + bonus - 3.0 * invalid, rtol=1e-6)
    if setting == "tictactoe":
        assert invalid.any()


def _replay(exp, pool, traj, key, k):
    """The env states after the first ``k`` recorded actions of every row, replayed with the per-row env keys the
    episode used (no episode may end before step ``k``)."""
    reset, step = jax.jit(exp.env.reset), jax.jit(exp.env.step)
    k_reset, k_steps = jax.random.split(key)
    states = []
    for b in range(B):
        params = _row(pool, b)
        _, state = reset(jax.random.split(k_reset, B)[b], params)
        for key_t, action in zip(jax.random.split(k_steps, exp.train_loop.num_steps)[:k], traj.actions[b, :k]):
            _, state, *_ = step(_row_step_keys(key_t, b)[1], state, action, params)
        states.append(state)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def test_an_episode_started_from_a_replayed_state_continues_it(played, k=3):
    """Rows started from the state after k recorded actions (k - 1 history lines in the cache first, then the
    step's line and tail): the recording's env state at step k, the prompt the host renders for it, the recording's
    greedy text and log-probs at that step (from the sampler and the packed scorer); then that one episode only."""
    from jaxagent.packing import pack, score_packed

    exp, pool, traj, host = played["bandit"]
    start = _replay(exp, pool, traj, jax.random.key(2), k)
    jax.tree.map(_assert_same, start, jax.tree.map(lambda x: np.asarray(x)[:, k], traj.states))
    resumed = jax.jit(exp.train_loop.rollout)(exp.init_params, pool, jax.random.key(5), start)
    prefix = np.asarray(exp.renderer.prefix[0]).tolist()
    for b in range(B):
        held = np.asarray(resumed.start_tokens[b, :resumed.start_lengths[b]]).tolist()
        line = np.asarray(resumed.line_tokens[b, 0, :resumed.line_lengths[b, 0]]).tolist()
        tail = np.asarray(resumed.tail_tokens[b, 0, :resumed.tail_lengths[b, 0]]).tolist()
        assert prefix + held + line + tail == host[b][k]["prompt"]
    scored = jax.jit(lambda t: score_packed(exp.init_params, exp.model_cfg,
                                            pack(exp.renderer.prefix[0], t, exp.tokenizer.pad_id)))(resumed)
    for b in range(B):
        n = int(traj.lengths[b, k])
        assert int(resumed.lengths[b, 0]) == n and (resumed.tokens[b, 0, :n] == traj.tokens[b, k, :n]).all()
        for logprobs in (resumed.logprobs[b, 0, :n], scored[b, 0, :n]):
            np.testing.assert_allclose(logprobs, traj.logprobs[b, k, :n], atol=1e-5, rtol=0)
    # one episode per row: nothing after its end (no reset, no reward, no loss)
    done, active = np.asarray(resumed.done), np.asarray(resumed.active)
    ended = np.cumsum(done, axis=1) - done > 0
    assert (active == ~ended).all() and not np.asarray(resumed.first).any() and done.sum(1).max() == 1
    assert ended.any(axis=1).all() and (np.asarray(resumed.train_rewards)[ended] == 0).all()
    assert (np.asarray(resumed.best_expected_reward)[ended] == np.asarray(resumed.expected_reward)[ended]).all()
