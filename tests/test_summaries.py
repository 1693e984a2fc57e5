"""Evaluation curves and summaries of small hand-built trajectories, against values worked out by hand."""
import numpy as np
import pytest

from jaxagent.rollout import Trajectory
from jaxagent.trainers.evaluate import episode_curves, summarise

# The 97.5% quantile of Student's t with one degree of freedom (the Cauchy distribution): the 95% interval of two rows.
T1 = np.tan(0.475 * np.pi)


def trajectory(actions, env_rewards, valid, done=None, expected=None, best=None):
    """A Trajectory with the fields the metrics read; every other field zeros."""
    actions = np.asarray(actions, np.int32)
    zeros = np.zeros(actions.shape, np.float32)
    ints, one_token = np.zeros(actions.shape, np.int32), np.zeros(actions.shape + (1,), np.int32)
    return Trajectory(
        line_tokens=one_token, line_lengths=ints, tail_tokens=one_token, tail_lengths=ints, tokens=one_token,
        logprobs=np.zeros(actions.shape + (1,), np.float32), lengths=ints, actions=actions,
        valid=np.asarray(valid, bool), env_rewards=np.asarray(env_rewards, np.float32), train_rewards=zeros,
        first=np.zeros(actions.shape, bool), active=np.ones(actions.shape, bool), forced=np.zeros(actions.shape, bool),
        done=np.zeros(actions.shape, bool) if done is None else np.asarray(done, bool),
        expected_reward=zeros if expected is None else np.asarray(expected, np.float32),
        best_expected_reward=zeros if best is None else np.asarray(best, np.float32),
        states=ints, start_tokens=np.zeros(actions.shape[:1] + (0,), np.int32),
        start_lengths=np.zeros(actions.shape[:1], np.int32), prefix_length=np.int32(0))


# Two bandit episodes of 4 steps on 3 arms whose best arm pays 0.9 in expectation.
BANDIT = dict(actions=[[0, 1, 0, 2], [2, 2, 2, 1]],
              env_rewards=[[1.0, 0.0, 0.5, 2.0], [0.3, -0.1, 0.4, 0.0]],
              valid=[[1, 1, 0, 1], [1, 1, 1, 1]],
              expected=[[0.2, 0.5, 0.2, 0.9], [0.9, 0.9, 0.9, 0.1]],
              best=[[0.9] * 4, [0.9] * 4])


def test_bandit_curves_by_step():
    curves = episode_curves(trajectory(**BANDIT), num_actions=3)
    assert set(curves) == {"regret", "coverage", "invalid", "return", "greedy"}
    np.testing.assert_allclose(curves["regret"], [[0.7, 1.1, 1.8, 1.8], [0.0, 0.0, 0.0, 0.8]], atol=1e-6)
    np.testing.assert_allclose(curves["coverage"], [[1 / 3, 2 / 3, 2 / 3, 1.0], [1 / 3, 1 / 3, 1 / 3, 2 / 3]],
                               atol=1e-6)
    np.testing.assert_allclose(curves["return"], [[1.0, 1.0, 1.5, 3.5], [0.3, 0.2, 0.6, 0.6]], atol=1e-6)
    np.testing.assert_array_equal(curves["invalid"], [[0, 0, 1, 0], [0, 0, 0, 0]])
    # Row 0: step 0 has nothing tried yet; step 1 tries a new arm; step 2 replays the best mean (1.0); step 3 a new
    # arm. Row 1: arm 2 is the only one tried at steps 1 and 2; step 3 tries arm 1.
    np.testing.assert_allclose(curves["greedy"], [[0.0, 0.0, 1 / 2, 1 / 3], [0.0, 1.0, 1.0, 2 / 3]], atol=1e-6)


def test_bandit_summary_is_the_mean_and_interval_of_the_final_values():
    summary = summarise(episode_curves(trajectory(**BANDIT), num_actions=3))
    assert set(summary) == {"regret", "coverage", "invalid", "return", "greedy"}
    # (per-row final values or, for invalid, per-row rates)
    for name, (a, b) in {"regret": (1.8, 0.8), "coverage": (1.0, 2 / 3), "return": (3.5, 0.6),
                         "invalid": (0.25, 0.0), "greedy": (1 / 3, 2 / 3)}.items():
        assert summary[name]["mean"] == pytest.approx((a + b) / 2, abs=1e-6), name
        assert summary[name]["ci95"] == pytest.approx(T1 * abs(a - b) / 2, rel=1e-4), name


# Tic-tac-toe, 8 steps a row (the env resets after a game): row 0 wins in 3 moves, loses in 3 and is cut off 2
# moves into a third game; row 1 draws in 5 moves and wins in 3. Rewards come only at a game's end.
GAMES = dict(actions=[[4, 0, 8, 4, 2, 6, 4, 1], [4, 0, 2, 6, 7, 4, 8, 5]],
             env_rewards=[[0, 0, 1, 0, 0, -1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1]],
             done=[[0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0, 0, 1]],
             valid=[[1, 1, 1, 1, 0, 1, 1, 1], [1] * 8])


def test_game_summary_counts_finished_games_only():
    curves = episode_curves(trajectory(**GAMES), num_actions=9, game=True)
    assert set(curves) == {"regret", "coverage", "invalid", "return", "outcomes"}
    # return per finished game so far: row 0 wins then loses, row 1 draws then wins
    np.testing.assert_array_equal(curves["return"], [[0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0.5]])
    np.testing.assert_array_equal(curves["regret"], np.zeros((2, 8)))
    assert int(curves["outcomes"]["episodes"]) == 4
    summary = summarise(curves)
    assert set(summary) == {"regret", "coverage", "invalid", "return", "win", "draw", "loss"}
    for name, p in {"win": 2 / 4, "draw": 1 / 4, "loss": 1 / 4}.items():
        assert summary[name]["games"] == 4
        assert summary[name]["mean"] == pytest.approx(p, abs=1e-6), name
        assert summary[name]["ci95"] == pytest.approx(1.96 * np.sqrt(p * (1 - p) / 4), rel=1e-5), name
    # per finished game, pooled: returns 1, -1, 0, 1
    assert summary["return"]["mean"] == pytest.approx(0.25, abs=1e-6)
    assert summary["return"]["ci95"] == pytest.approx(1.96 * np.std([1, -1, 0, 1]) / 2, rel=1e-5)
    # squares played: {0, 1, 2, 4, 6, 8} and {0, 2, 4, 5, 6, 7, 8}; one invalid move in row 0's 8 steps
    for name, (a, b) in {"coverage": (6 / 9, 7 / 9), "invalid": (1 / 8, 0.0),
                         "regret": (0.0, 0.0)}.items():
        assert summary[name]["mean"] == pytest.approx((a + b) / 2, abs=1e-6), name
        assert summary[name]["ci95"] == pytest.approx(T1 * abs(a - b) / 2, rel=1e-4, abs=1e-9), name


def test_game_rows_without_a_finished_game_report_no_outcome():
    cut = dict(actions=[[4, 0], [4, 2]], env_rewards=[[0, 0], [0, 0]], done=[[0, 0], [0, 0]], valid=[[1, 1]] * 2)
    curves = episode_curves(trajectory(**cut), num_actions=9, game=True)
    assert int(curves["outcomes"]["episodes"]) == 0
    assert all(np.isnan(curves["outcomes"][name]) for name in ("win", "draw", "loss", "return"))
