import math

import jax
import numpy as np
import pytest

from jaxagent import metrics


def _greedy_reference(actions, rewards, k):
    """Walk one episode in Python: is each action the best empirical mean among the arms tried so far?"""
    counts, sums, greedy, defined = [0] * k, [0.0] * k, [], []
    for a, r in zip(actions, rewards):
        tried = [i for i in range(k) if counts[i]]
        defined.append(bool(tried))
        best = max((sums[i] / counts[i] for i in tried), default=None)
        greedy.append(bool(tried) and counts[a] > 0 and sums[a] / counts[a] >= best)
        counts[a] += 1
        sums[a] += r
    return greedy, defined


def test_cumulative_regret_hand_computed():
    expected = np.array([[0.2, 0.5, 0.1], [0.5, 0.5, 0.5]])
    best = np.full((2, 3), 0.5)
    np.testing.assert_allclose(np.asarray(jax.jit(metrics.cumulative_regret)(expected, best)),
                               [[0.3, 0.3, 0.7], [0.0, 0.0, 0.0]], atol=1e-6)


def test_action_coverage_hand_computed():
    actions = np.array([[0, 0, 2, 1, 2], [3, 3, 3, 3, 3]])
    cov = jax.jit(metrics.action_coverage, static_argnums=1)(actions, 4)
    np.testing.assert_allclose(np.asarray(cov), [[0.25, 0.25, 0.5, 0.75, 0.75], [0.25] * 5])


def test_greedy_actions_hand_computed():
    actions = np.array([0, 1, 0, 1, 2])
    rewards = np.array([1.0, 2.0, 0.0, 2.0, 5.0])
    # t0 nothing tried; t1 arm 1 untried; t2 arm 0 (mean 1) < arm 1 (2); t3 arm 1 is best; t4 arm 2 untried
    greedy, defined = metrics.greedy_actions(actions, rewards, 3)
    assert np.asarray(greedy).tolist() == [False, False, False, True, False]
    assert np.asarray(defined).tolist() == [False, True, True, True, True]
    assert float(metrics.greedy_action_rate(actions, rewards, 3)) == pytest.approx(0.25)
    # by step: t0 undefined (0), then 0/1, 0/2, 1/3, 1/4
    np.testing.assert_allclose(metrics.greedy_rate_by_step(actions, rewards, 3), [0, 0, 0, 1 / 3, 0.25])


def test_greedy_actions_match_python_reference_on_random_episodes():
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 4, (6, 12))
    rewards = rng.integers(0, 3, (6, 12)).astype(np.float32)  # small integers: ties happen
    greedy, defined = jax.jit(metrics.greedy_actions, static_argnums=2)(actions, rewards, 4)
    for row in range(6):
        ref_g, ref_d = _greedy_reference(actions[row], rewards[row], 4)
        assert np.asarray(greedy[row]).tolist() == ref_g
        assert np.asarray(defined[row]).tolist() == ref_d


def test_invalid_rate_with_mask():
    valid = np.array([[1, 0, 1, 0], [1, 1, 1, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert float(metrics.invalid_rate(valid)) == pytest.approx(3 / 8)
    assert float(metrics.invalid_rate(valid, mask)) == pytest.approx(2 / 7)


def test_game_outcomes_over_auto_reset_rows():
    rewards = np.array([[0, 1, 0, 0, -1], [0, 0, 0, 0, 1]], dtype=np.float32)
    dones = np.array([[0, 1, 0, 0, 1], [0, 0, 1, 0, 0]])
    # finished episodes: +1 and −1 in row 0, a draw in row 1; row 1's second game (+1 so far) is unfinished
    out = jax.jit(metrics.game_outcomes)(rewards, dones)
    assert int(out["episodes"]) == 3
    for key, value in {"win": 1 / 3, "draw": 1 / 3, "loss": 1 / 3, "return": 0.0}.items():
        assert float(out[key]) == pytest.approx(value, abs=1e-6), key
    none = metrics.game_outcomes(rewards, np.zeros_like(dones))
    assert int(none["episodes"]) == 0 and math.isnan(float(none["win"]))


def test_student_t_quantiles():
    # table values of t_{0.975, df}
    for df, value in {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 10: 2.228138852}.items():
        assert float(metrics.student_t_ppf(0.975, df)) == pytest.approx(value, rel=2e-4), df
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (4, 7, 30, 63, 200):
        for q in (0.9, 0.975, 0.995):
            assert float(metrics.student_t_ppf(q, df)) == pytest.approx(scipy_stats.t.ppf(q, df), rel=2e-4)


def test_mean_ci95_hand_computed_and_jittable():
    mean, half = jax.jit(metrics.mean_ci95)(np.array([1.0, 2.0, 3.0, 4.0]))
    # s = sqrt(5/3), sem = s / 2, t_{0.975, 3} = 3.182446
    assert float(mean) == pytest.approx(2.5)
    assert float(half) == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=2e-4)
    rows = np.array([[1.0, 10.0], [3.0, 10.0], [2.0, 10.0]])
    mean, half = metrics.mean_ci95(rows, axis=0)
    np.testing.assert_allclose(np.asarray(mean), [2.0, 10.0])
    assert float(half[1]) == 0.0
    with pytest.raises(ValueError, match="at least 2 values"):
        metrics.mean_ci95(np.array([1.0]))
