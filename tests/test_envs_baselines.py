"""Baselines against plain numpy/Python references (BanditBench's agents, re-derived), and behaviour."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax import baselines
from envs_jax.bandits import BanditState


def _state(counts, sums, horizon=50):
    counts = np.asarray(counts)
    return BanditState(t=jnp.int32(counts.sum()), actions=jnp.full((horizon,), -1, jnp.int32),
                       rewards=jnp.zeros((horizon,)), counts=jnp.asarray(counts, jnp.int32),
                       reward_sums=jnp.asarray(sums, jnp.float32))


def ref_ucb(counts, sums, alpha, form):
    """BanditBench's UCBAgent.select_arm, as a loop."""
    for arm, n in enumerate(counts):
        if n == 0:
            return arm
    total = sum(counts)
    values = []
    for n, s in zip(counts, sums):
        bonus = math.sqrt(1.0 / n) if form == "rationale" else math.sqrt(alpha * math.log(total) / n)
        values.append(s / n + bonus)
    return int(np.argmax(values))


@pytest.mark.parametrize("form", ["banditbench", "rationale"])
def test_ucb_matches_the_reference_loop(form):
    env = envs_jax.make_env("bandit-gaussian", num_arms=6)
    pol = jax.jit(baselines.make("ucb", env, alpha=0.5, form=form))
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(0, 6, 6) if rng.random() < 0.3 else rng.integers(1, 9, 6)
        sums = np.round(rng.normal(0, 1, 6) * counts, 3)
        got = int(pol(jax.random.key(0), _state(counts, sums), None))
        assert got == ref_ucb(list(counts), list(sums), 0.5, form)


def test_greedy_and_epsilon_greedy():
    env = envs_jax.make_env("bandit-bernoulli", num_arms=4)
    greedy = baselines.make("greedy", env)
    assert int(greedy(None, _state([1, 0, 2, 1], [1, 0, 2, 0]), None)) == 1     # untried first
    assert int(greedy(None, _state([1, 3, 2, 1], [0, 1, 2, 0]), None)) == 2     # best mean
    eps = jax.jit(jax.vmap(baselines.make("epsilon-greedy", env, epsilon=0.2), (0, None, None)))
    acts = np.asarray(eps(jax.random.split(jax.random.key(0), 40_000), _state([1, 3, 2, 1], [0, 1, 2, 0]), None))
    freq = np.bincount(acts, minlength=4) / len(acts)
    np.testing.assert_allclose(freq, [0.05, 0.05, 0.85, 0.05], atol=0.01)


def test_random_is_uniform_and_legal_in_tictactoe():
    env = envs_jax.make_env("bandit-gaussian", num_arms=5)
    pol = jax.jit(jax.vmap(baselines.make("random", env), (0, None, None)))
    acts = np.asarray(pol(jax.random.split(jax.random.key(0), 50_000), _state([0] * 5, [0] * 5), None))
    np.testing.assert_allclose(np.bincount(acts, minlength=5) / len(acts), 0.2, atol=0.01)
    ttt, params = envs_jax.make("tictactoe")
    _, s = ttt.reset(jax.random.key(0), params)
    _, s, *_ = ttt.step(jax.random.key(1), s, 4, params)
    pol = jax.jit(jax.vmap(baselines.make("random", ttt), (0, None, None)))
    acts = np.asarray(pol(jax.random.split(jax.random.key(0), 20_000), s, params))
    legal = np.flatnonzero(np.asarray(s.legal_mask))
    assert set(np.unique(acts)) == set(legal)


def test_thompson_samplers_follow_their_posteriors():
    env = envs_jax.make_env("bandit-bernoulli", num_arms=2)
    beta = jax.jit(jax.vmap(baselines.make("thompson-beta", env), (0, None, None)))
    keys = jax.random.split(jax.random.key(0), 40_000)
    # Beta(1+3, 1+1) vs Beta(1+1, 1+3): P(first > second) = 0.9 (exact value, computed below by numpy)
    acts = np.asarray(beta(keys, _state([4, 4], [3, 1]), None))
    rng = np.random.default_rng(0)
    p = (rng.beta(4, 2, 400_000) > rng.beta(2, 4, 400_000)).mean()
    assert (acts == 0).mean() == pytest.approx(p, abs=0.01)
    genv, gparams = envs_jax.make("bandit-gaussian", num_arms=2, sigma=1.0)
    gauss = jax.jit(jax.vmap(baselines.make("thompson-gaussian", genv), (0, None, None)))
    # posterior means 2/(1+4)... with prior N(0,1), noise 1: mean_a = s_a / (1 + n_a), var_a = 1 / (1 + n_a)
    acts = np.asarray(gauss(keys, _state([4, 1], [2.0, 0.5]), gparams))
    m0, v0, m1, v1 = 2.0 / 5, 1 / 5, 0.5 / 2, 1 / 2
    z = rng.normal(size=(400_000, 2))
    p = ((m0 + np.sqrt(v0) * z[:, 0]) > (m1 + np.sqrt(v1) * z[:, 1])).mean()
    assert (acts == 0).mean() == pytest.approx(p, abs=0.01)


