"""Frequency bias (the RLFT paper's Fig. 4): does a policy pick the action it has seen most often over the one
that paid best?

Contexts: on a fresh bandit instance, a random policy's history of ``prefix_steps`` (2-10) steps, then one *target*
arm pulled ``r`` more times, for every ``r`` in ``repetitions`` (0-100). A history is kept only if the target is
never the greedy arm (the best average reward among tried arms) at any ``r``, so that frequent and greedy never
coincide; the env draws every reward. The most frequent arm of a context is the most-pulled one (the target on
ties; for small ``r`` it may be another arm).

The policy's action distribution π per context comes from either
- ``score``: the answer-only prompt prefilled once, then every candidate ``ACTION=<label><end_of_turn>`` scored
  after it (π ∝ its probability, renormalised over the candidates), or
- ``sample``: ``samples`` answers drawn at temperature 1 and parsed, π the share of each arm among the valid
  ones (for chain-of-thought policies, which rarely answer first).
Reported: the entropy of π (nats), the frequent / greedy / other fractions per repetition bucket (0-10, 45-55,
90-100, as in the paper) and the correlation of entropy with repetitions.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import envs_jax
from envs_jax.bandits import BanditState
from envs_jax.yaml_config import ConfigError
from jaxagent import metrics
from jaxagent.env_kinds import make_renderer
from jaxagent.model.kv_cache import KVCache
from jaxagent.model.sampler import prefill, sample, score_continuations_jit
from jaxagent.text.tokenizer import END_OF_TURN

BUCKETS = ((0, 10), (45, 55), (90, 100))
FRACTIONS = ("frequent", "greedy", "other")


@dataclasses.dataclass
class Contexts:
    """``N`` histories as a batched env state with room for the longest, and what each one's arms are."""
    states: BanditState    # [N, ...]
    params: object         # env params [N, ...]
    repetitions: np.ndarray  # [N] pulls of the target after the random prefix
    frequent: np.ndarray   # [N] the most-pulled arm
    greedy: np.ndarray     # [N] the best average reward among tried arms


def _rewards(env, params, actions, key):
    """The env's rewards for playing ``actions [T]`` on one instance."""
    _, state = env.reset(key, params)

    def step(state, inputs):
        step_key, action = inputs
        _, state, reward, *_ = env.step(step_key, state, action, params)
        return state, reward

    return jax.lax.scan(step, state, (jax.random.split(key, actions.shape[0]), actions))[1]


def _history_stats(actions, rewards, steps, num_arms):
    """Counts and reward sums per arm of the first ``steps`` entries (numpy)."""
    taken = np.arange(actions.shape[-1]) < steps
    onehot = (actions[..., None] == np.arange(num_arms)) & taken[..., None]
    return onehot.sum(-2).astype(np.int32), (onehot * rewards[..., None]).sum(-2, dtype=np.float32)


def build_contexts(env, key, num_histories: int, prefix_steps: tuple[int, int],
                   repetitions: tuple[int, ...]) -> Contexts:
    """The contexts for ``num_histories`` kept histories at every repetition count; ``env``'s horizon must hold
    the longest (``prefix_steps[1] + max(repetitions)``)."""
    longest, arms, candidates = prefix_steps[1] + max(repetitions), env.num_arms, 8 * num_histories
    k_params, k_length, k_prefix, k_target, k_env = jax.random.split(key, 5)
    params = jax.vmap(env.sample_params)(jax.random.split(k_params, candidates))
    lengths = np.asarray(jax.random.randint(k_length, (candidates,), prefix_steps[0], prefix_steps[1] + 1))
    target = np.asarray(jax.random.randint(k_target, (candidates,), 0, arms))
    prefix = np.asarray(jax.random.randint(k_prefix, (candidates, longest), 0, arms))
    actions = np.where(np.arange(longest) < lengths[:, None], prefix, target[:, None]).astype(np.int32)
    rewards = np.asarray(jax.jit(jax.vmap(lambda p, a, k: _rewards(env, p, a, k)))(
        params, jnp.asarray(actions), jax.random.split(k_env, candidates)))
    rows = []
    for c in range(candidates):
        contexts = []
        for r in repetitions:
            counts, sums = _history_stats(actions[c], rewards[c], lengths[c] + r, arms)
            means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
            greedy = int(np.argmax(means))
            if greedy == target[c]:
                break
            frequent = int(np.argmax(counts + 0.5 * (np.arange(arms) == target[c])))
            contexts.append((c, lengths[c] + r, r, frequent, greedy, counts, sums))
        else:
            rows += contexts
            if len(rows) == num_histories * len(repetitions):
                break
    if len(rows) < num_histories * len(repetitions):
        raise ConfigError(f"config key 'analysis.histories': only {len(rows) // len(repetitions)} of "
                          f"{candidates} random histories keep their repeated arm worse than the greedy one, "
                          f"fewer than {num_histories}; ask for fewer histories or repetitions")
    c, t, r, frequent, greedy, counts, sums = (np.asarray(x) for x in zip(*rows))
    taken = np.arange(longest) < t[:, None]
    states = BanditState(t.astype(np.int32), np.where(taken, actions[c], -1).astype(np.int32),
                         np.where(taken, rewards[c], 0.0).astype(np.float32), counts, sums)
    return Contexts(states, jax.tree.map(lambda x: np.asarray(x)[c], params), r, frequent, greedy)


def _prompts(renderer, contexts: Contexts):
    tokens, lengths = jax.jit(jax.vmap(renderer.render))(contexts.states, contexts.params)
    return np.asarray(tokens), np.asarray(lengths)


