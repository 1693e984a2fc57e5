"""The CPU decode kernels against the plain forms: the same greedy tokens, log-probs and gradients within float32
rounding, for the sampler (scanned and unrolled layers), the scoring path and a whole agent episode."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures.make_gemma2_fixture import FIXTURE_DIR
from jaxagent.experiment_config import load_experiment
from jaxagent.model import cpu_kernels, generate, init_cache, load_hf, score
from jaxagent.trainers.setup import build

KERNELS = ("cpu", "plain")


@pytest.fixture(scope="module")
def models():
    cfg, params = load_hf(FIXTURE_DIR)
    return {name: dataclasses.replace(cfg, kernels=name) for name in KERNELS}, params


def test_auto_takes_the_cpu_kernels_on_cpu_only_and_the_cache_layout_follows(models):
    cfgs, _ = models
    assert cpu_kernels.active(dataclasses.replace(cfgs["cpu"], kernels="auto")) == (jax.default_backend() == "cpu")
    L, K, hd = cfgs["cpu"].num_layers, cfgs["cpu"].num_kv_heads, cfgs["cpu"].head_dim
    assert init_cache(cfgs["cpu"], 3, 10).k.shape == (L, 3, K, hd, 10)
    assert init_cache(cfgs["plain"], 3, 10).k.shape == init_cache(cfgs["plain"], 3, 10).v.shape == (L, 3, K, 10, hd)
    with pytest.raises(ValueError, match="kernels must be one of"):
        dataclasses.replace(cfgs["cpu"], kernels="gpu")


@pytest.mark.parametrize("unroll_layers", [False, True])
def test_greedy_decoding_is_the_same_with_either_kernels(models, unroll_layers):
    cfgs, params = models
    rng = np.random.default_rng(3)
    lengths = np.array([5, 17, 1, 11])
    prompts = np.zeros((4, 17), np.int32)
    for b, n in enumerate(lengths):
        prompts[b, :n] = rng.integers(3, cfgs["cpu"].vocab_size, n)
    out = {name: generate(params, cfg, jnp.asarray(prompts), jnp.asarray(lengths), jax.random.key(0), max_len=41,
                          max_new_tokens=24, unroll_layers=unroll_layers) for name, cfg in cfgs.items()}
    (_, tok_cpu, lp_cpu, n_cpu), (_, tok_plain, lp_plain, n_plain) = out["cpu"], out["plain"]
    np.testing.assert_array_equal(np.asarray(tok_cpu), np.asarray(tok_plain))
    np.testing.assert_array_equal(np.asarray(n_cpu), np.asarray(n_plain))
    np.testing.assert_allclose(np.asarray(lp_cpu), np.asarray(lp_plain), atol=1e-5)


def test_scores_and_their_gradients_are_the_same_with_either_kernels(models):
    cfgs, params = models
    tokens = jnp.asarray(np.random.default_rng(4).integers(3, cfgs["cpu"].vocab_size, (3, 19)), jnp.int32)

    def loss(params, cfg):
        logp = score(params, cfg, tokens, temperature=0.7)
        return jnp.sum(logp * jnp.linspace(-1.0, 1.0, logp.shape[1])), logp

    (_, lp_cpu), g_cpu = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(params, cfgs["cpu"])
    (_, lp_plain), g_plain = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(params, cfgs["plain"])
    np.testing.assert_allclose(np.asarray(lp_cpu), np.asarray(lp_plain), atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_plain)):
        scale = float(np.abs(np.asarray(b)).max()) + 1e-6
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale)


def test_agent_episode_is_the_same_with_either_kernels():
    """The shipped base playing a bandit greedily: prompts that grow past the sliding window, a prefix shared by
    all rows, turns appended and decoded with unrolled layers over the cache's two layouts."""
    trajectories = {}
    for name in KERNELS:
        exp = build(load_experiment(None, [
            "model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped", f"model.kernels={name}",
            "env.options={num_arms: 5, horizon: 4}", "rollout.temperature=0",
            "rollout.max_new_tokens=24", "rollout.unroll_layers=true", "rollout.history_segments=1"]))
        pool = exp.pool(jax.random.key(0), 2)
        trajectories[name] = jax.jit(exp.train_loop.rollout)(exp.init_params, pool, jax.random.key(1))
    cpu, plain = trajectories["cpu"], trajectories["plain"]
    assert int(np.asarray(cpu.valid).sum()) > 0
    np.testing.assert_array_equal(np.asarray(cpu.tokens), np.asarray(plain.tokens))
    np.testing.assert_array_equal(np.asarray(cpu.actions), np.asarray(plain.actions))
    np.testing.assert_allclose(np.asarray(cpu.logprobs), np.asarray(plain.logprobs), atol=1e-5)
