"""Tokenizers: load a Hugging Face tokenizer from a local directory, or the project's own shipped BPE.

Everything downstream talks to a :class:`TextTokenizer`, a thin wrapper around a ``tokenizers.Tokenizer``
backend that never adds special tokens on its own: the chat template writes ``<bos>`` and the turn markers
as text, exactly as Gemma 2's instruction-tuned template does.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import tokenizers

from envs_jax.yaml_config import ConfigError

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
REQUIRED_TOKENS = (BOS, EOS, START_OF_TURN, END_OF_TURN)

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TextError(ConfigError):
    """A tokenizer, template or prompt that cannot be used; the message names it."""


def user_turn_open() -> str:
    """Text that opens a Gemma 2 conversation with a user turn."""
    return f"{BOS}{START_OF_TURN}user\n"


def model_turn_open() -> str:
    """Text that closes the user turn and opens the model's turn (generation starts right after it)."""
    return f"{END_OF_TURN}\n{START_OF_TURN}model\n"


def chat_prompt(user_message: str) -> str:
    """A single-turn Gemma 2 IT prompt around ``user_message``."""
    return user_turn_open() + user_message + model_turn_open()


# chat_prompt as a Hugging Face chat template: user turns as they are (no trimming), "assistant" becomes "model".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")


@dataclasses.dataclass(frozen=True, eq=False)
class TextTokenizer:
    backend: tokenizers.Tokenizer
    name: str

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Decoded text with special tokens written out and no clean-up of spaces."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_bytes(self, ids) -> str:
        """The parser's text: the tokens' bytes joined and UTF-8 decoded, invalid sequences replaced.

        Equal to :meth:`decode` except where a run of SentencePiece byte-fallback tokens is not valid UTF-8:
        ``decode`` then replaces the whole run, ASCII bytes included; this keeps the ASCII bytes, as a byte
        stream decoder would.
        """
        return b"".join(self.token_bytes[int(i)] for i in ids).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the vocabulary (every token and its id): tokenizers that agree on it encode alike."""
        vocab = sorted(self.backend.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
        return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()

    def token_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise TextError(f"tokenizer {self.name} has no token {token!r}")
        return token_id

    @property
    def bos_id(self) -> int:
        return self.token_id(BOS)

    @property
    def eos_id(self) -> int:
        return self.token_id(EOS)

    @property
    def pad_id(self) -> int:
        pad = self.backend.token_to_id(PAD)
        return 0 if pad is None else pad

    @property
    def end_of_turn_id(self) -> int:
        return self.token_id(END_OF_TURN)

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Tokens that end a model turn."""
        return (self.end_of_turn_id, self.eos_id)

    @functools.cached_property
    def token_bytes(self) -> tuple[bytes, ...]:
        """The UTF-8 bytes each id contributes to decoded text (joined and decoded, they give the text).

        Exact for byte-level BPE and for SentencePiece-style pieces (``▁`` for space, ``<0xNN>`` byte
        fallback); for other tokenizers a best effort that the parser's self-check verifies before use.
        """
        decoder = self.backend.decoder
        byte_level = decoder is not None and "ByteLevel" in decoder.__class__.__name__
        byte_of_char = {c: b for b, c in _bytes_to_unicode().items()}
        added = {i: t.content for i, t in self.backend.get_added_tokens_decoder().items()}
        out = []
        for i in range(self.vocab_size):
            piece = self.backend.id_to_token(i)
            if i in added:
                out.append(added[i].replace("\u2581", " ").encode())
            elif piece is None:
                out.append(b"")
            elif byte_level and all(c in byte_of_char for c in piece):
                out.append(bytes(byte_of_char[c] for c in piece))
            elif (m := _BYTE_FALLBACK.fullmatch(piece)) is not None:
                out.append(bytes([int(m.group(1), 16)]))
            elif not byte_level:
                out.append(piece.replace("\u2581", " ").encode())
            else:
                out.append(self.decode([i]).encode())
        return tuple(out)


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _checked(backend: tokenizers.Tokenizer, name: str) -> TextTokenizer:
    tok = TextTokenizer(backend, name)
    missing = [t for t in REQUIRED_TOKENS if backend.token_to_id(t) is None]
    if missing:
        raise TextError(f"tokenizer {name} lacks the Gemma 2 chat tokens {missing}")
    return tok


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a tokenizer from ``tokenizer.json`` (a file or a directory holding one) or from a SentencePiece
    Gemma directory (``tokenizer.model``). A missing or unreadable source is one :class:`TextError`."""
    path = Path(path)
    if not path.exists():
        raise TextError(f"tokenizer path {path} does not exist")
    json_file = path if path.is_file() else path / "tokenizer.json"
    try:
        if json_file.is_file():
            return _checked(tokenizers.Tokenizer.from_file(str(json_file)), str(path))
        if (path / "tokenizer.model").is_file():
            from transformers import GemmaTokenizer

            hf = GemmaTokenizer.from_pretrained(str(path))
            return _checked(hf.backend_tokenizer, str(path))
    except TextError:
        raise
    except Exception as e:  # any parse/IO failure of the tokenizer files
        raise TextError(f"cannot read tokenizer in {path}: {e.__class__.__name__}: {e}") from None
    raise TextError(f"tokenizer directory {path} holds neither tokenizer.json nor tokenizer.model")


def save_hf_tokenizer(tokenizer: TextTokenizer, directory: str | Path) -> None:
    """Write ``tokenizer`` as a Hugging Face tokenizer directory (``tokenizer.json``, its config with the chat
    template, the special tokens map) and a generation config that stops at ``<eos>`` and ``<end_of_turn>``:
    with a model's ``config.json`` and weights beside them, ``AutoTokenizer`` and ``generate`` serve it as is."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                 unk_token=UNK if tokenizer.backend.token_to_id(UNK) is not None else None,
                                 additional_special_tokens=[START_OF_TURN, END_OF_TURN], chat_template=CHAT_TEMPLATE)
    hf.save_pretrained(str(directory))
    GenerationConfig(bos_token_id=tokenizer.bos_id, eos_token_id=list(tokenizer.stop_ids),
                     pad_token_id=tokenizer.pad_id).save_pretrained(str(directory))


def shipped_tokenizer_path() -> Path:
    return Path(str(resources.files("jaxagent") / "assets" / "tokenizer.json"))


@functools.lru_cache(maxsize=1)
def shipped_tokenizer() -> TextTokenizer:
    """The project's small BPE (see ``python -m jaxagent.text.build_tokenizer``)."""
    path = shipped_tokenizer_path()
    if not path.is_file():
        raise TextError(f"shipped tokenizer {path} is missing; run `python -m jaxagent.text.build_tokenizer`")
    return load_tokenizer(path)
