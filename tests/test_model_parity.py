"""Gemma 2 logits and greedy generation against Hugging Face transformers (PyTorch) and the committed fixture."""
import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures.make_gemma2_fixture import FIXTURE_DIR, hf_greedy, hf_logits, make_hf_model
from jaxagent.model import GemmaConfig, forward, generate, init_params, load_hf, save_hf
from jaxagent.model.sampler import score

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed: live HF comparison skipped")
forward_jit = jax.jit(forward, static_argnames=("cfg",))


def logits_of(params, cfg, tokens):
    tokens = jnp.asarray(tokens, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return np.asarray(forward_jit(params, cfg, tokens, positions)[0])


@pytest.fixture(scope="module")
def fixture():
    cfg, params = load_hf(FIXTURE_DIR)
    return cfg, params, dict(np.load(FIXTURE_DIR / "expected.npz"))


def test_fixture_logits_match_hf(fixture):
    cfg, params, expected = fixture
    assert expected["tokens"].shape[1] > 2 * cfg.sliding_window
    ours = logits_of(params, cfg, expected["tokens"])
    assert np.abs(expected["logits"]).max() > 15  # large weights: the final soft-cap is far from linear
    np.testing.assert_allclose(ours, expected["logits"], atol=1e-4, rtol=0)


def test_fixture_needs_every_gemma2_detail(fixture):
    """Dropping a soft-cap, the window or the 27B-style query scale each breaks parity, so each is exercised."""
    cfg, params, expected = fixture
    variants = [dict(attn_logit_softcap=None), dict(final_logit_softcap=None),
                dict(sliding_window=10 ** 6), dict(query_pre_attn_scalar=cfg.head_dim)]
    for change in variants:
        off = logits_of(params, dataclasses.replace(cfg, **change), expected["tokens"])
        assert np.abs(off - expected["logits"]).max() > 1e-2, change


def test_fixture_greedy_64_matches_hf_generate(fixture):
    cfg, params, expected = fixture
    prompt = jnp.asarray(expected["prompt"])
    _, tokens, _, lengths = generate(params, cfg, prompt, jnp.full((prompt.shape[0],), prompt.shape[1]),
                                     jax.random.key(0), max_len=prompt.shape[1] + 64, max_new_tokens=64)
    np.testing.assert_array_equal(np.asarray(tokens), expected["greedy"])
    np.testing.assert_array_equal(np.asarray(lengths), 64)


def test_bf16_forward_tracks_fp32(fixture):
    cfg, params, expected = fixture
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    ours = logits_of(bf16, cfg, expected["tokens"])
    assert np.isfinite(ours).all()
    agree = (ours.argmax(-1) == expected["logits"].argmax(-1)).mean()
    assert agree > 0.8, agree


@needs_torch
@pytest.mark.parametrize("overrides", [
    dict(seed=1),                                                                   # fixture shape, new weights
    dict(seed=2, num_key_value_heads=1, num_hidden_layers=6, query_pre_attn_scalar=8, sliding_window=5),  # MQA
    dict(seed=3, std=0.3, hidden_size=64, head_dim=16, num_attention_heads=8, num_key_value_heads=2,
         query_pre_attn_scalar=8, attn_logit_softcapping=20.0, final_logit_softcapping=10.0),
])
def test_live_logits_match_transformers(tmp_path, overrides):
    model = make_hf_model(**overrides)
    model.save_pretrained(tmp_path)
    cfg, params = load_hf(tmp_path)
    tokens = np.random.default_rng(overrides["seed"]).integers(0, cfg.vocab_size, size=(3, 4 * cfg.sliding_window + 3))
    expected = hf_logits(model, tokens)
    np.testing.assert_allclose(logits_of(params, cfg, tokens), expected, atol=1e-4, rtol=0)


@needs_torch
@pytest.mark.parametrize("layers", [1, 3])
def test_any_number_of_layers_matches_transformers(tmp_path, layers):
    """Odd counts leave a sliding-window layer over after the (sliding, global) pairs: logits and greedy tokens
    (scanned layers, the prefill's last-token-only final layer; and unrolled layers) equal HF's."""
    model = make_hf_model(seed=10 + layers, num_hidden_layers=layers, sliding_window=5)
    model.save_pretrained(tmp_path)
    cfg, params = load_hf(tmp_path)
    assert cfg.num_layers == layers and cfg.to_hf_config()["layer_types"] == model.config.layer_types
    tokens = np.random.default_rng(layers).integers(0, cfg.vocab_size, size=(2, 4 * cfg.sliding_window + 3))
    np.testing.assert_allclose(logits_of(params, cfg, tokens), hf_logits(model, tokens), atol=1e-4, rtol=0)
    prompt = tokens[:, :8]
    want = hf_greedy(model, prompt, 16)
    for unroll in (False, True):
        _, greedy, _, _ = generate(params, cfg, jnp.asarray(prompt), jnp.full((2,), 8), jax.random.key(0),
                                   max_len=24, max_new_tokens=16, unroll_layers=unroll)
        np.testing.assert_array_equal(np.asarray(greedy), want)


def test_a_layer_pattern_other_than_gemma2s_is_refused_naming_it():
    from jaxagent.model.config import CheckpointError
    hf = GemmaConfig.preset("test").to_hf_config()
    hf["layer_types"] = ["full_attention"] * hf["num_hidden_layers"]
    with pytest.raises(CheckpointError, match=r"config.json: layer_types \['full_attention'"):
        GemmaConfig.from_hf_config(hf)


@needs_torch
def test_live_greedy_64_matches_transformers_generate(tmp_path):
    model = make_hf_model(seed=4, sliding_window=6)
    model.save_pretrained(tmp_path)
    cfg, params = load_hf(tmp_path)
    prompt = np.random.default_rng(4).integers(3, cfg.vocab_size, size=(3, 10))
    _, tokens, _, _ = generate(params, cfg, jnp.asarray(prompt), jnp.full((3,), 10), jax.random.key(0),
                               max_len=74, max_new_tokens=64)
    np.testing.assert_array_equal(np.asarray(tokens), hf_greedy(model, prompt, 64))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_reloads_in_transformers_with_same_logits(tmp_path, dtype):
    import torch
    from transformers import Gemma2ForCausalLM

    cfg = dataclasses.replace(GemmaConfig.preset("test"), sliding_window=6)
    params = init_params(cfg, jax.random.key(0), std=0.3)
    params["layers"]["attn_norm"] = 0.3 * jax.random.normal(jax.random.key(1), params["layers"]["attn_norm"].shape)
    save_hf(params, cfg, tmp_path, dtype=jnp.bfloat16 if dtype == "bfloat16" else None)
    model = Gemma2ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 20))
    if dtype == "bfloat16":
        params = jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), params)
    np.testing.assert_allclose(hf_logits(model, tokens), logits_of(params, cfg, tokens), atol=1e-4, rtol=0)


