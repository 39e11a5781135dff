"""Character tokenizer: sorted distinct characters <-> ids, with an optional unknown token.

`encode_array` is the fast path (a numpy lookup table indexed by code point); keep `encode`
and `decode` going through the same table and vocabulary so the two paths never disagree.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import Tokenizer

# utf-32 keeps lone surrogates (which Python strings may hold) instead of failing on them
_ENCODING, _ERRORS = "utf-32-le", "surrogatepass"


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
        # largest one in the vocabulary (encode_array clips to it)
        points = [ord(c) for c in self._vocab if len(c) == 1]
        table = np.full(max(points, default=0) + 2, -1, dtype=np.int64)
        for c in self._vocab:
            if len(c) == 1:
                table[ord(c)] = self._ids[c]
        self._table = table

    @classmethod
    def train(cls, texts: Iterable[str] | str, unknown_token: str | None = None) -> "CharTokenizer":
        """Vocabulary from the sorted distinct characters of texts (a string or strings)."""
        if isinstance(texts, str):
            texts = [texts]
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise DataError("no characters to train a char tokenizer on; pass non-empty text")
        return cls(sorted(chars), unknown_token=unknown_token)

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

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of text as int64, converted by a numpy lookup table (hundreds of MB/s)."""
        if text.isascii():  # O(1) in CPython; a quarter of the bytes to encode and index
            points = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        else:
            points = np.frombuffer(text.encode(_ENCODING, _ERRORS), dtype=np.uint32)
        table = self._table
        if points.size and points.max() >= len(table):
            points = np.minimum(points, len(table) - 1)
        ids = table[points]
        missing = ids < 0
        if missing.any():
            if self.unk_id is not None:
                ids[missing] = self.unk_id
            else:
                pos = int(missing.argmax())
                raise DataError(
                    f"character {text[pos]!r} at position {pos} is not in the char tokenizer's "
                    "vocabulary; train on text that holds it or pass --unknown-token (e.g. '?')"
                )
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

    # ---- pickling: the lookup table is rebuilt rather than sent to worker processes

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_table"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_table()