def ref_linucb(prefs, users, actions, rewards, t, user, k, alpha):
    """BanditBench's LinUCBAgent: per-arm A = I + sum x x^T, b = sum r x; ucb = theta.x + alpha sqrt(x A^-1 x)."""
    d = prefs.shape[1]
    a_mats = [np.eye(d) for _ in range(k)]
    bs = [np.zeros(d) for _ in range(k)]
    for i in range(t):
        x = prefs[users[i]]
        a_mats[actions[i]] += np.outer(x, x)
        bs[actions[i]] += rewards[i] * x
    x = prefs[user]
    ucb = [np.linalg.inv(a) @ b @ x + alpha * np.sqrt(x @ np.linalg.inv(a) @ x) for a, b in zip(a_mats, bs)]
    return int(np.argmax(ucb)), np.array(ucb)


def test_linucb_matches_the_reference():
    env, _ = envs_jax.make("contextual-movielens", num_arms=5, num_users=30, synthetic_users=200, horizon=20)
    params = env.sample_params(jax.random.key(0))
    pol = baselines.make("linucb", env, alpha=0.5)
    rand = baselines.make("random", env)
    step, act, scores = jax.jit(env.step), jax.jit(pol), jax.jit(pol.scores)
    _, s = env.reset(jax.random.key(1), params)
    prefs = np.asarray(params.user_prefs, np.float64)
    for t in range(env.horizon):
        want, want_scores = ref_linucb(prefs, np.asarray(s.users), np.asarray(s.actions), np.asarray(s.rewards,
                                       np.float64), int(s.t), int(s.user), 5, 0.5)
        np.testing.assert_allclose(np.asarray(scores(s, params)), want_scores, rtol=1e-4, atol=1e-4)
        assert int(act(jax.random.key(t), s, params)) == want
        a = rand(jax.random.key(100 + t), s, params) if t % 2 else want   # mix arms to exercise every A_a
        _, s, *_ = step(jax.random.key(200 + t), s, a, params)


@pytest.mark.parametrize("d", [1, 3, 10])
def test_spd_solve_solves_positive_definite_systems_as_numpy_does(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(64, 2 * d, d))
    a = np.eye(d) + np.einsum("bhd,bhe->bde", x, x) * rng.uniform(0.01, 10.0, size=(64, 1, 1))
    b = rng.normal(size=(64, d, 2))
    got = np.asarray(jax.jit(baselines.spd_solve)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    np.testing.assert_allclose(got, np.linalg.solve(a, b), rtol=2e-4, atol=2e-5)


def test_linucb_episodes_of_many_instances_finish(tmp_path):
    """192 LinUCB episodes in one program with their keys split: this hung with XLA:CPU's LAPACK solve (128 did
    not); in a child process, so that a hang fails the test instead of stopping the suite."""
    import subprocess
    import sys
    script = tmp_path / "many.py"
    script.write_text("""
import jax, envs_jax
from envs_jax import baselines
n = 192
env = envs_jax.make_env("contextual-movielens", num_arms=20, horizon=50, num_users=100, synthetic_users=200)
pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(0), n))
_, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(1), n), pool)
policy = baselines.make("linucb", env)
def step(state, key):
    action = jax.vmap(policy)(jax.random.split(key, n), state, pool)
    _, state, reward, *_ = jax.vmap(env.step)(jax.random.split(key, n), state, action, pool)
    return state, reward
print(float(jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(jax.random.key(2), 20))[1].mean())(state)))
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_linucb_beats_random_on_the_contextual_bandit():
    env, _ = envs_jax.make("contextual-movielens", num_arms=10, num_users=100)
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(0), 64))

    def total(policy):
        def episode(key, p):
            _, s = env.reset(key, p)

            def body(s, k):
                k1, k2 = jax.random.split(k)
                _, s, r, _, _, info = env.step(k2, s, policy(k1, s, p), p)
                return s, info["best_expected_reward"] - info["expected_reward"]
            return jax.lax.scan(body, s, jax.random.split(key, env.horizon))[1].sum()
        return float(jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(1), 64), pool).mean())
    assert total(baselines.make("linucb", env)) < 0.8 * total(baselines.make("random", env))


def test_minimax_picks_wins_and_blocks():
    env, params = envs_jax.make("tictactoe")
    mm = baselines.make("minimax", env, random_ties=False)
    _, s = env.reset(jax.random.key(0), params)

    def with_board(b):
        b = jnp.asarray(b, jnp.int32)
        return s.replace(board=b, legal_mask=b == 0)
    assert int(mm(None, with_board([1, 1, 0, 2, 2, 0, 0, 0, 0]), params)) == 2    # take the win
    assert int(mm(None, with_board([2, 2, 0, 1, 0, 0, 1, 0, 0]), params)) == 2    # block
    for bad, env_name in (("linucb", "bandit-gaussian"), ("minimax", "bandit-bernoulli"), ("ucb", "tictactoe")):
        with pytest.raises(envs_jax.EnvError, match=bad):
            baselines.make(bad, envs_jax.make_env(env_name))
