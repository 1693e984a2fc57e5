"""``jaxagent bench scale``: the hot paths at a released model size on the default JAX device, beside HF/torch.

On a GPU or TPU the model is gemma2-2b-shaped with random weights in bf16; on CPU, or with ``--quick``, it is
the tiny one in fp32. The peer is HF transformers' Gemma2 (eager attention, the one with Gemma 2's soft-caps)
on torch's device of the same kind (CUDA when both see a GPU, else CPU), with weights of the same shapes.
- decode: ``generate``, greedy, prompt 256, 128 new tokens, batch 64 and 256, vs HF ``generate``; new
  tokens/s, and the bytes a decode step must read (weights + the KV cache so far, on average) over its time;
- training step: forward + backward of the mean token NLL on [4, 1024] tokens vs torch autograd; tokens/s and
  model FLOP utilisation (6·params·tokens + causal attention) against a large matmul of the model's dtype
  measured in this run;
- agent episode: ``bench rollout``'s 5-arm bandit (50 steps, G 32, temperature 1) at batch 64: env steps/s.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device in this process

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxagent.bench import median_seconds  # noqa: E402
from jaxagent.bench.rollout import _agent, _ours, ours_train_seconds, torch_train_seconds  # noqa: E402
from jaxagent.model import GemmaConfig, generate, init_params  # noqa: E402

PROMPT, NEW = 256, 128


def _torch_model(cfg: GemmaConfig, dtype: str):
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    hf = cfg.to_hf_config()
    hf.pop("architectures"), hf.pop("model_type")
    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    torch.set_default_dtype(getattr(torch, dtype))
    with torch.device(device):
        model = Gemma2ForCausalLM(Gemma2Config(**hf, attn_implementation="eager"))
    torch.set_default_dtype(torch.float32)
    return model, device


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _decode(params, cfg, model, device, batch: int, repeats: int) -> dict:
    import torch

    prompts = np.random.default_rng(batch).integers(3, cfg.vocab_size, size=(batch, PROMPT))
    args = (params, cfg, jnp.asarray(prompts), jnp.full((batch,), PROMPT, jnp.int32), jax.random.key(0))
    kw = dict(max_len=PROMPT + NEW, max_new_tokens=NEW, unroll_layers=jax.default_backend() == "cpu")
    t = time.perf_counter()
    jax.block_until_ready(generate(*args, **kw))
    first = time.perf_counter() - t
    ours = median_seconds(lambda: jax.block_until_ready(generate(*args, **kw)), repeats)
    ids = torch.as_tensor(prompts, device=device)

    def hf_call():
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                           min_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
        _sync(device)
    hf_call()
    theirs = median_seconds(hf_call, repeats)
    itemsize = jnp.dtype(params["embed"].dtype).itemsize
    kv_bytes = 2 * cfg.num_layers * batch * cfg.num_kv_heads * (PROMPT + NEW // 2) * cfg.head_dim * itemsize
    step_bytes = cfg.num_params * itemsize + kv_bytes
    return {"ours_tokens_per_s": round(batch * NEW / ours), "hf_tokens_per_s": round(batch * NEW / theirs),
            "ratio_hf": round(theirs / ours, 2), "ms_per_step": round(1e3 * ours / NEW, 3),
            "read_gb_per_s": round(step_bytes * NEW / ours / 1e9, 1), "compile_s": round(first - ours, 1)}


def _matmul_tflops(dtype, repeats: int) -> float:
    n = 8192 if jax.default_backend() != "cpu" else 1024
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    return 2 * n ** 3 / median_seconds(lambda: jax.block_until_ready(mm(a)), repeats) / 1e12


def _train(params, cfg, model, device, batch: int, length: int, repeats: int) -> dict:
    import torch

    tokens = np.random.default_rng(7).integers(3, cfg.vocab_size, size=(batch, length))
    # torch first, its cached blocks then returned: JAX's allocator keeps what it once took.
    model.train()
    theirs = torch_train_seconds(model, tokens, repeats, sync=lambda: _sync(device))
    model.eval()
    if device == "cuda":
        torch.cuda.empty_cache()
    ours, first = ours_train_seconds(params, cfg, tokens, repeats)
    attention = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length  # per token, fwd + bwd, causal
    flops = batch * length * (6 * cfg.num_params + attention)
    peak = _matmul_tflops(params["embed"].dtype, repeats)
    return {"ours_tokens_per_s": round(batch * length / ours), "torch_tokens_per_s": round(batch * length / theirs),
            "ratio": round(theirs / ours, 2), "ours_mfu": round(flops / ours / 1e12 / peak, 3),
            "torch_mfu": round(flops / theirs / 1e12 / peak, 3), "matmul_tflops": round(peak, 1),
            "shape": [batch, length], "compile_s": round(first - ours, 1)}


def _episode(params, cfg, batch: int, repeats: int) -> dict:
    horizon = 50
    _, env, _, loop = _agent(cfg, horizon, unroll_layers=jax.default_backend() == "cpu")
    seconds, first = _ours(loop, env, params, batch, repeats)
    return {"ours_steps_per_s": round(batch * horizon / seconds, 1), "compile_s": round(first - seconds, 1)}


def run(quick: bool = False) -> dict:
    on_cpu = jax.default_backend() == "cpu"
    name, dtype = ("tiny", "float32") if quick or on_cpu else ("gemma2-2b", "bfloat16")
    cfg = GemmaConfig.preset(name)
    params = init_params(cfg, jax.random.key(0), getattr(jnp, dtype))
    model, device = _torch_model(cfg, dtype)
    repeats = 3
    result = {"device": str(jax.devices()[0].device_kind), "model": name, "dtype": dtype, "torch_device": device,
              "params": cfg.num_params}
    for batch in (8,) if quick else (64, 256):
        result[f"decode_batch_{batch}"] = _decode(params, cfg, model, device, batch, repeats)
        print(f"decode batch {batch}:", result[f"decode_batch_{batch}"], flush=True)
    result["train"] = _train(params, cfg, model, device, 2 if quick else 4, 128 if quick else 1024, repeats)
    print("train step:", result["train"], flush=True)
    del model
    if not quick:
        result["episode_batch_64"] = _episode(params, cfg, 64, 2)
        print("agent episode, batch 64:", result["episode_batch_64"], flush=True)
    return result
