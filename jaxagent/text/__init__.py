"""The text layer: tokenizers, prompt templates rendered as tokens inside jit, and the ``ACTION=X`` parser.

Set-up (host, once): ``renderer = make_renderer(env, tokenizer, options)`` and ``parser = make_parser(renderer)``.
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
    "make_renderer", "model_turn_open", "parse_text", "random_relabelling", "relabel_state", "shipped_tokenizer",
    "ucb_values", "unrelabel_action", "user_turn_open",
]


def _needs_check(tokenizer: TextTokenizer) -> bool:
    return tokenizer is not shipped_tokenizer()  # the shipped one is verified by the test suite


def make_renderer(env, tokenizer: TextTokenizer, options: PromptOptions = PromptOptions(), params=None,
                  check: bool = True) -> Renderer:
    """The renderer for ``env`` (bandit: ``num_arms``; contextual: ``movie_titles``; tic-tac-toe by name).

    ``params`` (the env's default params) gives the contextual preference-vector length when the env has
    no ``feature_dim``. A tokenizer other
    than the shipped one is self-checked: set-up fails with a :class:`TextError` if it is not token-exact.
    """
    if hasattr(env, "movie_titles"):
        pref_dim = getattr(env, "feature_dim", None) or (None if params is None else params.user_prefs.shape[-1])
        if pref_dim is None:
            raise TextError(f"env {env.name!r}: the contextual template needs the env params (preference length)")
        renderer = ContextualRenderer(env.movie_titles, env.occupations, env.locations, int(pref_dim), env.horizon,
                                      tokenizer, options)
    elif hasattr(env, "num_arms"):
        renderer = BanditRenderer(env.num_arms, env.horizon, tokenizer, options)
    elif "tic" in str(getattr(env, "name", "")).lower():
        renderer = TicTacToeRenderer(tokenizer, options, horizon=env.horizon)
    else:
        raise TextError(f"env {getattr(env, 'name', env)!r} has no prompt template")
    if check and _needs_check(tokenizer):
        renderer.self_check()
    return renderer


def make_parser(renderer: Renderer, check: bool = True) -> ActionParser:
    """The ``ACTION=X`` parser for a renderer's labels (self-checked for tokenizers other than the shipped one)."""
    parser = ActionParser(renderer.tokenizer, renderer.labels)
    if check and _needs_check(renderer.tokenizer):
        parser.self_check()
    return parser
