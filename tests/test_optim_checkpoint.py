import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxagent.checkpoint import Checkpointer, CheckpointNotFoundError
from envs_jax.yaml_config import ConfigError
from jaxagent.experiment_config import ExperimentConfig, OptimConfig
from jaxagent.losses import LossOutput
from jaxagent.optim import make_optimizer, make_schedule
from jaxagent.runlog import RunLog, git_commit, package_versions, progress
from jaxagent.train_step import NonFiniteError, create_train_state, make_train_step


def test_schedule_warmup_then_cosine_to_the_final_rate():
    s = make_schedule(OptimConfig(), total_steps=1100)  # lr 1e-4, 100 warm-up steps, final 1e-6
    span = 1e-4 - 1e-6
    expected = {0: 0.0, 50: 5e-5, 100: 1e-4,
                350: 1e-6 + span * 0.5 * (1 + math.cos(math.pi * 0.25)),
                600: 1e-6 + span * 0.5,
                1100: 1e-6, 5000: 1e-6}
    for step, value in expected.items():
        assert float(s(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step
    with pytest.raises(ConfigError, match="config key 'optim.warmup_steps'.*optim.warmup_steps=100"):
        make_schedule(OptimConfig(), total_steps=100)


def _adam_reference(grads, lrs, clip, b1=0.9, b2=0.999, eps=1e-8):
    """Updates of Adam after global-norm clipping, in numpy."""
    m = v = np.zeros_like(grads[0])
    out = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        norm = np.sqrt(np.sum(g ** 2))
        g = g * min(1.0, clip / norm)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        out.append(-lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    return out


def test_adamw_clips_the_global_norm_first():
    cfg = OptimConfig(name="adamw", warmup_steps=0, learning_rate=0.1, final_learning_rate=0.1)
    opt = make_optimizer(cfg, total_steps=10)
    grads = [np.array([60.0, -80.0]), np.array([0.3, 0.4])]  # norm 100 (clipped to 1), then 0.5
    state = opt.init(jnp.zeros(2))
    got = []
    for g in grads:
        u, state = opt.update(jnp.asarray(g, jnp.float32), state, jnp.zeros(2))
        got.append(np.asarray(u))
    np.testing.assert_allclose(got[1], _adam_reference(grads, [0.1, 0.1], clip=1.0)[1], rtol=1e-4)
    unclipped = _adam_reference(grads, [0.1, 0.1], clip=1e9)[1]
    assert np.max(np.abs(got[1] - unclipped)) > 1e-3


@pytest.mark.parametrize("param_scale", [False, True])
def test_adafactor_step_size_is_absolute_unless_asked(param_scale):
    cfg = OptimConfig(warmup_steps=0, learning_rate=0.01, final_learning_rate=0.01, adafactor_param_scale=param_scale)
    opt = make_optimizer(cfg, total_steps=10)
    params = jnp.array([3.0, -4.0])
    u, _ = opt.update(jnp.array([0.5, 0.2]), opt.init(params), params)
    # first step: the update is g/sqrt(g²) = sign(g) (block RMS 1), times the learning rate
    scale = float(np.sqrt(np.mean(np.array([3.0, -4.0]) ** 2))) if param_scale else 1.0
    np.testing.assert_allclose(np.asarray(u), -0.01 * scale * np.array([1.0, 1.0]), rtol=1e-4)


# --- checkpoints: a tiny regression trained with Adafactor, random noise and a data stream -------

def _loss_fn(params, batch):
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return {"mse": LossOutput(jnp.sum(err ** 2), jnp.asarray(err.size, jnp.float32), {})}


def _batch(position, key):
    rng = np.random.default_rng(position)  # the data stream: batch i is a function of i
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y) + 0.1 * jax.random.normal(key, (8, 3))}


OPTIMIZER = make_optimizer(OptimConfig(warmup_steps=2, learning_rate=0.05), total_steps=20)
STEP = make_train_step(_loss_fn, OPTIMIZER, num_micro_batches=2)


def _fresh():
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    return create_train_state(params, OPTIMIZER), jax.random.key(0), {"batch": 0}


def _train(state, rng, position, updates, ckpt=None):
    for _ in range(updates):
        rng, sub = jax.random.split(rng)
        state, _ = STEP(state, _batch(position["batch"], sub))
        position = {"batch": position["batch"] + 1}
        if ckpt is not None and int(state.step) % 2 == 0:
            ckpt.save(state, rng, position)
    return state, rng, position


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight, _, _ = _train(*_fresh(), updates=6)

    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    _train(*_fresh(), updates=5, ckpt=ckpt)  # "interrupted" after update 5; the last save is update 4
    ckpt.close()

    again = Checkpointer(tmp_path / "ckpt", keep=2)
    like, _, _ = _fresh()
    restored = again.restore(like)
    assert restored.step == 4 and restored.data_position == {"batch": 4} and int(restored.state.step) == 4
    assert again.all_steps() == [2, 4]  # keep=2
    resumed, _, _ = _train(restored.state, restored.rng, restored.data_position, updates=2)
    for name in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(resumed.params[name]), np.asarray(straight.params[name]))
    np.testing.assert_array_equal(np.asarray(again.restore_params(like.params, step=2)["b"]),
                                  np.asarray(_train(*_fresh(), updates=2)[0].params["b"]))
    again.close()


