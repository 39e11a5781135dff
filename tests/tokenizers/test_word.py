"""WordTokenizer: lower-cased words, punctuation split off, frequency-capped vocabulary."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmforge.errors import ConfigError
from lmforge.tokenizers.base import load_tokenizer, train_tokenizer
from lmforge.tokenizers.word import WordTokenizer

REVIEWS = [
    "Fruit, and oak. Fruit and spice!",
    "Crisp fruit; dry finish, and a hint of OAK.",
    "Tart cherry and fruit. Don't wait: drink now!",
    "Rare zinfandel",
]


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer.train(REVIEWS)


def _tokens(tok, text):
    return [tok.id_to_token(i) for i in tok.encode(text)]


def test_lowercases_and_splits_off_punctuation(tok):
    assert tok.kind == "word"
    assert _tokens(tok, "Fruit, and") == ["fruit", ",", "and"]
    assert _tokens(tok, "OAK. Spice!") == ["oak", ".", "spice", "!"]
    assert _tokens(tok, "don't") == ["don", "'", "t"]


def test_pad_is_zero_unk_is_one_and_unknown_words_map_to_unk(tok):
    assert (tok.pad_id, tok.unk_id) == (0, 1)
    assert (tok.pad_token, tok.unk_token) == ("[PAD]", "[UNK]")
    assert tok.bos_id is None and tok.eos_id is None and tok.mask_id is None
    assert tok.special_ids() == {0, 1}
    assert tok.encode("fruit xylophone") == [tok.token_to_id("fruit"), 1]


def test_vocabulary_is_capped_by_frequency():
    tok = WordTokenizer.train(REVIEWS, vocab_size=5)
    assert tok.vocab_size == 5
    kept = {tok.id_to_token(i) for i in range(2, 5)}
    assert kept == {"fruit", "and", "."}  # seen 4, 4 and 3 times; every other word at most twice
    assert tok.encode("zinfandel") == [tok.unk_id]


def test_decode_joins_tokens_with_spaces(tok):
    assert tok.decode(tok.encode("Fruit, and OAK.")) == "fruit , and oak ."
    assert tok.decode([0, tok.token_to_id("oak")]) == "[PAD] oak"
    assert tok.decode([0, tok.token_to_id("oak")], skip_special_tokens=True) == "oak"


def test_reserved_tokens_follow_pad_and_unk():
    tok = train_tokenizer("word", REVIEWS, reserved_tokens=("[START]", "[END]"))
    assert [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id] == [0, 1, 2, 3]


# arbitrary text, and the reviews' words (with their case and punctuation) in any order
_WORDS = st.sampled_from(sorted({w for r in REVIEWS for w in r.split()}))
WORDY_TEXT = st.text() | st.lists(_WORDS | st.text(max_size=4)).map(" ".join)


def test_save_load_gives_identical_ids(tok, tmp_path):
    tok.save(tmp_path)  # once; the examples below only encode
    both = (load_tokenizer(tmp_path), load_tokenizer(tmp_path / "tokenizer.json"))
    for loaded in both:
        assert isinstance(loaded, WordTokenizer)
        assert (loaded.pad_id, loaded.unk_id) == (0, 1)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode_batch(REVIEWS) == tok.encode_batch(REVIEWS)

    @settings(max_examples=100, deadline=None)
    @given(WORDY_TEXT)
    @example(" ".join(REVIEWS))
    def same_ids(text):
        ids = tok.encode(text)
        for loaded in both:
            assert loaded.encode(text) == ids

    same_ids()


def test_train_tokenizer_default_and_too_small():
    tok = train_tokenizer("word", REVIEWS)
    assert tok.vocab_size < 10_000  # capped at 10k, but the corpus holds fewer words
    with pytest.raises(ConfigError, match="at least 2"):
        train_tokenizer("word", REVIEWS, vocab_size=1)
