import jax
import numpy as np
import pytest

from jaxagent.experts import Expert
from jaxagent.text.bandit_prompt import arm_labels
from jaxagent.text.parse import ActionParser
from jaxagent.text.states import random_bandit
from jaxagent.text.tokenizer import shipped_tokenizer


def reference_choice(kind, counts, sums):
    """Plain-Python UCB (mean + sqrt(1/n), untried first) and greedy (best mean among tried); None = random."""
    untried = [a for a, n in enumerate(counts) if n == 0]
    if kind == "ucb":
        if untried:
            return untried[0]
        return int(np.argmax([np.float32(s) / np.float32(n) + np.sqrt(np.float32(1) / np.float32(n))
                              for s, n in zip(sums, counts)]))
    if kind == "random" or len(untried) == len(counts):
        return None
    return int(np.argmax([np.float32(s) / np.float32(n) if n else -np.inf for s, n in zip(sums, counts)]))


@pytest.mark.parametrize("kind,stats,reasoning", [("ucb", True, True), ("greedy", True, True), ("ucb", False, True),
                                                  ("greedy", False, True), ("random", True, True),
                                                  ("ucb", True, False)])
def test_expert_actions_follow_the_rule_and_their_text_parses_back(kind, stats, reasoning):
    tok = shipped_tokenizer()
    labels = arm_labels("button", 5)
    expert = Expert(kind, tok, labels, horizon=50, stats=stats, reasoning=reasoning)
    parser = ActionParser(tok, labels)
    states, params = random_bandit(np.random.default_rng(1), 300, 5, 50)
    keys = jax.random.split(jax.random.key(0), 300)
    actions, (tokens, lengths) = jax.jit(jax.vmap(expert.act))(keys, states, params)
    parsed, valid = jax.jit(jax.vmap(parser.parse))(tokens, lengths)
    assert bool(valid.all()) and (np.asarray(parsed) == np.asarray(actions)).all()
    assert tokens.shape[1] == expert.width
    random_picks = set()
    for b in range(300):
        counts, sums = np.asarray(states.counts[b]), np.asarray(states.reward_sums[b])
        expected = reference_choice(kind, counts, sums)
        if expected is None:
            random_picks.add(int(actions[b]))
        else:
            assert int(actions[b]) == expected
        text = expert.text(counts, sums, int(actions[b]))
        assert tokens[b, : lengths[b]].tolist() == tok.encode(text), text
        assert text.endswith(f"ACTION={labels[int(actions[b])]}<end_of_turn>")
        assert ("count=" in text) == (stats and reasoning and kind != "random")
        if not reasoning or kind == "random":
            assert text == f"ACTION={labels[int(actions[b])]}<end_of_turn>"
    if kind == "random":
        assert random_picks == set(range(5))


def test_unknown_expert_is_refused():
    with pytest.raises(ValueError, match="expert 'ucbb'"):
        Expert("ucbb", shipped_tokenizer(), ("a", "b"), horizon=5)
