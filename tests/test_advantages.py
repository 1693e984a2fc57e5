import numpy as np
import pytest

from jaxagent.advantages import discounted_rewards_to_go, gae, masked_normalize, normalize_rewards, rewards_to_go_mc


def _gae_reference(rewards, values, dones, last_value, gamma, lam):
    """Plain-Python GAE, one episode row at a time, walking backwards."""
    n, t_len = rewards.shape
    adv = np.zeros((n, t_len))
    for i in range(n):
        running = 0.0
        for t in reversed(range(t_len)):
            next_v = last_value[i] if t == t_len - 1 else values[i, t + 1]
            not_done = 1.0 - dones[i, t]
            delta = rewards[i, t] + gamma * next_v * not_done - values[i, t]
            running = delta + gamma * lam * not_done * running
            adv[i, t] = running
    return adv


def test_rewards_to_go_hand_computed():
    g = discounted_rewards_to_go(np.array([[1.0, 2.0, 3.0]]), gamma=0.5)
    # G_2 = 3, G_1 = 2 + 0.5·3 = 3.5, G_0 = 1 + 0.5·3.5 = 2.75
    np.testing.assert_allclose(np.asarray(g), [[2.75, 3.5, 3.0]], atol=1e-6)
    g = discounted_rewards_to_go(np.array([[1.0, 2.0, 3.0]]), gamma=1.0, dones=np.array([[0, 1, 0]]))
    np.testing.assert_allclose(np.asarray(g), [[3.0, 2.0, 3.0]], atol=1e-6)


def test_rewards_to_go_mc_baseline_is_the_per_step_batch_mean():
    rewards = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv, ret = rewards_to_go_mc(rewards, gamma=1.0)
    returns = np.array([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [3.0, 2.0, 1.0]])
    np.testing.assert_allclose(np.asarray(ret), returns)
    np.testing.assert_allclose(np.asarray(adv), returns - returns.mean(axis=0), atol=1e-6)
    norm, _ = rewards_to_go_mc(rewards, gamma=1.0, normalize=True)
    centred = returns - returns.mean(axis=0)
    np.testing.assert_allclose(np.asarray(norm), centred / centred.std(), atol=1e-5)


def test_rewards_to_go_mc_mask_excludes_missing_steps_from_the_baseline():
    rewards = np.array([[1.0, 1.0], [3.0, 0.0]])
    mask = np.array([[1.0, 1.0], [1.0, 0.0]])
    adv, _ = rewards_to_go_mc(rewards, mask, gamma=1.0)
    # returns: row 0 [2, 1], row 1 [3, (masked)]; baseline t0 = 2.5, t1 = 1 (row 0 only)
    np.testing.assert_allclose(np.asarray(adv), [[-0.5, 0.0], [0.5, 0.0]], atol=1e-6)


def test_rewards_to_go_mc_group_baseline_is_the_mean_of_the_other_episodes_on_the_instance():
    rewards = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [10.0, 0.0], [20.0, 1.0], [30.0, 2.0]])
    adv, ret = rewards_to_go_mc(rewards, gamma=1.0, group_size=3)
    returns = np.array([[1.0, 0.0], [5.0, 2.0], [5.0, 5.0], [10.0, 0.0], [21.0, 1.0], [32.0, 2.0]])
    np.testing.assert_allclose(np.asarray(ret), returns)
    # row 0, step 0: the others on its instance returned 5 and 5; row 4, step 1: 0 and 2
    expected = np.array([[1 - 5, 0 - 3.5], [5 - 3, 2 - 2.5], [5 - 3, 5 - 1],
                         [10 - 26.5, 0 - 1.5], [21 - 21, 1 - 1], [32 - 15.5, 2 - 0.5]])
    np.testing.assert_allclose(np.asarray(adv), expected, atol=1e-6)
    # an instance's offset (every episode on it +100) leaves its advantages unchanged
    shifted, _ = rewards_to_go_mc(rewards + np.array([[0.0], [0.0], [0.0], [100.0], [100.0], [100.0]]),
                                  gamma=1.0, group_size=3)
    np.testing.assert_allclose(np.asarray(shifted)[3:], expected[3:], atol=1e-4)
    with pytest.raises(ValueError, match="group_size 4"):
        rewards_to_go_mc(rewards, group_size=4)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_matches_python_reference(gamma, lam):
    rng = np.random.default_rng(1)
    n, t_len = 3, 7
    rewards = rng.normal(size=(n, t_len))
    values = rng.normal(size=(n, t_len))
    dones = (rng.uniform(size=(n, t_len)) < 0.3).astype(np.float32)
    last_value = rng.normal(size=n)
    adv, targets = gae(rewards, values, dones, last_value, gamma=gamma, lam=lam)
    expected = _gae_reference(rewards, values, dones, last_value, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(targets), expected + values, atol=1e-5)


def test_gae_with_lambda_one_is_return_minus_value():
    rewards = np.array([[0.0, 0.0, 1.0, 0.0, -1.0]])
    dones = np.array([[0, 0, 1, 0, 1]], dtype=np.float32)
    values = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    adv, _ = gae(rewards, values, dones, np.array([9.0]), gamma=1.0, lam=1.0)
    # two finished episodes: returns [1, 1, 1] and [−1, −1]; the bootstrap 9.0 is cut by the last done
    np.testing.assert_allclose(np.asarray(adv), [[0.9, 0.8, 0.7, -1.4, -1.5]], atol=1e-6)


def test_gae_mask_and_normalize():
    rewards = np.array([[1.0, 0.0], [0.0, 2.0]])
    values = np.zeros((2, 2))
    mask = np.array([[1.0, 1.0], [1.0, 0.0]])
    adv, _ = gae(rewards, values, np.zeros((2, 2)), np.zeros(2), gamma=1.0, lam=1.0, mask=mask)
    np.testing.assert_allclose(np.asarray(adv), [[1.0, 0.0], [2.0, 0.0]])
    norm, _ = gae(rewards, values, np.zeros((2, 2)), np.zeros(2), gamma=1.0, lam=1.0, mask=mask, normalize=True)
    kept = np.array([1.0, 0.0, 2.0])
    np.testing.assert_allclose(np.asarray(norm)[mask > 0], (kept - kept.mean()) / kept.std(), atol=1e-5)
    assert float(np.asarray(norm)[1, 1]) == 0.0


def test_reward_normalisation_scales_without_centring():
    r = np.array([[2.0, 4.0], [6.0, 8.0]])
    out = np.asarray(normalize_rewards(r))
    np.testing.assert_allclose(out, r / r.std(), atol=1e-5)
    centred = np.asarray(masked_normalize(r))
    assert centred.mean() == pytest.approx(0.0, abs=1e-6) and centred.std() == pytest.approx(1.0, abs=1e-5)
