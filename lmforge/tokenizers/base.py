"""load_tokenizer and train_tokenizer: pick the kind module by name or by the files found.

The interface itself lives in interface.py (re-exported here); kind modules import that one, and
this module imports them inside the functions, so `import lmforge.tokenizers.char` never pulls in
`tokenizers`.
"""

import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.interface import (  # noqa: F401  (the interface's old import path)
    CONFIG_FILE,
    HF_TOKENIZER_FILE,
    SPECIAL_CANDIDATES,
    SPECIAL_ROLES,
    TOKENIZER_KINDS,
    Tokenizer,
    _as_id_list,
    detect_special_tokens,
    write_atomic,
)

# ---- loading


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a folder we saved, or a Hugging Face folder or tokenizer.json file.

    Recognised, in this order: lmforge_tokenizer.json; tokenizer.json; GPT-2's vocab.json +
    merges.txt (byte-level BPE); BERT's vocab.txt (lower-cased, accent-stripping WordPiece).

        tok = load_tokenizer("runs/wine")          # or "hf/distilgpt2", "hf/bert/vocab.txt"
        tok.decode(tok.encode("A crisp white."))
    """
    from lmforge.tokenizers import subword  # imports `tokenizers`; only the library kinds need it

    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder; pass a tokenizer folder or tokenizer.json"
        )
    if path.is_file():
        if path.name == CONFIG_FILE:
            return _load_saved(path.parent)
        if path.name == "vocab.txt":
            return subword.load_bert_vocab(path)
        if path.name in ("vocab.json", "merges.txt"):
            return _load_folder(path.parent)
        if path.name == HF_TOKENIZER_FILE:  # a model folder's: its metadata files sit beside
            return _with_hf_metadata(load_tokenizer_json(path), path.parent)
        if path.suffix == ".json":
            return load_tokenizer_json(path)
        raise DataError(
            f"{path}: not a tokenizer file; pass a folder, a tokenizer.json or a vocab.txt"
        )
    return _load_folder(path)


def _load_folder(folder: Path) -> Tokenizer:
    from lmforge.tokenizers import subword

    if (folder / CONFIG_FILE).is_file():
        return _load_saved(folder)
    if (folder / HF_TOKENIZER_FILE).is_file():
        return _with_hf_metadata(load_tokenizer_json(folder / HF_TOKENIZER_FILE), folder)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = subword.load_gpt2_files(folder / "vocab.json", folder / "merges.txt")
        return _with_hf_metadata(tok, folder)
    if (folder / "vocab.txt").is_file():
        return subword.load_bert_vocab(folder / "vocab.txt")
    raise DataError(
        f"{folder}: found none of {CONFIG_FILE}, {HF_TOKENIZER_FILE}, vocab.json + merges.txt, "
        "vocab.txt; pass a folder saved by lmforge or a Hugging Face model folder"
    )


def _read_json(path: Path) -> dict:
    """A JSON object file, or {} when it is absent; DataError when it is not valid JSON."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); download or export it again") from None
    return data if isinstance(data, dict) else {}


def _with_hf_metadata(tok: Tokenizer, folder: Path) -> Tokenizer:
    """A Hugging Face folder's tokenizer with what tokenizer_config.json says (special tokens,
    add_bos_token, chat_template) and generation_config.json's eos ids (one or a list)."""
    config = _read_json(folder / "tokenizer_config.json")
    special = tok.special_tokens()
    for role in SPECIAL_ROLES:  # a token it names; null or absent: the detected one stays
        token = config.get(f"{role}_token")  # (GPT-2's null pad: <|endoftext|> pads, as ever)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and tok.token_to_id(token) is not None:
            special[role] = token
    tok._set_special_tokens(special)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (folder / "chat_template.jinja").is_file():  # transformers >= 4.51
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    eos = _read_json(folder / "generation_config.json").get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else [i for i in eos or () if isinstance(i, int)]
    if tok.eos_id is None and eos and tok.id_to_token(eos[0]) is not None:
        tok._set_special_tokens({**tok.special_tokens(), "eos": tok.id_to_token(eos[0])})
    tok.set_metadata(
        {
            "add_bos_token": config.get("add_bos_token", False) and tok.bos_id is not None,
            "chat_template": template if isinstance(template, str) else None,
            "extra_eos_ids": [i for i in eos if i != tok.eos_id],
        }
    )
    return tok


def _load_saved(folder: Path) -> Tokenizer:
    try:
        state = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        kind = state["kind"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{folder / CONFIG_FILE}: unreadable ({e}); save the tokenizer again"
        ) from None
    special = {role: state.get(f"{role}_token") for role in SPECIAL_ROLES}
    if kind == "char":
        from lmforge.tokenizers.char import CharTokenizer

        tok = CharTokenizer.from_state(state)
        tok.set_metadata(state)
        return tok
    if kind not in TOKENIZER_KINDS:
        raise DataError(
            f"{folder / CONFIG_FILE}: unknown tokenizer kind {kind!r}; expected one of "
            f"{', '.join(TOKENIZER_KINDS)}"
        )

    if not (folder / HF_TOKENIZER_FILE).is_file():
        raise DataError(
            f"{folder}: {CONFIG_FILE} says kind {kind!r} but {HF_TOKENIZER_FILE} is missing; "
            "save the tokenizer again"
        )
    tok = load_tokenizer_json(folder / HF_TOKENIZER_FILE, kind=kind, special=special)
    tok.set_metadata(state)
    return tok


def load_tokenizer_json(
    path: Path, kind: str | None = None, special: dict[str, str | None] | None = None
) -> Tokenizer:
    """A tokenizer.json file; kind comes from its model type when not given."""
    from lmforge.tokenizers import subword

    tok, kind = subword.read_tokenizer_json(path, kind)
    if kind == "word":
        from lmforge.tokenizers.word import WordTokenizer

        return WordTokenizer(tok, special)
    return subword.SubwordTokenizer(tok, kind, special)


# ---- training


def train_tokenizer(
    kind: str, texts: Iterable[str], vocab_size: int | None = None, **options: Any
) -> Tokenizer:
    """Train a tokenizer of `kind` (one of TOKENIZER_KINDS) on texts.

    Args:
        texts: strings (documents or lines); a single string is one text, not many.
        vocab_size: size including special tokens; None takes the kind's default
            (word 10000, bpe 8000, wordpiece 20000, unigram 8000). Not allowed for char.
        options: the kind's trainer options, e.g. unknown_token for char, lowercase for wordpiece.

        tok = train_tokenizer("bpe", ["some text", "more text"], vocab_size=1000)
    """
    if kind not in TOKENIZER_KINDS:
        raise ConfigError(
            f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}"
        )
    if isinstance(texts, str):
        texts = [texts]
    if kind == "char":
        from lmforge.tokenizers.char import CharTokenizer

        if vocab_size is not None:
            raise ConfigError(
                "a char tokenizer's vocabulary is the set of characters in the text; "
                "drop vocab_size (--vocab-size)"
            )
        trainer = CharTokenizer.train
    elif kind == "word":
        from lmforge.tokenizers.word import WordTokenizer

        trainer = WordTokenizer.train
    else:
        from lmforge.tokenizers import subword

        trainer = {
            "bpe": subword.train_bpe,
            "wordpiece": subword.train_wordpiece,
            "unigram": subword.train_unigram,
        }[kind]
    known = [p for p in inspect.signature(trainer).parameters if p not in ("texts", "vocab_size")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for a {kind} tokenizer; "
            f"known: {', '.join(known) or 'none'}"
        )
    if vocab_size is not None:
        options["vocab_size"] = vocab_size
    return trainer(texts, **options)
