"""``jaxagent bench rollout``: env steps/s of our jitted agent episode vs a host loop built from peers' parts.

Task: the sampler benchmark's tiny Gemma 2 checkpoint, a 5-arm button Gaussian bandit, 50 steps, up to G = 32
sampled tokens per step (temperature 1, stop at ``<eos>``/``<end_of_turn>`` on both sides), batch 16 and 64.
- ours: one jitted call per batch of episodes (render → sample → parse → env step, multi-turn KV cache);
- host loop (the architecture of BanditBench / tunix agentic RL): a Python env, prompt strings, the HF
  tokenizer, HF transformers ``generate`` (torch CPU, re-reading the whole prompt each step), decode, regex.
Also tokens/s of one training step (forward + backward of the token log-likelihood) against the same model in
torch. The decode floor (weight matmuls alone, measured in this run) bounds what any sampler can reach.
"""
from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs_jax
from jaxagent.bench import median_seconds, on_each_layout, over_devices, row_mesh
from jaxagent.bench.sampler import floor_step, make_checkpoint
from jaxagent.model import load_hf
from jaxagent.model.sampler import score
from jaxagent.rollout import AgentLoop
from jaxagent.text.bandit_prompt import BanditRenderer
from jaxagent.text.parse import ActionParser, parse_text
from jaxagent.text.render import PromptOptions
from jaxagent.text.tokenizer import shipped_tokenizer

ARMS, G = 5, 32


def _agent(cfg, horizon: int, unroll_layers: bool = True, options: PromptOptions = PromptOptions()):
    tok = shipped_tokenizer()
    env = envs_jax.make_env("bandit-gaussian", num_arms=ARMS, sigma=1.0, horizon=horizon)
    renderer = BanditRenderer(ARMS, horizon, tok, options)
    loop = AgentLoop(env, renderer, ActionParser(tok, renderer.labels), cfg, num_steps=horizon, max_new_tokens=G,
                     stop_tokens=tok.stop_ids, temperature=1.0, unroll_layers=unroll_layers)
    return tok, env, renderer, loop


def random_history(env, pool, steps: int, key):
    """Each instance of ``pool``'s env state after ``steps`` uniformly random actions from a reset."""
    def one(key, params):
        k_reset, k_steps = jax.random.split(key)
        _, state = env.reset(k_reset, params)

        def step(state, key):
            k_action, k_step = jax.random.split(key)
            action = jax.random.randint(k_action, (), 0, env.num_actions)
            return env.step(k_step, state, action, params)[1], None
        return jax.lax.scan(step, state, jax.random.split(k_steps, steps))[0]
    batch = jax.tree.leaves(pool)[0].shape[0]
    return jax.jit(jax.vmap(one))(jax.random.split(key, batch), pool)


def _ours(loop, env, params, batch: int, repeats: int, devices=None, history: int = 0):
    """(median, first-call) seconds of ``loop``'s episode over ``batch`` rows; with ``history``, each row starts
    from a state ``history`` random steps into its episode (see :func:`random_history`)."""
    pool = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(batch), batch))
    start = random_history(env, pool, history, jax.random.key(2)) if history else None
    params, (pool, start) = over_devices(params, (pool, start), devices)
    mesh = row_mesh(batch, devices)
    rollout = jax.jit(loop.rollout) if mesh is None else loop.rollout_per_device(mesh)
    t = time.perf_counter()
    jax.block_until_ready(rollout(params, pool, jax.random.key(0), start))
    first = time.perf_counter() - t
    keys = iter(jax.random.split(jax.random.key(1), repeats))
    seconds = median_seconds(lambda: jax.block_until_ready(rollout(params, pool, next(keys), start)), repeats)
    return seconds, first


class _HostBandit:
    """The BanditBench-style Python environment: numpy arm means ~ N(0, 1), rewards ~ N(mean, 1)."""

    def __init__(self, rng, batch: int):
        self.rng, self.means = rng, rng.normal(size=(batch, ARMS))

    def step(self, actions):
        return self.rng.normal(self.means[np.arange(len(actions)), actions], 1.0)


