"""``jaxagent bench text``: prompt rendering + ``ACTION=X`` parsing inside jit vs the host path.

Batch of bandit states at step 25 (10 arms, button labels, CoT), each with a generated reply of G tokens.
Ours: jitted, vmapped rendering of every prompt to tokens, then jitted parsing of every reply. Host path (what
peers do every step): Python string formatting, ``tokenizer.encode_batch``, ``decode_batch`` and the regex.
Both run in this process on the same states; medians over repeats, compile time reported apart.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent.bench import median_seconds
from jaxagent.text.bandit_prompt import BanditRenderer
from jaxagent.text.parse import ActionParser, action_regex
from jaxagent.text.render import PromptOptions
from jaxagent.text.states import random_bandit
from jaxagent.text.tokenizer import shipped_tokenizer

NUM_ARMS, HORIZON, STEP, BUDGET = 10, 50, 25, 256


def _inputs(renderer, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    states, params = random_bandit(rng, batch, NUM_ARMS, HORIZON)
    taken = np.arange(HORIZON) < STEP
    actions = np.where(taken, rng.integers(0, NUM_ARMS, size=(batch, HORIZON)), -1).astype(np.int32)
    rewards = np.where(taken, rng.normal(size=(batch, HORIZON)), 0).astype(np.float32)
    onehot = (actions[..., None] == np.arange(NUM_ARMS)) & taken[:, None]
    states = states.replace(t=np.full(batch, STEP, np.int32), actions=actions, rewards=rewards,
                            counts=onehot.sum(1).astype(np.int32),
                            reward_sums=(onehot * rewards[..., None]).sum(1, dtype=np.float32))
    tok = renderer.tokenizer
    replies = [f"Button {renderer.labels[a]} has the highest mean so far, so I exploit it. ACTION={renderer.labels[a]}"
               for a in rng.integers(0, NUM_ARMS, size=batch)]
    ids = tok.encode_batch(replies)
    generated = np.full((batch, BUDGET), tok.pad_id, np.int32)
    for b, row in enumerate(ids):
        generated[b, : len(row)] = row[:BUDGET]
    return states, params, generated, np.asarray([min(len(r), BUDGET) for r in ids], np.int32)


def run(quick: bool = False) -> dict:
    batch, host_batch, repeats = (512, 128, 3) if quick else (4096, 512, 5)
    ours_repeats = 5 * repeats  # a call takes ~0.1 s: more repeats steady the median on a shared machine
    tok = shipped_tokenizer()
    renderer = BanditRenderer(NUM_ARMS, HORIZON, tok, PromptOptions(labels="button", cot=True))
    parser = ActionParser(tok, renderer.labels)
    states, params, generated, lengths = _inputs(renderer, batch)

    render = jax.jit(jax.vmap(renderer.render))
    parse = jax.jit(jax.vmap(parser.parse))

    def ours(states, params, generated, lengths):  # two jitted calls, dispatched back to back
        return render(states, params), parse(generated, lengths)

    args = jax.device_put((states, params, jnp.asarray(generated), jnp.asarray(lengths)))
    start = time.perf_counter()
    jax.block_until_ready(ours(*args))
    compile_s = time.perf_counter() - start
    ours_s = median_seconds(lambda: jax.block_until_ready(ours(*args)), ours_repeats)

    regex = action_regex(renderer.labels)
    rows = [jax.tree.map(lambda x: np.asarray(x)[b], (states, params)) for b in range(host_batch)]
    replies = [generated[b, : lengths[b]].tolist() for b in range(host_batch)]

    def host():
        texts = [renderer.render_text(state, param) for state, param in rows]
        tok.backend.encode_batch(texts, add_special_tokens=False)
        for text in tok.backend.decode_batch(replies, skip_special_tokens=False):
            matches = regex.findall(text)
            matches[-1:]

    host_s = median_seconds(host, repeats)
    ours_per_s, host_per_s = batch / ours_s, host_batch / host_s
    result = {"batch": batch, "step": STEP, "arms": NUM_ARMS, "budget": BUDGET, "ours_per_s": round(ours_per_s),
              "host_per_s": round(host_per_s), "ratio": round(ours_per_s / host_per_s, 1),
              "ours_compile_s": round(compile_s, 2), "ours_median_s": round(ours_s, 4),
              "host_median_s_per_state": round(host_s / host_batch, 6), "device": str(jax.devices()[0])}
    print(f"text bench: ours {ours_per_s:,.0f} states/s (compile {compile_s:.1f} s) | host {host_per_s:,.0f} "
          f"states/s | ratio {ours_per_s / host_per_s:.1f}x")
    return result
