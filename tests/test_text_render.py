"""Jitted prompt rendering equals ``tokenizer.encode(render_text(state))`` token for token, for every template,
for the shipped BPE and a Gemma-style SentencePiece tokenizer; the text itself has the paper's format."""
import functools
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from test_text_tokenizer import gemma_like

from jaxagent.text.bandit_prompt import BanditRenderer
from jaxagent.text.contextual_prompt import ContextualRenderer
from jaxagent.text.numbers import format_value
from jaxagent.text.render import PromptOptions
from envs_jax.bandits import BanditParams, BanditState
from envs_jax.tictactoe import TicTacToeState
from jaxagent.text.tictactoe_prompt import TicTacToeRenderer
from jaxagent.text.tokenizer import TextError, shipped_tokenizer

MOVIES = ("Star Wars (1977)", "Fargo (1996)", "Contact (1997)", "Return of the Jedi (1983)", "Liar Liar (1997)")
TOKENIZERS = {"shipped": shipped_tokenizer, "gemma_like": gemma_like}
TEMPLATES = {
    "bandit_button_cot": lambda tok: BanditRenderer(10, 50, tok, PromptOptions(labels="button", cot=True)),
    "bandit_numeric_nocot_summary": lambda tok: BanditRenderer(
        5, 50, tok, PromptOptions(labels="numeric", cot=False, summary=True)),
    "bandit_button20_summary_window": lambda tok: BanditRenderer(
        20, 50, tok, PromptOptions(labels="button", summary=True, history_window=12)),
    "tictactoe_legal": lambda tok: TicTacToeRenderer(tok, PromptOptions(legal_actions=True)),
    "tictactoe_no_legal_nocot": lambda tok: TicTacToeRenderer(tok, PromptOptions(legal_actions=False, cot=False)),
    "contextual_window": lambda tok: ContextualRenderer(
        MOVIES, ("administrator", "artist", "engineer"), ("Santa Clara county, CA", "Kings county, NY"), 5, 50, tok,
        PromptOptions(history_window=6)),
    "contextual_one_preference_nocot": lambda tok: ContextualRenderer(
        MOVIES[:2], ("educator",), ("Cook county, IL",), 1, 10, tok, PromptOptions(cot=False, max_len=4096)),
}
_RENDERERS = {}


def renderer(tokenizer_name, template):
    key = (tokenizer_name, template)
    if key not in _RENDERERS:
        _RENDERERS[key] = TEMPLATES[template](TOKENIZERS[tokenizer_name]())
    return _RENDERERS[key]


@functools.lru_cache(maxsize=None)
def pieces_of(r):
    """Jitted, batched ``history_line`` over every step and ``tail``, once per renderer (hypothesis examples
    reuse them)."""
    lines = jax.jit(jax.vmap(jax.vmap(r.history_line, in_axes=(None, None, 0)), in_axes=(0, 0, None)))
    return lines, jax.jit(jax.vmap(r.tail))


def row(tree, b):
    return jax.tree.map(lambda x: np.asarray(x)[b], tree)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
def test_render_is_token_exact_on_512_random_states(tokenizer_name, template):
    r = renderer(tokenizer_name, template)
    render = jax.jit(jax.vmap(r.render))
    rng = np.random.default_rng(zlib.crc32(f"{tokenizer_name}/{template}".encode()))
    for _ in range(2):
        states, params = r.sample(rng, 256)
        tokens, lengths = map(np.asarray, render(states, params))
        for b in range(256):
            state, param = row(states, b), None if params is None else row(params, b)
            expected = r.tokenizer.encode(r.render_text(state, param))
            assert tokens[b, : lengths[b]].tolist() == expected
            assert (tokens[b, lengths[b]:] == r.tokenizer.pad_id).all()


@pytest.mark.parametrize("template", ["bandit_numeric_nocot_summary", "tictactoe_legal", "contextual_window"])
@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_prefix_lines_tail_concatenate_to_the_prompt(tokenizer_name, template, seed):
    r = renderer(tokenizer_name, template)
    states, params = r.sample(np.random.default_rng(seed), 16)
    steps = jnp.arange(r.horizon)
    line, tail = pieces_of(r)
    rows, row_lengths = map(np.asarray, line(states, params, steps))
    tails, tail_lengths = map(np.asarray, tail(states, params))
    assert rows.shape[-1] == r.line_width and tails.shape[-1] == r.tail_width
    for b in range(16):
        state, param = row(states, b), None if params is None else row(params, b)
        pieces = list(np.asarray(r.prefix[0]))
        for i in range(max(0, int(state.t) - r.window), int(state.t)):
            pieces += rows[b, i, : row_lengths[b, i]].tolist()
        pieces += tails[b, : tail_lengths[b]].tolist()
        assert pieces == r.tokenizer.encode(r.render_text(state, param))


