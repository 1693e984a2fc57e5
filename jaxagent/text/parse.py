"""The ``ACTION=X`` parser: a host regex (the reference) and a jittable token-level automaton equal to it.

The reference, :func:`action_regex`: ``ACTION`` (any case), optional spaces, ``=``, optional spaces, any run
of ``*``, quotes or backticks, then one of the env's labels (any case) not followed by an ASCII letter or
digit; the **last** match in the decoded text wins; no match means invalid. Case-insensitivity and the
letter/digit test are ASCII-only (``re.ASCII``), so "ACTION=redé" names ``red``.

The jitted parser runs the same pattern as a deterministic automaton over the UTF-8 bytes of the tokens,
precomposed per token on the host (one table lookup per generated token, with token ids grouped into
classes of equal behaviour so the tables stay small even for a 256k vocabulary). Non-ASCII bytes only ever
act as "some other character", exactly as non-ASCII characters do in the regex. Labels must be printable
ASCII, start with a letter or digit, differ ignoring case, and not contain "action" (so no match can start
inside another and "last match" is unambiguous).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent.text.render import UCB_CLOSE, UCB_OPEN
from jaxagent.text.tokenizer import TextError, TextTokenizer

KEYWORD = b"action"
QUOTES = b"*\"'`"
NO_MATCH = -1


def action_regex(labels: Sequence[str]) -> re.Pattern:
    """The reference pattern (group 1 is the label)."""
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    return re.compile(r"ACTION *= *[*\"'`]*(" + alternatives + r")(?![A-Za-z0-9])", re.IGNORECASE | re.ASCII)


def parse_text(text: str, labels: Sequence[str]) -> int | None:
    """Host reference: index of the label of the last match in ``text``, or None if there is none."""
    matches = list(action_regex(labels).finditer(text))
    if not matches:
        return None
    lowered = [label.lower() for label in labels]
    return lowered.index(matches[-1].group(1).lower())


def check_labels(labels: Sequence[str]) -> None:
    lowered = [label.lower() for label in labels]
    for label in labels:
        if not label or not label.isascii() or not label.isprintable() or not label[0].isalnum():
            raise TextError(f"label {label!r} cannot be parsed: labels must be printable ASCII starting with a "
                            "letter or digit")
        if "action" in label.lower():
            raise TextError(f"label {label!r} cannot be parsed: it contains the keyword 'action'")
    if len(set(lowered)) != len(lowered):
        raise TextError(f"labels {list(labels)} are not distinct ignoring case")


def _is_alnum(byte: int) -> bool:
    return chr(byte).isascii() and chr(byte).isalnum()


class _ByteAutomaton:
    """Subset construction of the pattern over bytes. NFA nodes: 0 start (always active), 1..6 'action'
    prefixes, 7 after '=', 8 in the quote run, then one node per label-trie prefix."""

    def __init__(self, labels: Sequence[str]):
        trie: dict[tuple[int, int], int] = {}
        self.terminal: dict[int, int] = {}
        next_node = 9
        for index, label in enumerate(labels):
            node = None
            for byte in label.lower().encode():
                key = (node if node is not None else -1, byte)
                if key not in trie:
                    trie[key] = next_node
                    next_node += 1
                node = trie[key]
            self.terminal[node] = index
        self.trie = trie
        self.states: list[frozenset] = [frozenset()]
        self.index = {frozenset(): 0}
        self.next_state, self.emission = [], []
        i = 0
        while i < len(self.states):  # states are discovered breadth-first
            row, emit = [], []
            for byte in range(256):
                target, label = self._step(self.states[i], byte)
                if target not in self.index:
                    self.index[target] = len(self.states)
                    self.states.append(target)
                row.append(self.index[target])
                emit.append(label)
            self.next_state.append(row)
            self.emission.append(emit)
            i += 1
        self.next_state = np.asarray(self.next_state, np.int32)  # [S, 256]
        self.emission = np.asarray(self.emission, np.int32)  # [S, 256]
        self.end_emission = np.asarray([self._completed(s) for s in self.states], np.int32)  # [S]

    def _completed(self, nodes: frozenset) -> int:
        done = [self.terminal[n] for n in nodes if n in self.terminal]
        return done[0] if done else NO_MATCH

    def _step(self, nodes: frozenset, byte: int) -> tuple[frozenset, int]:
        lower = byte | 0x20 if 65 <= byte <= 90 else byte
        label = self._completed(nodes) if not _is_alnum(byte) else NO_MATCH
        out = set()
        for node in nodes | {0}:
            if node < 6:
                if lower == KEYWORD[node]:
                    out.add(node + 1)
            elif node == 6:
                if byte == ord(" "):
                    out.add(6)
                elif byte == ord("="):
                    out.add(7)
            if node in (7, 8) and byte in QUOTES:
                out.add(8)
            if node == 7 and byte == ord(" "):
                out.add(7)
            trie_from = -1 if node in (7, 8) else (node if node >= 9 else None)
            if trie_from is not None and (trie_from, lower) in self.trie:
                out.add(self.trie[(trie_from, lower)])
        return frozenset(out), label


class ActionParser:
    """Jittable ``parse(generated[G], length) -> (label index i32, valid bool)`` for one tokenizer and label set."""

    def __init__(self, tokenizer: TextTokenizer, labels: Sequence[str]):
        check_labels(labels)
        self.labels, self.tokenizer = tuple(labels), tokenizer
        auto = _ByteAutomaton(labels)
        token_bytes = tokenizer.token_bytes
        num_states, vocab = len(auto.states), len(token_bytes)
        lengths = np.asarray([len(b) for b in token_bytes])
        width = max(1, int(lengths.max()))
        byte_matrix = np.zeros((vocab, width), np.int32)
        for v, b in enumerate(token_bytes):
            byte_matrix[v, : len(b)] = np.frombuffer(b, np.uint8)
        state = np.repeat(np.arange(num_states, dtype=np.int32)[:, None], vocab, axis=1)  # [S, V]
        emitted = np.full((num_states, vocab), NO_MATCH, np.int32)
        for j in range(width):
            live = np.nonzero(lengths > j)[0]
            s, c = state[:, live], byte_matrix[live, j][None, :]
            emit = auto.emission[s, c]
            emitted[:, live] = np.where(emit != NO_MATCH, emit, emitted[:, live])
            state[:, live] = auto.next_state[s, c]
        signature = np.concatenate([state, emitted], axis=0).T  # one row per token id
        classes, token_class = np.unique(signature, axis=0, return_inverse=True)
        self.token_class = jnp.asarray(token_class.reshape(-1), jnp.int32)
        self.next_state = jnp.asarray(classes[:, :num_states].T)  # [S, C]
        self.emission = jnp.asarray(classes[:, num_states:].T)  # [S, C]
        self.end_emission = jnp.asarray(auto.end_emission)
        self.num_states, self.num_classes = num_states, len(classes)

    def parse(self, generated, length, legal_mask=None):
        """The last ``ACTION=<label>`` in ``generated[:length]``; ``legal_mask`` (e.g. empty squares) also
        makes a parsed but illegal action invalid. Returns (label index, or -1 with valid False)."""
        classes = self.token_class[jnp.clip(jnp.asarray(generated, jnp.int32), 0, self.token_class.shape[0] - 1)]
        positions = jnp.arange(classes.shape[0], dtype=jnp.int32)

        def step(carry, inputs):
            state, last = carry
            token_class, position = inputs
            live = position < length
            emit = self.emission[state, token_class]
            last = jnp.where(live & (emit != NO_MATCH), emit, last)
            return (jnp.where(live, self.next_state[state, token_class], state), last), None

        (state, last), _ = jax.lax.scan(step, (jnp.int32(0), jnp.int32(NO_MATCH)), (classes, positions))
        final = self.end_emission[state]
        action = jnp.where(final != NO_MATCH, final, last)
        valid = action != NO_MATCH
        if legal_mask is not None:
            valid &= jnp.asarray(legal_mask)[jnp.maximum(action, 0)]
        return jnp.where(valid, action, NO_MATCH), valid

    def parse_reference(self, ids, legal_mask=None) -> int | None:
        """Host path: decode (:meth:`TextTokenizer.decode_bytes`), regex, legality."""
        action = parse_text(self.tokenizer.decode_bytes(ids), self.labels)
        if action is not None and legal_mask is not None and not legal_mask[action]:
            return None
        return action

    def self_check(self, num_sequences: int = 256, seed: int = 0, length: int = 48) -> None:
        """Refuse (TextError) a tokenizer for which the jitted parser and the regex disagree on random tokens."""
        rng = np.random.default_rng(seed)
        pieces = [self.tokenizer.encode(f"ACTION = **{label}**") for label in self.labels]
        ids = rng.integers(0, self.tokenizer.vocab_size, size=(num_sequences, length))
        for b in range(num_sequences):
            piece = pieces[b % len(pieces)]
            at = int(rng.integers(0, length - len(piece))) if len(piece) < length else 0
            ids[b, at: at + len(piece)] = piece[:length]
        got, valid = jax.jit(jax.vmap(self.parse))(jnp.asarray(ids), jnp.full(num_sequences, length))
        for b in range(num_sequences):
            expected = self.parse_reference(ids[b])
            mine = int(got[b]) if bool(valid[b]) else None
            if mine != expected:
                raise TextError(f"tokenizer {self.tokenizer.name}: the jitted ACTION parser disagrees with the "
                                f"regex on {self.tokenizer.decode(ids[b])!r}")


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_UNTRIED = re.compile(r"not (?:yet )?tried|untried|\binf", re.IGNORECASE)


def parse_ucb_values(text: str, labels: Sequence[str]) -> np.ndarray:
    """The UCB value a text states for each label, f32[K]: +inf where it says the arm is untried, NaN where it
    states nothing. Read from the last ``<ucb_values>…</ucb_values>`` block, or, without one, from the whole text;
    a label's statement is what follows its last ``label:`` up to the line's end or the next ``label:``, and its
    value is the last number there (so ``red: count=2, average reward=0.41, UCB = 0.41 + sqrt(1/2) = 1.12`` and
    ``red: 1.12`` both state 1.12)."""
    lowered = text.lower()
    start, end = lowered.rfind(UCB_OPEN), lowered.rfind(UCB_CLOSE)
    if 0 <= start < end:
        text = text[start + len(UCB_OPEN): end]
    names = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    heads = list(re.finditer(r"(?<![A-Za-z0-9])(" + names + r") *:", text, re.IGNORECASE | re.ASCII))
    index = {label.lower(): i for i, label in enumerate(labels)}
    values = np.full(len(labels), np.nan, np.float32)
    for head, following in zip(heads, heads[1:] + [None]):
        stop = following.start() if following is not None else len(text)
        statement = text[head.end(): stop].split("\n", 1)[0]
        numbers = _NUMBER.findall(statement)
        value = np.inf if _UNTRIED.search(statement) else float(numbers[-1]) if numbers else np.nan
        values[index[head.group(1).lower()]] = value
    return values
