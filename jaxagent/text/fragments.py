"""Pre-tokenized text fragments and their concatenation inside jit.

A :class:`Table` holds the tokens of a list of strings (e.g. ``" Reward=-0.35\\n"`` for every reward in
hundredths), padded to one width, with their lengths; looking an entry up is a gather. :func:`join`
concatenates looked-up pieces into one fixed-width token array with a length (whole-piece writes).

Merge-safety rule (why the pieces concatenate to exactly the tokens of the joined text): a fragment
boundary lies only *right before a space that follows a non-space character*, or *right after a newline
that is not followed by another newline*. SentencePiece-style tokenizers (Gemma) never hold a piece that
ends inside a word and continues with a space, and keep newlines as their own pieces; the shipped BPE
pre-splits text at exactly these points. So each piece is tokenized alone, with whatever fixed text
surrounds its dynamic value up to the neighbouring boundaries (``" Reward="`` and the closing ``"\\n"`` live
inside the reward table's entries). Tokenizers with other merges must pass the renderer's self-check.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent.text.tokenizer import TextError, TextTokenizer

Piece = tuple[jnp.ndarray, jnp.ndarray]  # (tokens[width] int32, length int32)


def check_boundaries(texts: Sequence[str], name: str) -> None:
    """Refuse fragments whose edges break the merge-safety rule (a template bug, caught at set-up)."""
    for text in texts:
        if text.startswith("\n") or text.endswith(" "):
            raise TextError(f"fragment {name} entry {text!r} starts with a newline or ends with a space")


class Table:
    """Tokens of ``texts`` (row i = ``tokenizer.encode(texts[i])``), padded to the longest."""

    def __init__(self, tokenizer: TextTokenizer, texts: Sequence[str], name: str):
        if not texts:
            raise TextError(f"fragment table {name} is empty")
        check_boundaries(texts, name)
        ids = _encode(tokenizer, tuple(texts))
        self.name = name
        self.width = max(1, max(len(row) for row in ids))
        tokens = np.full((len(ids), self.width), tokenizer.pad_id, np.int32)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = row
        self.tokens = jnp.asarray(tokens)
        self.lengths = jnp.asarray([len(row) for row in ids], jnp.int32)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __call__(self, index) -> Piece:
        index = jnp.clip(jnp.asarray(index, jnp.int32), 0, len(self) - 1)
        return self.tokens[index], self.lengths[index]


@functools.lru_cache(maxsize=64)
def _encode(tokenizer: TextTokenizer, texts: tuple[str, ...]) -> list[list[int]]:
    """Renderers of one tokenizer share tables (e.g. every reward string), so encode each list once."""
    return tokenizer.encode_batch(list(texts))


def constant(tokenizer: TextTokenizer, text: str, name: str) -> Table:
    """A one-entry table for fixed text."""
    return Table(tokenizer, [text], name)


def write_in_order(out: jnp.ndarray, pieces: Sequence[Piece], start) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Write each piece whole (padding included) at the running offset; returns (buffer, end offset).

    A piece's padding lies past its end, where the next piece overwrites it, so only ``out[:end]`` is
    meaningful; ``out`` needs room for the last piece's padding (the caller sizes it).
    """
    end = jnp.asarray(start, jnp.int32)
    for tokens, length in pieces:
        out = jax.lax.dynamic_update_slice(out, tokens, (end,))
        end = end + length
    return out, end


def join(pieces: Sequence[Piece], pad_id: int) -> Piece:
    """Concatenate pieces (each padded, with a length) into one array as wide as all pieces together."""
    width = sum(int(tokens.shape[-1]) for tokens, _ in pieces)
    room = max(int(tokens.shape[-1]) for tokens, _ in pieces)
    out, end = write_in_order(jnp.zeros((width + room,), jnp.int32), pieces, 0)
    return jnp.where(jnp.arange(width) < end, out[:width], pad_id), end