@settings(max_examples=200, deadline=None)
@given(st.floats(-150, 150, allow_nan=False, width=32))
def test_values_show_two_decimals_like_python_formatting(x):
    k = np.float32(x) * np.float32(100)
    if abs(k - np.floor(k) - 0.5) < 1e-3 or abs(x) >= 99.995:  # rounding ties and clipping are documented apart
        return
    expected = f"{float(x):.2f}"
    assert format_value(x) == ("0.00" if expected == "-0.00" else expected)


def test_value_edge_cases():
    assert [format_value(v) for v in (0.3, -0.004, 0.125, 1234.5, -1e9, 99.99)] == \
        ["0.30", "0.00", "0.12", "99.99", "-99.99", "99.99"]


def _bandit_state(actions, rewards, horizon=50, num_arms=3):
    t = len(actions)
    acts = np.full(horizon, -1, np.int32)
    acts[:t] = actions
    rews = np.zeros(horizon, np.float32)
    rews[:t] = rewards
    counts = np.bincount(actions, minlength=num_arms).astype(np.int32)
    sums = np.asarray([sum(r for a, r in zip(actions, rewards) if a == k) for k in range(num_arms)], np.float32)
    return BanditState(np.int32(t), acts, rews, counts, sums), BanditParams(np.zeros(num_arms, np.float32))


def test_bandit_text_follows_the_paper_format():
    r = BanditRenderer(3, 50, shipped_tokenizer(), PromptOptions(summary=True))
    text = r.render_text(*_bandit_state([1, 0, 1], [0.3, -1.256, 2.0]))
    assert text.startswith("<bos><start_of_turn>user\nYou are a bandit algorithm in a room with 3 buttons labeled "
                           "blue, green, red.")
    assert "Think step-by-step and output your final answer in the format ACTION=X" in text
    assert "So far you have tried/seen:\nStep=0 Action=green Reward=0.30\nStep=1 Action=blue Reward=-1.26\n" \
           "Step=2 Action=green Reward=2.00\n" in text
    assert "blue: count=1, average reward=-1.26\ngreen: count=2, average reward=1.15\n" \
           "red: count=0, average reward=n/a\n" in text
    assert text.endswith("What do you predict next?<end_of_turn>\n<start_of_turn>model\n")
    numeric = BanditRenderer(3, 50, shipped_tokenizer(), PromptOptions(labels="numeric", cot=False))
    text = numeric.render_text(*_bandit_state([2], [0.5]))
    assert "interact with 3 arms labeled 0, 1, 2." in text and "Output ONLY your final answer" in text
    assert re.search(r"^Step=0 Action=2 Reward=0\.50$", text, re.M)


TICTACTOE_OPENING = (
    "<bos><start_of_turn>user\n"
    "You are playing tic-tac-toe as player 1 against an opponent who is player 2. The board is a string of 9 digits, "
    "one per square in row order (squares 012 / 345 / 678): 0 is an empty square, 1 is your mark and 2 is the "
    "opponent's mark. On each turn you MUST put your mark on an empty square, named by its number 0-8. Three marks "
    "in a row, column or diagonal win. The reward is 1 for a win, 0 for a draw and -1 for a loss.\n")
# After the agent took the centre (4) and the opponent a corner (0), then the agent 8 and the opponent 2.
TICTACTOE_HISTORY = (
    "So far you have tried/seen:\n"
    "Step=0 State=000000000 Action=4 Reward=0.00\n"
    "Step=1 State=200010000 Action=8 Reward=0.00\n"
    "Current State=202010001\n")
TICTACTOE_TEXTS = {
    "tictactoe_legal": (
        TICTACTOE_OPENING + "Think step-by-step and output your final answer in the format ACTION=X where X is one "
        "of the legal actions. IMPORTANT: Provide your (SHORT!) thinking process and your answer ACTION=X\n"
        + TICTACTOE_HISTORY + "Legal actions: 1, 3, 5, 6, 7\n"
        "What do you predict next?<end_of_turn>\n<start_of_turn>model\n"),
    "tictactoe_no_legal_nocot": (
        TICTACTOE_OPENING + "Output ONLY your final answer in the format ACTION=X.\n" + TICTACTOE_HISTORY
        + "What do you predict next?<end_of_turn>\n<start_of_turn>model\n"),
}


def _tictactoe_after(moves):
    """The prompt state after ``moves`` (the agent's move and the opponent's reply each), by the game's rules."""
    from envs_jax.games import tictactoe as game

    g, boards = game.init(), []
    for mine, theirs in moves:
        boards.append(np.asarray(game.board_of(g.x, g.o)))
        g = game.step(game.step(g, mine), theirs)
    horizon, t = 5, len(moves)
    actions = np.full(horizon, -1, np.int32)
    actions[:t] = [mine for mine, _ in moves]
    history = np.zeros((horizon, 9), np.int32)
    history[:t] = boards
    return TicTacToeState(np.asarray(game.board_of(g.x, g.o)), np.asarray(g.legal_action_mask), np.int32(t),
                          actions, np.zeros(horizon, np.float32), history, winner=np.int32(0),
                          terminated=np.bool_(False), agent_player=np.int32(0), game=g)


