"""Byte-level BPE, WordPiece and Unigram tokenizers: thin wrappers over Hugging Face `tokenizers`.

`SubwordTokenizer` wraps any `tokenizers.Tokenizer` (ours or one read from a Hugging Face folder).
It always encodes with add_special_tokens=False and passes skip_special_tokens explicitly: the
library's own defaults differ (it adds post-processor specials and skips specials on decode).
"""

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from lmforge.errors import ConfigError, DataError
from lmforge.files import write_atomic
from lmforge.tokenizers.interface import (
    HF_TOKENIZER_FILE,
    Tokenizer,
    detect_special_tokens,
)

BPE_SPECIAL = "<|endoftext|>"
WORDPIECE_RESERVED = ("[PAD]", "[START]", "[END]", "[MASK]", "[UNK]")
UNIGRAM_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
BYTE_ALPHABET_SIZE = 256

# Model class name in the library -> our kind, for tokenizer.json files we did not write
_KIND_OF_MODEL = {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram", "WordLevel": "word"}


class SubwordTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind the lmforge interface.

    Args:
        tokenizer: the library tokenizer; its padding and truncation are switched off.
        kind: one of "word", "bpe", "wordpiece", "unigram".
        special: role -> token string ({"pad": "[PAD]", ...}); None detects them from the
            vocabulary ([PAD]/<pad>, [UNK]/<unk>, [CLS]/[START]/<s>, ...; GPT-2's <|endoftext|>
            is pad, bos and eos at once).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        kind: str,
        special: dict[str, str | None] | None = None,
    ) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.kind = kind
        self._set_special_tokens(special or detect_special_tokens(tokenizer.token_to_id))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, encoded in parallel by the library's Rust threads."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tokenizer.id_to_token(i) if i >= 0 else None

    def special_ids(self) -> set[int]:
        """Role ids plus every token the library marks special (reserved tokens included)."""
        added = self.tokenizer.get_added_tokens_decoder()
        return super().special_ids() | {i for i, t in added.items() if t.special}

    def _kind_state(self, directory: Path) -> dict[str, Any]:
        write_atomic(directory / HF_TOKENIZER_FILE, self.tokenizer.save)
        return {"tokenizer_file": HF_TOKENIZER_FILE}


# ---- training


def train_bpe(texts: Iterable[str], vocab_size: int = 8000) -> SubwordTokenizer:
    """Byte-level BPE like GPT-2's: decode(encode(x)) == x for any string; <|endoftext|> special."""
    check_vocab_size(
        "byte-level bpe", vocab_size, 1 + BYTE_ALPHABET_SIZE, f"256 bytes + {BPE_SPECIAL}"
    )
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    train_model(tok, texts, trainer, "bpe")
    return SubwordTokenizer(tok, "bpe")


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int = 20000,
    lowercase: bool = True,
    strip_accents: bool = True,
    reserved_tokens: Iterable[str] = WORDPIECE_RESERVED,
) -> SubwordTokenizer:
    """BERT-style WordPiece ("##" continuations); unknown pieces map to [UNK].

    Args:
        reserved_tokens: special tokens taking the first ids, in order; [UNK] is added if missing.
    """
    reserved = list(dict.fromkeys(reserved_tokens))
    if "[UNK]" not in reserved:
        reserved.append("[UNK]")
    check_vocab_size("wordpiece", vocab_size, len(reserved), "its reserved tokens")
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=reserved,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    train_model(tok, texts, trainer, "wordpiece")
    return SubwordTokenizer(tok, "wordpiece")


def train_unigram(texts: Iterable[str], vocab_size: int = 8000) -> SubwordTokenizer:
    """SentencePiece-style Unigram: spaces become "▁"; specials <pad> <unk> <s> </s> <mask>."""
    check_vocab_size("unigram", vocab_size, len(UNIGRAM_SPECIALS), "its special tokens")
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(UNIGRAM_SPECIALS),
        unk_token="<unk>",
        show_progress=False,
    )
    train_model(tok, texts, trainer, "unigram")
    return SubwordTokenizer(tok, "unigram")


def check_vocab_size(name: str, vocab_size: int, minimum: int, what: str) -> None:
    """ConfigError naming the minimum when vocab_size cannot hold the fixed tokens."""
    if vocab_size < minimum:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small for a {name} tokenizer: it needs at least "
            f"{minimum} ({what}); pass --vocab-size {minimum} or more"
        )


def train_model(tok: tokenizers.Tokenizer, texts: Iterable[str], trainer: Any, kind: str) -> None:
    """Train tok in place with trainer; DataError when texts hold no characters at all."""
    if isinstance(texts, str):
        texts = [texts]
    num_chars = 0

    def counted() -> Iterator[str]:
        nonlocal num_chars
        for text in texts:
            num_chars += len(text)
            yield text

    try:
        tok.train_from_iterator(counted(), trainer=trainer)
    except Exception as e:  # the library raises a bare Exception with a message
        if "not large enough" in str(e):
            raise ConfigError(
                f"{kind} vocabulary too small to hold every character of the text ({e}); "
                "pass a larger --vocab-size"
            ) from None
        raise
    if num_chars == 0:
        raise DataError(f"no text to train the {kind} tokenizer on; pass non-empty texts")


# ---- loading files written by Hugging Face (or by us)


def read_tokenizer_json(path: Path, kind: str | None = None) -> tuple[tokenizers.Tokenizer, str]:
    """A tokenizer.json file and its kind, from its model type when not given (base.py wraps it
    in the kind's class)."""
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception on malformed files
        raise DataError(f"{path}: not a readable tokenizer.json ({e}); pass a valid file") from None
    if kind is None:
        model = type(tok.model).__name__
        if model not in _KIND_OF_MODEL:
            raise DataError(
                f"{path}: unsupported tokenizer model {model!r}; use BPE, WordPiece, "
                "Unigram or WordLevel"
            )
        kind = _KIND_OF_MODEL[model]
    return tok, kind


def load_gpt2_files(vocab_file: Path, merges_file: Path) -> SubwordTokenizer:
    """GPT-2's vocab.json + merges.txt: byte-level BPE with <|endoftext|> as its only special."""
    try:
        model = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as e:
        raise DataError(
            f"{vocab_file.parent}: vocab.json + merges.txt unreadable ({e}); pass GPT-2 style files"
        ) from None
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id(BPE_SPECIAL) is not None:
        tok.add_special_tokens([BPE_SPECIAL])
    return SubwordTokenizer(tok, "bpe")


def load_bert_vocab(vocab_file: Path, lowercase: bool = True) -> SubwordTokenizer:
    """BERT's vocab.txt: WordPiece, BertNormalizer (lower-cased, accents stripped by default)."""
    try:
        model = models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]")
    except Exception as e:
        raise DataError(
            f"{vocab_file}: unreadable vocab.txt ({e}); pass a BERT vocab.txt"
        ) from None
    tok = tokenizers.Tokenizer(model)
    # strip_accents follows lowercase, as in bert-base-uncased / bert-base-cased
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = [
        t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if tok.token_to_id(t) is not None
    ]
    tok.add_special_tokens(specials)
    return SubwordTokenizer(tok, "wordpiece")
