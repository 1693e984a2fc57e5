"""Experts that act and write their reasoning. Bandits: UCB (the paper's thought-cloning expert), greedy, random;
contextual bandits also LinUCB; tic-tac-toe: minimax.

UCB plays every arm once, then the highest mean + sqrt(1/n) (the paper's rationale form); greedy plays the best
mean so far (a random arm before anything was tried) — the behaviour the paper finds in LLMs; random is the
lower bound. Either kind can be made weaker with ``blunder``: the chance that a turn plays a uniformly random
(legal) action instead, written up with the same rationale as a move of its own (EEF's experts that fail).
The reasoning text comes from :class:`jaxagent.text.rationale.RationaleRenderer` (jittable and
token-exact); ``act`` is the call an agent loop makes in place of sampling from the model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

import envs_jax
from jaxagent.text.fragments import Piece, Table, join
from jaxagent.text.rationale import RationaleRenderer, ucb_values
from jaxagent.text.tokenizer import END_OF_TURN, TextError, TextTokenizer

EXPERTS = ("ucb", "greedy", "random")
# an envs_jax baseline an expert may play -> the reason it writes before its action
REASONS = {"minimax": "Square {} is a minimax move (win soonest, lose latest).\n",
           "linucb": "Movie {} has the highest LinUCB score for this user.\n"}


def blundered(key, action, blunder: float, legal):
    """``action``, or with probability ``blunder`` a uniformly random action among ``legal`` (bool[A])."""
    if not blunder:
        return action
    k_coin, k_move = jax.random.split(jax.random.fold_in(key, 1))
    random_move = jax.random.categorical(k_move, jnp.where(legal, 0.0, -jnp.inf)).astype(action.dtype)
    return jnp.where(jax.random.uniform(k_coin) < blunder, random_move, action)


class Expert:
    """A bandit expert over ``labels``; ``stats``/``reasoning`` choose how much of its rationale it writes."""

    def __init__(self, kind: str, tokenizer: TextTokenizer, labels, horizon: int, stats: bool = True,
                 reasoning: bool = True, blunder: float = 0.0):
        if kind not in EXPERTS:
            raise TextError(f"expert {kind!r}: expected one of {EXPERTS}")
        self.kind, self.num_arms, self.blunder = kind, len(labels), float(blunder)
        # random has no reasons to give: it writes the action alone
        self.rationale = RationaleRenderer(tokenizer, labels, horizon, "greedy" if kind == "greedy" else "ucb",
                                           stats=stats, reasoning=reasoning and kind != "random")
        self.width = self.rationale.max_length

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
        action = blundered(key, action, self.blunder, jnp.ones(self.num_arms, bool))
        means, ucb = ucb_values(state.counts, state.reward_sums)
        tokens, length = self.rationale.tokens(state.counts, means, ucb, action)
        return action, (tokens[: self.width], length)

    def text(self, counts, reward_sums, action: int) -> str:
        """Host reference of the reasoning for ``action``."""
        means, ucb = ucb_values(counts, reward_sums)
        return self.rationale.text(counts, means, ucb, action)


class PolicyExpert:
    """A baseline policy of :mod:`envs_jax.baselines` (``minimax``: random among equally good moves; ``linucb``)
    with its one-line reason (:data:`REASONS`), or the action alone."""

    def __init__(self, name: str, env, tokenizer: TextTokenizer, labels, reasoning: bool = True,
                 blunder: float = 0.0):
        self.blunder, self.num_actions = float(blunder), env.num_actions
        self.policy = envs_jax.baselines.make(name, env)
        self.reasons = Table(tokenizer, [REASONS[name].format(label) for label in labels], f"{name} reason")
        self.actions = Table(tokenizer, [f"ACTION={label}{END_OF_TURN}" for label in labels], "action")
        self.reasoning, self.pad_id = reasoning, tokenizer.pad_id
        self.width = (self.reasons.width if reasoning else 0) + self.actions.width

    def act(self, key, state, params) -> tuple[jax.Array, Piece]:
        legal = getattr(state, "legal_mask", jnp.ones(self.num_actions, bool))
        action = blundered(key, self.policy(key, state, params), self.blunder, legal)
        pieces = ([self.reasons(action)] if self.reasoning else []) + [self.actions(action)]
        return action, join(pieces, self.pad_id)


class ExplorationOverride:
    """The paper's try-all and ε-greedy mechanisms: some turns are taken over by an exploratory action,
    written with the try-all rationale ("Action X has not been tried yet, let's explore it. ACTION=X").

    try-all plays the first untried arm while one is left; ε-greedy plays a uniformly random arm with
    probability ε. These turns are executed and trained on like the model's own.
    """

    def __init__(self, tokenizer: TextTokenizer, labels, horizon: int, try_all: bool, epsilon: float):
        self.try_all, self.epsilon, self.num_arms = try_all, float(epsilon), len(labels)
        self.rationale = RationaleRenderer(tokenizer, labels, horizon, "ucb", stats=False)
        self.width = self.rationale.max_length

    def __call__(self, key, state) -> tuple[jax.Array, Piece]:
        """``(forced, (tokens, length))`` for one state; the tokens name the forced arm."""
        k_coin, k_arm = jax.random.split(key)
        untried = state.counts == 0
        forced = jnp.zeros((), bool)
        arm = jax.random.randint(k_arm, (), 0, self.num_arms)
        if self.epsilon:
            forced = jax.random.uniform(k_coin) < self.epsilon
        if self.try_all:
            arm = jnp.where(jnp.any(untried), jnp.argmax(untried), arm).astype(jnp.int32)
            forced = forced | jnp.any(untried)
        zeros = jnp.zeros(self.num_arms, jnp.int32)  # the exploration template, whatever the counts
        tokens, length = self.rationale.tokens(zeros, zeros, zeros, arm)
        return forced, (tokens[: self.width], length)
