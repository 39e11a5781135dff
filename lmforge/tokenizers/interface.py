"""The Tokenizer interface (encode, decode, vocab_size, special ids, save) and the names every
kind shares. Kind modules (char, word, subword) import this one; base.py loads and trains them.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import DataError
from lmforge.files import write_atomic

TOKENIZER_KINDS = ("char", "word", "bpe", "wordpiece", "unigram")

CONFIG_FILE = "lmforge_tokenizer.json"
HF_TOKENIZER_FILE = "tokenizer.json"
SPECIAL_ROLES = ("pad", "unk", "bos", "eos", "mask")

# Token strings that mark each role in tokenizers we did not train, first match wins. GPT-2 has
# only <|endoftext|>, which then serves as pad, bos and eos at once.
SPECIAL_CANDIDATES = {
    "pad": ("[PAD]", "<pad>", "<|endoftext|>"),
    "unk": ("[UNK]", "<unk>"),
    "bos": ("[CLS]", "[START]", "<s>", "[BOS]", "<|endoftext|>"),
    "eos": ("[SEP]", "[END]", "</s>", "[EOS]", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>"),
}


def detect_special_tokens(token_to_id: Callable[[str], int | None]) -> dict[str, str | None]:
    """Role -> token string ("pad" -> "[PAD]") for the first candidate the vocabulary holds."""
    found = {}
    for role, candidates in SPECIAL_CANDIDATES.items():
        found[role] = next((t for t in candidates if token_to_id(t) is not None), None)
    return found


class Tokenizer(ABC):
    """Text <-> integer ids. Subclasses set `kind` and call `_set_special_tokens` once built.

    Special ids (`pad_id`, `unk_id`, `bos_id`, `eos_id`, `mask_id`) are ints, or None where the
    tokenizer has no such token. Encoding never adds special tokens; packers do that.
    """

    kind: str = ""
    pad_token: str | None = None
    unk_token: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    mask_token: str | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    mask_id: int | None = None
    # What a Hugging Face folder's tokenizer_config.json and generation_config.json add, kept
    # when saved: prompts start with bos (Llama's tokenizers); the chat models' Jinja template;
    # more ids that end a text (generation_config's eos list: Llama 3's <|eot_id|>, ...).
    add_bos_token: bool = False
    chat_template: str | None = None
    extra_eos_ids: tuple[int, ...] = ()

    # ---- what each kind implements

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without special tokens."""

    @abstractmethod
    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Text of ids already checked to be in the vocabulary."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Id of one vocabulary entry, or None when it is not in the vocabulary."""

    @abstractmethod
    def id_to_token(self, i: int) -> str | None:
        """Vocabulary entry of one id, or None when the id is out of range."""

    @abstractmethod
    def _kind_state(self, directory: Path) -> dict[str, Any]:
        """Kind-specific fields of lmforge_tokenizer.json; may write more files to directory."""

    # ---- shared behaviour

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, in order."""
        return [self.encode(text) for text in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text` as a 1-D int64 array."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (a list, 1-D array or tensor of ints); special tokens kept by default."""
        ids = _as_id_list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if i < 0 or self.id_to_token(i) is None)
            raise DataError(
                f"token id {bad} is not in this {self.kind} tokenizer's vocabulary of "
                f"{self.vocab_size}; decode ids made with this tokenizer (or a model of that "
                "vocab_size)"
            )
        return self._decode(ids, skip_special_tokens)

    def special_ids(self) -> set[int]:
        """Ids of the special tokens (pad, unk, bos, eos, mask and any reserved ones)."""
        return {
            i
            for i in (self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id)
            if i is not None
        }

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a text: eos_id first, then the extra ones."""
        first = () if self.eos_id is None else (self.eos_id,)
        return first + tuple(i for i in self.extra_eos_ids if i != self.eos_id)

    def special_tokens(self) -> dict[str, str | None]:
        """Role -> token string, e.g. {"pad": "[PAD]", "unk": "[UNK]", "bos": None, ...}."""
        return {role: getattr(self, f"{role}_token") for role in SPECIAL_ROLES}

    def save(self, directory: str | Path) -> None:
        """Write lmforge_tokenizer.json (and tokenizer.json for library kinds) into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {"kind": self.kind}
        state.update({f"{role}_token": token for role, token in self.special_tokens().items()})
        state.update({name: value for name, value in self.metadata().items() if value})
        state.update(self._kind_state(directory))
        write_atomic(directory / CONFIG_FILE, json.dumps(state, ensure_ascii=False, indent=1))

    def metadata(self) -> dict[str, Any]:
        """add_bos_token, chat_template and extra_eos_ids, as saved (see set_metadata)."""
        return {
            "add_bos_token": self.add_bos_token,
            "chat_template": self.chat_template,
            "extra_eos_ids": list(self.extra_eos_ids),
        }

    def set_metadata(self, state: dict[str, Any]) -> None:
        """Take add_bos_token, chat_template and extra_eos_ids from a dict (absent: defaults);
        an extra eos id outside the vocabulary is an error."""
        self.add_bos_token = bool(state.get("add_bos_token", False))
        self.chat_template = state.get("chat_template") or None
        extra = tuple(int(i) for i in state.get("extra_eos_ids") or ())
        bad = [i for i in extra if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(
                f"eos id {bad[0]} is outside the {self.kind} tokenizer's vocabulary of "
                f"{self.vocab_size}; fix generation_config.json or lmforge_tokenizer.json"
            )
        self.extra_eos_ids = extra

    def _set_special_tokens(self, tokens: dict[str, str | None]) -> None:
        """Set `<role>_token` and `<role>_id` for every role; a token must be in the vocabulary."""
        for role in SPECIAL_ROLES:
            token = tokens.get(role)
            i = None if token is None else self.token_to_id(token)
            if token is not None and i is None:
                raise DataError(
                    f"{role} token {token!r} is not in the {self.kind} tokenizer's vocabulary; "
                    "fix lmforge_tokenizer.json or retrain the tokenizer"
                )
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_id", i)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _as_id_list(ids: Any) -> list[int]:
    """A list of Python ints from a list, tuple, 1-D numpy array or torch tensor."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]
