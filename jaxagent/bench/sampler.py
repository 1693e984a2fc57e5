"""``jaxagent bench sampler``: greedy generation with our sampler vs HF ``generate`` (torch) vs tunix's sampler.

One tiny Gemma 2 checkpoint (4 layers, d 256, ffw 1024, 4 heads, 2 kv heads, head_dim 64, vocab 2048, window 64)
is made by HF transformers and loaded by every stack; prompts of 64 random ids, exactly 64 new tokens, batch 8
and 64, all in this process. Reported: median new tokens/s, ratios, compile / first-call time apart, and the
fraction reached of a floor measured in the same run: the weight matmuls alone of one decode step, in a jitted
loop. Ours decodes with the layers unrolled (``unroll_layers=True``: no per-step copies of stacked weights).
Also the AOT compile time of a gemma2-9b-shaped forward and sampler next to the tiny one, scanned (flat in depth)
and unrolled. These are CPU figures for a tiny model.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent.bench import median_seconds, on_each_layout, over_devices, per_device
from jaxagent.model import GemmaConfig, forward, generate, init_params, load_hf, save_hf
from jaxagent.model.gemma import param_shapes
from jaxagent.model.sampler import unrolled

PROMPT, NEW = 64, 64
# In one process with XLA's thread pool, torch's spinning OpenMP workers can slow HF generate by 10-40x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_checkpoint(path: str) -> bool:
    """Write the tiny checkpoint with HF (torch.manual_seed(0), default init); without torch, with our init."""
    cfg = GemmaConfig.preset("tiny")
    if importlib.util.find_spec("torch") is None:
        save_hf(init_params(cfg, jax.random.key(0)), cfg, path)
        return False
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    hf = cfg.to_hf_config()
    hf.pop("architectures"), hf.pop("model_type")
    Gemma2ForCausalLM(Gemma2Config(**hf, attn_implementation="eager")).save_pretrained(path)
    return True


def floor_step(params, cfg: GemmaConfig, batch: int, repeats: int, devices=None) -> float:
    """Seconds per decode step of the weight matmuls alone (no attention, norms or sampling)."""
    # Per-layer arrays made outside the jitted loop (slicing stacked weights inside it is a copy on XLA:CPU), with
    # q/k/v and gate/up each fused into one matrix and the output embedding as [D, V], as the unrolled decode
    # reads them.
    prepared = unrolled(params)
    mats = [(fused["qkv"].reshape(cfg.d_model, -1), fused["o"].reshape(-1, cfg.d_model), fused["gate_up"],
             fused["down"]) for fused in prepared["layers"]]
    out = prepared["unembed"]  # computed here, outside the jitted loop: the dot cannot fold the transpose back

    @jax.jit
    def steps(mats, out, x):
        def step(_, x):
            for qkv, o, gate_up, down in mats:
                a = x @ qkv
                x = x + (a[:, :o.shape[0]] + a[:, o.shape[0]:].mean(-1, keepdims=True)) @ o
                gate, up = jnp.split(x @ gate_up, 2, axis=-1)
                x = x + (gate * up) @ down
            return x + 1e-3 * (x @ out)[:, :x.shape[1]]
        return jax.lax.fori_loop(0, NEW, step, x)

    (mats, out), x = over_devices((mats, out), jnp.ones((batch, cfg.d_model), params["embed"].dtype), devices)
    jax.block_until_ready(steps(mats, out, x))
    return median_seconds(lambda: jax.block_until_ready(steps(mats, out, x)), repeats) / NEW


def _ours(params, cfg, prompts, repeats, devices=None):
    lengths = jnp.full((len(prompts),), PROMPT, jnp.int32)
    # Per-layer fused weights prepared once, as a serving loop would (see sampler.unrolled).
    params, (prompts, lengths) = over_devices(unrolled(params), (jnp.asarray(prompts), lengths), devices)
    call = per_device(lambda params, prompts, lengths: generate(
        params, cfg, prompts, lengths, jax.random.key(0), max_len=PROMPT + NEW, max_new_tokens=NEW,
        unroll_layers=True)[1:], (False, True, True), len(prompts), devices)
    t = time.perf_counter()
    jax.block_until_ready(call(params, prompts, lengths))
    first = time.perf_counter() - t
    seconds = median_seconds(lambda: jax.block_until_ready(call(params, prompts, lengths)), repeats)
    return seconds, first, np.asarray(call(params, prompts, lengths)[0])


def _hf(path, prompts, repeats):
    import torch
    from transformers import Gemma2ForCausalLM

    model = Gemma2ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.as_tensor(prompts, dtype=torch.long)

    def call():
        with torch.inference_mode():
            return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                                  min_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
    t = time.perf_counter()
    out = call()
    first = time.perf_counter() - t
    return median_seconds(call, repeats), first, out[:, PROMPT:].numpy()


class _IdTokenizer:
    """tunix's sampler takes strings: space-separated ids stand for themselves, with no BOS."""

    def encode(self, text, **_):
        return [int(t) for t in text.split()]

    def decode(self, ids, **_):
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return 0

    def eos_id(self):
        return -1

    def pad_id(self):
        return 0


