"""CharTokenizer: sorted-character vocabulary, round trips, unknown characters, fast array path."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import load_tokenizer, train_tokenizer
from lmforge.tokenizers.char import CharTokenizer, UnknownCharacterError, code_points

TEXT = "ROMEO: But soft, what light through yonder window breaks?\nJULIET: O Romeo!\n"
CHARS = sorted(set(TEXT))

# the autouse seed/data-dir fixtures in conftest are per test, harmless across examples
_examples = settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.train(TEXT)


def test_vocabulary_is_sorted_distinct_characters(tok):
    assert tok.kind == "char"
    assert tok.vocab == CHARS
    assert tok.vocab_size == len(CHARS)
    assert tok.encode("ROMEO") == [CHARS.index(c) for c in "ROMEO"]
    assert tok.token_to_id("R") == CHARS.index("R")
    assert tok.id_to_token(0) == CHARS[0] and tok.id_to_token(len(CHARS)) is None
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (None,) * 5
    assert tok.special_ids() == set()


def test_train_on_many_texts_equals_one_text():
    assert (
        CharTokenizer.train(["ab", "ca"]).vocab == CharTokenizer.train("abca").vocab == list("abc")
    )


@_examples
@given(st.text(alphabet=CHARS))
def test_decode_inverts_encode(tok, text):
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


@_examples
@given(st.text(alphabet=CHARS + ["é", "\U0001f600"]))
def test_encode_array_matches_encode(text):
    tok = CharTokenizer.train(CHARS + ["é", "\U0001f600"])  # non-ascii, and a code point > 0xffff
    array = tok.encode_array(text)
    assert array.dtype == np.int64 and array.shape == (len(text),)
    assert array.tolist() == tok.encode(text) == [tok.token_to_id(c) for c in text]


def test_unknown_character_error_names_char_and_position(tok):
    with pytest.raises(DataError) as err:
        tok.encode("ROMEO\u00e9 z")
    message = str(err.value)
    assert "'é'" in message and "position 5" in message and "--unknown-token" in message
    assert "\n" not in message
    # a code point far above every vocabulary entry takes the same path
    with pytest.raises(DataError, match="position 2"):
        tok.encode_array("RO\U0001f600")


def test_unknown_token_added_at_end_and_used():
    tok = CharTokenizer.train(TEXT, unknown_token="[UNK]")
    assert tok.vocab == CHARS + ["[UNK]"]
    assert tok.unk_id == len(CHARS) and tok.unk_token == "[UNK]"
    ids = tok.encode("Ré\U0001f600")
    assert ids == [CHARS.index("R"), tok.unk_id, tok.unk_id]
    assert tok.decode(ids) == "R[UNK][UNK]"
    assert tok.decode(ids, skip_special_tokens=True) == "R"
    assert tok.special_ids() == {tok.unk_id}


def test_unknown_token_already_a_character_is_not_added():
    tok = CharTokenizer.train(TEXT, unknown_token="?")
    assert tok.vocab == CHARS and tok.unk_id == CHARS.index("?")
    assert tok.decode(tok.encode("é!")) == "?!"
    assert tok.decode(tok.encode("?"), skip_special_tokens=True) == "?"  # a real character


def test_decode_accepts_arrays_and_tensors(tok):
    ids = tok.encode("O Romeo")
    assert tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == "O Romeo"
    with pytest.raises(DataError, match="token id 999"):
        tok.decode([0, 999])
    with pytest.raises(DataError, match="token id -1"):
        tok.decode([-1])


@pytest.mark.parametrize("unknown_token", [None, "[UNK]"])
def test_save_load_gives_identical_ids(tmp_path, unknown_token):
    tok = CharTokenizer.train(TEXT + "é", unknown_token=unknown_token)
    tok.save(tmp_path)  # once; the examples below only encode
    assert not (tmp_path / "tokenizer.json").exists()
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.vocab == tok.vocab and loaded.unk_id == tok.unk_id

    @settings(max_examples=100, deadline=None)
    @given(st.text(alphabet=[*CHARS, "é"]))  # text within the vocabulary
    @example("JULIET: é Romeo?")
    def same_ids(text):
        ids = tok.encode(text)
        assert loaded.encode(text) == ids
        assert loaded.encode_array(text).tolist() == ids

    same_ids()
    if unknown_token:  # a character never seen maps to the unknown token, after loading too
        text = "JULIET: é\U0001f600 Romeo?"
        assert loaded.encode(text) == tok.encode(text)
        assert tok.unk_id in loaded.encode(text)


def test_pickles_for_worker_processes(tok):
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode_array(TEXT).tolist() == tok.encode(TEXT)


def test_train_tokenizer_char_and_its_errors():
    tok = train_tokenizer("char", [TEXT], unknown_token="?")
    assert tok.kind == "char" and tok.unk_id == CHARS.index("?")
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer("char", [TEXT], vocab_size=100)
    with pytest.raises(DataError, match="non-empty"):
        CharTokenizer.train(["", ""])


# ---- the fast paths: code points in the string's own width, lookups in narrow dtypes ----------

_WIDTHS = ["a", "Z", "\n", "é", "ÿ", "\u2019", "\uffff", "\U0001f600", "\U0010ffff"]


@_examples
@given(st.text(alphabet=_WIDTHS) | st.text())
@example("\ud800a")  # a lone surrogate, in a 2-byte string
@example("\udfff\U0001f600")  # and in a 4-byte one
@example("é" * 11 + "\u2019")  # short enough for the 1-byte guess, 2 bytes wide
@example("a\U0001f600")  # short enough for the 2-byte guess, 4 bytes wide
def test_code_points_are_exact_in_the_narrowest_width(text):
    points = code_points(text)
    assert points.tolist() == [ord(c) for c in text]
    top = max(map(ord, text), default=0)
    assert points.dtype == (np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


@_examples
@given(st.text(alphabet=_WIDTHS + ["?"]))
def test_encode_array_in_any_integer_dtype_matches_encode(text):
    tok = CharTokenizer.train(_WIDTHS[:-1], unknown_token="?")  # U+10FFFF maps to "?"
    expected = [tok.token_to_id(c) if c in tok.vocab else tok.unk_id for c in text]
    for dtype in (np.int64, np.int32, np.uint32, np.uint16, np.uint8, np.int8):
        ids = tok.encode_array(text, dtype)
        assert ids.dtype == dtype and ids.tolist() == expected


def test_encode_array_dtype_edges():
    full = CharTokenizer([chr(i) for i in range(256)])  # ids 0..255: no spare uint8 value
    text = "".join(map(chr, range(255, -1, -1)))
    assert full.encode_array(text, np.uint8).tolist() == list(range(255, -1, -1))
    with pytest.raises(DataError, match="position 1"):
        full.encode_array("a\u2019", np.uint8)
    with pytest.raises(ValueError, match="cannot hold"):
        CharTokenizer([chr(i) for i in range(257)]).encode_array("a", np.uint8)
    with pytest.raises(ValueError, match="integer dtype"):
        full.encode_array("a", np.float32)


@_examples
@given(st.lists(st.text(alphabet=_WIDTHS) | st.text(), min_size=1))
@example(["\ud800", "x"])
def test_train_finds_exactly_the_distinct_characters(texts):
    joined = "".join(texts)
    if not joined:
        with pytest.raises(DataError, match="no characters"):
            CharTokenizer.train(texts)
        return
    assert CharTokenizer.train(texts).vocab == sorted(set(joined))


def test_train_across_pieces_of_every_width():
    # longer than a training piece (65,536 characters), each piece of another width
    text = "a" * 70_000 + "é" * 70_000 + "\u2019" * 3 + "\U0001f600" + "b" * 70_000 + "\ud800"
    assert CharTokenizer.train(text).vocab == sorted(set(text))
    tok = CharTokenizer.train(text)
    assert tok.encode_array(text, np.uint16).tolist() == tok.encode(text)


def test_unknown_character_error_survives_a_trip_to_another_process(tok):
    with pytest.raises(UnknownCharacterError) as err:
        tok.encode_array("ROMEO é")
    copy = pickle.loads(pickle.dumps(err.value))
    assert isinstance(copy, DataError) and (copy.char, copy.position) == ("é", 6)
    assert str(copy) == str(err.value)


def test_with_unknown_token_keeps_the_vocabulary(tok):
    mapped = tok.with_unknown_token("?")
    assert mapped.vocab == tok.vocab and mapped.unk_id == CHARS.index("?")
    assert mapped.encode("Ré!") == [CHARS.index("R"), CHARS.index("?"), CHARS.index("!")]
    assert mapped.with_unknown_token("?") is mapped
    with pytest.raises(ConfigError, match="already maps unseen characters to '\\?'"):
        mapped.with_unknown_token("!")
    with pytest.raises(ConfigError, match="would change its vocabulary"):
        tok.with_unknown_token("[UNK]")
