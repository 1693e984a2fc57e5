"""The knowing-doing gap (the RLFT paper's Fig. 5): does a policy act on the UCB values it computes?

The policy plays the held-out bandits of the evaluation (``eval.num_episodes``, ``eval.seed``, greedy decoding),
best with ``prompt.ucb_values: true`` (the instruction asks for each arm's UCB value inside
``<ucb_values>…</ucb_values>``) and a large budget ``rollout.max_new_tokens``. At every step:
- the values it states are parsed from its text (:func:`jaxagent.text.parse.parse_ucb_values`: the tagged block,
  or its per-arm ``label: … = value`` lines); a step is parsed when every arm has a value or is called untried;
- *knowing* is correct when the arm of its highest stated value is a best arm by the true UCB values, recomputed
  from the history with the formula the UCB rationale teaches: mean + sqrt(1 / count), untried arms first
  (:func:`jaxagent.metrics.ucb_scores`);
- *doing* is optimal (a best arm by true UCB), greedy (a best arm by true UCB among the tried arms, where that is
  not optimal) or other (:func:`jaxagent.metrics.knowing_doing`).
The table gives each (knowing, doing) cell as a share of all steps, mean ± 95% CI over episodes; unparsed steps
form their own row, so the cells sum to 1.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxagent import metrics
from jaxagent.text.parse import parse_ucb_values

ROWS = ("correct", "incorrect", "unparsed")


def stated_values(tokenizer, labels, tokens, lengths) -> np.ndarray:
    """``[B, T, K]`` values stated in each step's generated text (NaN: none)."""
    B, T = lengths.shape
    out = np.full((B, T, len(labels)), np.nan, np.float32)
    for b in range(B):
        for t in range(T):
            out[b, t] = parse_ucb_values(tokenizer.decode(tokens[b, t, : lengths[b, t]]), labels)
    return out


def table(stated, counts, reward_sums, actions) -> dict:
    """The knowing × doing table from ``[B, T, K]`` stated values, the histories before each step and the executed
    ``actions [B, T]``; also the parse rate and the share of parsed steps that know."""
    parsed, knows, doing = (np.asarray(x) for x in metrics.knowing_doing(
        jnp.asarray(stated), jnp.asarray(counts), jnp.asarray(reward_sums), jnp.asarray(actions)))
    rows = {"correct": parsed & knows, "incorrect": parsed & ~knows, "unparsed": ~parsed}
    out = {}
    for row, mask in rows.items():
        for index, column in enumerate(metrics.DOING):
            per_episode = (mask & (doing == index)).mean(axis=1)
            mean, half = metrics.mean_ci95(jnp.asarray(per_episode))
            out[f"{row}/{column}"] = {"mean": float(mean), "ci95": float(half)}
    return {"table": out, "parse_rate": float(parsed.mean()),
            "knowing_when_parsed": float(knows.sum() / max(parsed.sum(), 1)),
            "doing": {column: float((doing == i).mean()) for i, column in enumerate(metrics.DOING)}}


def run(exp, params, evaluator) -> dict:
    """The analysis of ``params`` on the evaluator's held-out instances."""
    traj = evaluator.trajectory(params)
    stated = stated_values(exp.tokenizer, exp.labels, np.asarray(traj.tokens), np.asarray(traj.lengths))
    out = table(stated, traj.states.counts, traj.states.reward_sums, traj.actions)
    return {**out, "invalid": float(1.0 - np.asarray(traj.valid).mean()), "episodes": int(stated.shape[0]),
            "max_new_tokens": exp.eval_loop.max_new_tokens}
