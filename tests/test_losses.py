import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagent import losses
from jaxagent.losses import finalize_stats, reduce_stacked, safe_mean

# Row 0 has advantage +1, row 1 advantage −1; the third token of row 0 is masked out (ratio 3.0
# there must not show up anywhere).
RATIOS = np.array([[1.5, 0.5, 3.0], [0.5, 1.5, 1.1]])
MASK = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
ADV = np.array([1.0, -1.0])
OLD_LOGP = np.log(np.array([[0.2, 0.4, 0.1], [0.3, 0.2, 0.5]]))
LOGP = OLD_LOGP + np.log(RATIOS)


def _ppo(**kw):
    return losses.ppo_clip(jnp.asarray(LOGP), jnp.asarray(OLD_LOGP), jnp.asarray(ADV), jnp.asarray(MASK), **kw)


def test_ppo_clip_both_sides_hand_computed():
    out = _ppo(epsilon=0.2)
    # row 0 (A=+1): ρ=1.5 clipped to 1.2 → −1.2; ρ=0.5 below the band but min keeps 0.5 → −0.5
    # row 1 (A=−1): ρ=0.5 clipped to 0.8 → +0.8; ρ=1.5 not clipped (min picks −1.5) → +1.5; ρ=1.1 → +1.1
    assert float(out.sum) == pytest.approx(-1.2 - 0.5 + 0.8 + 1.5 + 1.1, abs=1e-5)
    assert float(out.denom) == 5.0
    stats = finalize_stats(out.stats)
    assert float(stats["clip_fraction"]) == pytest.approx(2 / 5)
    assert float(stats["ratio_mean"]) == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.1) / 5, abs=1e-5)
    assert float(stats["ratio_min"]) == pytest.approx(0.5, abs=1e-6)
    assert float(stats["ratio_max"]) == pytest.approx(1.5, abs=1e-5)
    kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 0.5, 1.5, 1.1)) / 5
    assert float(stats["approx_kl"]) == pytest.approx(kl, abs=1e-5)


def test_ppo_clip_separate_low_and_high():
    out = _ppo(epsilon_low=0.1, epsilon_high=0.3)
    # row 0: 1.5 → 1.3 (−1.3), 0.5 (−0.5); row 1: 0.5 → 0.9 (+0.9), 1.5 (+1.5), 1.1 (+1.1)
    assert float(out.sum) == pytest.approx(-1.3 - 0.5 + 0.9 + 1.5 + 1.1, abs=1e-5)


def test_ppo_clip_gradient_is_zero_on_clipped_tokens():
    grad = jax.grad(lambda lp: losses.ppo_clip(lp, jnp.asarray(OLD_LOGP), jnp.asarray(ADV),
                                                    jnp.asarray(MASK)).sum)(jnp.asarray(LOGP))
    # d(−ρA)/dlogp = −ρA where unclipped; 0 where the clip is active or the token masked
    expected = np.array([[0.0, -0.5, 0.0], [0.0, 1.5, 1.1]])
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-5)


def test_kl_estimators_hand_computed():
    logp, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    one = jnp.ones((1, 1))
    assert float(losses.kl(logp, ref, one, estimator="k1").sum) == pytest.approx(math.log(2), abs=1e-6)
    # r = π_ref/π = 0.5 → k3 = r − 1 − log r
    assert float(losses.kl(logp, ref, one, estimator="k3").sum) == pytest.approx(0.5 - 1 + math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="k2"):
        losses.kl(logp, ref, one, estimator="k2")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased(estimator):
    # Weighting every token of a 4-way vocabulary by its probability under π gives the expectation
    # over tokens sampled from π, which must equal the exact KL(π ‖ π_ref).
    p = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([0.4, 0.3, 0.2, 0.1])
    exact = float(np.sum(p * np.log(p / q)))
    out = losses.kl(jnp.log(p)[None], jnp.log(q)[None], jnp.asarray(p)[None], estimator=estimator)
    assert float(safe_mean(out.sum, out.denom)) == pytest.approx(exact, abs=1e-6)
    assert float(finalize_stats(out.stats)["kl"]) == pytest.approx(exact, abs=1e-6)


def test_k3_is_never_negative():
    logp = jnp.log(jnp.array([[0.9, 0.1, 0.5]]))
    ref = jnp.log(jnp.array([[0.1, 0.9, 0.5]]))
    per_token = losses.kl_estimate(logp, ref, "k3")
    assert bool(jnp.all(per_token >= 0))
    assert float(losses.kl_estimate(logp, ref, "k1")[0, 1]) < 0


def test_value_loss_plain_and_clipped():
    v, ret = jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])
    out = losses.value(v, ret)
    assert float(out.sum) == pytest.approx(0.5 * (1 + 4)) and float(out.denom) == 2
    # the clipped prediction 0.2 is farther from the return 1.0 than the unclipped 1.0
    out = losses.value(jnp.array([1.0]), jnp.array([1.0]), old_values=jnp.array([0.0]), clip=0.2)
    assert float(out.sum) == pytest.approx(0.5 * 0.8**2)
    assert float(finalize_stats(out.stats)["value_clip_fraction"]) == 1.0
    # here the unclipped errors are the larger ones
    out = losses.value(v, ret, old_values=jnp.array([0.5, 2.5]), clip=0.2)
    assert float(out.sum) == pytest.approx(2.5)
    masked = losses.value(v, ret, jnp.array([1.0, 0.0]))
    assert float(masked.sum) == pytest.approx(0.5) and float(masked.denom) == 1


def test_sft_nll_counts_only_target_tokens():
    logp = jnp.log(jnp.array([[0.5, 0.25, 0.125]]))
    out = losses.sft_nll(logp, jnp.array([[0.0, 1.0, 1.0]]))
    assert float(safe_mean(out.sum, out.denom)) == pytest.approx((math.log(4) + math.log(8)) / 2, abs=1e-6)


def test_entropy_stat_is_the_masked_mean():
    h = jnp.array([[math.log(4), math.log(2)]])  # a uniform choice among 4 tokens, then among 2
    out = losses.entropy(h, jnp.array([[1.0, 0.0]]))
    assert float(finalize_stats(out.stats)["entropy"]) == pytest.approx(math.log(4), abs=1e-6)


def test_all_masked_batch_gives_zero_loss_and_nan_stats():
    out = losses.ppo_clip(jnp.asarray(LOGP), jnp.asarray(OLD_LOGP), jnp.asarray(ADV), jnp.zeros((2, 3)))
    assert float(safe_mean(out.sum, out.denom)) == 0.0
    assert math.isnan(float(finalize_stats(out.stats)["ratio_max"]))


def test_micro_batch_sums_reduce_to_the_full_batch():
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(0.05, 1.0, (6, 4)))
    old = np.log(rng.uniform(0.05, 1.0, (6, 4)))
    mask = (rng.uniform(size=(6, 4)) > 0.3).astype(np.float32)
    mask[:, 0] = 1.0  # uneven token counts per row, so per-micro-batch means would be biased
    adv = rng.normal(size=6)
    full = losses.ppo_clip(logp, old, adv, mask)
    parts = [losses.ppo_clip(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2]) for i in (0, 2, 4)]
    merged = reduce_stacked(jax.tree.map(lambda *xs: jnp.stack(xs), *parts))
    assert float(safe_mean(merged.sum, merged.denom)) == pytest.approx(float(safe_mean(full.sum, full.denom)), abs=1e-6)
    for k, v in finalize_stats(full.stats).items():
        assert float(finalize_stats(merged.stats)[k]) == pytest.approx(float(v), abs=1e-6), k
