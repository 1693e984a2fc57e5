"""One shared API test over every registered environment (single and vmapped, jit, determinism, shapes and
dtypes, invalid actions, auto-reset, no recompiles)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax

NAMES = envs_jax.registered_envs()
FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "movielens" / "ml-100k"
OPTIONS = {"contextual-movielens": {"synthetic_users": 200, "num_users": 20}}
INFO_KEYS = {"bandit-gaussian": {"expected_reward", "best_expected_reward", "invalid"},
             "bandit-bernoulli": {"expected_reward", "best_expected_reward", "invalid"},
             "contextual-movielens": {"expected_reward", "best_expected_reward", "invalid"},
             "tictactoe": {"invalid", "winner"}}


def test_the_public_names_are_registered():
    assert set(NAMES) >= {"bandit-gaussian", "bandit-bernoulli", "contextual-movielens", "tictactoe"}


def _struct(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def _legal_action(state, env):
    mask = getattr(state, "legal_mask", None)
    return 0 if mask is None else int(np.argmax(np.asarray(mask)))


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    env, params = envs_jax.make(name, **OPTIONS.get(name, {}))
    assert isinstance(env.version, str) and env.version
    assert env.name == name and env.kind in envs_jax.core.KINDS
    assert envs_jax.AutoReset(env).kind == env.kind
    assert isinstance(env.num_actions, int) and env.num_actions >= 2
    assert isinstance(env.horizon, int) and env.horizon >= 1
    key = jax.random.key(0)
    obs, state = env.reset(key, params)
    obs2, state2 = jax.jit(env.reset)(key, params)
    chex_equal(state, state2)
    step = jax.jit(env.step)
    a = _legal_action(state, env)
    out = step(jax.random.key(1), state, a, params)
    assert len(out) == 6
    obs_s, state_s, reward, terminated, truncated, info = out
    # The stepped state has exactly the structure, shapes and dtypes of the reset state (no recompiles).
    assert _struct(state_s) == _struct(state)
    assert _struct(obs_s) == _struct(obs)
    assert reward.shape == () and reward.dtype == jnp.float32
    assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
    assert INFO_KEYS[name] <= set(info)
    # Unjitted and jitted steps agree; the same key gives the same result (determinism).
    chex_equal(env.step(jax.random.key(1), state, a, params), out)
    chex_equal(step(jax.random.key(1), state, a, params), out)
    # The state grows a history: t counts steps and the executed action is recorded.
    assert int(state_s.t) == 1 and int(state_s.actions[0]) >= 0
    # Stepping again compiles nothing new.
    before = step._cache_size()
    step(jax.random.key(2), state_s, a, params)
    assert step._cache_size() == before


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_keys_states_actions_and_params(name):
    env, _ = envs_jax.make(name, **OPTIONS.get(name, {}))
    n = 8
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(0), n))
    obs, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(1), n), pool)
    actions = jnp.arange(n) % env.num_actions
    out = jax.jit(jax.vmap(env.step))(jax.random.split(jax.random.key(2), n), state, actions, pool)
    for i in range(n):  # each row equals the unbatched call
        p_i = jax.tree.map(lambda x: x[i], pool)
        s_i = jax.tree.map(lambda x: x[i], state)
        single = env.step(jax.random.split(jax.random.key(2), n)[i], s_i, actions[i], p_i)
        chex_equal(jax.tree.map(lambda x: x[i], out), single)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_actions_are_invalid_not_errors(name):
    env, params = envs_jax.make(name, **OPTIONS.get(name, {}))
    _, state = env.reset(jax.random.key(0), params)
    step = jax.jit(env.step)
    for bad in (-1, env.num_actions, 10 ** 6, -(2 ** 31)):
        _, s, r, term, trunc, info = step(jax.random.key(3), state, bad, params)
        assert bool(info["invalid"]), bad
        assert np.isfinite(float(r))
        executed = int(s.actions[0])
        assert executed == -1 or 0 <= executed < env.num_actions   # never wrapped to a bad index
    _, s, *_ , info = step(jax.random.key(3), state, jnp.float32(0.5), params)
    assert bool(info["invalid"])   # a non-integral float is not an action


@pytest.mark.parametrize("name", NAMES)
def test_finished_episode_is_a_no_op_and_auto_reset_starts_a_new_one(name):
    env, params = envs_jax.make(name, **OPTIONS.get(name, {}))
    obs, state = env.reset(jax.random.key(0), params)
    step = jax.jit(env.step)
    key = jax.random.key(1)
    for t in range(env.horizon + 2):
        key, k = jax.random.split(key)
        obs, state, r, term, trunc, info = step(k, state, _legal_action(state, env), params)
        if bool(term):
            break
    assert bool(term)
    after = step(jax.random.key(9), state, _legal_action(state, env), params)
    chex_equal(after[1], state)
    assert float(after[2]) == 0.0

    wrapped = envs_jax.AutoReset(env)
    obs, state = wrapped.reset(jax.random.key(0), params)
    astep = jax.jit(wrapped.step)
    key = jax.random.key(1)
    ends = 0
    for t in range(2 * env.horizon + 2):
        key, k = jax.random.split(key)
        prev_t = int(state.t)
        obs, state, r, term, trunc, info = astep(k, state, _legal_action(state, env), params)
        if bool(term | trunc):
            ends += 1
            assert int(state.t) == 0 and int(state.actions[0]) == -1   # a fresh episode
        else:
            assert int(state.t) == prev_t + 1
    assert ends >= 2


@pytest.mark.parametrize("name", NAMES)
def test_auto_reset_under_vmap_matches_the_unbatched_wrapper(name):
    """The batched select skips work when no row is done; rows must still match the unbatched wrapper."""
    env, _ = envs_jax.make(name, **OPTIONS.get(name, {}))
    wrapped = envs_jax.AutoReset(env)
    n = 6
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(0), n))
    _, state = jax.vmap(wrapped.reset)(jax.random.split(jax.random.key(1), n), pool)
    vstep = jax.jit(jax.vmap(wrapped.step))
    sstep = jax.jit(wrapped.step)
    singles = [jax.tree.map(lambda x: x[i], state) for i in range(n)]
    key = jax.random.key(2)
    # Stagger the rows so that some finish while others do not.
    for t in range(env.horizon + 3):
        key, k = jax.random.split(key)
        keys = jax.random.split(k, n)
        actions = (jnp.arange(n) + t) % env.num_actions
        if hasattr(state, "legal_mask"):
            actions = jnp.argmax(state.legal_mask, -1)
        _, state, r, term, trunc, _ = vstep(keys, state, actions, pool)
        for i in range(n):
            p_i = jax.tree.map(lambda x: x[i], pool)
            _, singles[i], r_i, *_ = sstep(keys[i], singles[i], actions[i], p_i)
            chex_equal(jax.tree.map(lambda x: x[i], state), singles[i])
            assert float(r[i]) == float(r_i)


def test_select_tree_nested_vmap_and_unbatched_flag():
    from envs_jax.wrappers import select_tree
    new = {"a": jnp.ones((3,)), "b": jnp.int32(7)}
    old = {"a": jnp.zeros((3,)), "b": jnp.int32(1)}
    done = jnp.array([[True, False], [False, False]])
    out = jax.jit(jax.vmap(jax.vmap(select_tree, (0, None, None)), (0, None, None)))(done, new, old)
    assert out["b"].tolist() == [[7, 1], [1, 1]]
    assert out["a"][0, 0].tolist() == [1, 1, 1] and out["a"][1, 1].tolist() == [0, 0, 0]
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), old)
    out = jax.vmap(select_tree, (None, None, 0))(jnp.bool_(True), new, stacked)
    assert out["b"].tolist() == [7, 7]


def chex_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
