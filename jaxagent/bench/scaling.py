"""``jaxagent bench scaling``: the cost of one agent step as the history grows and as the batch grows, ours beside
the host loop of ``jaxagent bench rollout`` (HF transformers ``generate`` + Python env + string prompts + regex).

Same task as ``bench rollout``: the tiny Gemma 2, a 5-arm Gaussian bandit, up to G = 32 sampled tokens per step,
temperature 1. At history L each row starts from an env state L uniformly random steps into its episode, and a few
steps are timed from there rather than whole episodes:
- ours: the jitted episode started from those states (their history goes into the KV cache before the first step),
  on one device. Each env step notes the host clock through a callback from inside the jitted call; the median gap
  between consecutive notes is the cost of a step, apart from compiling and filling the cache. Compile time is
  the first call's excess over the second, reported apart.
- host loop: the prompt holds the L steps of history and is re-read whole at every step; batch 16 only.
Putting a started history in the cache attends over all its tokens at once, in memory that grows as batch ×
history² (64 rows at history 200 asked for 27.7 GB), so the sweep leaves out batch × history above 6,400.
The ratio compares env steps/s: ours at its batch over the host loop at batch 16 (at batch 16, the ratio of the
costs of a step). :func:`plot` draws the result.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time

import jax
import numpy as np

from jaxagent.bench.rollout import G, _agent, _host_rollout, _ours, host_model
from jaxagent.bench.sampler import make_checkpoint
from jaxagent.model import load_hf
from jaxagent.text.render import PromptOptions

LONG_PROMPTS = PromptOptions(max_len=4096)  # room for a few hundred history lines
MAX_BATCH_X_HISTORY = 6400


class _Stamped:
    """``env`` whose every step notes the host clock (after the step's sampling, which its reward depends on)."""

    def __init__(self, env):
        self.env, self.stamps = env, []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        # One call per step for all rows; the reward passes through so that the call stays in the graph.
        reward = jax.pure_callback(self._stamp, jax.ShapeDtypeStruct(reward.shape, reward.dtype), reward,
                                   vmap_method="expand_dims")
        return obs, state, reward, terminated, truncated, info

    def _stamp(self, reward):
        self.stamps.append(time.perf_counter())
        return reward


def _ours_step(cfg, params, history: int, batch: int, steps: int) -> tuple[float, float]:
    """(median seconds of a step, compile seconds) over ``steps`` steps after ``history``, on one device."""
    _, env, _, loop = _agent(cfg, history + steps + 1, options=LONG_PROMPTS)
    stamped = _Stamped(env)
    loop = dataclasses.replace(loop, env=stamped, num_steps=steps + 1)
    seconds, first = _ours(loop, env, params, batch, 1, jax.devices()[:1], history)
    calls = np.reshape(stamped.stamps, (-1, steps + 1))
    return float(np.median(np.diff(calls, axis=1))), first - seconds


def run(quick: bool = False) -> dict:
    histories, batches, host_batch = ((4,), (2,), 2) if quick else ((25, 50, 100, 200), (16, 64, 256), 16)
    steps, host_steps = (2, 1) if quick else (4, 2)
    rows = []
    with tempfile.TemporaryDirectory() as path:
        have_torch = make_checkpoint(path)
        cfg, params = load_hf(path)
        hf_model = host_model(path, have_torch)
        for history in histories:
            host_s = None
            if hf_model is not None:
                tok, _, renderer, _ = _agent(cfg, history + steps + 1, options=LONG_PROMPTS)
                host_s = _host_rollout(hf_model, tok, renderer, host_steps, host_batch, 0, history) / host_steps
            for batch in (b for b in batches if b * history <= MAX_BATCH_X_HISTORY):
                ours_s, compile_s = _ours_step(cfg, params, history, batch, steps)
                row = {"history": history, "batch": batch, "ours_ms_per_step": round(1e3 * ours_s, 1),
                       "ours_steps_per_s": round(batch / ours_s, 1), "compile_s": round(compile_s, 1),
                       "host_ms_per_step": None, "host_steps_per_s": None, "ratio": None}
                if host_s is not None:
                    row.update(host_ms_per_step=round(1e3 * host_s, 1),
                               host_steps_per_s=round(host_batch / host_s, 1),
                               ratio=round(batch / ours_s / (host_batch / host_s), 1))
                rows.append(row)
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return {"rows": rows, "host_batch": host_batch, "steps_timed": {"ours": steps, "host": host_steps},
            "note": (f"CPU, tiny 4.46M-parameter Gemma 2, 5-arm bandit, G={G}; per step at each history length; "
                     f"ours on one device; host loop (HF generate + Python env + string prompts + regex) at "
                     f"batch {host_batch}; ratio = env steps/s, ours / host loop")}


def plot(result: dict, path: str) -> None:
    """The cost of a step against the history, ours at each batch and the host loop, and the ratio, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = sorted({r["batch"] for r in rows})
    fig, (cost, ratio) = plt.subplots(1, 2, figsize=(10, 4))
    for batch in batches:
        mine = [r for r in rows if r["batch"] == batch]
        at = [r["history"] for r in mine]
        cost.plot(at, [r["ours_ms_per_step"] for r in mine], "o-", label=f"ours, batch {batch}")
        if all(r["ratio"] is not None for r in mine):
            ratio.plot(at, [r["ratio"] for r in mine], "o-", label=f"ours at batch {batch}")
    host = {r["history"]: r["host_ms_per_step"] for r in rows if r["host_ms_per_step"] is not None}
    if host:
        cost.plot(list(host), list(host.values()), "s--k", label=f"host loop, batch {result['host_batch']}")
    cost.set(xscale="log", yscale="log", xlabel="history (steps)", ylabel="ms per agent step",
             title="Cost of one agent step")
    ratio.set(xscale="log", xlabel="history (steps)", ylabel="env steps/s, ours / host loop",
              title=f"Ours over the host loop at batch {result['host_batch']}")
    histories = sorted({r["history"] for r in rows})
    for ax in (cost, ratio):
        ax.set_xticks(histories, labels=[str(h) for h in histories])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