def _host_rollout(model, tok, renderer, steps: int, batch: int, seed: int, history: int = 0) -> float:
    """Seconds of ``steps`` host-loop steps over ``batch`` rows, after ``history`` untimed random steps."""
    import torch

    rng = np.random.default_rng(seed)
    env = _HostBandit(rng, batch)
    labels = renderer.labels
    past = [[] for _ in range(batch)]

    def record(actions):
        for h, a, r in zip(past, actions, env.step(actions)):
            h.append((int(a), float(r)))
    for _ in range(history):
        record(rng.integers(ARMS, size=batch))
    start = time.perf_counter()
    for t in range(history, history + steps):
        prompts = [renderer.prefix_text() + "".join(f"Step={i} Action={labels[a]} Reward={r:.2f}\n"
                                                    for i, (a, r) in enumerate(h)) + renderer.tail_text(None, None)
                   for h in past]
        encoded = [tok.encode(p) for p in prompts]
        width = max(map(len, encoded))
        ids = torch.tensor([[tok.pad_id] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        torch.manual_seed(seed * 1000 + t)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=G, eos_token_id=list(tok.stop_ids), pad_token_id=tok.pad_id)
        texts = [tok.decode_bytes(row[width:].tolist()) for row in out]
        actions = np.array([a if (a := parse_text(text, labels)) is not None else rng.integers(ARMS)
                            for text in texts])
        record(actions)
    return time.perf_counter() - start


def host_model(path: str, have_torch: bool):
    """The host loop's HF model of the checkpoint at ``path``, or None (saying so) without torch."""
    if not have_torch:
        print("host-loop column skipped: torch is not installed (make bench, or pip install torch==2.13.0)")
        return None
    import torch
    from transformers import Gemma2ForCausalLM

    return Gemma2ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def ours_train_seconds(params, cfg, tokens, repeats: int) -> tuple[float, float]:
    """(median, first-call) seconds of forward + backward of the mean token NLL on ``tokens [B, T]``."""
    grad = jax.jit(jax.grad(lambda p, x: -score(p, cfg, x).mean()))
    x = jnp.asarray(tokens, jnp.int32)
    start = time.perf_counter()
    jax.block_until_ready(grad(params, x))
    first = time.perf_counter() - start
    return median_seconds(lambda: jax.block_until_ready(grad(params, x)), repeats), first


def torch_train_seconds(model, tokens, repeats: int, sync=lambda: None) -> float:
    """Median seconds of forward + backward of HF's causal-LM loss on ``tokens``; gradients are freed after."""
    import torch

    ids = torch.as_tensor(tokens, dtype=torch.long, device=model.device)

    def step():
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        sync()
    step()
    seconds = median_seconds(step, repeats)
    model.zero_grad(set_to_none=True)
    return seconds


def _train_tokens_per_s(params, cfg, path, batch: int, length: int, repeats: int, have_torch: bool):
    tokens = np.random.default_rng(7).integers(3, cfg.vocab_size, size=(batch, length))
    ours = batch * length / ours_train_seconds(params, cfg, tokens, repeats)[0]
    row = {"ours_tokens_per_s": round(ours), "torch_tokens_per_s": None, "ratio": None,
           "shape": [batch, length]}
    if have_torch:
        import torch
        from transformers import Gemma2ForCausalLM

        model = Gemma2ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        theirs = batch * length / torch_train_seconds(model, tokens, repeats)
        row.update(torch_tokens_per_s=round(theirs), ratio=round(ours / theirs, 2))
    return row


def run(quick: bool = False) -> dict:
    horizon, batches, repeats = (10, (16,), 2) if quick else (50, (16, 64), 3)
    host_repeats = 1
    result = {}
    with tempfile.TemporaryDirectory() as path:
        have_torch = make_checkpoint(path)
        cfg, params = load_hf(path)
        tok, env, renderer, loop = _agent(cfg, horizon)
        hf_model = host_model(path, have_torch)
        for batch in batches:
            timed, best = on_each_layout(lambda devices: _ours(loop, env, params, batch, repeats, devices))
            seconds, first = timed[best]
            ours = batch * horizon / seconds
            floor = batch * horizon / (horizon * G * floor_step(params, cfg, batch, repeats, jax.devices()[:best]))
            row = {"ours_steps_per_s": round(ours, 1), "devices": best,
                   "ours_steps_per_s_by_devices": {n: round(batch * horizon / t[0], 1) for n, t in timed.items()},
                   "compile_s": round(first - seconds, 2),
                   "floor_steps_per_s": round(floor, 1), "fraction_of_floor": round(ours / floor, 2),
                   "host_steps_per_s": None, "ratio": None}
            if hf_model is not None:
                host_seconds = float(np.median([_host_rollout(hf_model, tok, renderer, horizon, batch, seed)
                                                for seed in range(host_repeats)]))
                row.update(host_steps_per_s=round(batch * horizon / host_seconds, 1),
                           ratio=round(host_seconds / seconds, 1),
                           ratio_by_devices={n: round(host_seconds / t[0], 1) for n, t in timed.items()})
            result[f"batch_{batch}"] = row
            print(f"batch {batch}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
        result["train"] = _train_tokens_per_s(params, cfg, path, 8, 256 if quick else 512, repeats, have_torch)
        print("train step:", result["train"])
    result["note"] = (f"CPU, tiny 4.46M-parameter Gemma 2, {ARMS}-arm bandit, {horizon} steps, G={G}; "
                      "host loop = HF generate + Python env + string prompts + regex")
    return result