def test_non_finite_state_is_not_saved_and_the_last_good_one_stays(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    state, rng, _ = _fresh()
    state, rng, pos = _train(state, rng, {"batch": 0}, updates=1)
    ckpt.save(state, rng, pos)
    bad = state.replace(step=state.step + 1, params={**state.params, "b": state.params["b"].at[0].set(jnp.nan)})
    with pytest.raises(NonFiniteError, match="not saving the checkpoint of update 2.*last good checkpoint is update 1"):
        ckpt.save(bad, rng, pos)
    assert ckpt.all_steps() == [1]
    assert np.all(np.isfinite(np.asarray(ckpt.restore(state).state.params["b"])))
    ckpt.close()


def test_raw_uint32_keys_round_trip(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    state, _, _ = _fresh()
    ckpt.save(state, jax.random.PRNGKey(7))
    np.testing.assert_array_equal(np.asarray(ckpt.restore(state).rng), np.asarray(jax.random.PRNGKey(7)))
    ckpt.close()


def test_missing_checkpoint_errors_name_the_place(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="checkpoint directory not found: .*nowhere"):
        Checkpointer(tmp_path / "nowhere", create=False)
    ckpt = Checkpointer(tmp_path / "empty")
    like, _, _ = _fresh()
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint in .*empty"):
        ckpt.restore(like)
    ckpt.save(like, jax.random.key(0))
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint of update 9 .*available: \[0\]"):
        ckpt.restore_params(like.params, step=9)
    ckpt.close()


# --- run directory ------------------------------------------------------------------------------

def _read_scalars(path):
    """(tag, step, value) of every scalar in a TFRecord event file: u64 length, u32 crc, data, u32 crc."""
    from tensorboardX.proto import event_pb2

    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 8], "little")
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
        i += 12 + n + 4
    return out


def test_run_directory_records_provenance_and_scalars(tmp_path):
    cfg = ExperimentConfig()
    run_dir = tmp_path / "runs" / "demo"
    with RunLog(run_dir, cfg, seeds={"run": 0, "eval": 1234}) as log:
        log.scalars(3, {"loss": jnp.asarray(0.5), "kl": 0.25}, prefix="train/")
    with RunLog(run_dir, cfg, seeds={"run": 0, "eval": 1234}) as log:  # a resumed run appends a start entry
        log.scalars(4, {"loss": 0.125}, prefix="train/")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["rl"]["beta"] == 0.05
    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["starts"]) == 2
    start = info["starts"][0]
    assert start["seeds"] == {"run": 0, "eval": 1234}
    assert start["packages"]["jax"] == jax.__version__
    assert start["git"] is None or len(start["git"]["commit"]) == 40
    scalars = sorted(s for e in (run_dir / "tb").glob("events.out.tfevents.*") for s in _read_scalars(e))
    assert scalars == [("train/kl", 3, 0.25), ("train/loss", 3, 0.5), ("train/loss", 4, 0.125)]


def test_version_and_git_helpers(tmp_path):
    assert package_versions(("numpy", "surely-not-installed-pkg")) == {"numpy": np.__version__,
                                                                      "surely-not-installed-pkg": None}
    assert git_commit(tmp_path) is None  # not a git work tree
    here = git_commit()
    assert here is None or (len(here["commit"]) == 40 and isinstance(here["dirty"], bool))
    out = io.StringIO()
    with progress(total=4, desc="updates", initial=1, file=out) as bar:
        bar.update(2)
    assert "updates" in out.getvalue() and "3/4" in out.getvalue()
