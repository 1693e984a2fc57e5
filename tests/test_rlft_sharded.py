"""The RLFT update on a tiny Gemma: same losses and gradients on a (4, 2, 1) mesh of 8 fake CPU devices as on 1."""
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import envs_jax
from cpu_devices import run_on_cpu_devices
from jaxagent.experiment_config import RLConfig
from jaxagent.model import GemmaConfig, init_params
from jaxagent.rollout import AgentLoop
from jaxagent.text.bandit_prompt import BanditRenderer
from jaxagent.text.parse import ActionParser
from jaxagent.text.render import PromptOptions
from jaxagent.text.tokenizer import shipped_tokenizer
from jaxagent.train_step import create_train_state, make_train_step, shardings_of
from jaxagent.trainers.rlft import rl_batch, rl_loss, rl_weights, unit_inputs

CFG = GemmaConfig(vocab_size=2048, num_layers=2, d_model=32, ffw_dim=64, num_heads=2, num_kv_heads=1, head_dim=16,
                  sliding_window=32, query_pre_attn_scalar=16)
RL = RLConfig(beta=0.05, kl_estimator="k3")
HORIZON, K, G, EPISODES, TEMPERATURE, UPDATES = 3, 3, 8, 8, 1.0, 2


def fixed_batch():
    """Parameters and an RL batch from a short sampled rollout (8 episodes, so every device holds one)."""
    tok = shipped_tokenizer()
    assert tok.vocab_size <= CFG.vocab_size
    env = envs_jax.make_env("bandit-gaussian", num_arms=K, horizon=HORIZON)
    renderer = BanditRenderer(K, HORIZON, tok, PromptOptions(max_len=512))
    loop = AgentLoop(env, renderer, ActionParser(tok, renderer.labels), CFG, num_steps=HORIZON, max_new_tokens=G,
                     stop_tokens=tok.stop_ids, temperature=TEMPERATURE, history_segments=1)
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(1), EPISODES))
    params = init_params(CFG, jax.random.key(0), std=0.5)
    ref_params = init_params(CFG, jax.random.key(7), std=0.5)  # a reference policy that differs: the KL is not 0

    @jax.jit
    def build(params, ref_params, pool, key):
        traj = loop.rollout(params, pool, key)
        return rl_batch(params, ref_params, CFG, RL, unit_inputs(RL, renderer, traj, None, tok.pad_id), traj,
                        TEMPERATURE)
    return params, build(params, ref_params, pool, jax.random.key(2))


def keep_gradients() -> optax.GradientTransformation:
    """Passes gradients through unchanged and keeps the last ones in its state, so the step reports them."""
    return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                        lambda grads, state, params=None: (grads, grads))


def run_updates(params, batch, mesh=None):
    """Per update: the loss and the gradients it applied. With ``mesh``: sharded, in 2 micro-batches."""
    loss_fn, weights = rl_loss(CFG, RL, TEMPERATURE), rl_weights(RL)
    optimizer = optax.chain(keep_gradients(), optax.adamw(1e-2))
    if mesh is None:
        state = create_train_state(params, optimizer)
        step = make_train_step(loss_fn, optimizer, weights=weights, donate=False)
    else:
        from jaxagent.model.sharding import batch_sharding, param_shardings
        b_sharding = batch_sharding(mesh, (EPISODES,))
        params, batch = jax.device_put(params, param_shardings(mesh, params)), jax.device_put(batch, b_sharding)
        assert params["embed"].addressable_shards[0].data.shape == (CFG.vocab_size, CFG.d_model // 2)
        assert len(batch["mask"].sharding.device_set) == 8
        state = create_train_state(params, optimizer)
        step = make_train_step(loss_fn, optimizer, num_micro_batches=2, weights=weights, donate=False,
                               state_sharding=shardings_of(state), batch_sharding=b_sharding)
    out = []
    for _ in range(UPDATES):
        # one multi-device program in flight at a time (see the scheduler flag in the test below)
        state, metrics = jax.block_until_ready(step(state, batch))
        out.append({"loss": float(metrics["loss"]), "kl": float(metrics["loss/kl"]),
                    "grads": jax.tree.map(np.asarray, state.opt_state[0])})
    return out, jax.tree.map(np.asarray, state.params)


def test_rlft_update_on_eight_fake_devices_matches_one_device(tmp_path):
    params, batch = fixed_batch()
    assert float(batch["mask"].sum()) > EPISODES * HORIZON  # generated tokens to learn from
    want, want_params = run_updates(params, batch)
    data = tmp_path / "batch.pkl"
    data.write_bytes(pickle.dumps(jax.tree.map(np.asarray, (params, batch))))

    run_on_cpu_devices(8, [__file__, "--sharded", str(data)])
    got, got_params = pickle.loads(data.with_suffix(".out").read_bytes())

    assert want[0]["kl"] > 1e-3 and want[1]["loss"] != want[0]["loss"]  # a live KL term, and the update moved
    for w, g in zip(want, got):
        np.testing.assert_allclose(g["loss"], w["loss"], rtol=1e-5, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g["grads"], w["grads"])
    # Adam divides by sqrt(v): rounding in tiny gradients moves parameters by a small fraction of the 1e-2 step
    # (up to ~1% of it seen here); a wrong reduction or optimizer-state sharding would be off by whole steps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-3), got_params, want_params)


def _sharded(path):
    from jaxagent.model.sharding import make_mesh

    assert jax.device_count() == 8
    with open(path, "rb") as f:
        params, batch = pickle.load(f)
    result = run_updates(params, batch, make_mesh(4, 2, 1))
    with open(os.path.splitext(path)[0] + ".out", "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__" and "--sharded" in sys.argv:
    _sharded(sys.argv[-1])