def _in_chunks(fn, chunk: int, *arrays):
    """``fn`` over row chunks of ``arrays`` (the last padded with its first row), concatenated."""
    n = arrays[0].shape[0]
    outs = []
    for start in range(0, n, chunk):
        part = [a[start: start + chunk] for a in arrays]
        short = chunk - part[0].shape[0]
        part = [np.concatenate([p, np.repeat(p[:1], short, axis=0)]) if short else p for p in part]
        outs.append(jax.tree.map(lambda x: np.asarray(x)[: chunk - short], fn(*part)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def scored_probabilities(exp, params, prompts, lengths, chunk: int) -> np.ndarray:
    """π [N, K] from the probability of each ``ACTION=<label><end_of_turn>`` after each prompt."""
    answers = [exp.tokenizer.encode(f"ACTION={label}{END_OF_TURN}") for label in exp.labels]
    width = max(map(len, answers))
    padded = jnp.asarray([a + [exp.tokenizer.pad_id] * (width - len(a)) for a in answers], jnp.int32)
    answer_lengths = jnp.asarray([len(a) for a in answers], jnp.int32)
    logp = _in_chunks(lambda p, n: score_continuations_jit(params, exp.model_cfg, p, n, padded, answer_lengths),
                      chunk, prompts, lengths)
    return np.asarray(jax.nn.softmax(jnp.asarray(logp), axis=-1))


def sampled_probabilities(exp, params, prompts, lengths, key, samples: int, chunk: int):
    """(π [N, K] over the valid answers, the invalid fraction [N]) from ``samples`` answers per prompt."""
    loop, arms, cfg = exp.eval_loop, len(exp.labels), exp.model_cfg
    params = cfg.compute_params(params)

    @jax.jit
    def answers(p, n, k):  # each prompt prefilled once, its cache repeated for the samples
        cache, logits = prefill(params, cfg, p, n, p.shape[1] + loop.max_new_tokens)
        cache = KVCache(jnp.repeat(cache.k, samples, 1), jnp.repeat(cache.v, samples, 1),
                        jnp.repeat(cache.end, samples))
        _, tokens, _, generated = sample(params, cfg, cache, jnp.repeat(logits, samples, 0), k,
                                         max_new_tokens=loop.max_new_tokens, temperature=1.0,
                                         stop_tokens=loop.stop_tokens)
        action, valid = jax.vmap(exp.parser.parse)(tokens, generated)
        hits = jax.nn.one_hot(action, arms) * valid[:, None]
        return hits.reshape(-1, samples, arms).sum(1), 1.0 - valid.reshape(-1, samples).mean(1)

    keys = np.asarray(jax.random.key_data(jax.random.split(key, prompts.shape[0])))
    counts, invalid = _in_chunks(lambda p, n, k: answers(p, n, jax.random.wrap_key_data(k)[0]), chunk,
                                 prompts, lengths, keys)
    return counts / np.maximum(counts.sum(-1, keepdims=True), 1), invalid


def summarise(contexts: Contexts, probs: np.ndarray, answered: np.ndarray) -> dict:
    """Per bucket and per repetition count: mean ± 95% CI of the fractions and the entropy over the contexts
    with an answer; the correlation of entropy with repetitions."""
    fractions = {k: np.asarray(v) for k, v in metrics.frequency_fractions(
        jnp.asarray(probs), jnp.asarray(contexts.frequent), jnp.asarray(contexts.greedy)).items()}
    values = {**fractions, "entropy": np.asarray(metrics.action_entropy(jnp.asarray(probs)))}
    reps = contexts.repetitions

    def stats(mask):
        out = {"contexts": int(mask.sum())}
        for name, x in values.items():
            if mask.sum() >= 2:
                mean, half = metrics.mean_ci95(jnp.asarray(x[mask]))
                out[name] = {"mean": float(mean), "ci95": float(half)}
        return out

    live = answered.astype(bool)
    buckets = {f"{lo}-{hi}": stats(live & (reps >= lo) & (reps <= hi)) for lo, hi in BUCKETS}
    by_repetition = {int(r): stats(live & (reps == r)) for r in np.unique(reps)}
    corr = metrics.pearson(jnp.asarray(reps[live]), jnp.asarray(values["entropy"][live]))
    return {"buckets": buckets, "by_repetition": by_repetition,
            "entropy_repetition_correlation": float(corr), "answered": float(live.mean())}


def run(exp, params, key, settings) -> dict:
    """The analysis of ``params`` under the experiment's env and prompt (``settings``: the config's ``analysis``)."""
    longest = settings.prefix_steps[1] + max(settings.repetitions)
    env = envs_jax.make_env(exp.cfg.env.name, **{**exp.cfg.env.options, "horizon": longest})
    renderer = make_renderer(env, exp.tokenizer, exp.renderer.options, params=env.default_params)
    k_contexts, k_sample = jax.random.split(key)
    contexts = build_contexts(env, k_contexts, settings.histories, tuple(settings.prefix_steps),
                              tuple(settings.repetitions))
    prompts, lengths = _prompts(renderer, contexts)
    method = settings.method
    if method == "auto":
        method = "sample" if exp.renderer.options.cot else "score"
    if method == "score":
        probs, invalid = scored_probabilities(exp, params, prompts, lengths, settings.batch), np.zeros(len(lengths))
    else:
        probs, invalid = sampled_probabilities(exp, params, prompts, lengths, k_sample, settings.samples,
                                               settings.batch)
    summary = summarise(contexts, probs, probs.sum(-1) > 0)
    return {"method": method, "samples": settings.samples if method == "sample" else None,
            "invalid": float(invalid.mean()), **summary}
