"""Byte-level BPE, WordPiece and Unigram: round trips, specials, save/load, Hugging Face parity."""

import string

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import load_tokenizer, train_tokenizer
from lmforge.tokenizers.subword import SubwordTokenizer, train_bpe, train_unigram, train_wordpiece

CORPUS = [
    "The café serves crème brûlée and naïve visitors résumé their travels.",
    "Привет, мир! Как дела? Всё хорошо.",
    "東京は日本の首都です。中文也可以。",
    "Emoji time 🙂🚀 and more 🙂 smiles, señor Müller.",
    "ROMEO: But soft, what light through yonder window breaks?",
    "Don't stop; it's 3.14 > 2 — isn't it?",
] * 20

UNICODE_TEXT = "Café NAÏVE résumé — Привет 東京 🙂🚀 señor  Müller's <|endoftext|> don't\ttab\nline"

_examples = settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
# save/load round trips: the tokenizer is saved once per test, each example only encodes
_round_trips = settings(max_examples=100, deadline=None)
# arbitrary unicode, and text made of the corpus's own characters (so merges and pieces apply)
ANY_TEXT = st.text() | st.text(alphabet=sorted(set("".join(CORPUS))))


@pytest.fixture(scope="module")
def bpe() -> SubwordTokenizer:
    return train_bpe(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def wordpiece() -> SubwordTokenizer:
    return train_wordpiece(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def unigram() -> SubwordTokenizer:
    return train_unigram(CORPUS, vocab_size=150)


# ---- byte-level BPE


@_examples
@given(st.text())
def test_bpe_decode_inverts_encode_for_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_specials_are_endoftext(bpe):
    eot = bpe.token_to_id("<|endoftext|>")
    assert bpe.kind == "bpe" and eot is not None
    assert bpe.pad_id == bpe.bos_id == bpe.eos_id == eot
    assert bpe.unk_id is None and bpe.mask_id is None
    assert bpe.special_ids() == {eot}
    # encoding never adds specials; decoding keeps them unless asked not to
    assert eot not in bpe.encode("hello")
    ids = bpe.encode("hi<|endoftext|>")
    assert ids[-1] == eot
    assert bpe.decode(ids) == "hi<|endoftext|>"
    assert bpe.decode(ids, skip_special_tokens=True) == "hi"


def test_bpe_learns_merges(bpe):
    assert bpe.vocab_size > 257
    assert len(bpe.encode("The café")) < len("The café".encode())


# ---- WordPiece


def test_wordpiece_lowercases_and_strips_accents(wordpiece):
    assert wordpiece.decode(wordpiece.encode("Café")) == "cafe"
    assert wordpiece.encode("CAFÉ") == wordpiece.encode("cafe")
    assert wordpiece.decode(wordpiece.encode("The NAÏVE Visitors")) == "the naive visitors"


def test_wordpiece_reserved_tokens_come_first(wordpiece):
    reserved = ["[PAD]", "[START]", "[END]", "[MASK]", "[UNK]"]
    assert [wordpiece.token_to_id(t) for t in reserved] == [0, 1, 2, 3, 4]
    ids = (wordpiece.pad_id, wordpiece.bos_id, wordpiece.eos_id, wordpiece.mask_id)
    assert ids == (0, 1, 2, 3) and wordpiece.unk_id == 4
    assert wordpiece.special_ids() == {0, 1, 2, 3, 4}
    assert wordpiece.encode("ж") == [4]  # never seen in training -> [UNK]


def test_wordpiece_options():
    tok = train_wordpiece(
        CORPUS,
        vocab_size=300,
        lowercase=False,
        strip_accents=False,
        reserved_tokens=("[PAD]", "[CLS]", "[SEP]"),
    )
    assert tok.decode(tok.encode("The café")) == "The café"
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id] == [0, 1, 2, 3]  # [UNK] appended


# ---- Unigram


def test_unigram_specials_and_round_trip(unigram):
    assert [unigram.pad_id, unigram.unk_id, unigram.bos_id, unigram.eos_id, unigram.mask_id] == [
        0,
        1,
        2,
        3,
        4,
    ]
    text = "But soft, what light through yonder window breaks?"
    assert unigram.decode(unigram.encode(text)) == text
    assert unigram.id_to_token(unigram.encode("soft")[0]).startswith("▁")


# ---- shared behaviour


@pytest.mark.parametrize("name", ["bpe", "wordpiece", "unigram"])
def test_save_load_gives_identical_ids(name, request, tmp_path):
    tok = request.getfixturevalue(name)
    tok.save(tmp_path)  # once per tokenizer; the examples below only encode
    assert (tmp_path / "lmforge_tokenizer.json").is_file() and (
        tmp_path / "tokenizer.json"
    ).is_file()
    loaded = load_tokenizer(tmp_path)
    from_json = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.kind == tok.kind and loaded.vocab_size == tok.vocab_size
    assert loaded.special_tokens() == tok.special_tokens()

    @_round_trips
    @given(ANY_TEXT)
    @example(UNICODE_TEXT)
    def same_ids(text):
        ids = tok.encode(text)
        assert loaded.encode(text) == ids
        assert from_json.encode(text) == ids

    same_ids()


@pytest.mark.parametrize("name", ["bpe", "wordpiece", "unigram"])
def test_encode_batch_and_array_match_encode(name, request):
    tok = request.getfixturevalue(name)
    texts = [UNICODE_TEXT, "", *CORPUS[:6]]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    array = tok.encode_array(UNICODE_TEXT)
    assert array.dtype == np.int64 and array.tolist() == tok.encode(UNICODE_TEXT)


@pytest.mark.parametrize(
    "kind, size, minimum", [("bpe", 256, 257), ("wordpiece", 4, 5), ("unigram", 3, 5)]
)
def test_vocab_size_below_the_specials_is_a_config_error(kind, size, minimum):
    with pytest.raises(ConfigError, match=f"at least {minimum}"):
        train_tokenizer(kind, CORPUS, vocab_size=size)


def test_unigram_vocab_too_small_for_the_alphabet_is_a_config_error():
    with pytest.raises(ConfigError, match="--vocab-size"):
        train_unigram(CORPUS, vocab_size=8)


def test_empty_training_text_is_a_data_error():
    with pytest.raises(DataError, match="no text"):
        train_bpe([], vocab_size=300)


# ---- Hugging Face folders, compared with transformers reading the same files


def test_gpt2_vocab_and_merges_match_transformers(bpe, tmp_path):
    from transformers import GPT2TokenizerFast

    bpe.tokenizer.model.save(str(tmp_path))  # writes vocab.json + merges.txt, as GPT-2 ships
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    tok = load_tokenizer(tmp_path)
    reference = GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert tok.kind == "bpe"
    eot = tok.token_to_id("<|endoftext|>")
    assert tok.pad_id == tok.bos_id == tok.eos_id == eot == reference.eos_token_id
    for text in [UNICODE_TEXT, *CORPUS[:6]]:
        ids = tok.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False)
        assert ids == bpe.encode(text)
        assert tok.decode(ids) == text


def _write_bert_vocab(folder):
    pieces = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "the",
        "cafe",
        "naive",
        "resume",
        "##ing",
        "mull",
        "##er",
        "東",
        "京",
        "привет",
    ]
    pieces += list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    pieces += list(string.punctuation) + list(string.digits)
    (folder / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return pieces


def test_bert_vocab_txt_matches_transformers(tmp_path):
    from transformers import BertTokenizerFast

    pieces = _write_bert_vocab(tmp_path)
    tok = load_tokenizer(tmp_path)
    reference = BertTokenizerFast.from_pretrained(str(tmp_path))
    assert tok.kind == "wordpiece" and tok.vocab_size == len(pieces)
    assert [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id] == [0, 1, 2, 3, 4]
    for text in [UNICODE_TEXT, "The CAFÉ's naïve Müller, résumés!", *CORPUS[:6]]:
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False)
    ids = tok.encode("The Café résumés")
    assert [tok.id_to_token(i) for i in ids] == ["the", "cafe", "resume", "##s"]
    assert tok.decode(ids) == "the cafe resumes"
    assert load_tokenizer(tmp_path / "vocab.txt").encode(UNICODE_TEXT) == tok.encode(UNICODE_TEXT)
