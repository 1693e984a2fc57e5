"""The generic update on a tiny plain-JAX token policy with a value head (no LLM needed)."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cpu_devices import run_on_cpu_devices
from jaxagent import losses
from jaxagent.train_step import (NonFiniteError, accumulate_gradients, create_train_state, make_train_step,
                                 raise_if_nonfinite, shardings_of)

VOCAB, DIM, HIDDEN, GEN = 16, 8, 16, 4
WEIGHTS = {"ppo_clip": 1.0, "kl": 0.05, "value": 0.5, "entropy": 0.0}


def init_params(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    return {"embed": 0.5 * jax.random.normal(k[0], (VOCAB, DIM)),
            "w1": 0.5 * jax.random.normal(k[1], (DIM, HIDDEN)),
            "w2": 0.5 * jax.random.normal(k[2], (HIDDEN, VOCAB)),
            "value": 0.5 * jax.random.normal(k[3], (DIM,))}


def policy(params, tokens):
    """Per-token log-probs of tokens[:, 1:] given the previous token, the logits and a value per row."""
    h = params["embed"][tokens[:, :-1]]
    logits = jnp.tanh(h @ params["w1"]) @ params["w2"]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)[..., 0]
    return logp, logits, jnp.mean(h @ params["value"], axis=1)


def loss_fn(params, batch):
    logp, logits, values = policy(params, batch["tokens"])
    mask = batch["mask"]
    return {"ppo_clip": losses.ppo_clip(logp, batch["old_logp"], batch["adv"], mask),
            "kl": losses.kl(logp, batch["ref_logp"], mask, estimator="k3"),
            "value": losses.value(values, batch["returns"]),
            "entropy": losses.entropy(-jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), -1), mask)}


def make_batch(params, seed, rows=16):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (rows, GEN + 1))
    logp, _, _ = policy(params, jnp.asarray(tokens))
    mask = (rng.uniform(size=(rows, GEN)) < 0.6).astype(np.float32)
    mask[:, 0] = 1.0
    mask[:4] = 1.0  # rows with many more tokens than others: a mean of micro-batch means would be wrong
    return {"tokens": jnp.asarray(tokens, jnp.int32),
            "old_logp": logp + jnp.asarray(rng.normal(0, 0.3, (rows, GEN)), jnp.float32),
            "ref_logp": logp + jnp.asarray(rng.normal(0, 0.3, (rows, GEN)), jnp.float32),
            "mask": jnp.asarray(mask),
            "adv": jnp.asarray(rng.normal(size=rows), jnp.float32),
            "returns": jnp.asarray(rng.normal(size=rows), jnp.float32)}


def reference_objective(params, batch):
    """The RLFT objective written out directly: token means over the whole batch, value mean over rows."""
    logp, _, values = policy(params, batch["tokens"])
    m = batch["mask"]
    ratio = jnp.exp(logp - batch["old_logp"])
    a = batch["adv"][:, None]
    ppo = -jnp.minimum(ratio * a, jnp.clip(ratio, 0.8, 1.2) * a)
    r = jnp.exp(batch["ref_logp"] - logp)
    k3 = r - 1 - jnp.log(r)
    tokens = m.sum()
    return (jnp.sum(ppo * m) / tokens + 0.05 * jnp.sum(k3 * m) / tokens
            + 0.5 * 0.5 * jnp.mean((values - batch["returns"]) ** 2))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_accumulation_over_micro_batches_equals_one_big_batch(k):
    params = init_params()
    batch = make_batch(params, seed=1)
    grads, objective, terms = jax.jit(
        lambda p, b: accumulate_gradients(loss_fn, p, b, num_micro_batches=k, weights=WEIGHTS))(params, batch)
    ref_obj, ref_grads = jax.value_and_grad(reference_objective)(params, batch)
    assert float(objective) == pytest.approx(float(ref_obj), abs=1e-5)
    for name in params:
        np.testing.assert_allclose(np.asarray(grads[name]), np.asarray(ref_grads[name]), atol=1e-5, err_msg=name)
    assert float(terms["ppo_clip"].denom) == float(batch["mask"].sum())


def test_denominator_pass_costs_no_model_forward():
    # The compiled k=2 update holds as many matrix products (forward + backward) as the k=1 one:
    # the pass that adds up the denominators was stripped of the model.
    params = init_params()
    batch = make_batch(params, seed=1)

    def dots(k):
        f = jax.jit(lambda p, b: accumulate_gradients(loss_fn, p, b, num_micro_batches=k, weights=WEIGHTS))
        return f.lower(params, batch).compile().as_text().count(" dot(")
    assert dots(1) > 0 and dots(2) == dots(1)


def test_naive_mean_of_micro_batch_means_would_differ():
    # Guards the test above: with this batch, averaging per-micro-batch token means is measurably off.
    params = init_params()
    batch = make_batch(params, seed=1)
    halves = [jax.tree.map(lambda x: x[i::2], batch) for i in range(2)]
    naive = np.mean([float(reference_objective(params, h)) for h in halves])
    assert abs(naive - float(reference_objective(params, batch))) > 1e-3


def test_step_applies_the_update_and_counts():
    params = init_params()
    batch = make_batch(params, seed=2)
    state = create_train_state(params, optax.sgd(0.1))
    step = make_train_step(loss_fn, optax.sgd(0.1), num_micro_batches=2, weights=WEIGHTS, donate=False)
    new_state, metrics = step(state, batch)
    ref_grads = jax.grad(reference_objective)(params, batch)
    for name in params:
        np.testing.assert_allclose(np.asarray(new_state.params[name]),
                                   np.asarray(params[name] - 0.1 * ref_grads[name]), atol=1e-6)
    assert int(new_state.step) == 1 and bool(metrics["finite"])
    expected_norm = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in ref_grads.values()))
    assert float(metrics["grad_norm"]) == pytest.approx(expected_norm, rel=1e-5)
    for key in ("loss", "loss/ppo_clip", "loss/kl", "clip_fraction", "ratio_max", "approx_kl", "kl", "entropy"):
        assert np.isfinite(float(metrics[key])), key
    raise_if_nonfinite(metrics, step=1)
    step(new_state, make_batch(params, seed=3))
    assert step._cache_size() == 1  # same shapes → no recompile


def test_donated_steps_leave_the_callers_parameters_alive():
    # RLFT keeps the starting parameters as the frozen reference policy while the state is donated.
    params = init_params()
    state = create_train_state(params, optax.sgd(0.1))
    step = make_train_step(loss_fn, optax.sgd(0.1), weights=WEIGHTS)
    state, _ = step(state, make_batch(params, seed=2))
    assert float(jnp.sum(params["w1"])) == pytest.approx(float(jnp.sum(init_params()["w1"])))


def test_nan_loss_skips_the_update_and_raises_a_clear_error():
    params = init_params()
    batch = make_batch(params, seed=2)
    batch["adv"] = batch["adv"].at[3].set(jnp.nan)
    state = create_train_state(params, optax.adam(0.1))
    step = make_train_step(loss_fn, optax.adam(0.1), num_micro_batches=2, weights=WEIGHTS, donate=False)
    new_state, metrics = step(state, batch)
    assert not bool(metrics["finite"])
    assert int(new_state.step) == 0
    for name in params:
        np.testing.assert_array_equal(np.asarray(new_state.params[name]), np.asarray(params[name]))
    with pytest.raises(NonFiniteError, match=r"non-finite training loss at update 7: loss=nan .*ppo_clip=nan"):
        raise_if_nonfinite(metrics, step=7)


def test_a_weight_for_a_missing_term_is_an_error():
    params = init_params()
    with pytest.raises(ValueError, match=r"loss weights for \['kl_ref'\]"):
        accumulate_gradients(loss_fn, params, make_batch(params, seed=1), weights={"kl_ref": 0.05})


def test_shardings_must_come_in_pairs():
    with pytest.raises(ValueError, match="both state_sharding and batch_sharding"):
        make_train_step(loss_fn, optax.sgd(0.1), state_sharding={})


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)


def _mesh_equivalence():
    """Run in a subprocess with 8 fake CPU devices: 3 Adafactor updates on a (4,2,1) mesh against 1 device."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxagent.experiment_config import OptimConfig
    from jaxagent.optim import make_optimizer

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2, 1), ("data", "fsdp", "tensor"))
    specs = {"embed": P("fsdp", "tensor"), "w1": P("fsdp", "tensor"), "w2": P("tensor", "fsdp"), "value": P("fsdp")}
    optimizer = make_optimizer(OptimConfig(warmup_steps=1, learning_rate=0.05), total_steps=10)
    params = init_params()
    batches = [make_batch(params, seed=10 + i) for i in range(3)]

    one = jax.devices()[0]
    ref_state = create_train_state(jax.device_put(params, one), optimizer)
    ref_step = make_train_step(loss_fn, optimizer, num_micro_batches=1, weights=WEIGHTS)

    param_sharding = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    state = create_train_state(jax.device_put(params, param_sharding), optimizer)
    step = make_train_step(loss_fn, optimizer, num_micro_batches=2, weights=WEIGHTS,
                           state_sharding=shardings_of(state), batch_sharding=batch_sharding)
    grads_fn = jax.jit(lambda p, b: accumulate_gradients(loss_fn, p, b, num_micro_batches=2, weights=WEIGHTS)[0],
                       in_shardings=(param_sharding, batch_sharding))
    ref_grads = accumulate_gradients(loss_fn, ref_state.params, jax.device_put(batches[0], one), weights=WEIGHTS)[0]
    # one multi-device program in flight at a time, for the same reason as the scheduler flag below
    grads = jax.block_until_ready(grads_fn(state.params, jax.device_put(batches[0], batch_sharding)))
    report = {"grad_diff": _max_diff(grads, ref_grads),
              "w1_devices": len(state.params["w1"].sharding.device_set),
              "w1_shard_shape": list(state.params["w1"].addressable_shards[0].data.shape),
              "loss_diff": [], "param_diff": []}
    # The last batch arrives replicated (as a slice of a rollout can): the step places it as it expects.
    layouts = [batch_sharding, batch_sharding, NamedSharding(mesh, P())]
    for b, layout in zip(batches, layouts):
        ref_state, ref_m = ref_step(ref_state, jax.device_put(b, one))
        state, m = jax.block_until_ready(step(state, jax.device_put(b, layout)))
        report["loss_diff"].append(abs(float(m["loss"]) - float(ref_m["loss"])))
        report["param_diff"].append(_max_diff(state.params, ref_state.params))
    report["param_moved"] = _max_diff(state.params, params)
    print(json.dumps(report))


def test_eight_device_mesh_matches_one_device():
    report = json.loads(run_on_cpu_devices(8, [__file__, "--mesh-equivalence"], timeout=300).strip().splitlines()[-1])
    assert report["w1_devices"] == 8 and report["w1_shard_shape"] == [DIM // 2, HIDDEN]
    assert report["grad_diff"] < 1e-5
    assert max(report["loss_diff"]) < 1e-5 and max(report["param_diff"]) < 1e-5
    assert report["param_moved"] > 1e-3  # the updates did something


if __name__ == "__main__" and "--mesh-equivalence" in sys.argv:
    _mesh_equivalence()
