"""Bandit experts that act and write their reasoning: UCB (the paper's thought-cloning expert), greedy, random.

UCB plays every arm once, then the highest mean + sqrt(1/n) (the paper's rationale form); greedy plays the best
mean so far (a random arm before anything was tried) — the behaviour the paper finds in LLMs; random is the
lower bound. The reasoning text comes from :class:`jaxagent.text.rationale.RationaleRenderer` (jittable and
token-exact); ``Expert.act`` is the call an agent loop makes in place of sampling from the model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxagent.text.fragments import Piece
from jaxagent.text.rationale import RationaleRenderer, ucb_values
from jaxagent.text.tokenizer import TextError, TextTokenizer

EXPERTS = ("ucb", "greedy", "random")


class Expert:
    """A bandit expert over ``labels``; ``stats``/``reasoning`` choose how much of its rationale it writes."""

    def __init__(self, kind: str, tokenizer: TextTokenizer, labels, horizon: int, stats: bool = True,
                 reasoning: bool = True):
        if kind not in EXPERTS:
            raise TextError(f"expert {kind!r}: expected one of {EXPERTS}")
        self.kind, self.num_arms = kind, len(labels)
        # random has no reasons to give: it writes the action alone
        self.rationale = RationaleRenderer(tokenizer, labels, horizon, "greedy" if kind == "greedy" else "ucb",
                                           stats=stats, reasoning=reasoning and kind != "random")
        counts = jnp.zeros(self.num_arms, jnp.int32)
        self.width = int(self.rationale.tokens(counts, counts, counts, 0)[0].shape[0])

    def choose(self, key, counts, reward_sums):
        """The expert's arm for one bandit state (jittable)."""
        means, ucb = ucb_values(counts, reward_sums)
        untried = jnp.asarray(counts) == 0
        random_arm = jax.random.randint(key, (), 0, self.num_arms)
        if self.kind == "random":
            return random_arm
        if self.kind == "ucb":
            return jnp.where(jnp.any(untried), jnp.argmax(untried), jnp.argmax(ucb)).astype(jnp.int32)
        best = jnp.argmax(jnp.where(untried, -jnp.inf, means))
        return jnp.where(jnp.all(untried), random_arm, best).astype(jnp.int32)

    def act(self, key, state, params) -> tuple[jax.Array, Piece]:
        """The expert's action and its reasoning tokens for an env state with ``counts``/``reward_sums``."""
        action = self.choose(key, state.counts, state.reward_sums)
        means, ucb = ucb_values(state.counts, state.reward_sums)
        return action, self.rationale.tokens(state.counts, means, ucb, action)

    def text(self, counts, reward_sums, action: int) -> str:
        """Host reference of the reasoning for ``action``."""
        means, ucb = ucb_values(counts, reward_sums)
        return self.rationale.text(counts, means, ucb, action)