@needs_torch
def test_loss_gradients_match_transformers(tmp_path):
    """Gradients of the mean token NLL (what training differentiates) against torch autograd through HF Gemma2."""
    import torch

    model = make_hf_model(seed=5, std=0.2, sliding_window=6)
    model.save_pretrained(tmp_path)
    cfg, params = load_hf(tmp_path)
    # no pad id (0): HF's embedding gives the pad row no input-side gradient
    tokens = np.random.default_rng(5).integers(1, cfg.vocab_size, size=(2, 20))
    model(torch.as_tensor(tokens, dtype=torch.long), labels=torch.as_tensor(tokens, dtype=torch.long)).loss.backward()
    grads = jax.grad(lambda p: -score(p, cfg, jnp.asarray(tokens))[:, 1:].mean())(params)
    layer = model.model.layers[1]
    pairs = [(grads["embed"], model.model.embed_tokens.weight.grad),
             (grads["layers"]["gate"][1], layer.mlp.gate_proj.weight.grad.T),
             (grads["layers"]["down"][1], layer.mlp.down_proj.weight.grad.T),
             (grads["layers"]["q"][1].reshape(cfg.d_model, -1), layer.self_attn.q_proj.weight.grad.T),
             (grads["layers"]["o"][1].reshape(-1, cfg.d_model), layer.self_attn.o_proj.weight.grad.T)]
    for ours, theirs in pairs:
        theirs = theirs.numpy()
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4 * np.abs(theirs).max(), rtol=0)
