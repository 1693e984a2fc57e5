"""Set-up: building renderers/parsers from envs, refusing tokenizers that are not token-exact, relabelling."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_text_tokenizer import gemma_like
from tokenizers import Tokenizer, models, trainers

import envs_jax
from jaxagent.env_kinds import make_renderer
from jaxagent.text import (BanditRenderer, ContextualRenderer, PromptOptions, TextError, TextTokenizer,
                           TicTacToeRenderer, make_parser, random_relabelling, relabel_state, shipped_tokenizer,
                           unrelabel_action)
from jaxagent.text.build_tokenizer import SPECIAL_TOKENS, training_text
from jaxagent.text.parse import parse_text
from jaxagent.text.states import random_bandit

BANDIT_ENV = envs_jax.make_env("bandit-gaussian", num_arms=5, horizon=50)
TICTACTOE_ENV = envs_jax.make_env("tictactoe")


def merge_everything_tokenizer() -> TextTokenizer:
    """A BPE with no pre-splitting, trained on prompts: its merges span spaces and newlines."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    texts = training_text(seed=1)
    alphabet = sorted(set("".join(texts)))
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=900, special_tokens=SPECIAL_TOKENS,
                                                           initial_alphabet=alphabet, show_progress=False))
    return TextTokenizer(backend, "merge-everything BPE")


def test_make_renderer_picks_the_template_of_the_envs_kind():
    tok = shipped_tokenizer()
    assert isinstance(make_renderer(BANDIT_ENV, tok), BanditRenderer)
    assert isinstance(make_renderer(TICTACTOE_ENV, tok), TicTacToeRenderer)
    movies = types.SimpleNamespace(name="movielens", kind="contextual_bandit", horizon=50, movie_titles=("Fargo (1996)", "Heat (1995)"),
                                   occupations=("artist",), locations=("Cook county, IL",))
    params = types.SimpleNamespace(user_prefs=np.zeros((3, 4), np.float32))
    renderer = make_renderer(movies, tok, PromptOptions(history_window=5), params=params)
    assert isinstance(renderer, ContextualRenderer) and renderer.pref_dim == 4
    with pytest.raises(TextError, match="needs the env params"):
        make_renderer(movies, tok)
    with pytest.raises(TextError, match="'maze' has kind None, which has no prompt template"):
        make_renderer(types.SimpleNamespace(name="maze", horizon=9), tok)


def test_gemma_like_tokenizer_passes_the_self_checks():
    renderer = make_renderer(BANDIT_ENV, gemma_like(), PromptOptions(summary=True))
    make_parser(renderer)


def test_tokenizer_with_merges_across_fragment_boundaries_is_refused():
    with pytest.raises(TextError, match="merge-everything BPE is not token-exact for template bandit"):
        make_renderer(BANDIT_ENV, merge_everything_tokenizer())


def test_contextual_titles_must_be_one_line():
    with pytest.raises(TextError, match="movie title ' Heat'"):
        ContextualRenderer((" Heat",), ("artist",), ("Cook county, IL",), 2, 50, shipped_tokenizer())


def test_relabelling_rewrites_history_and_maps_the_answer_back():
    tok = shipped_tokenizer()
    renderer = BanditRenderer(5, 50, tok, PromptOptions(summary=True))
    parser = make_parser(renderer)
    states, params = random_bandit(np.random.default_rng(0), 1, 5, 50)
    state = jax.tree.map(lambda x: jnp.asarray(x[0]), states)
    perm = random_relabelling(jax.random.key(1), 5)
    shown = relabel_state(state, perm)
    t = int(state.t)
    text = renderer.render_text(jax.tree.map(np.asarray, shown), None)
    for i in range(t):  # each step names the arm's new label
        label = renderer.labels[int(perm[int(state.actions[i])])]
        assert f"Step={i} Action={label} " in text
    for arm in range(5):
        label = renderer.labels[int(perm[arm])]
        assert f"{label}: count={int(state.counts[arm])}," in text
    arm = 3
    reply = tok.encode(f"ACTION={renderer.labels[int(perm[arm])]}")
    label_index, valid = parser.parse(jnp.asarray(reply), len(reply))
    assert bool(valid) and int(unrelabel_action(perm, label_index)) == arm
    assert int(unrelabel_action(perm, jnp.int32(-1))) == -1
    assert parse_text(tok.decode(reply), renderer.labels) == int(perm[arm])


@pytest.mark.parametrize("name, options", [
    ("bandit-gaussian", PromptOptions(summary=True)),
    ("contextual-movielens", PromptOptions(history_window=6)),
    ("tictactoe", PromptOptions()),
])
def test_real_env_episodes_render_token_exact(name, options):
    env, params = envs_jax.make(name)
    renderer = make_renderer(env, shipped_tokenizer(), options, params=params)
    parser = make_parser(renderer)
    render, parse, step = jax.jit(renderer.render), jax.jit(parser.parse), jax.jit(env.step)
    keys = jax.random.split(jax.random.key(0), env.horizon + 1)
    _, state = env.reset(keys[0], params)
    for t in range(env.horizon):
        tokens, length = render(state, params)
        text = renderer.render_text(jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, params))
        assert np.asarray(tokens)[: int(length)].tolist() == renderer.tokenizer.encode(text)
        reply = renderer.tokenizer.encode(f"ACTION={renderer.labels[t % len(renderer.labels)]}")
        action, valid = parse(jnp.asarray(reply), len(reply))
        assert bool(valid) and int(action) == t % len(renderer.labels)
        _, state, *_ = step(keys[t + 1], state, action, params)
