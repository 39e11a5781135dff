"""load_tokenizer / train_tokenizer dispatch, the saved file format, special-token detection."""

import json
import subprocess
import sys

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import (
    TOKENIZER_KINDS,
    Tokenizer,
    detect_special_tokens,
    load_tokenizer,
    train_tokenizer,
)

TEXTS = ["the cat sat on the mat.", "The dog, the cat; a bird!", "Café crème brûlée"] * 10
SIZES = {"char": None, "word": 30, "bpe": 300, "wordpiece": 80, "unigram": 60}


def test_kinds():
    assert TOKENIZER_KINDS == ("char", "word", "bpe", "wordpiece", "unigram")


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_every_kind_trains_saves_and_loads(kind, tmp_path):
    tok = train_tokenizer(kind, TEXTS, vocab_size=SIZES[kind])
    assert isinstance(tok, Tokenizer) and tok.kind == kind
    tok.save(tmp_path / "tok")
    state = json.loads((tmp_path / "tok" / "lmforge_tokenizer.json").read_text())
    assert state["kind"] == kind
    assert {f"{r}_token" for r in ("pad", "unk", "bos", "eos", "mask")} <= set(state)
    assert (tmp_path / "tok" / "tokenizer.json").is_file() == (kind != "char")
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tok) and loaded.kind == kind
    assert loaded.encode_batch(TEXTS[:3]) == tok.encode_batch(TEXTS[:3])
    assert loaded.special_ids() == tok.special_ids()
    assert load_tokenizer(tmp_path / "tok" / "lmforge_tokenizer.json").vocab_size == tok.vocab_size


def test_train_tokenizer_rejects_unknown_kind_and_option():
    with pytest.raises(ConfigError, match="char, word, bpe, wordpiece, unigram"):
        train_tokenizer("sentencepiece", TEXTS)
    with pytest.raises(ConfigError, match="lowercase"):  # the message lists the known options
        train_tokenizer("wordpiece", TEXTS, lower=True)


def test_a_single_string_is_one_text():
    assert train_tokenizer("word", "Fruit, fruit").encode("fruit ,") == [2, 3]


def test_load_missing_or_unrecognised_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(DataError) as err:
        load_tokenizer(tmp_path)
    for name in (
        "lmforge_tokenizer.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
    ):
        assert name in str(err.value)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_load_saved_with_unknown_kind(tmp_path):
    (tmp_path / "lmforge_tokenizer.json").write_text(json.dumps({"kind": "morse"}))
    with pytest.raises(DataError, match="morse"):
        load_tokenizer(tmp_path)


def _foreign_wordpiece(tmp_path, vocab):
    tok = tokenizers.Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=vocab[1])
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(vocab[:2])
    tok.save(str(tmp_path / "tokenizer.json"))
    return load_tokenizer(tmp_path)


def test_special_ids_detected_in_foreign_tokenizer_json(tmp_path):
    tok = _foreign_wordpiece(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
    assert tok.kind == "wordpiece"
    assert [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.encode("hi yo") == [5, 1]


def test_special_ids_detected_sentencepiece_style(tmp_path):
    tok = _foreign_wordpiece(tmp_path, ["<pad>", "<unk>", "<s>", "</s>", "<mask>", "hi"])
    assert [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id] == [0, 1, 2, 3, 4]


def test_gpt2_style_endoftext_is_pad_bos_and_eos():
    vocab = {"a": 0, "b": 1, "<|endoftext|>": 2}
    found = detect_special_tokens(vocab.get)
    assert found == {
        "pad": "<|endoftext|>",
        "unk": None,
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "mask": None,
    }


def test_decode_rejects_ids_outside_the_vocabulary():
    tok = train_tokenizer("bpe", TEXTS, vocab_size=300)
    with pytest.raises(DataError, match="token id 300"):
        tok.decode([5, 300])


def test_importing_char_does_not_import_the_tokenizers_library():
    code = "import sys, lmforge.tokenizers.char; print('tokenizers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def llama_style_folder(folder, chat_template_file=False):
    """A Hugging Face folder as Llama 3 / Qwen chat models ship it: a BPE tokenizer.json whose
    special tokens the roles do not reveal, tokenizer_config.json naming them (one as a dict, as
    transformers writes AddedToken), and generation_config.json with a list of eos ids."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|begin|>", "<|end|>", "<|eot|>", "<|pad|>"]
    )
    tok.train_from_iterator(TEXTS, trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    template = "{% for m in messages %}<|begin|>{{ m['content'] }}<|eot|>{% endfor %}"
    config = {
        "bos_token": "<|begin|>",
        "eos_token": {"content": "<|end|>", "special": True},
        "pad_token": "<|pad|>",
        "unk_token": None,  # null: the detected token (none here) stays
        "add_bos_token": True,
    }
    if chat_template_file:
        (folder / "chat_template.jinja").write_text(template)
    else:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ends = [tok.token_to_id("<|end|>"), tok.token_to_id("<|eot|>")]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": ends}))
    return tok, template


@pytest.mark.parametrize("chat_template_file", [False, True])
def test_hugging_face_tokenizer_metadata_is_read_and_kept(tmp_path, chat_template_file):
    library, template = llama_style_folder(tmp_path / "hf", chat_template_file)
    tok = load_tokenizer(tmp_path / "hf")
    ids = {t: library.token_to_id(t) for t in ("<|begin|>", "<|end|>", "<|eot|>", "<|pad|>")}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
        ids["<|begin|>"],
        ids["<|end|>"],
        ids["<|pad|>"],
    )
    assert tok.add_bos_token and tok.chat_template == template
    assert tok.eos_ids == (ids["<|end|>"], ids["<|eot|>"])
    tok.save(tmp_path / "run" / "tokenizer")  # a fine-tuned run keeps them
    again = load_tokenizer(tmp_path / "run" / "tokenizer")
    assert again.special_tokens() == tok.special_tokens()
    assert again.metadata() == tok.metadata()


def test_a_folder_without_metadata_keeps_the_defaults(tmp_path):
    tok = train_tokenizer("bpe", TEXTS, vocab_size=300)
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert not loaded.add_bos_token and loaded.chat_template is None
    assert loaded.eos_ids == (tok.eos_id,)


def test_an_eos_id_outside_the_vocabulary_is_refused(tmp_path):
    llama_style_folder(tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").write_text('{"eos_token_id": [1, 99999]}')
    with pytest.raises(DataError, match="eos id 99999 is outside") as err:
        load_tokenizer(tmp_path / "hf")
    assert "\n" not in str(err.value)
