"""Thought-cloning targets: an expert's rationale plus ``ACTION=X``, as text (host) and as tokens (jit).

The paper's UCB rationale lists, per arm, the count, the average reward and the UCB value written out as
``UCB = mean + sqrt(1/count) = value``, then either explores an untried arm ("We have not yet selected all
actions. Action red has not been tried yet, let's explore it.") or picks the best one ("We select actions
according to the highest UCB value. …"). The greedy rule ranks by average reward and omits UCB values.
The target ends with ``<end_of_turn>`` so the model learns to stop. Same merge-safe fragments and
two-decimal numbers as the prompts, so ``tokens`` equals ``tokenizer.encode(text)``.
``stats=False`` drops the per-arm lines (a short rationale: just the decision), ``reasoning=False`` keeps
only ``ACTION=X`` (behaviour cloning).
"""
from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpy as np

from jaxagent.text import numbers
from jaxagent.text.fragments import Piece, Table, constant, join
from jaxagent.text.tokenizer import END_OF_TURN, TextError, TextTokenizer

HEADER = "Counts and average rewards so far:\n"
UNTRIED = " count=0, not tried yet\n"
EXPLORE = ("We have not yet selected all actions. Action", " {} has not been tried yet, let's explore it.\n")
EXPLOIT = {"ucb": ("We select actions according to the highest UCB value. Action", " {} has the highest UCB value.\n"),
           "greedy": ("We select the action with the highest average reward. Action",
                      " {} has the highest average reward.\n")}


class RationaleRenderer:
    def __init__(self, tokenizer: TextTokenizer, labels, max_count: int, rule: Literal["ucb", "greedy"] = "ucb",
                 stats: bool = True, reasoning: bool = True):
        if rule not in EXPLOIT:
            raise TextError(f"rationale rule {rule!r}: expected 'ucb' or 'greedy'")
        self.tokenizer, self.labels, self.rule = tokenizer, tuple(labels), rule
        self.reasoning, self.stats = reasoning, stats and reasoning
        self.pad_id = tokenizer.pad_id
        values = numbers.all_values()
        counts = range(1, max_count + 1)
        self.header = constant(tokenizer, HEADER, "rationale header")
        self.arm_table = Table(tokenizer, [f"{label}:" for label in self.labels], "rationale arm")
        self.untried = constant(tokenizer, UNTRIED, "rationale untried")
        self.count_table = Table(tokenizer, [f" count={n}," for n in counts], "rationale count")
        if rule == "ucb":
            self.mean_table = Table(tokenizer, [f" average reward={v}," for v in values], "rationale mean")
            self.ucb_mean_table = Table(tokenizer, [f" UCB = {v}" for v in values], "rationale UCB mean")
            self.bonus_table = Table(tokenizer, [f" + sqrt(1/{n})" for n in counts], "rationale bonus")
            self.ucb_table = Table(tokenizer, [f" = {v}\n" for v in values], "rationale UCB")
        else:
            self.mean_table = Table(tokenizer, [f" average reward={v}\n" for v in values], "rationale mean")
        self.explore = [constant(tokenizer, EXPLORE[0], "explore"),
                        Table(tokenizer, [EXPLORE[1].format(label) for label in self.labels], "explore arm")]
        self.exploit = [constant(tokenizer, EXPLOIT[rule][0], "exploit"),
                        Table(tokenizer, [EXPLOIT[rule][1].format(label) for label in self.labels], "exploit arm")]
        self.action_table = Table(tokenizer, [f"ACTION={label}{END_OF_TURN}" for label in self.labels], "action")

    @property
    def max_length(self) -> int:
        """The longest target in tokens: exact without per-arm lines (every text is enumerated), else the
        width of the padded pieces."""
        K = len(self.labels)
        if self.stats:
            zeros = jnp.zeros(K, jnp.int32)
            return int(self.tokens(zeros, zeros, zeros, 0)[0].shape[0])
        texts = [self.text(np.full(K, n, np.int32), np.zeros(K), np.zeros(K), a) for a in range(K) for n in (0, 1)]
        return max(len(ids) for ids in self.tokenizer.encode_batch(texts))

    def text(self, counts, means, ucb, chosen: int) -> str:
        """Host reference. ``counts`` i32[K], ``means``/``ucb`` f32[K] (ignored where the count is 0)."""
        label = self.labels[int(chosen)]
        if not self.reasoning:
            return f"ACTION={label}{END_OF_TURN}"
        lines = [HEADER] if self.stats else []
        for a, label in enumerate(self.labels if self.stats else ()):
            n = int(counts[a])
            if n == 0:
                lines.append(f"{label}:{UNTRIED}")
                continue
            mean = numbers.format_value(means[a])
            if self.rule == "ucb":
                value = numbers.format_value(ucb[a])
                lines.append(f"{label}: count={n}, average reward={mean}, UCB = {mean} + sqrt(1/{n}) = {value}\n")
            else:
                lines.append(f"{label}: count={n}, average reward={mean}\n")
        label = self.labels[int(chosen)]
        opening, closing = EXPLORE if int(counts[int(chosen)]) == 0 else EXPLOIT[self.rule]
        return "".join(lines) + opening + closing.format(label) + f"ACTION={label}{END_OF_TURN}"

    def tokens(self, counts, means, ucb, chosen) -> Piece:
        """Jit: the tokens of :meth:`text` (padded) and their length."""
        counts, chosen = jnp.asarray(counts, jnp.int32), jnp.asarray(chosen, jnp.int32)
        if not self.reasoning:
            return join([self.action_table(chosen)], self.pad_id)
        mean_index, ucb_index = numbers.value_index(means), numbers.value_index(ucb)
        pieces = [self.header(0)] if self.stats else []
        for a in range(len(self.labels) if self.stats else 0):
            tried = counts[a] > 0
            arm_pieces = [self.count_table(counts[a] - 1), self.mean_table(mean_index[a])]
            if self.rule == "ucb":
                arm_pieces += [self.ucb_mean_table(mean_index[a]), self.bonus_table(counts[a] - 1),
                               self.ucb_table(ucb_index[a])]
            pieces.append(self.arm_table(a))
            pieces += [_shown(piece, tried) for piece in arm_pieces] + [_shown(self.untried(0), ~tried)]
        explore = counts[chosen] == 0
        for (explore_table, exploit_table), index in zip(zip(self.explore, self.exploit), (0, chosen)):
            pieces += [_shown(explore_table(index), explore), _shown(exploit_table(index), ~explore)]
        return join(pieces + [self.action_table(chosen)], self.pad_id)


def _shown(piece: Piece, condition) -> Piece:
    tokens, length = piece
    return tokens, jnp.where(condition, length, 0)


def ucb_values(counts, reward_sums) -> tuple[np.ndarray, np.ndarray]:
    """The paper's UCB variant, mean + sqrt(1/count), in float32 (host or jit inputs)."""
    n = jnp.maximum(jnp.asarray(counts), 1).astype(jnp.float32)
    means = jnp.asarray(reward_sums, jnp.float32) / n
    return means, means + jnp.sqrt(1.0 / n)
