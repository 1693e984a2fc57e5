"""Build the shipped tokenizer, ``jaxagent/assets/tokenizer.json``: ``python -m jaxagent.text.build_tokenizer``.

A byte-level BPE with 2048 ids, trained with ``tokenizers`` on prompts the project's renderers produce (fixed
seeds, so the file is reproducible). Ids 0-6 are Gemma's special tokens (``<pad> <eos> <bos> <unk> <mask>
<start_of_turn> <end_of_turn>``); ids the training text does not fill are ``<unusedN>`` tokens, as in Gemma,
so every id decodes to text. Text is pre-split before every space, around every newline and between digits:
these are the fragment boundaries of :mod:`jaxagent.text.fragments`, so jitted rendering is token-exact.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxagent.text.tokenizer import BOS, END_OF_TURN, EOS, PAD, START_OF_TURN, UNK, TextTokenizer, shipped_tokenizer_path

VOCAB_SIZE = 2048
# Contextual-bandit vocabulary for the training text (MovieLens-style users and popular titles).
OCCUPATIONS = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
               "retired", "salesman", "scientist", "student", "technician", "writer")
LOCATIONS = ("Santa Clara county, CA", "Los Angeles county, CA", "Kings county, NY", "Cook county, IL",
             "Harris county, TX", "King county, WA", "Middlesex county, MA", "Hennepin county, MN")
TITLES = ("Star Wars (1977)", "Contact (1997)", "Fargo (1996)", "Return of the Jedi (1983)", "Liar Liar (1997)",
          "English Patient, The (1996)", "Scream (1996)", "Toy Story (1995)", "Air Force One (1997)",
          "Independence Day (ID4) (1996)")
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK, "<mask>", START_OF_TURN, END_OF_TURN]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.Split(Regex(" "), behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _empty_tokenizer(vocab: dict[str, int] | None = None, merges=None) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None) if vocab else models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _byte_tokenizer() -> TextTokenizer:
    """Bytes only, no merges: enough to construct renderers for writing the training text."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch, len(vocab))
    return TextTokenizer(_empty_tokenizer(vocab, []), "bytes")


@functools.lru_cache(maxsize=2)
def training_text(seed: int = 0) -> tuple[str, ...]:
    """Prompts of every template and option for random states, and expert rationales (deterministic in
    ``seed``)."""
    from jaxagent.text.bandit_prompt import BanditRenderer, arm_labels
    from jaxagent.text.contextual_prompt import ContextualRenderer
    from jaxagent.text.rationale import RationaleRenderer, ucb_values
    from jaxagent.text.render import PromptOptions
    from jaxagent.text.states import random_bandit
    from jaxagent.text.tictactoe_prompt import TicTacToeRenderer

    tok = _byte_tokenizer()
    rng = np.random.default_rng(seed)
    renderers = []
    for labels in ("button", "numeric"):
        for cot in (True, False):
            for summary in (False, True):
                options = PromptOptions(labels=labels, cot=cot, summary=summary, max_len=1 << 20)
                renderers += [BanditRenderer(k, 50, tok, options) for k in (5, 10, 20)]
    renderers += [TicTacToeRenderer(tok, PromptOptions(cot=cot, legal_actions=legal, max_len=1 << 20))
                  for cot in (True, False) for legal in (True, False)]
    renderers += [ContextualRenderer(TITLES[:k], OCCUPATIONS, LOCATIONS, k, 50, tok,
                                     PromptOptions(cot=cot, history_window=10, max_len=1 << 20))
                  for k in (5, 10) for cot in (True, False)]
    texts = []
    for labels in (arm_labels("button", 20), arm_labels("numeric", 20)):
        for rule in ("ucb", "greedy"):
            for k in (5, 10, 20):
                rationale = RationaleRenderer(tok, labels[:k], 50, rule)
                for _ in range(8):
                    states, _ = random_bandit(rng, 1, k, 50)
                    means, ucb = map(np.asarray, ucb_values(states.counts[0], states.reward_sums[0]))
                    chosen = int(np.argmax(np.where(states.counts[0] > 0, ucb, np.inf)))
                    texts.append(rationale.text(states.counts[0], means, ucb, chosen))
    for renderer in renderers:
        states, params = renderer.sample(rng, 8)
        for b in range(8):
            state = _row(states, b)
            texts.append(renderer.render_text(state, None if params is None else _row(params, b)))
    return tuple(texts)


def _row(tree, b):
    import jax

    return jax.tree.map(lambda x: np.asarray(x)[b], tree)


def build(path: Path = shipped_tokenizer_path()) -> str:
    """Train and write the tokenizer; returns the SHA-256 of the file."""
    tok = _empty_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer=trainer)
    unused = VOCAB_SIZE - tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([f"<unused{i}>" for i in range(unused)])
    path.parent.mkdir(parents=True, exist_ok=True)
    text = tok.to_str(pretty=True)
    path.write_text(text + "\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=shipped_tokenizer_path())
    args = parser.parse_args()
    digest = build(args.out)
    print(f"wrote {args.out} ({VOCAB_SIZE} ids), sha256 {digest}")


if __name__ == "__main__":
    main()
