"""Expert rationales: jitted tokens equal the encoded reference text; the text is consistent and parses."""
import math
import re

import jax
import numpy as np
import pytest
from test_text_tokenizer import gemma_like

from jaxagent.text.bandit_prompt import BUTTON_COLOURS
from jaxagent.text.parse import parse_text
from jaxagent.text.rationale import RationaleRenderer, ucb_values
from jaxagent.text.states import random_values
from jaxagent.text.tokenizer import TextError, shipped_tokenizer

TOKENIZERS = {"shipped": shipped_tokenizer, "gemma_like": gemma_like}


def random_inputs(rng, n, k):
    counts = np.where(rng.random((n, k)) < 0.3, 0, rng.integers(1, 51, size=(n, k))).astype(np.int32)
    sums = (random_values(rng, (n, k)) * np.maximum(counts, 1)).astype(np.float32)
    means, ucb = map(np.asarray, jax.vmap(ucb_values)(counts, sums))
    chosen = rng.integers(0, k, size=n).astype(np.int32)
    return counts, means, ucb, chosen


@pytest.mark.parametrize("rule", ["ucb", "greedy"])
@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
def test_rationale_tokens_equal_encoded_text_on_1024_draws(tokenizer_name, rule):
    tok = TOKENIZERS[tokenizer_name]()
    renderer = RationaleRenderer(tok, BUTTON_COLOURS[:10], 50, rule)
    inputs = random_inputs(np.random.default_rng(11), 1024, 10)
    tokens, lengths = map(np.asarray, jax.jit(jax.vmap(renderer.tokens))(*inputs))
    for b in range(1024):
        text = renderer.text(*(x[b] for x in inputs))
        assert tokens[b, : lengths[b]].tolist() == tok.encode(text)


def test_rationale_text_is_consistent_and_parses_to_the_chosen_arm():
    labels = BUTTON_COLOURS[:5]
    renderer = RationaleRenderer(shipped_tokenizer(), labels, 50, "ucb")
    counts, means, ucb, chosen = random_inputs(np.random.default_rng(5), 200, 5)
    for b in range(200):
        text = renderer.text(counts[b], means[b], ucb[b], chosen[b])
        for m, m2, n, u in re.findall(r"average reward=(-?[\d.]+), UCB = (-?[\d.]+) \+ sqrt\(1/(\d+)\) = (-?[\d.]+)",
                                      text):
            assert m == m2
            if abs(float(m)) < 99:
                assert abs(float(m) + math.sqrt(1 / int(n)) - float(u)) <= 0.011
        untried = [labels[a] for a in range(5) if counts[b, a] == 0]
        assert re.findall(r"^(\w+): count=0, not tried yet$", text, re.M) == untried
        if counts[b, chosen[b]] == 0:
            assert f"We have not yet selected all actions. Action {labels[chosen[b]]} has not been tried yet" in text
        else:
            assert f"highest UCB value. Action {labels[chosen[b]]} has the highest UCB value." in text
        assert text.endswith(f"\nACTION={labels[chosen[b]]}<end_of_turn>")
        assert parse_text(text, labels) == chosen[b]


def test_greedy_rationale_omits_ucb_and_bad_rule_is_refused():
    renderer = RationaleRenderer(shipped_tokenizer(), ("0", "1"), 50, "greedy")
    text = renderer.text(np.asarray([2, 3]), np.asarray([0.5, 0.25], np.float32), np.zeros(2, np.float32), 0)
    assert text == ("Counts and average rewards so far:\n0: count=2, average reward=0.50\n"
                    "1: count=3, average reward=0.25\nWe select the action with the highest average reward. "
                    "Action 0 has the highest average reward.\nACTION=0<end_of_turn>")
    with pytest.raises(TextError, match="rationale rule 'thompson'"):
        RationaleRenderer(shipped_tokenizer(), ("0", "1"), 50, "thompson")
