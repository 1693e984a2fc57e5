"""Bandit experts that write their reasoning: UCB (the paper's thought-cloning expert) and a greedy one.

The expert's turn is the text a model should learn to write (thought cloning), e.g. with per-arm statistics::

    blue: n=2, mean=0.41, ucb=1.12
    green: n=0, mean=n/a, ucb=n/a
    green has not been tried yet, let's explore it. ACTION=green<end_of_turn>

UCB uses the paper's rationale form mean + sqrt(1/n) and tries every arm once first; greedy plays the arm with
the best mean so far (a random arm before anything was tried) — the behaviour the paper finds in LLMs;
random picks uniformly (the lower bound).
Rendering is jittable and token-exact, by the same fragment rule as the prompts
(:mod:`jaxagent.text.fragments`); :meth:`Expert.text` is the host reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent.text import numbers
from jaxagent.text.fragments import Piece, Table, join
from jaxagent.text.tokenizer import END_OF_TURN, TextError, TextTokenizer

EXPERTS = ("ucb", "greedy", "random")
UNTRIED = "n/a"
EXPLORE, HIGHEST_UCB, HIGHEST_MEAN, FIRST_PICK, AT_RANDOM = range(5)
DECISIONS = {HIGHEST_UCB: "We select the action with the highest UCB value.",
             HIGHEST_MEAN: "We select the action with the highest average reward.",
             FIRST_PICK: "Nothing has been tried yet, so we pick an action at random.",
             AT_RANDOM: "We pick an action at random."}


def arm_statistics(counts, reward_sums):
    """Per-arm mean and the paper's UCB value mean + sqrt(1/n), in float32 (inf where untried)."""
    n = jnp.asarray(counts, jnp.float32)
    tried = n > 0
    mean = jnp.where(tried, jnp.asarray(reward_sums, jnp.float32) / jnp.maximum(n, 1.0), -jnp.inf)
    ucb = jnp.where(tried, mean + jnp.sqrt(1.0 / jnp.maximum(n, 1.0)), jnp.inf)
    return mean, ucb


class Expert:
    """A bandit expert for ``labels`` that chooses an arm and renders its reasoning as tokens."""

    def __init__(self, kind: str, tokenizer: TextTokenizer, labels, horizon: int, stats: bool = True,
                 reasoning: bool = True):
        if kind not in EXPERTS:
            raise TextError(f"expert {kind!r}: expected one of {EXPERTS}")
        self.kind, self.labels, self.pad_id = kind, tuple(labels), tokenizer.pad_id
        self.reasoning = reasoning  # False: the action alone (behaviour cloning)
        self.stats = stats and reasoning and kind != "random"
        values = numbers.all_values() + [UNTRIED]
        # Explanations: entry a explores arm a; entry K + reason - 1 states a decision.
        self.explain = Table(tokenizer, [_explore_text(a) for a in self.labels] + list(DECISIONS.values()),
                             "expert explanation")
        self.action = Table(tokenizer, [f" ACTION={a}{END_OF_TURN}" for a in self.labels], "expert action")
        if self.stats:
            self.arm = Table(tokenizer, [f"{a}:" for a in self.labels], "expert arm")
            self.count = Table(tokenizer, [f" n={n}," for n in range(horizon + 1)], "expert count")
            self.mean = Table(tokenizer, [f" mean={v}" + ("," if kind == "ucb" else "\n") for v in values],
                              "expert mean")
            self.ucb = Table(tokenizer, [f" ucb={v}\n" for v in values], "expert ucb")
        self.width = sum(int(p.shape[-1]) for p, _ in self._pieces(jnp.zeros(len(self.labels), jnp.int32),
                                                                   jnp.zeros(len(self.labels)), 0, 0))

    # --- choice -------------------------------------------------------------------------------------------
    def choose(self, key, counts, reward_sums):
        """``(action, reason)`` for one bandit state (jittable)."""
        mean, ucb = arm_statistics(counts, reward_sums)
        untried = jnp.asarray(counts) == 0
        if self.kind == "ucb":
            explore = jnp.any(untried)
            return (jnp.where(explore, jnp.argmax(untried), jnp.argmax(ucb)).astype(jnp.int32),
                    jnp.where(explore, EXPLORE, HIGHEST_UCB))
        random_arm = jax.random.randint(key, (), 0, len(self.labels))
        if self.kind == "random":
            return random_arm, jnp.int32(AT_RANDOM)
        first = jnp.all(untried)
        return (jnp.where(first, random_arm, jnp.argmax(mean)).astype(jnp.int32),
                jnp.where(first, FIRST_PICK, HIGHEST_MEAN))

    # --- jit rendering ------------------------------------------------------------------------------------
    def _pieces(self, counts, reward_sums, action, reason) -> list[Piece]:
        pieces = []
        if self.stats:
            mean, ucb = arm_statistics(counts, reward_sums)
            untried_index = numbers.NUM_HUNDREDTHS
            for a in range(len(self.labels)):
                tried = counts[a] > 0
                pieces += [self.arm(a), self.count(counts[a]),
                           self.mean(jnp.where(tried, numbers.value_index(mean[a]), untried_index))]
                if self.kind == "ucb":
                    pieces.append(self.ucb(jnp.where(tried, numbers.value_index(ucb[a]), untried_index)))
        if not self.reasoning:
            return [self.action(action)]
        explain = jnp.where(reason == EXPLORE, action, len(self.labels) + reason - 1)
        return pieces + [self.explain(explain), self.action(action)]

    def render(self, counts, reward_sums, action, reason) -> Piece:
        return join(self._pieces(jnp.asarray(counts), jnp.asarray(reward_sums), action, reason), self.pad_id)

    def act(self, key, state, params) -> tuple[jax.Array, Piece]:
        """The expert's action and its reasoning tokens for an env state with ``counts``/``reward_sums``."""
        action, reason = self.choose(key, state.counts, state.reward_sums)
        return action, self.render(state.counts, state.reward_sums, action, reason)

    # --- host reference -----------------------------------------------------------------------------------
    def text(self, counts, reward_sums, action: int, reason: int) -> str:
        lines = []
        if self.stats:
            n = np.asarray(counts)
            for a, label in enumerate(self.labels):
                if n[a] > 0:
                    count = np.float32(n[a])
                    mean = np.float32(reward_sums[a]) / count
                    m, u = numbers.format_value(mean), numbers.format_value(mean + np.sqrt(np.float32(1.0) / count))
                else:
                    m = u = UNTRIED
                line = f"{label}: n={n[a]}, mean={m}"
                lines.append(line + (f", ucb={u}\n" if self.kind == "ucb" else "\n"))
        label = self.labels[int(action)]
        if not self.reasoning:
            return f" ACTION={label}{END_OF_TURN}"
        explain = _explore_text(label) if reason == EXPLORE else DECISIONS[int(reason)]
        return "".join(lines) + explain + f" ACTION={label}{END_OF_TURN}"


def _explore_text(label: str) -> str:
    return f"{label} has not been tried yet, let's explore it."