@pytest.mark.parametrize("template", sorted(TICTACTOE_TEXTS))
@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
def test_tictactoe_prompt_is_the_papers_text(tokenizer_name, template):
    r = renderer(tokenizer_name, template)
    state = _tictactoe_after([(4, 0), (8, 2)])
    expected = TICTACTOE_TEXTS[template]
    assert r.render_text(state, None) == expected
    tokens, length = map(np.asarray, jax.jit(r.render)(state, None))
    assert tokens[:length].tolist() == r.tokenizer.encode(expected)


def test_contextual_text_describes_each_user():
    r = renderer("shipped", "contextual_window")
    states, params = r.sample(np.random.default_rng(3), 1)
    state, param = row(states, 0), row(params, 0)
    state = state.replace(t=np.int32(2), actions=np.asarray([1, 3] + [-1] * 48, np.int32),
                          users=np.asarray([4, 0] + [0] * 48, np.int32), user=np.int32(4))
    prefs = np.array(param.user_prefs)
    prefs[0] = [-0.04, 0.02, -0.02, -0.001, 0.02]
    param = param.replace(user_age=np.asarray([28, 30, 31, 32, 45]), user_gender=np.asarray([1, 0, 0, 0, 0]),
                          user_occupation=np.asarray([0, 1, 1, 1, 2]), user_location=np.asarray([0, 1, 1, 1, 1]),
                          user_prefs=prefs)
    text = r.render_text(state, param)
    assert "named Star Wars (1977), Fargo (1996), Contact (1997)" in text
    assert re.search(r"^Step=0 This person is a 45-year-old woman, working as an engineer and living in Kings county, "
                     r"NY\. The user has some numerical values .*: \[[-0-9., ]+\]\. Action=Fargo \(1996\) "
                     r"Reward=-?\d+\.\d\d$", text, re.M)
    assert "Step=1 This person is a 28-year-old man, working as an administrator and living in Santa Clara county, " \
           "CA. The user has some numerical values that represent their true implicit preference or taste for all " \
           "movies: [-0.04, 0.02, -0.02, 0.00, 0.02]. Action=Return of the Jedi (1983)" in text
    assert re.search(r"Current user: This person is a 45-year-old woman.*\]\.\nWhat do you predict next\?", text)


def test_history_window_shows_only_the_last_steps():
    r = BanditRenderer(3, 50, shipped_tokenizer(), PromptOptions(history_window=2))
    text = r.render_text(*_bandit_state([0, 1, 2, 0], [1, 2, 3, 4]))
    assert re.findall(r"^Step=(\d+)", text, re.M) == ["2", "3"]


def test_render_runs_under_scan_and_vmap():
    r = BanditRenderer(3, 8, shipped_tokenizer(), PromptOptions(max_len=512))
    state, params = _bandit_state([0, 1, 2, 0, 1, 2, 0, 1], [0.1] * 8, horizon=8)

    def body(carry, t):
        s = state.replace(t=t)
        tokens, length = r.render(s, params)
        return carry + length, length

    total, lengths = jax.jit(lambda: jax.lax.scan(body, 0, jnp.arange(9)))()
    expected = [len(r.tokenizer.encode(r.render_text(state.replace(t=np.int32(t)), params))) for t in range(9)]
    assert np.asarray(lengths).tolist() == expected and int(total) == sum(expected)


def test_bad_inputs_are_one_clear_error_at_setup():
    tok = shipped_tokenizer()
    with pytest.raises(TextError, match=r"template bandit: a prompt can reach \d+ tokens .* over max_len=300"):
        BanditRenderer(10, 50, tok, PromptOptions(max_len=300))
    with pytest.raises(TextError, match="history_window 0"):
        BanditRenderer(10, 50, tok, PromptOptions(history_window=0))
    with pytest.raises(TextError, match="at most 20 arms"):
        BanditRenderer(21, 50, tok)
    with pytest.raises(TextError, match="'words'"):
        BanditRenderer(3, 50, tok, PromptOptions(labels="words"))
    long_title = "The " + "Very " * 400 + "Long Movie (1999)"
    with pytest.raises(TextError, match=r"template contextual: .*widest fragment 'action': \d+ tokens"):
        ContextualRenderer((long_title, "Heat (1995)"), ("artist",), ("Cook county, IL",), 2, 50, tok,
                           PromptOptions(history_window=2))
