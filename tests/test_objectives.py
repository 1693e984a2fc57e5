"""The training objectives against the papers' written out by hand, one step context at a time.

A fixed rollout (sampled at a temperature other than 1) gives the batch; the trainer's objective and gradient
(``rl_batch`` → ``rl_loss`` with ``rl_weights``) must equal a per-context objective built from ``score`` on each
context's own host-rendered prompt, with rewards-to-go, baselines and GAE computed in numpy here.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from jaxagent.experiment_config import RLConfig
from jaxagent.model import GemmaConfig, init_params
from jaxagent.model.sampler import score, score_jit
from jaxagent.rollout import AgentLoop
from jaxagent.text.bandit_prompt import BanditRenderer
from jaxagent.env_kinds import make_renderer
from jaxagent.text import make_parser
from jaxagent.text.parse import ActionParser
from jaxagent.text.render import PromptOptions
from jaxagent.text.tokenizer import shipped_tokenizer
from jaxagent.train_step import accumulate_gradients
from jaxagent.experts import ExplorationOverride, Expert
from jaxagent.mechanisms import CORRECTION, Inference
from jaxagent.text.relabel import relabel_state
from jaxagent.trainers.rlft import rl_batch, rl_loss, rl_weights, unit_inputs
from jaxagent.trainers.sft import sft_batch, sft_loss

TOK = shipped_tokenizer()
CFG = GemmaConfig(vocab_size=TOK.vocab_size, num_layers=2, d_model=32, ffw_dim=64, num_heads=2, num_kv_heads=1,
                  head_dim=16, sliding_window=32, query_pre_attn_scalar=16)
HORIZON, K, G, N, TEMPERATURE = 3, 3, 8, 4, 0.7
CASES = {
    "rewards-to-go, k3": RLConfig(beta=0.05, kl_estimator="k3"),
    "grouped, normalised, k1, asymmetric clip": RLConfig(beta=0.2, kl_estimator="k1", gamma=0.5, group_size=2,
                                                         normalize_rewards=True, epsilon_low=0.1, epsilon_high=0.3),
    "gae with a clipped value head": RLConfig(beta=0.05, advantage="gae", gamma=0.9, gae_lambda=0.8,
                                              normalize_advantages=True, value_coef=0.7, value_clip=0.05),
}


@pytest.fixture(scope="module")
def rollout():
    """One sampled rollout for every case; instances come in pairs (the grouped case's groups of 2)."""
    env = envs_jax.make_env("bandit-gaussian", num_arms=K, horizon=HORIZON)
    renderer = BanditRenderer(K, HORIZON, TOK, PromptOptions(max_len=512))
    loop = AgentLoop(env, renderer, ActionParser(TOK, renderer.labels), CFG, num_steps=HORIZON, max_new_tokens=G,
                     stop_tokens=TOK.stop_ids, temperature=TEMPERATURE, history_segments=1)
    instances = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(1), N // 2))
    pool = jax.tree.map(lambda x: jnp.repeat(x, 2, axis=0), instances)
    params = init_params(CFG, jax.random.key(0), std=0.5, value_head=True)
    params["value_head"] = {"w": 0.3 * jax.random.normal(jax.random.key(9), (CFG.d_model,)), "b": jnp.float32(0.1)}
    ref_params = init_params(CFG, jax.random.key(7), std=0.5, value_head=True)
    traj = jax.jit(loop.rollout)(params, pool, jax.random.key(2))
    return loop, params, ref_params, traj


def _contexts(loop, traj):
    """Every step context as its own row: host-rendered prompt then the generated tokens (right-padded)."""
    prompts = [TOK.encode(loop.renderer.render_text(jax.tree.map(lambda x: np.asarray(x)[b, t], traj.states), None))
               for b in range(N) for t in range(HORIZON)]
    lengths = np.asarray(traj.lengths).reshape(-1)
    G = traj.tokens.shape[-1]
    generated = np.asarray(traj.tokens).reshape(-1, G)
    width = max(map(len, prompts)) + G
    tokens = np.full((len(prompts), width), TOK.pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
        tokens[i, len(p):len(p) + G] = generated[i]
    prompt_len = np.asarray([len(p) for p in prompts])
    positions = prompt_len[:, None] + np.arange(G)[None, :]
    mask = (np.arange(G)[None, :] < lengths[:, None]).astype(np.float32)
    return jnp.asarray(tokens), positions, prompt_len, mask


def _rewards_to_go(r, gamma):
    out = np.zeros_like(r)
    running = np.zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out


def _advantages(rl, traj, values):
    env, train = np.asarray(traj.env_rewards, np.float64), np.asarray(traj.train_rewards, np.float64)
    rewards = env / (env.std() + 1e-8) + (train - env) if rl.normalize_rewards else train
    if rl.advantage == "gae":
        done = np.asarray(traj.done, np.float64)
        assert done[:, -1].all()  # every episode ends with the rollout: no bootstrap past it
        adv = np.zeros_like(rewards)
        running = np.zeros(N)
        for t in reversed(range(HORIZON)):
            next_value = values[:, t + 1] if t + 1 < HORIZON else 0.0
            delta = rewards[:, t] + rl.gamma * (1 - done[:, t]) * next_value - values[:, t]
            running = delta + rl.gamma * rl.gae_lambda * (1 - done[:, t]) * running
            adv[:, t] = running
        returns = adv + values
    else:
        returns = _rewards_to_go(rewards, rl.gamma)
        groups = returns.reshape(N // rl.group_size, rl.group_size, HORIZON)
        if rl.group_size == 1:
            baseline = returns.mean(0, keepdims=True)
        else:
            baseline = ((groups.sum(1, keepdims=True) - groups) / (rl.group_size - 1)).reshape(N, HORIZON)
        adv = returns - baseline
    if rl.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv.reshape(-1), returns.reshape(-1)


def _hand_objective(rl, loop, params, ref_params, traj):
    tokens, positions, prompt_len, mask = _contexts(loop, traj)
    pick = lambda logp: jnp.take_along_axis(logp, jnp.asarray(positions), axis=1)
    ref_logp = pick(score_jit(ref_params, CFG, tokens, temperature=TEMPERATURE))
    old_logp = jnp.asarray(traj.logprobs).reshape(-1, G)
    last_prompt = jnp.asarray(prompt_len - 1)[:, None]
    _, values0 = score_jit(params, CFG, tokens, temperature=TEMPERATURE, with_values=True)
    old_values = np.asarray(jnp.take_along_axis(values0, last_prompt, axis=1)[:, 0], np.float64)
    adv, returns = _advantages(rl, traj, old_values.reshape(N, HORIZON))
    adv, returns, mask = (jnp.asarray(x, jnp.float32) for x in (adv, returns, mask))
    low = rl.epsilon if rl.epsilon_low is None else rl.epsilon_low
    high = rl.epsilon if rl.epsilon_high is None else rl.epsilon_high

    def objective(p):
        logp_all, values_all = score(p, CFG, tokens, temperature=TEMPERATURE, with_values=True)
        logp = pick(logp_all)
        ratio = jnp.exp(logp - old_logp)
        surrogate = jnp.minimum(ratio * adv[:, None], jnp.clip(ratio, 1 - low, 1 + high) * adv[:, None])
        log_r = ref_logp - logp
        kl = -log_r if rl.kl_estimator == "k1" else jnp.exp(log_r) - 1 - log_r
        total = -jnp.sum(surrogate * mask) / mask.sum() + rl.beta * jnp.sum(kl * mask) / mask.sum()
        if rl.advantage == "gae":
            v = jnp.take_along_axis(values_all, last_prompt, axis=1)[:, 0]
            moved = old_values + jnp.clip(v - old_values, -rl.value_clip, rl.value_clip)
            err = jnp.maximum(jnp.square(v - returns), jnp.square(moved - returns))
            total += rl.value_coef * 0.5 * jnp.mean(err)
        return total
    return objective, old_logp, pick(score_jit(params, CFG, tokens, temperature=TEMPERATURE)), mask


def _assert_tree_close(got, want, rtol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert np.linalg.norm(g - w) <= rtol * np.linalg.norm(w) + 1e-9, (np.linalg.norm(g - w), np.linalg.norm(w))


@pytest.mark.parametrize("unit", ["episode", "context"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_rlft_objective_and_gradient_equal_the_per_context_objective(rollout, case, unit):
    """Both batch units (packed episodes, step contexts rendered again from the recorded states)."""
    rl = dataclasses.replace(CASES[case], batch_unit=unit)
    loop, params, ref_params, traj = rollout
    batch = jax.jit(lambda p, r, t: rl_batch(p, r, CFG, rl, unit_inputs(rl, loop.renderer, t, None, TOK.pad_id), t,
                                             TEMPERATURE, renderer=loop.renderer))(params, ref_params, traj)
    objective, old_logp, scored, mask = _hand_objective(rl, loop, params, ref_params, traj)
    assert float(mask.sum()) > N * HORIZON
    # the behaviour log-probs are the scorer's at the sampling temperature: the first update starts at ratio 1
    np.testing.assert_allclose(np.asarray(old_logp) * np.asarray(mask), np.asarray(scored) * np.asarray(mask),
                               atol=2e-5)
    trainer = jax.jit(lambda p: accumulate_gradients(rl_loss(CFG, rl, TEMPERATURE), p, batch,
                                                     weights=rl_weights(rl)))
    hand = jax.jit(jax.value_and_grad(objective))
    grads, value, terms = trainer(params)
    stats = {k: float(v.value / v.weight) for k, v in terms["ppo"].stats.items() if v.reduce == "mean"}
    assert stats["clip_fraction"] == 0.0 and abs(stats["ratio_mean"] - 1.0) < 1e-4
    want_value, want_grads = hand(params)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-6)
    _assert_tree_close(grads, want_grads, rtol=1e-4)
    # away from the behaviour policy: ratios move, some tokens clip, and both objectives still agree
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    moved = treedef.unflatten([x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    grads, value, terms = trainer(moved)
    assert float(terms["ppo"].stats["clip_fraction"].value) > 0
    want_value, want_grads = hand(moved)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-6)
    _assert_tree_close(grads, want_grads, rtol=1e-4)


def test_sft_loss_is_the_nll_of_the_experts_own_turns(rollout):
    """Thought cloning: the mean negative log-likelihood of the expert's tokens in their contexts; turns an
    exploration override wrote (action noise) are not learned."""
    loop, params, _, _ = rollout
    expert = Expert("ucb", TOK, loop.renderer.labels, HORIZON, stats=False)
    noise = ExplorationOverride(TOK, loop.renderer.labels, HORIZON, try_all=False, epsilon=0.5)
    loop = dataclasses.replace(loop, max_new_tokens=max(expert.width, noise.width), exploration=noise)
    pool = jax.vmap(loop.env.sample_params)(jax.random.split(jax.random.key(3), N))
    traj = jax.jit(lambda p, k: loop.expert_rollout(expert, p, k))(pool, jax.random.key(4))
    forced = np.asarray(traj.forced).reshape(-1)
    assert 0 < forced.mean() < 1
    batch = sft_batch(loop.renderer.prefix[0], traj, TOK.pad_id)
    got = jax.jit(lambda p: accumulate_gradients(sft_loss(CFG), p, batch))(params)[1]
    tokens, positions, _, mask = _contexts(loop, traj)
    logp = jnp.take_along_axis(score_jit(params, CFG, tokens), jnp.asarray(positions), axis=1)
    mask = mask * (1 - forced[:, None])
    np.testing.assert_allclose(got, -np.sum(np.asarray(logp) * mask) / mask.sum(), rtol=1e-5)


def test_forced_turns_are_rescored_under_the_rollouts_parameters(rollout):
    """Turns an exploration override wrote (ε-greedy) were not sampled from the model: ``rl_batch`` gives them the
    model's log-probs of that text under the rollout's parameters (so their first ratio is 1 as well); the model's
    own turns keep the sampler's log-probs."""
    loop, params, ref_params, _ = rollout
    forcing = ExplorationOverride(TOK, loop.renderer.labels, HORIZON, try_all=False, epsilon=0.5)
    loop = dataclasses.replace(loop, max_new_tokens=max(G, forcing.width), exploration=forcing)
    pool = jax.vmap(loop.env.sample_params)(jax.random.split(jax.random.key(3), N))
    traj = jax.jit(loop.rollout)(params, pool, jax.random.key(6))
    forced = np.asarray(traj.forced).reshape(-1)
    assert 0 < forced.mean() < 1
    rl = RLConfig()
    batch = jax.jit(lambda p, t: rl_batch(p, ref_params, CFG, rl, unit_inputs(rl, loop.renderer, t, None, TOK.pad_id),
                                          t, TEMPERATURE, forced_turns=True))(params, traj)
    width = traj.tokens.shape[-1]
    old, sampled = (np.asarray(x).reshape(-1, width) for x in (batch["old_logp"], traj.logprobs))
    tokens, positions, _, mask = _contexts(loop, traj)
    scored = np.asarray(jnp.take_along_axis(score_jit(params, CFG, tokens, temperature=TEMPERATURE),
                                            jnp.asarray(positions), axis=1)) * mask
    np.testing.assert_allclose(old[forced] * mask[forced], scored[forced], atol=2e-5)
    np.testing.assert_array_equal(old[~forced], sampled[~forced])
    assert np.abs(sampled[forced] * mask[forced] - scored[forced]).max() > 1e-2  # re-scoring changed them


@pytest.mark.parametrize("inference", [Inference(relabel=True), Inference(votes=3), Inference(self_correction=True)],
                         ids=["context randomisation", "self-consistency", "self-correction"])
def test_rollouts_with_inference_mechanisms_train_on_what_each_turn_was_shown(rollout, inference):
    """RLFT with context randomisation (fresh labels each turn), self-consistency (the voted answer played) or
    self-correction (the second answer played, after the first and a request to check it): each step context is
    the prompt the turn saw, token for token (host-rendered here under the recorded labels, then the first answer
    and the request), so the scorer gives the behaviour log-probs of the played answer back and the first update
    starts at ratio 1."""
    loop, params, _, _ = rollout
    loop = dataclasses.replace(loop, inference=inference)
    traj = jax.jit(loop.rollout)(params, jax.vmap(loop.env.sample_params)(jax.random.split(jax.random.key(6), N)),
                                 jax.random.key(8))
    rl = RLConfig(batch_unit="context")
    contexts = unit_inputs(rl, loop.renderer, traj, None, TOK.pad_id)
    for b, t in ((0, 0), (1, HORIZON - 1), (N - 1, 1)):
        state = jax.tree.map(lambda x: np.asarray(x)[b, t], traj.states)
        if inference.relabel:
            state = relabel_state(state, np.asarray(traj.relabelling)[b, t])
        prompt = TOK.encode(loop.renderer.render_text(state, None))
        if inference.self_correction:
            first, length = np.asarray(traj.preamble[0])[b, t], int(np.asarray(traj.preamble[1])[b, t])
            assert TOK.decode(first[:length]).endswith(CORRECTION)
            prompt += first[:length].tolist()
        assert np.asarray(contexts.tokens)[b, t, :len(prompt)].tolist() == prompt
        assert int(np.asarray(contexts.prompt_lengths)[b, t]) == len(prompt)
    if inference.relabel:  # the labels changed between turns of an episode
        assert len({tuple(p) for p in np.asarray(traj.relabelling).reshape(-1, K).tolist()}) > 1
    batch = jax.jit(lambda p, t: rl_batch(p, p, CFG, rl, unit_inputs(rl, loop.renderer, t, None, TOK.pad_id), t,
                                          TEMPERATURE))(params, traj)
    mask = np.asarray(batch["mask"])
    assert mask.sum() > N * HORIZON
    np.testing.assert_allclose(np.asarray(batch["old_logp"]) * mask, np.asarray(batch["ref_logp"]) * mask, atol=2e-5)


def test_gae_bootstraps_a_game_cut_by_the_rollout_from_the_value_of_the_state_it_reached():
    """Tic-tac-toe rows of 2 agent turns: most games are still running when the rollout ends, and their last
    step's advantage takes the value head's V of the position reached (host-rendered here), not 0."""
    env = envs_jax.make_env("tictactoe")
    renderer = make_renderer(env, TOK, PromptOptions(max_len=1024))
    loop = AgentLoop(env, renderer, make_parser(renderer), CFG, num_steps=2, max_new_tokens=G,
                     stop_tokens=TOK.stop_ids, temperature=TEMPERATURE, history_segments=1)
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(11), N))
    params = init_params(CFG, jax.random.key(0), std=0.5, value_head=True)
    params["value_head"] = {"w": 0.3 * jax.random.normal(jax.random.key(9), (CFG.d_model,)), "b": jnp.float32(0.1)}
    traj = jax.jit(loop.rollout)(params, pool, jax.random.key(12))
    done = np.asarray(traj.done, np.float64)
    assert not done[:, -1].all()
    rl = RLConfig(advantage="gae", gamma=0.9, gae_lambda=0.8, batch_unit="context")
    batch = jax.jit(lambda p, t, e: rl_batch(p, p, CFG, rl, unit_inputs(rl, renderer, t, e, TOK.pad_id), t,
                                             TEMPERATURE, renderer=renderer, env_params=e))(params, traj, pool)

    row = lambda tree, *index: jax.tree.map(lambda x: np.asarray(x)[index], tree)
    prompts = [TOK.encode(renderer.render_text(row(traj.states, b, t), row(pool, b))) for b in range(N) for t in (0, 1)]
    prompts += [TOK.encode(renderer.render_text(row(traj.final_states, b), row(pool, b))) for b in range(N)]
    tokens = np.full((len(prompts), max(map(len, prompts))), TOK.pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p  # right-padded: a causal model's value at the last prompt token is unaffected
    _, v = score_jit(params, CFG, jnp.asarray(tokens), temperature=TEMPERATURE, with_values=True)
    v = np.asarray(v, np.float64)[np.arange(len(prompts)), [len(p) - 1 for p in prompts]]
    values, last = v[: 2 * N].reshape(N, 2), v[2 * N:]
    rewards = np.asarray(traj.train_rewards, np.float64)
    adv, running = np.zeros((N, 2)), np.zeros(N)
    for t in (1, 0):
        next_value = values[:, t + 1] if t == 0 else last
        delta = rewards[:, t] + rl.gamma * (1 - done[:, t]) * next_value - values[:, t]
        running = delta + rl.gamma * rl.gae_lambda * (1 - done[:, t]) * running
        adv[:, t] = running
    np.testing.assert_allclose(np.asarray(batch["advantages"]), adv, atol=1e-5)
    np.testing.assert_allclose(np.asarray(batch["returns"]), adv + values, atol=1e-5)
    assert np.abs(last[done[:, -1] == 0]).min() > 1e-3  # the bootstrap is not a zero in disguise
