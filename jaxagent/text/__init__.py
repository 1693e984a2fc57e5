"""The text layer: tokenizers, prompt templates rendered as tokens inside jit, and the ``ACTION=X`` parser.

Set-up (host, once): ``renderer = jaxagent.env_kinds.make_renderer(env, tokenizer, options)`` (the template of the
env's kind) and ``parser = make_parser(renderer)``.
In the jitted loop: ``renderer.prefix``, ``renderer.history_line(state, params, t)``, ``renderer.tail(state,
params)``, ``renderer.render(state, params)`` and ``parser.parse(generated, length[, legal_mask])``.
"""
from __future__ import annotations

from jaxagent.text.bandit_prompt import BUTTON_COLOURS, BanditRenderer
from jaxagent.text.contextual_prompt import ContextualRenderer
from jaxagent.text.parse import ActionParser, action_regex, parse_text
from jaxagent.text.rationale import RationaleRenderer, ucb_values
from jaxagent.text.relabel import random_relabelling, relabel_state, unrelabel_action
from jaxagent.text.render import PromptOptions, Renderer
from jaxagent.text.tictactoe_prompt import TicTacToeRenderer
from jaxagent.text.tokenizer import (TextError, TextTokenizer, chat_prompt, load_tokenizer, model_turn_open,
                                     shipped_tokenizer, user_turn_open)

__all__ = [
    "BUTTON_COLOURS", "ActionParser", "BanditRenderer", "ContextualRenderer", "PromptOptions", "RationaleRenderer",
    "Renderer", "TextError",
    "TextTokenizer", "TicTacToeRenderer", "action_regex", "chat_prompt", "load_tokenizer", "make_parser",
    "model_turn_open", "needs_self_check", "parse_text", "random_relabelling", "relabel_state", "shipped_tokenizer",
    "ucb_values", "unrelabel_action", "user_turn_open",
]


def needs_self_check(tokenizer: TextTokenizer) -> bool:
    return tokenizer is not shipped_tokenizer()  # the shipped one is verified by the test suite


def make_parser(renderer: Renderer, check: bool = True) -> ActionParser:
    """The ``ACTION=X`` parser for a renderer's labels (self-checked for tokenizers other than the shipped one)."""
    parser = ActionParser(renderer.tokenizer, renderer.labels)
    if check and needs_self_check(renderer.tokenizer):
        parser.self_check()
    return parser
