"""Prompt renderers: host-side reference text and token-exact jittable rendering.

A prompt is ``prefix ++ history_line(0) ++ … ++ history_line(t-1) ++ tail``:
- ``prefix`` (chat opening, scenario, output instruction, history header) is fixed per env instance;
- one history line per executed step (``Step=t Action=a Reward=r``; the env's reward, never a shaped one);
- ``tail`` (optional context summary / current state, "What do you predict next?", turn markers) changes
  every step.
An agent loop appends ``history_line(state, params, t - 1)`` and then ``tail(state, params)`` to its KV cache
each step; for every state this equals ``tokenizer.encode(render_text(state, params))`` token for token
(see :mod:`jaxagent.text.fragments` for the merge-safety rule that guarantees it). With a history window
C (``history_window``), once t > C the oldest line leaves the prompt, so the cache must be re-prefilled.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent.text.fragments import Piece, Table, join, write_in_order
from jaxagent.text.tokenizer import TextError, TextTokenizer

HISTORY_HEADER = "So far you have tried/seen:\n"
QUESTION = "What do you predict next?"
UCB_OPEN, UCB_CLOSE = "<ucb_values>", "</ucb_values>"


@dataclasses.dataclass(frozen=True)
class PromptOptions:
    labels: Literal["button", "numeric"] = "button"  # bandit arm names: colours or 0..K-1
    cot: bool = True  # "Think step-by-step ..." instead of "Output ONLY your final answer ..."
    summary: bool = False  # per-arm count and average reward in the tail
    history_window: int | None = None  # show only the last C steps (None: the whole horizon)
    legal_actions: bool = True  # tic-tac-toe: list the empty squares in the tail
    max_len: int = 1792  # L_max, the prompt budget in tokens
    distribution: str = "Gaussian"  # bandit reward distribution named in the scenario text
    ucb_values: bool = False  # bandits: ask for each arm's UCB value inside <ucb_values> tags, then the action


def output_instruction(cot: bool, choices: str, ucb_values: bool = False) -> str:
    if ucb_values:
        return ("Think step-by-step: compute the UCB value of each of the "
                f"{choices.split()[0]} (its average reward plus sqrt(1/count); an untried one comes first) and "
                f"list them inside {UCB_OPEN}{UCB_CLOSE}, one 'label: value' per line. Then output your final "
                f"answer in the format ACTION=X where X is one of the {choices}.")
    if cot:
        return ("Think step-by-step and output your final answer in the format ACTION=X where X is one of the "
                f"{choices}. IMPORTANT: Provide your (SHORT!) thinking process and your answer ACTION=X")
    return "Output ONLY your final answer in the format ACTION=X."


def _tables(value) -> list[Table]:
    """Every fragment table held in ``value`` (attributes, lists and dicts of them)."""
    if isinstance(value, Table):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [table for item in value for table in _tables(item)]
    return []


def _as_arrays(state, params):
    return jax.tree.map(jnp.asarray, (state, params))


class Renderer:
    """Base class: subclasses define the text (host) and the pieces (jit) of one template."""

    template = "base"

    def __init__(self, tokenizer: TextTokenizer, horizon: int, options: PromptOptions):
        self.tokenizer, self.horizon, self.options = tokenizer, int(horizon), options
        window = options.history_window
        if window is not None and not 1 <= window <= self.horizon:
            raise TextError(f"template {self.template}: history_window {window} must be in 1..{self.horizon}")
        self.window = self.horizon if window is None else int(window)
        self.pad_id = tokenizer.pad_id

    # --- set-up -------------------------------------------------------------------------------------------
    def _finish_setup(self) -> None:
        """Tokenize the prefix and check the worst-case prompt fits ``max_len`` (never truncate in the loop)."""
        prefix_ids = self.tokenizer.encode(self.prefix_text())
        self.prefix = (jnp.asarray(prefix_ids, jnp.int32), len(prefix_ids))
        state, params = jax.tree.map(lambda x: x[0], self.sample(np.random.default_rng(0), 1))
        self.line_width = int(jax.eval_shape(lambda: self.history_line(state, params, 0))[0].shape[0])
        self.tail_width = int(jax.eval_shape(lambda: self.tail(state, params))[0].shape[0])
        longest = len(prefix_ids) + self.window * self.line_width + self.tail_width
        self.width = longest  # every prompt fits: rendered prompts are this wide
        if longest > self.options.max_len:
            widest = max(_tables(vars(self)), key=lambda table: table.width)
            raise TextError(
                f"template {self.template}: a prompt can reach {longest} tokens ({len(prefix_ids)} prefix + "
                f"{self.window} history lines x {self.line_width} + {self.tail_width} tail; widest fragment "
                f"{widest.name!r}: {widest.width} tokens) with tokenizer {self.tokenizer.name}, over "
                f"max_len={self.options.max_len}; raise max_len, lower history_window or shorten labels")

    # --- host reference -----------------------------------------------------------------------------------
    def prefix_text(self) -> str:
        raise NotImplementedError

    def history_line_text(self, state, params, t: int) -> str:
        raise NotImplementedError

    def tail_text(self, state, params) -> str:
        raise NotImplementedError

    def render_text(self, state, params) -> str:
        t = int(state.t)
        lines = "".join(self.history_line_text(state, params, i) for i in range(max(0, t - self.window), t))
        return self.prefix_text() + lines + self.tail_text(state, params)

    # --- jit ----------------------------------------------------------------------------------------------
    def _line_pieces(self, state, params, t) -> list[Piece]:
        raise NotImplementedError

    def _tail_pieces(self, state, params) -> list[Piece]:
        raise NotImplementedError

    def history_line(self, state, params, t) -> Piece:
        """Tokens of history line ``t`` (width ``line_width``) and its length."""
        state, params = _as_arrays(state, params)
        return join(self._line_pieces(state, params, jnp.asarray(t, jnp.int32)), self.pad_id)

    def tail(self, state, params) -> Piece:
        """Tokens of the tail (width ``tail_width``) and its length."""
        state, params = _as_arrays(state, params)
        return join(self._tail_pieces(state, params), self.pad_id)

    def history(self, state, params, end) -> Piece:
        """History lines ``0 <= i < end`` back to back (width ``horizon * line_width``) and their length."""
        state, params = _as_arrays(state, params)
        steps = jnp.arange(self.horizon, dtype=jnp.int32)
        rows, lengths = jax.vmap(lambda i: self.history_line(state, params, i))(steps)
        lengths = jnp.where(steps < end, lengths, 0)
        return join([(rows[i], lengths[i]) for i in range(self.horizon)], self.pad_id)

    def render(self, state, params) -> Piece:
        """The whole prompt: tokens[width] (padded; ``width``, the longest prompt, is at most ``max_len``) and its
        length."""
        state, params = _as_arrays(state, params)
        steps = jnp.arange(self.horizon, dtype=jnp.int32)
        rows, row_lengths = jax.vmap(lambda i: self.history_line(state, params, i))(steps)
        t = jnp.asarray(state.t, jnp.int32)
        row_lengths = jnp.where((steps < t) & (steps >= t - self.window), row_lengths, 0)
        tail, tail_length = self.tail(state, params)
        prefix_tokens, prefix_length = self.prefix
        width = self.width + max(self.line_width, self.tail_width)
        out = jnp.zeros((width,), jnp.int32).at[:prefix_length].set(prefix_tokens)
        pieces = [(rows[i], row_lengths[i]) for i in range(self.horizon)] + [(tail, tail_length)]
        out, total = write_in_order(out, pieces, prefix_length)
        position = jnp.arange(self.width, dtype=jnp.int32)
        return jnp.where(position < total, out[: self.width], self.pad_id), total

    # --- checks -------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int):
        """``n`` random (state, params) pairs as batched pytrees, for self-checks and tests."""
        raise NotImplementedError

    def self_check(self, num_states: int = 64, seed: int = 0) -> None:
        """Render random states both ways; refuse (TextError) a tokenizer for which they differ."""
        states, params = self.sample(np.random.default_rng(seed), num_states)
        tokens, lengths = jax.jit(jax.vmap(self.render))(states, params)
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        for b in range(num_states):
            state, param = jax.tree.map(lambda x: np.asarray(x)[b], (states, params))
            expected = self.tokenizer.encode(self.render_text(state, param))
            got = tokens[b, : lengths[b]].tolist()
            if got != expected:
                at = next((i for i, (x, y) in enumerate(zip(got, expected)) if x != y), min(len(got), len(expected)))
                raise TextError(
                    f"tokenizer {self.tokenizer.name} is not token-exact for template {self.template}: jitted "
                    f"rendering differs from encoding the text at token {at} (near "
                    f"{self.tokenizer.decode(expected[max(0, at - 4): at + 4])!r}); use a tokenizer with "
                    "SentencePiece-style merges or the shipped one")