def _tunix(path, prompts, repeats):
    from tunix.generate import sampler as tunix_sampler
    from tunix.models.gemma import model as tunix_model
    from tunix.models.gemma import params_safetensors

    cfg = GemmaConfig.preset("tiny")
    local, glob = tunix_model.AttentionType.LOCAL_SLIDING, tunix_model.AttentionType.GLOBAL
    model_cfg = tunix_model.ModelConfig(
        num_layers=cfg.num_layers, num_embed=cfg.vocab_size, embed_dim=cfg.d_model, hidden_dim=cfg.ffw_dim,
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, num_kv_heads=cfg.num_kv_heads,
        final_logit_softcap=cfg.final_logit_softcap, use_post_attn_norm=True, use_post_ffw_norm=True,
        attention_types=(local, glob) * (cfg.num_layers // 2), attn_logits_soft_cap=cfg.attn_logit_softcap,
        sliding_window_size=cfg.sliding_window)
    model = params_safetensors.create_model_from_safe_tensors(path, model_cfg)
    sampler = tunix_sampler.Sampler(model, _IdTokenizer(), tunix_sampler.CacheConfig(
        cache_size=PROMPT + NEW, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))
    texts = [" ".join(map(str, row)) for row in prompts]

    def call():
        return sampler(texts, max_generation_steps=NEW, max_prompt_length=PROMPT, temperature=0.0,
                       eos_tokens=[-1], echo=False)
    t = time.perf_counter()
    out = call()
    first = time.perf_counter() - t
    return median_seconds(call, repeats), first, np.array([list(map(int, t.split())) for t in out.text])


def _compile_seconds(cfg: GemmaConfig, batch: int = 8) -> dict:
    """AOT lower + compile time of the forward and of the sampler, from shapes only (no weights allocated)."""
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), param_shapes(cfg),
                          is_leaf=lambda s: isinstance(s, tuple))
    tokens = jax.ShapeDtypeStruct((batch, PROMPT), jnp.int32)
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
    out = {}
    t = time.perf_counter()
    jax.jit(forward, static_argnums=1).lower(params, cfg, tokens, tokens).compile()
    out["forward_s"] = round(time.perf_counter() - t, 2)
    for name, unroll in (("sampler_s", False), ("sampler_unrolled_s", True)):
        t = time.perf_counter()
        generate.lower(params, cfg, tokens, lengths, jax.random.key(0), max_len=PROMPT + NEW, max_new_tokens=NEW,
                       unroll_layers=unroll).compile()
        out[name] = round(time.perf_counter() - t, 2)
    return out


def run(quick: bool = False) -> dict:
    batches, repeats = ((8,), 3) if quick else ((8, 64), 7)
    have_tunix = importlib.util.find_spec("tunix") is not None
    if not have_tunix:
        print("tunix column skipped: google-tunix is not installed (make bench installs it, without its dependencies)")
    result = {}
    with tempfile.TemporaryDirectory() as path:
        have_hf = make_checkpoint(path)
        if not have_hf:
            print("HF column skipped: torch is not installed (make bench, or pip install torch==2.13.0)")
        cfg, params = load_hf(path)
        for batch in batches:
            prompts = np.random.default_rng(123 + batch).integers(3, cfg.vocab_size, size=(batch, PROMPT))
            timed, best = on_each_layout(lambda devices: _ours(params, cfg, prompts, repeats, devices))
            seconds, first, tokens = timed[best]
            floor = floor_step(params, cfg, batch, repeats, jax.devices()[:best])
            row = {"ours_tokens_per_s": round(batch * NEW / seconds), "devices": best,
                   "ours_tokens_per_s_by_devices": {n: round(batch * NEW / t[0]) for n, t in timed.items()},
                   "compile_s": round(first - seconds, 2),
                   "ours_ms_per_token_step": round(1e3 * seconds / NEW, 3),
                   "floor_ms_per_step": round(1e3 * floor, 3), "fraction_of_floor": round(floor * NEW / seconds, 2)}
            for name, fn, ok in (("hf", _hf, have_hf), ("tunix", _tunix, have_tunix)):
                if not ok:
                    row[f"{name}_tokens_per_s"] = row[f"ratio_{name}"] = None
                    continue
                peer_seconds, peer_first, peer_tokens = fn(path, prompts, repeats)
                row[f"{name}_tokens_per_s"] = round(batch * NEW / peer_seconds)
                row[f"ratio_{name}"] = round(peer_seconds / seconds, 2)
                row[f"ratio_{name}_by_devices"] = {n: round(peer_seconds / t[0], 2) for n, t in timed.items()}
                row[f"{name}_first_call_s"] = round(peer_first, 2)
                row[f"{name}_tokens_match"] = bool((peer_tokens == tokens).all())
            result[f"batch_{batch}"] = row
            print(f"batch {batch}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
    tiny = _compile_seconds(GemmaConfig.preset("tiny"))
    result["compile"] = {"tiny": tiny}
    if not quick:
        result["compile"]["gemma2-9b"] = _compile_seconds(GemmaConfig.preset("gemma2-9b"))
    print("AOT compile seconds (bf16, batch 8, prompt 64, 64 new tokens):", result["compile"])
    result["note"] = "CPU, tiny 4.46M-parameter model; medians of repeated calls in one process"
    return result
