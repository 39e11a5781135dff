"""Character tokenizer: sorted distinct characters <-> ids, with an optional unknown token.

`encode_array` is the fast path (a numpy lookup table indexed by code point); keep `encode`
and `decode` going through the same table and vocabulary so the two paths never disagree.
"""

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.interface import Tokenizer

# surrogatepass keeps lone surrogates (which Python strings may hold) instead of failing on them
_ERRORS = "surrogatepass"
_PIECE = 1 << 16  # characters per numpy call when training: a narrow width is likelier


def code_points(text: str) -> np.ndarray:
    """The code points of text as a uint8, uint16 or uint32 array, the narrowest that fits.

    CPython stores a str with 1, 2 or 4 bytes per character; encoding it to that same width
    (ascii/latin-1, utf-16, utf-32) is a plain copy, several times faster than utf-32 for
    all. The width is guessed from the string's size in memory and checked, so a wrong guess
    costs a little time, never a wrong answer.
    """
    if text.isascii():  # O(1) in CPython
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    size, n = sys.getsizeof(text), len(text)
    if size < 80 + 1.5 * n:  # 1 byte a character
        try:
            return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
        except UnicodeEncodeError:
            pass
    if size < 80 + 3 * n:  # 2 bytes a character: utf-16 is 1:1 unless it needs surrogate pairs
        data = text.encode("utf-16-le", _ERRORS)
        if len(data) == 2 * n:
            return np.frombuffer(data, dtype=np.uint16)
    return np.frombuffer(text.encode("utf-32-le", _ERRORS), dtype=np.uint32)


class UnknownCharacterError(DataError):
    """A character the vocabulary lacks, with no unknown token to map it to."""

    def __init__(self, char: str, position: int, suggestion: str = "?") -> None:
        super().__init__(
            f"character {char!r} at position {position} is not in the char tokenizer's "
            f"vocabulary; train on text that holds it or pass --unknown-token with one of its "
            f"characters (e.g. {suggestion!r})"
        )
        self.char, self.position, self.suggestion = char, position, suggestion

    def __reduce__(self):  # rebuilt from its fields when it crosses to another process
        return type(self), (self.char, self.position, self.suggestion)


