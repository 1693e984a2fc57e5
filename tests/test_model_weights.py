"""Checkpoints: HF import/export round trips, Orbax, load_policy, and one clear error per kind of bad input."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxagent
from fixtures.make_gemma2_fixture import FIXTURE_DIR
from jaxagent.model import CheckpointError, GemmaConfig, init_params, load_hf, load_orbax, save_hf, save_orbax
from jaxagent.model import weights


def _trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


@pytest.fixture
def hf_dir(tmp_path):
    path = tmp_path / "hf"
    shutil.copytree(FIXTURE_DIR, path)
    return path


def test_export_then_import_is_exact_and_matches_hf_tensors(tmp_path):
    cfg, params = load_hf(FIXTURE_DIR)
    save_hf(params, cfg, tmp_path / "out")
    cfg2, params2 = load_hf(tmp_path / "out")
    assert cfg2 == cfg
    _trees_equal(params, params2)
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(FIXTURE_DIR / "model.safetensors")
    assert set(ours) == set(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_sharded_export_writes_an_index_and_reloads(tmp_path, monkeypatch):
    cfg, params = load_hf(FIXTURE_DIR)
    monkeypatch.setattr(weights, "MAX_SHARD_BYTES", 60_000)
    save_hf(params, cfg, tmp_path, dtype=jnp.bfloat16)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    _, back = load_hf(tmp_path, dtype=jnp.bfloat16)
    _trees_equal(jax.tree.map(lambda a: a.astype(jnp.bfloat16), params), back)
    assert back["embed"].dtype == jnp.bfloat16


def test_orbax_round_trip_and_load_policy(tmp_path):
    cfg = GemmaConfig.preset("test")
    params = init_params(cfg, jax.random.key(0), value_head=True)
    save_orbax(params, cfg, tmp_path / "ckpt")
    cfg2, back = load_orbax(tmp_path / "ckpt")
    assert cfg2 == cfg
    _trees_equal(params, back)
    policy = jaxagent.load_policy(tmp_path / "ckpt")
    tokens = np.array([[5, 6, 7, 8]], np.int32)
    assert policy.logits(tokens).shape == (1, 4, cfg.vocab_size)


def test_load_policy_hf_logits_generate_and_save_hf(tmp_path):
    policy = jaxagent.load_policy(FIXTURE_DIR)
    expected = np.load(FIXTURE_DIR / "expected.npz")
    np.testing.assert_allclose(np.asarray(policy.logits(expected["tokens"])), expected["logits"], atol=1e-4)
    toks, logps, lengths = policy.generate(expected["prompt"], max_new_tokens=8, stop_tokens=())
    np.testing.assert_array_equal(np.asarray(toks), expected["greedy"][:, :8])
    policy.save_hf(tmp_path)
    np.testing.assert_allclose(np.asarray(jaxagent.load_policy(tmp_path).logits(expected["tokens"])),
                               expected["logits"], atol=1e-4)
    with pytest.raises(ValueError, match=r"tokens: expected int32 \[B, T\]"):
        policy.logits(np.array([1, 2, 3]))


def _rewrite_without(src, dst, drop=None, reshape=None):
    tensors = {}
    for name, arr in load_file(src).items():
        if name == drop:
            continue
        if name == reshape:
            arr = arr[:-1]
        tensors[name] = (arr.shape, arr.dtype, lambda a=arr: a)
    weights.write_safetensors(dst, tensors)


def test_missing_tensor_is_one_clear_error(hf_dir):
    name = "model.layers.2.mlp.up_proj.weight"
    _rewrite_without(FIXTURE_DIR / "model.safetensors", hf_dir / "model.safetensors", drop=name)
    with pytest.raises(CheckpointError, match=rf"tensor {name} is missing"):
        load_hf(hf_dir)


def test_wrong_shape_names_the_tensor_and_file(hf_dir):
    name = "model.layers.1.self_attn.k_proj.weight"
    _rewrite_without(FIXTURE_DIR / "model.safetensors", hf_dir / "model.safetensors", reshape=name)
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor {name} has shape \[15, 48\], "
                                              rf"expected \[16, 48\]"):
        load_hf(hf_dir)


def test_unknown_architecture_is_refused(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["model_type"] = "llama"
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'llama' is not 'gemma2'"):
        jaxagent.load_policy(hf_dir)


def test_truncated_safetensors_names_the_file(hf_dir):
    path = hf_dir / "model.safetensors"
    data = path.read_bytes()
    for cut in (data[:len(data) - 1000], data[:20], data[:4]):
        path.write_bytes(cut)
        with pytest.raises(CheckpointError, match=r"model.safetensors: not a complete safetensors file"):
            load_hf(hf_dir)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="neither a Hugging Face directory"):
        jaxagent.load_policy(tmp_path)
