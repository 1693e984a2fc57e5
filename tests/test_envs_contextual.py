"""Contextual MovieLens: the real-format loader against an independent numpy computation on the shipped
fixtures, the synthetic generator's structure, and the env step for step against a numpy reference."""
import shutil
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import special

import envs_jax
from envs_jax.core import EnvError, uniforms
from envs_jax.movielens import _load_cached, load_movielens, synthetic_movielens

FIX = Path(__file__).parent / "fixtures" / "movielens"


def _ref_matrix(ratings, users, num_arms, seed):
    """Independent recomputation: top movies by number of ratings (ties: smaller id), users shuffled."""
    counts = {}
    for _, m, _ in ratings:
        counts[m] = counts.get(m, 0) + 1
    top = sorted(counts, key=lambda m: (-counts[m], m))[:num_arms]
    order = np.array(sorted(users))
    np.random.RandomState(seed).shuffle(order)
    pos = {u: i for i, u in enumerate(order)}
    mat = np.zeros((len(order), num_arms))
    for u, m, r in ratings:
        if m in top:
            mat[pos[u], top.index(m)] = r
    return mat, top, order


def _read_100k():
    ratings = [tuple(int(x) for x in line.split("\t")[:3]) for line in (FIX / "ml-100k/u.data").read_text().split("\n") if line]
    users = {int(l.split("|")[0]): l.split("|") for l in (FIX / "ml-100k/u.user").read_text().split("\n") if l}
    titles = {int(l.split("|")[0]): l.split("|")[1] for l in (FIX / "ml-100k/u.item").read_text("latin-1").split("\n") if l}
    return ratings, users, titles


@pytest.mark.parametrize("num_arms,rank", [(4, 10), (6, 2)])
def test_ml100k_loader_matches_independent_computation(num_arms, rank):
    data = load_movielens(FIX / "ml-100k", num_arms=num_arms, rank=rank, seed=3)
    ratings, users, titles = _read_100k()
    mat, top, order = _ref_matrix(ratings, users, num_arms, seed=3)
    if rank >= num_arms:   # full rank: the model is the rating matrix itself (BanditBench for K <= 10)
        np.testing.assert_allclose(data.expected_rewards, mat, atol=1e-4)
    else:                  # best rank-r approximation: error = the discarded singular values
        s = np.linalg.svd(mat, compute_uv=False)
        err = np.linalg.norm(mat - data.expected_rewards)
        assert err == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), rel=1e-3)
    assert data.user_prefs.shape == (len(users), min(rank, num_arms))
    np.testing.assert_allclose(data.user_prefs.T @ data.user_prefs, np.eye(min(rank, num_arms)), atol=1e-4)
    for i, uid in enumerate(order):
        age, gender, occupation, zipcode = int(users[uid][1]), users[uid][2], users[uid][3], users[uid][4]
        assert data.user_age[i] == age and data.user_gender[i] == (gender == "M")
        assert data.occupations[data.user_occupation[i]] == occupation
        assert data.locations[data.user_location[i]] in (zipcode, ) or "county" in data.locations[data.user_location[i]]
    want = [titles[m] for m in top]
    want = [("The " + t.replace(", The", "")) if ", The (" in t else t for t in want]
    assert list(data.movie_titles) == want


def test_ml1m_loader_reads_the_dat_format():
    data = load_movielens(FIX / "ml-1m", num_arms=5, seed=0)
    lines = [l.split("::") for l in (FIX / "ml-1m/ratings.dat").read_text().split("\n") if l]
    users = {int(l.split("::")[0]): l.split("::") for l in (FIX / "ml-1m/users.dat").read_text().split("\n") if l}
    mat, top, order = _ref_matrix([(int(a), int(b), int(c)) for a, b, c, _ in lines], users, 5, seed=0)
    np.testing.assert_allclose(data.expected_rewards, mat, atol=1e-4)
    assert data.num_users == len(users)
    i = list(order).index(2)   # user 2: M, age 56, occupation 16 = self-employed
    assert data.user_gender[i] == 1 and data.user_age[i] == 56
    assert data.occupations[data.user_occupation[i]] == "self-employed"
    titles = {int(l.split("::")[0]): l.split("::")[1] for l in (FIX / "ml-1m/movies.dat").read_text("latin-1").split("\n") if l}
    assert list(data.movie_titles) == [titles[m] for m in top]
    assert load_movielens(FIX / "ml-1m", num_arms=8).movie_titles[-1] == "Star Wars: Episode IV - A New Hope (1977)"


def test_zip_codes_become_county_state_when_a_lookup_package_is_installed(monkeypatch):
    fake = types.ModuleType("zipcodes")
    table = {"94043": [{"county": "Santa Clara County", "state": "CA"}]}
    fake.matching = lambda z: table.get(z, [])
    monkeypatch.setitem(sys.modules, "zipcodes", fake)
    _load_cached.cache_clear()   # loads are cached per directory; the lookup changed
    data = load_movielens(FIX / "ml-100k", num_arms=3)
    assert "Santa Clara county, CA" in data.locations
    assert "T8H1N" in data.locations          # not in the table: the zip code itself
    monkeypatch.setitem(sys.modules, "zipcodes", None)   # not installed: zip codes
    _load_cached.cache_clear()
    data = load_movielens(FIX / "ml-100k", num_arms=3)
    assert "94043" in data.locations