class CharTokenizer(Tokenizer):
    """One id per character; vocabulary = sorted distinct characters of the training text.

    Args:
        vocab: the characters in id order (single characters, plus `unknown_token`).
        unknown_token: what unseen characters map to; appended to vocab when not in it and may
            be several characters long ("[UNK]"). None makes unseen characters an error.

        tok = CharTokenizer.train(open("tinyshakespeare.txt").read())
        tok.encode_array("ROMEO:")  # array([30, 27, 25, 17, 27, 10])
    """

    kind = "char"

    def __init__(self, vocab: Sequence[str], unknown_token: str | None = None) -> None:
        vocab = list(vocab)
        if unknown_token == "":
            raise ConfigError("the unknown token cannot be empty; pass a character such as '?'")
        if unknown_token is not None and unknown_token not in vocab:
            vocab.append(unknown_token)
        for token in vocab:
            if len(token) != 1 and token != unknown_token:
                raise DataError(
                    f"char vocabulary entry {token!r} is not one character; retrain the tokenizer"
                )
        if len(set(vocab)) != len(vocab):
            raise DataError("char vocabulary repeats a character; retrain the tokenizer")
        self._vocab = vocab
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._is_extra_unk = unknown_token is not None and len(unknown_token) != 1
        self._build_table()
        self._set_special_tokens({"unk": unknown_token})

    def _build_table(self) -> None:
        # table[code point] = id, or -1; one extra -1 slot catches every code point above the
        # largest one in the vocabulary (encode_array clips to it); at least 256 slots, so
        # one-byte code points never need clipping
        points = [ord(c) for c in self._vocab if len(c) == 1]
        table = np.full(max(max(points, default=0) + 2, 256), -1, dtype=np.int64)
        for c in self._vocab:
            if len(c) == 1:
                table[ord(c)] = self._ids[c]
        self._table = table
        self._tables: dict[np.dtype, tuple[np.ndarray, int]] = {}  # the table in other dtypes

    def _table_for(self, dtype: np.dtype) -> tuple[np.ndarray, int] | None:
        """(the table in dtype, its value for a missing character), or None when the ids do
        not leave a spare value: -1 for signed dtypes, the largest value for unsigned ones."""
        if dtype == np.int64:
            return self._table, -1
        if dtype not in self._tables:
            if dtype.kind not in "iu" or len(self._vocab) > int(np.iinfo(dtype).max) + 1:
                raise ValueError(
                    f"{dtype} cannot hold the ids of a {len(self._vocab)}-entry vocabulary; "
                    "pass a wider integer dtype"
                )
            missing = -1 if dtype.kind == "i" else int(np.iinfo(dtype).max)
            fits = dtype.kind == "i" or len(self._vocab) <= missing  # a spare value is left
            table = np.where(self._table < 0, missing, self._table).astype(dtype) if fits else None
            self._tables[dtype] = (table, missing)
        table, missing = self._tables[dtype]
        return None if table is None else (table, missing)

    @classmethod
    def train(cls, texts: Iterable[str] | str, unknown_token: str | None = None) -> "CharTokenizer":
        """Vocabulary from the sorted distinct characters of texts (a string or strings)."""
        if isinstance(texts, str):
            texts = [texts]
        # code points counted with numpy, piece by piece: ~5x faster than set.update(text)
        seen = np.zeros(1 << 16, dtype=bool)  # code points below 65536
        wide: set[int] = set()  # those of pieces that need 4 bytes a character
        for text in texts:
            for start in range(0, len(text), _PIECE):
                points = code_points(text[start : start + _PIECE])
                if points.dtype == np.uint32:
                    wide.update(np.unique(points).tolist())
                else:
                    present = np.bincount(points) > 0
                    seen[: len(present)] |= present
        chars = {chr(point) for point in (*np.flatnonzero(seen).tolist(), *wide)}
        if not chars:
            raise DataError("no characters to train a char tokenizer on; pass non-empty text")
        return cls(sorted(chars), unknown_token=unknown_token)

    def stand_in(self) -> str:
        """A character of this vocabulary to suggest for --unknown-token: '?', ' ' or '_' when
        it has one, else its first."""
        return next((c for c in "? _" if c in self._ids), self._vocab[0])

    def with_unknown_token(self, token: str) -> "CharTokenizer":
        """This vocabulary, unseen characters mapped to `token`, which must be one of its
        entries: the ids stay those a model trained with this tokenizer knows."""
        if token == self.unk_token:
            return self
        if self.unk_token is not None:
            raise ConfigError(
                f"this char tokenizer already maps unseen characters to {self.unk_token!r}; "
                "drop --unknown-token"
            )
        if token not in self._ids:
            raise ConfigError(
                f"--unknown-token {token!r} is not a character of this char tokenizer, and "
                "adding it would change its vocabulary (and the ids its models expect); "
                f"pick one of its characters (e.g. {self.stand_in()!r}), or train a new tokenizer "
                "(`lmforge prepare --tokenizer char`)"
            )
        return CharTokenizer(self._vocab, unknown_token=token)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CharTokenizer":
        """Rebuild from the fields of a saved lmforge_tokenizer.json."""
        try:
            return cls(state["vocab"], unknown_token=state.get("unk_token"))
        except (KeyError, TypeError):
            raise DataError(
                "lmforge_tokenizer.json of kind 'char' has no valid 'vocab' list; save it again"
            ) from None

    # ---- encoding

    def encode_array(self, text: str, dtype: Any = np.int64) -> np.ndarray:
        """Ids of text as a `dtype` (int64) array, by a numpy lookup table (hundreds of MB/s).

        A narrow dtype (uint16 for `prepare`'s token files) is looked up directly, not
        converted afterwards.
        """
        dtype = np.dtype(dtype)
        lookup = self._table_for(dtype)
        if lookup is None:  # a vocabulary that fills the dtype: look up in int64, then narrow
            return self.encode_array(text).astype(dtype)
        table, missing_id = lookup
        points = code_points(text)
        if points.dtype != np.uint8 and points.size and points.max() >= len(table):
            points = np.minimum(points, len(table) - 1)  # above the table: its last slot
        ids = table.take(points)  # take, not fancy indexing nor mode="clip": the fastest here
        if ids.size and (ids.min() if missing_id == -1 else ids.max()) == missing_id:
            missing = ids == missing_id
            if self.unk_id is not None:
                ids[missing] = self.unk_id
            else:
                pos = int(missing.argmax())
                raise UnknownCharacterError(text[pos], pos, self.stand_in())
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of text, one per character."""
        return self.encode_array(text).tolist()

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        vocab = self._vocab
        if skip_special_tokens:
            skip = self.special_ids()
            return "".join(vocab[i] for i in ids if i not in skip)
        return "".join([vocab[i] for i in ids])

    # ---- vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def vocab(self) -> list[str]:
        """The vocabulary entries in id order (a copy)."""
        return list(self._vocab)

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def id_to_token(self, i: int) -> str | None:
        return self._vocab[i] if 0 <= i < len(self._vocab) else None

    def special_ids(self) -> set[int]:
        """The unknown token's id if it is a multi-character token; a lone character is text."""
        return {self.unk_id} if self._is_extra_unk else set()

    def _kind_state(self, directory: Path) -> dict[str, Any]:
        return {"vocab": self._vocab}

    # ---- Hugging Face form

    def to_hf_tokenizer(self):
        """The same tokenizer as a `tokenizers.Tokenizer` (what tokenizer.json holds): every
        character its own token with this vocabulary's ids; decoding joins them without
        spaces. transformers' AutoTokenizer loads it as a PreTrainedTokenizerFast."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab = dict(self._ids)
        # WordLevel needs an unknown token; with none, a spare name that no character encodes to
        unk = self.unk_token if self.unk_token is not None else "<unk-not-in-vocab>"
        tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
        # one piece per code point, newlines included, as encode() does
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok

    # ---- pickling: the lookup table is rebuilt rather than sent to worker processes

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_table"], state["_tables"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_table()
