"""Tokenizers: the shipped BPE, loading from directories, a Gemma-style SentencePiece tokenizer, errors.

Also provides the Gemma-style SentencePiece tokenizer the other text tests use (``gemma_like_tokenizer``).
"""
import functools
import hashlib
import inspect
import json
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings, strategies as st

from jaxagent.text.build_tokenizer import build, training_text
from jaxagent.text.tokenizer import (TextError, chat_prompt, load_tokenizer, shipped_tokenizer,
                                     shipped_tokenizer_path)


def build_gemma_like(directory) -> None:
    """A SentencePiece BPE trained like Gemma's: byte fallback, split digits, no dummy prefix, identity
    normalisation, newline runs and chat markers as user-defined symbols; saved as a Gemma directory."""
    filler = "The quick brown fox jumps over the lazy dog, again and again; numbers like 3.14 and -2.5 too."
    text = list(training_text(seed=1)) + [filler] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=str(directory / "tokenizer"), vocab_size=1200, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, character_coverage=1.0, minloglevel=2,
        max_sentence_length=1 << 16, num_threads=1,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "\n\n\n"],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>")


@functools.lru_cache(maxsize=1)
def gemma_like():
    """The Gemma-style tokenizer (other text tests import this), trained once per version of ``build_gemma_like``
    and kept in the ignored ``.test_cache/``: the suite's processes share it instead of training it each."""
    version = zlib.crc32(inspect.getsource(build_gemma_like).encode())
    directory = Path(__file__).resolve().parent.parent / ".test_cache" / f"gemma_like_{version:08x}"
    if not (directory / "tokenizer.model").is_file():
        directory.parent.mkdir(exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix="gemma_like_", dir=directory.parent))
        build_gemma_like(fresh)
        try:
            fresh.rename(directory)  # atomic; another process may have put its copy there first
        except OSError:
            shutil.rmtree(fresh)
    return load_tokenizer(directory)


@pytest.fixture(scope="session")
def gemma_like_tokenizer():
    return gemma_like()


@pytest.fixture(scope="session")
def shipped():
    return shipped_tokenizer()


def test_shipped_has_gemma_specials_and_2048_decodable_ids(shipped):
    assert shipped.vocab_size == 2048
    assert (shipped.pad_id, shipped.eos_id, shipped.bos_id) == (0, 1, 2)
    assert shipped.backend.token_to_id("<start_of_turn>") is not None
    assert shipped.backend.token_to_id("<end_of_turn>") is not None
    for i in range(shipped.vocab_size):
        assert shipped.decode([i]) != "", i


def test_chat_prompt_is_gemma2_template(shipped):
    assert chat_prompt("Hi") == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    ids = shipped.encode(chat_prompt("Hi"))
    assert ids[:2] == [shipped.bos_id, shipped.token_id("<start_of_turn>")]
    assert shipped.end_of_turn_id in ids and shipped.end_of_turn_id in shipped.stop_ids


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_shipped_roundtrips_any_text(text):
    tok = shipped_tokenizer()
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("which", ["shipped", "gemma_like"])
def test_token_bytes_reproduce_decoded_text(which, request):
    tok = request.getfixturevalue("shipped" if which == "shipped" else "gemma_like_tokenizer")
    byte_fallback = {i for i in range(tok.vocab_size) if re.fullmatch(r"<0x[0-9A-F]{2}>", tok.backend.id_to_token(i))}
    ordinary = np.asarray([i for i in range(tok.vocab_size) if i not in byte_fallback])
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.choice(ordinary, size=int(rng.integers(0, 30))).tolist()
        assert tok.decode_bytes(ids) == tok.decode(ids), ids
    for text in ["é€😀 ACTION=red", "ünïcödé\n\tok"]:  # valid byte-fallback runs decode alike too
        assert tok.decode_bytes(tok.encode(text)) == text == tok.decode(tok.encode(text))


def test_load_from_directory_matches_shipped(tmp_path, shipped):
    shutil.copy(shipped_tokenizer_path(), tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path)
    text = chat_prompt("Step=3 Action=green Reward=-0.35\nWhat do you predict next?")
    assert loaded.encode(text) == shipped.encode(text)


def test_sentencepiece_directory_behaves_like_gemma(gemma_like_tokenizer):
    tok = gemma_like_tokenizer
    text = chat_prompt("Step=12 Action=green Reward=-0.35\n")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    pieces = [tok.backend.id_to_token(i) for i in ids]
    assert "1" in pieces and "2" in pieces  # digits split, as Gemma does
    assert "\n" in pieces and pieces[:2] == ["<bos>", "<start_of_turn>"]
    assert tok.encode("é€") and tok.decode(tok.encode("é€😀")) == "é€😀"  # byte fallback


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(TextError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TextError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)


def test_unreadable_tokenizer_is_one_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TextError, match=f"cannot read tokenizer in {tmp_path}"):
        load_tokenizer(tmp_path)
    broken = tmp_path / "sp"
    broken.mkdir()
    (broken / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(TextError, match="cannot read tokenizer"):
        load_tokenizer(broken)


def test_tokenizer_without_chat_markers_is_refused(tmp_path, shipped):
    data = json.loads(shipped_tokenizer_path().read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<end_of_turn>"]
    del data["model"]["vocab"]["<end_of_turn>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TextError, match="<end_of_turn>"):
        load_tokenizer(tmp_path)


def test_build_script_reproduces_the_shipped_file(tmp_path):
    digest = build(tmp_path / "tokenizer.json")
    assert digest == hashlib.sha256(shipped_tokenizer_path().read_bytes()).hexdigest()
