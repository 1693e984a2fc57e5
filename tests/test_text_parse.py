"""The jitted ``ACTION=X`` parser agrees with the reference regex on decoded text, for both tokenizers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from test_text_tokenizer import gemma_like

from jaxagent.text.bandit_prompt import BUTTON_COLOURS
from jaxagent.text.parse import ActionParser, parse_text
from jaxagent.text.tokenizer import TextError, shipped_tokenizer

TOKENIZERS = {"shipped": shipped_tokenizer, "gemma_like": gemma_like}
G = 64
LABEL_SETS = {
    "button": BUTTON_COLOURS[:10],
    "numeric20": tuple(str(i) for i in range(20)),
    "prefixes": ("red", "reddish", "Red Wine", "blue", "b1", "green"),
}
_PARSERS = {}


def parser(tokenizer_name, label_set):
    key = (tokenizer_name, label_set)
    if key not in _PARSERS:
        _PARSERS[key] = ActionParser(TOKENIZERS[tokenizer_name](), LABEL_SETS[label_set])
    return _PARSERS[key]


@functools.lru_cache(maxsize=None)
def _batched(p):
    """One jitted, batched parse per parser: every example of a property test reuses its program."""
    return jax.jit(jax.vmap(p.parse))


def parse_batch(p, ids, lengths, legal=None):
    fn = _batched(p)
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(lengths, jnp.int32))
    action, valid = fn(*args) if legal is None else fn(*args, jnp.asarray(legal))
    return [int(a) if v else None for a, v in zip(np.asarray(action), np.asarray(valid))]


def pad(ids, width=G, fill=0):
    return list(ids)[:width] + [fill] * max(0, width - len(ids))


SNIPPETS = ["ACTION=", "action =", "Action= ", "**", "'", "`", '"', " ", "\n", ".", "!", "é", "ish", "1", "x",
            "<end_of_turn>", "ACTION", "=", "dish", "ACTION=red", "wine", " Wine"]


@st.composite
def generated_text(draw, labels):
    parts = draw(st.lists(st.sampled_from(SNIPPETS + list(labels) + [lab.upper() for lab in labels]), max_size=14))
    return "".join(parts)


@pytest.mark.parametrize("label_set", sorted(LABEL_SETS))
@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_parser_agrees_with_regex_on_random_tokens_and_texts(tokenizer_name, label_set, data):
    p = parser(tokenizer_name, label_set)
    tok = p.tokenizer
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rows, lengths = [], []
    for _ in range(64):  # random token ids, with label-bearing text spliced in
        ids = rng.integers(0, tok.vocab_size, size=G).tolist()
        inserted = tok.encode(data.draw(generated_text(LABEL_SETS[label_set])))[:G]
        at = int(rng.integers(0, G - len(inserted) + 1))
        ids[at: at + len(inserted)] = inserted
        rows.append(ids)
        lengths.append(int(rng.integers(0, G + 1)))
    for _ in range(64):  # plausible generations, tokenized
        ids = tok.encode(data.draw(generated_text(LABEL_SETS[label_set])))[:G]
        rows.append(pad(ids))
        lengths.append(len(ids))
    got = parse_batch(p, rows, lengths)
    for ids, length, mine in zip(rows, lengths, got):
        assert mine == parse_text(tok.decode_bytes(ids[:length]), p.labels), tok.decode(ids[:length])


ADVERSARIAL = [  # (generated text, expected label, typed by hand)
    ("I think ACTION=blue is good.\nACTION=green", "green"),
    ("ACTION=green\nOn second thought, ACTION=red!", "red"),
    ("ACTION=reddish", "reddish"),
    ("ACTION=redd", None),
    ("ACTION=red, then ACTION=reddish.", "reddish"),
    ("ACTION=reddish and ACTION=red", "red"),
    ("ACTION = **Red**.", "red"),
    ("action='blue';", "blue"),
    ("ACTION=`b1`", "b1"),
    ("ACTION=b12", None),
    ("ACTION=red wine!", "Red Wine"),
    ("ACTION=red winery", "red"),
    ("ACTION=redé", "red"),
    ("ACTION=bluе", None),  # Cyrillic 'е'
    ("ACTION=blue😀", "blue"),
    ("", None),
    ("ACTION=", None),
    ("ACTION:red", None),
    ("ACTION=* red", None),
    ("ACTION=red<end_of_turn>", "red"),
]


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
def test_adversarial_cases(tokenizer_name):
    p = parser(tokenizer_name, "prefixes")
    tok = p.tokenizer
    rows = [pad(tok.encode(text)) for text, _ in ADVERSARIAL]
    lengths = [len(tok.encode(text)) for text, _ in ADVERSARIAL]
    got = parse_batch(p, rows, lengths)
    labels = [lab.lower() for lab in p.labels]
    for (text, expected), mine in zip(ADVERSARIAL, got):
        want = None if expected is None else labels.index(expected.lower())
        assert mine == want == parse_text(text, p.labels), text


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
def test_budget_truncated_output_parses_only_the_prefix(tokenizer_name):
    p = parser(tokenizer_name, "button")
    tok = p.tokenizer
    ids = tok.encode("Let me think. ACTION=blue. Hmm, no: ACTION=green")
    tail = tok.encode(" ACTION=red")  # tokens past the length must be ignored
    rows = [pad(ids + tail) for _ in range(len(ids) + 1)]
    got = parse_batch(p, rows, list(range(len(ids) + 1)))
    for k, mine in enumerate(got):
        assert mine == parse_text(tok.decode(ids[:k]), p.labels), tok.decode(ids[:k])
    blue, green = BUTTON_COLOURS.index("blue"), BUTTON_COLOURS.index("green")
    assert got[0] is None and got[-1] == green and blue in got and BUTTON_COLOURS.index("red") not in got


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
def test_tictactoe_occupied_square_is_invalid(tokenizer_name):
    tok = TOKENIZERS[tokenizer_name]()
    p = ActionParser(tok, tuple(str(i) for i in range(9)))
    legal = np.asarray([True, False, True, True, True, True, True, True, False])
    texts = ["ACTION=0", "ACTION=1", "ACTION=8", "ACTION=4", "ACTION=45", "ACTION=9"]
    ids = [pad(tok.encode(t)) for t in texts]
    lengths = [len(tok.encode(t)) for t in texts]
    action, valid = jax.jit(jax.vmap(p.parse, in_axes=(0, 0, None)))(jnp.asarray(ids), jnp.asarray(lengths), legal)
    assert np.asarray(valid).tolist() == [True, False, False, True, False, False]
    assert np.asarray(action).tolist()[0] == 0 and np.asarray(action).tolist()[3] == 4
    assert [p.parse_reference(i[:n], legal) for i, n in zip(ids, lengths)] == [0, None, None, 4, None, None]


def test_parser_self_check_passes_for_both_tokenizers():
    for name in TOKENIZERS:
        parser(name, "button").self_check(num_sequences=64)


@pytest.mark.parametrize("labels, message", [
    (("red", "Red"), "not distinct"),
    (("café", "tea"), "printable ASCII"),
    (("red", "*star"), "starting with a letter or digit"),
    (("reaction", "blue"), "keyword 'action'"),
])
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(TextError, match=message):
        ActionParser(shipped_tokenizer(), labels)