def test_synthetic_population_has_the_real_structure():
    data = synthetic_movielens(num_arms=12, num_users=500, rank=4, seed=1)
    assert data.user_prefs.shape == (500, 4) and data.expected_rewards.shape == (500, 12)
    assert set(np.unique(data.user_gender)) <= {0, 1}
    assert data.user_occupation.max() < len(data.occupations) and data.user_location.max() < len(data.locations)
    assert len(set(data.movie_titles)) == 12
    # The expected rewards are exactly rank 4 and explained by the preference vectors.
    assert np.linalg.matrix_rank(data.expected_rewards, tol=1e-3) == 4
    coef, *_ = np.linalg.lstsq(data.user_prefs, data.expected_rewards, rcond=None)
    np.testing.assert_allclose(data.user_prefs @ coef, data.expected_rewards, atol=1e-3)
    # Demographics carry signal: the mean best movie differs between genders more than chance.
    best = data.expected_rewards.argmax(1)
    assert len(np.unique(best)) > 1


def test_env_on_real_files_and_step_for_step_reference():
    env, _ = envs_jax.make("contextual-movielens", data_dir=str(FIX / "ml-100k"), num_arms=4, num_users=8,
                           horizon=10, noise_std=0.5)
    assert env.movie_titles[:1] and len(env.movie_titles) == 4
    params = env.sample_params(jax.random.key(0))
    rows = set()
    for name in ("user_gender", "user_age", "user_occupation", "user_location"):
        assert getattr(params, name).shape == (8,)
    assert params.user_prefs.shape == (8, env.feature_dim) and params.expected_rewards.shape == (8, 4)
    # the instance is 8 distinct users of the population
    pool = np.asarray(env.data.expected_rewards)
    for row in np.asarray(params.expected_rewards):
        rows.add(int(np.argmin(np.abs(pool - row).sum(1))))
    assert len(rows) == 8
    obs, state = env.reset(jax.random.key(1), params)
    user = min(int(uniforms(jax.random.key(1), 2)[0] * 8), 7)
    assert int(state.user) == user
    np.testing.assert_allclose(obs, params.user_prefs[user])
    rng = np.random.default_rng(0)
    exp = np.asarray(params.expected_rewards, np.float64)
    step = jax.jit(env.step)
    for t in range(12):
        a = int(rng.choice([-1, 0, 1, 2, 3, 4]))
        key = jax.random.key(50 + t)
        u = np.asarray(uniforms(key, 4), np.float64)
        live = t < 10
        invalid = not 0 <= a < 4
        arm = min(int(u[1] * 4), 3) if invalid else a
        want = exp[user, arm] + 0.5 * np.sqrt(2) * special.erfinv(2 * u[0] - 1)
        _, state, r, term, _, info = step(key, state, a, params)
        if live:
            assert float(r) == pytest.approx(want, abs=1e-4)
            assert float(info["expected_reward"]) == pytest.approx(exp[user, arm], abs=1e-5)
            assert float(info["best_expected_reward"]) == pytest.approx(exp[user].max(), abs=1e-5)
            assert bool(info["invalid"]) == invalid
            assert int(state.users[t]) == user and int(state.actions[t]) == arm
            user = min(int(u[2] * 8), 7)
            assert int(state.user) == user
        else:
            assert float(r) == 0.0
        assert bool(term) == (t >= 9)


def test_splits_and_errors(tmp_path):
    env = envs_jax.make_env("contextual-movielens", synthetic_users=300, split="eval", num_users=50)
    assert env.pool.min() >= 100 and len(env.pool) == 200
    with pytest.raises(EnvError, match="num_users"):
        envs_jax.make("contextual-movielens", synthetic_users=300, split="train", num_users=150)
    with pytest.raises(EnvError, match="not found"):
        envs_jax.make("contextual-movielens", data_dir=str(tmp_path / "nope"))
    with pytest.raises(EnvError, match="neither ml-100k"):
        envs_jax.make("contextual-movielens", data_dir=str(tmp_path))
    with pytest.raises(EnvError, match="num_arms"):
        envs_jax.make("contextual-movielens", data_dir=str(FIX / "ml-1m"), num_arms=50, num_users=2)


@pytest.mark.parametrize("fmt,filename,bad_line,what", [
    ("ml-100k", "u.data", "1\t2\tfive\t881250949", "rating 'five' is not an integer"),
    ("ml-100k", "u.data", "1\t2\t9\t881250949", "rating '9' is not in 1..5"),
    ("ml-100k", "u.user", "13|30|X|writer|12345", "gender 'X'"),
    ("ml-100k", "u.user", "13|30|M|writer", "expected 5 fields"),
    ("ml-1m", "users.dat", "11::M::25::99::12345", "occupation code 99"),
    ("ml-1m", "ratings.dat", "1::1::4", "expected 4 fields"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, fmt, filename, bad_line, what):
    d = tmp_path / fmt
    shutil.copytree(FIX / fmt, d)
    with open(d / filename, "a") as f:
        f.write(bad_line + "\n")
    n = len((d / filename).read_text().strip().split("\n"))
    with pytest.raises(EnvError) as e:
        envs_jax.make("contextual-movielens", data_dir=str(d), num_arms=3, num_users=2)
    assert str(d / filename) in str(e.value) and f"line {n}" in str(e.value) and what in str(e.value)


def test_missing_file_is_named(tmp_path):
    d = tmp_path / "ml-100k"
    shutil.copytree(FIX / "ml-100k", d)
    (d / "u.item").unlink()
    with pytest.raises(EnvError, match="u.item"):
        envs_jax.make("contextual-movielens", data_dir=str(d), num_arms=3, num_users=2)
