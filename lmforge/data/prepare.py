"""`prepare`: split a corpus, train or load a tokenizer, encode to memory-mapped token files.

A prepared folder holds `meta.json`, the tokenizer files, `{train,val}.bin` (flat token ids,
uint16 when the vocabulary fits), `{split}_offsets.npy` (document starts) and `{split}_labels.npy`.
The folder is written under a temporary name and renamed, so it is either complete or absent.
"""

import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from dataclasses import field as option
from pathlib import Path

import numpy as np

from lmforge import __version__, progress
from lmforge.data.corpus import Document, Source, open_source
from lmforge.errors import ConfigError, DataError
from lmforge.files import write_folder_atomic
from lmforge.system import usable_cpus
from lmforge.tokenizers.base import TOKENIZER_KINDS, Tokenizer, load_tokenizer, train_tokenizer
from lmforge.tokenizers.char import CharTokenizer, UnknownCharacterError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_VAL_SPLITS = {"val", "valid", "validation", "test", "dev"}
_CHUNK_CHARS = 1 << 20  # a single text file is read, and encoded, in pieces of this size
# `tokenizers` (0.23) encodes a 1M-character input about 1.5x slower per character than 64K ones
# (timed by hand on IMDB text), so a piece is cut further where the tokenizer allows (_cut_rule)
_PIECE_CHARS = 1 << 16
_TASK_CHARS = 1 << 20  # text handed to one encoding call (one worker task)
_KEEP_CHARS = 1 << 26  # a single text up to this size is decoded once, kept, not read again


@dataclass
class PrepareConfig:
    """Options of `lmforge prepare` (and of the on-the-fly preparation in `train`)."""

    data: str = option(
        default="", metadata={"help": "a file, folder or dataset name", "required": True}
    )
    tokenizer: str = option(
        default="char", metadata={"help": f"{'|'.join(TOKENIZER_KINDS)} or a tokenizer folder"}
    )
    vocab_size: int | None = option(
        default=None, metadata={"help": "for trained tokenizers; None takes the kind's default"}
    )
    field: str | None = option(
        default=None, metadata={"help": "CSV column, dotted JSON path or '{a} : {b}' template"}
    )
    label_field: str | None = option(default=None, metadata={"help": "column/field with labels"})
    normalize_labels: bool = option(
        default=False,
        metadata={
            "help": "strip and lower-case labels, so 'Positive ' and 'positive' are one class"
        },
    )
    val_fraction: float = option(
        default=0.1,
        metadata={
            "help": "held-out share; a source's own test split wins, 0 keeps everything for train"
        },
    )
    seed: int = option(default=0, metadata={"help": "seed of the document split"})
    encoding: str = option(default="utf-8", metadata={"help": "text encoding of the input"})
    errors: str = option(
        default="strict",
        metadata={"help": "strict|replace|ignore: what to do with undecodable bytes"},
    )
    unknown_token: str | None = option(
        default=None,
        metadata={
            "help": "char tokenizer: map unseen characters to this token (one of its own "
            "characters, for a saved tokenizer)"
        },
    )
    num_proc: int = option(
        default=1,
        metadata={
            "help": "encoding processes; 1 encodes in this process on threads (the tokenizers "
            "library's, or one per core for char, whose fastest setting this is)"
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.errors not in ("strict", "replace", "ignore"):
            raise ConfigError(f"--errors {self.errors!r}: use strict, replace or ignore")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ConfigError(f"--vocab-size {self.vocab_size} must be positive")
        if self.num_proc < 1:
            raise ConfigError(f"--num-proc {self.num_proc} must be 1 or more")


# ---------------------------------------------------------------- reading a prepared folder


class UnseenCharacterError(DataError):
    """Text holding a character that the saved char tokenizer it is encoded with lacks."""

    def __init__(self, where: str, char: str, tokenizer: str, known: str, retrain: bool = True):
        fix = ", or --tokenizer char to train a tokenizer on this text" if retrain else ""
        super().__init__(
            f"{where} holds {char!r} (U+{ord(char):04X}), which the char tokenizer in "
            f"{tokenizer} lacks; pass --unknown-token with one of its characters (e.g. "
            f"{known!r}) to map unseen ones there{fix}"
        )
        self.args_ = (where, char, tokenizer, known)

    def without_retrain(self) -> "UnseenCharacterError":
        """The same error for a verb that cannot train a tokenizer (eval): no --tokenizer."""
        return UnseenCharacterError(*self.args_, retrain=False)

    def __reduce__(self):
        return type(self), self.args_


class PreparedData:
    """A prepared folder: memory-mapped tokens, document offsets, labels and the tokenizer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(
                f"{self.path} is not a prepared data folder (no meta.json): "
                "run `lmforge prepare --data SRC --out DIR` first"
            )
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT_VERSION:
            raise DataError(
                f"{self.path} was prepared by an incompatible lmforge version "
                f"{self.meta.get('lmforge_version')}: prepare it again"
            )
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path / "tokenizer")
        return self._tokenizer

    @property
    def source_fingerprint(self) -> str | None:
        """sha256 over the source files' bytes, their names and the reading options (not a
        file's own sha256); older meta.json files call it source_sha256."""
        return self.meta.get("source_fingerprint", self.meta.get("source_sha256"))

    @property
    def label_names(self) -> list[str] | None:
        return self.meta.get("labels")

    @property
    def doc_separator(self) -> int | None:
        return self.meta.get("doc_separator")

    def num_tokens(self, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"])

    def tokens(self, split: str) -> np.ndarray:
        """The split's flat token ids as a read-only memory map."""
        info = self.meta["splits"][split]
        if info["tokens"] == 0:
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.path / info["file"], dtype=self.meta["dtype"], mode="r")

    def offsets(self, split: str) -> np.ndarray | None:
        """Start of each document in `tokens(split)`, plus the end: (num_docs + 1,) int64."""
        name = self.meta["splits"][split].get("offsets")
        return None if name is None else np.load(self.path / name)

    def labels(self, split: str) -> np.ndarray | None:
        name = self.meta["splits"][split].get("labels")
        return None if name is None else np.load(self.path / name)

    def documents(self, split: str) -> list[np.ndarray]:
        """Each document's ids without the separator token (views into the memory map)."""
        toks, offs = self.tokens(split), self.offsets(split)
        if offs is None:
            return [toks]
        sep = 1 if self.doc_separator is not None else 0
        return [toks[a : b - sep] for a, b in zip(offs[:-1], offs[1:])]


# ---------------------------------------------------------------- preparing


def prepare(config: PrepareConfig, out: str | Path) -> PreparedData:
    """Prepare `config.data` into folder `out`, reusing it when input and options are unchanged.

    Example:
        data = prepare(PrepareConfig(data="tinyshakespeare", tokenizer="char"), "prep/shakes")
        data.tokens("train")[:10]
    """
    out = Path(out)
    _check_tokenizer_options(config)
    source = open_source(
        config.data,
        field=config.field,
        label_field=config.label_field,
        encoding=config.encoding,
        errors=config.errors,
    )
    meta_path = out / "meta.json"
    if out.exists() and not meta_path.is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"output folder {out} exists and is not a prepared data folder: "
            "choose another --out or empty it"
        )
    with ThreadPoolExecutor(1) as hasher:
        # hashing every input byte (the GIL released) overlaps the reading and encoding below;
        # only the reuse check and meta.json need its result
        fingerprint = hasher.submit(source.fingerprint)
        if meta_path.is_file() and _stored_key(meta_path) == _cache_key(
            config, fingerprint.result()
        ):
            log.info("reusing %s (input and options unchanged)", out)
            return PreparedData(out)

        def fill(tmp: Path) -> None:
            meta = _write(config, source, tmp)
            meta["source_fingerprint"] = fingerprint.result()
            meta["key"] = _cache_key(config, meta["source_fingerprint"])
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

        write_folder_atomic(out, fill)
    return PreparedData(out)


def _stored_key(meta_path: Path) -> str | None:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    return meta.get("key") if isinstance(meta, dict) else None


def cache_key(config: PrepareConfig, source: Source) -> str:
    """Hash of the input bytes and every option that changes the output."""
    return _cache_key(config, source.fingerprint())


def _cache_key(config: PrepareConfig, fingerprint: str) -> str:
    opts = asdict(config)
    opts.pop("num_proc")
    opts.pop("data")
    if config.tokenizer not in TOKENIZER_KINDS and Path(config.tokenizer).exists():
        opts["tokenizer_files"] = _hash_tree(Path(config.tokenizer))
    blob = json.dumps([FORMAT_VERSION, fingerprint, opts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_tree(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _check_tokenizer_options(config: PrepareConfig) -> None:
    """Fail before reading the corpus on a tokenizer that does not exist or a useless option."""
    name = config.tokenizer
    if config.unknown_token is not None and name in TOKENIZER_KINDS and name != "char":
        raise ConfigError(
            f"--unknown-token applies to char tokenizers; a {name} tokenizer handles unseen "
            "text itself: drop --unknown-token"
        )
    if name in TOKENIZER_KINDS or Path(name).exists():
        if config.vocab_size is not None and (name == "char" or name not in TOKENIZER_KINDS):
            what = "a char tokenizer's is the set of characters in the text"
            if name != "char":
                what = f"the tokenizer in {name} has its own"
            raise ConfigError(f"--vocab-size does not apply: {what}; drop --vocab-size")
        return
    if os.sep in name or "/" in name:
        raise ConfigError(
            f"tokenizer folder {name} does not exist; check the path, or pass one of "
            f"{', '.join(TOKENIZER_KINDS)} to train a tokenizer"
        )
    raise ConfigError(
        f"unknown tokenizer {name!r}: use one of {', '.join(TOKENIZER_KINDS)} "
        "or the path of a tokenizer folder"
    )


def _write(config: PrepareConfig, source: Source, tmp: Path) -> dict:
    """Write the tokenizer and token files into tmp; return meta.json's content, less the key
    and the source's sha256."""
    if source.is_single_text:
        corpus, docs = _TextSplit(source, config.val_fraction), None
    else:
        corpus = docs = _DocumentSplit(
            source, config.val_fraction, config.seed, config.normalize_labels
        )
    # each units() call streams the source again: its texts are never all held in memory
    train_texts = (text for split, text in corpus.units() if split == "train")
    every_text = (text for _, text in corpus.units())
    tokenizer = _get_tokenizer(config, train_texts, every_text)
    tokenizer.save(tmp / "tokenizer")
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    sep = tokenizer.eos_id if docs is not None else None

    encoder = _TaskEncoder(tokenizer, dtype, sep)
    try:
        counts = _encode(encoder, corpus, tmp, config.num_proc, docs is not None)
    except UnknownCharacterError as exc:  # its position is within one piece: no use here
        raise UnseenCharacterError(
            source.description, exc.char, config.tokenizer, exc.suggestion
        ) from None
    if counts["train"][0] == 0:
        raise DataError(
            f"{config.data}: the training split holds no tokens; "
            "use a larger corpus or a smaller --val-fraction"
        )
    splits = {}
    for name in ("train", "val"):
        num_tokens, lengths = counts[name]
        info = {"file": f"{name}.bin", "tokens": num_tokens}
        if docs is not None:
            info["documents"] = len(lengths)  # one length per document
            info["offsets"] = f"{name}_offsets.npy"
            np.save(tmp / info["offsets"], np.concatenate([[0], np.cumsum(lengths)]))
            if docs.labels is not None:
                info["labels"] = f"{name}_labels.npy"
                np.save(tmp / info["labels"], docs.label_ids[docs.is_val == (name == "val")])
        splits[name] = info

    return {
        "format": FORMAT_VERSION,
        "lmforge_version": __version__,
        "key": None,
        "source": source.description,
        "source_fingerprint": None,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "doc_separator": sep,
        "labels": docs.labels if docs is not None else None,
        "splits": splits,
        "options": {k: v for k, v in asdict(config).items() if k != "num_proc"},
    }


class _TextSplit:
    """One long text, streamed from its file: train is the head, val the tail from a line start.

    The cut is the first line start at or after (1 - val_fraction) of the characters, found
    while streaming; a tail without a line start is cut inside its line. Counting the
    characters reads the file once; a text of up to _KEEP_CHARS is kept rather than read again.
    The progress bar counts the file's bytes (total_bytes).
    """

    def __init__(self, source: Source, val_fraction: float):
        self.source = source
        self.total_bytes = sum(path.stat().st_size for path, _, _ in source.files)
        self.total_chars, kept = 0, []
        for chunk in source.iter_chunks(_CHUNK_CHARS):
            self.total_chars += len(chunk)
            if kept is not None:
                kept.append(chunk)
                kept = kept if self.total_chars <= _KEEP_CHARS else None
        self._kept = kept
        self.target = int(self.total_chars * (1.0 - val_fraction))
        if val_fraction > 0 and self.target == 0:
            raise DataError(
                f"{source.description} is too short to split into train and validation "
                f"({self.total_chars} characters); give a longer corpus or pass --val-fraction 0"
            )

    def units(self) -> Iterator[tuple[str, str]]:
        """("train", piece)... then ("val", piece)...; joined, the pieces are the whole text."""
        pos, cut = 0, None
        chunks = self._kept if self._kept is not None else self.source.iter_chunks(_CHUNK_CHARS)
        for chunk in chunks:
            end = pos + len(chunk)
            if cut is None and end > self.target:
                at = chunk.find("\n", self.target - pos)
                cut = end if at < 0 else pos + at + 1
                if cut == self.total_chars:
                    cut = self.target
            if cut is None or end <= cut:
                yield "train", chunk
            elif pos >= cut:
                yield "val", chunk
            else:
                if cut > pos:
                    yield "train", chunk[: cut - pos]
                yield "val", chunk[cut - pos :]
            pos = end


class _DocumentSplit:
    """Documents streamed from their source, each routed to train or val as it goes by.

    A first pass keeps no text: it counts the documents with text and notes each one's label
    and whether the source puts it in a test/validation split (a few bytes a document). Val is
    that split when the source has one, else a seeded random val_fraction of the documents.
    Every units() call then reads the source again. (A JSON array, unlike JSONL, is parsed
    whole by the source each time: JSON cannot be read record by record with the standard
    library.)
    """

    def __init__(
        self, source: Source, val_fraction: float, seed: int, normalize_labels: bool = False
    ):
        self.source = source
        self.normalize_labels = normalize_labels
        self.total_bytes = self.total_chars = 0  # the bytes count the text in UTF-8
        codes: dict[str, int] = {}  # label -> code, in order of first appearance
        label_codes, in_val_split = array("i"), bytearray()
        num_unlabelled = 0
        for doc, label in self._documents():
            if label == "":
                num_unlabelled += 1
                continue
            self.total_bytes += _utf8_len(doc.text)
            self.total_chars += len(doc.text)
            label_codes.append(-1 if label is None else codes.setdefault(label, len(codes)))
            in_val_split.append(doc.split in _VAL_SPLITS)
        num_docs = len(label_codes)
        if num_unlabelled:
            log.warning(
                "%s of %s labelled texts in %s have an empty label and were left out; give "
                "them a label to use them",
                f"{num_unlabelled:,}",
                f"{num_docs + num_unlabelled:,}",
                source.description,
            )
        self.is_val = _choose_val(source, num_docs, in_val_split, val_fraction, seed)
        names = sorted(codes)
        self.labels: list[str] | None = names or None  # meta.json's label names
        # each document's index into the sorted names, -1 when unlabelled (code -1: the last)
        code_to_id = np.array([names.index(label) for label in codes] + [-1], dtype=np.int64)
        self.label_ids = code_to_id[np.frombuffer(label_codes, dtype=np.int32)]
        if names:
            counts = np.bincount(self.label_ids[self.label_ids >= 0], minlength=len(names))
            _warn_near_duplicate_labels(names, counts)
        if len(names) == 1:
            raise DataError(
                f"labelled data has only the label {names}: a classifier needs at least two classes"
            )

    def _documents(self) -> Iterator[tuple[Document, str | None]]:
        """(document, its label) of the documents with text; the label is None for unlabelled
        data, "" where a labelled row left it empty (or blank), stripped and lower-cased with
        normalize_labels."""
        labelled = bool(self.source.label_field)  # its empty labels come as None
        for doc in self.source.iter_documents():
            if not doc.text:
                continue
            label = doc.label if doc.label is not None or not labelled else ""
            if label is not None and self.normalize_labels:
                label = label.strip().lower()
            yield doc, (label if label is None or label.strip() else "")

    def units(self) -> Iterator[tuple[str, str]]:
        """("train" or "val", text) per document kept, in the source's order."""
        kept = (doc for doc, label in self._documents() if label != "")
        for doc, is_val in zip(kept, self.is_val):
            yield ("val" if is_val else "train"), doc.text


def _warn_near_duplicate_labels(names: list[str], counts: np.ndarray) -> None:
    """Warn (with row counts) about labels that differ only in case or surrounding spaces:
    each is a class of its own unless --normalize-labels merges them."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.strip().lower(), []).append(name)
    for spellings in groups.values():
        if len(spellings) > 1:
            seen = ", ".join(f"{n!r} ({counts[names.index(n)]:,} rows)" for n in spellings)
            log.warning(
                "labels %s differ only in case or spaces and are %d separate classes; pass "
                "--normalize-labels to strip and lower-case labels",
                seen,
                len(spellings),
            )


def _choose_val(
    source: Source, num_docs: int, in_val_split: bytearray, val_fraction: float, seed: int
) -> np.ndarray:
    """Which documents go to val: (num_docs,) bool."""
    if num_docs == 0:
        raise DataError(f"{source.description} holds no text: give a corpus with text in it")
    is_val = np.frombuffer(in_val_split, dtype=bool).copy()
    if val_fraction == 0:
        return np.zeros(num_docs, dtype=bool)
    if is_val.any():  # the source's own split, e.g. IMDB's test
        if is_val.all():
            raise DataError(
                f"{source.description}: every document is in a test/validation split, so none "
                "is left to train on; add training documents or pass --val-fraction 0"
            )
        return is_val
    if num_docs < 2:
        raise DataError(
            f"{source.description} holds a single document, too few to split into train and "
            "validation; give more documents or pass --val-fraction 0"
        )
    rng = np.random.default_rng(seed)
    num_val = min(num_docs - 1, max(1, round(num_docs * val_fraction)))
    is_val[rng.permutation(num_docs)[:num_val]] = True
    return is_val


def _utf8_len(text: str) -> int:
    """Bytes of text in UTF-8 (what the progress bar counts), without encoding ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _get_tokenizer(config: PrepareConfig, train_texts, every_text) -> Tokenizer:
    kind = config.tokenizer
    if kind not in TOKENIZER_KINDS:
        tokenizer = load_tokenizer(kind)
        if config.unknown_token is None:
            return tokenizer
        if not isinstance(tokenizer, CharTokenizer):
            raise ConfigError(
                f"--unknown-token applies to char tokenizers, and {kind} holds a "
                f"{tokenizer.kind} one, which handles unseen text itself: drop --unknown-token"
            )
        return tokenizer.with_unknown_token(config.unknown_token)
    if kind == "char":
        # The character set is a property of the whole corpus: an unseen validation character
        # would otherwise stop evaluation, and it leaks nothing a model could exploit.
        return train_tokenizer("char", every_text, unknown_token=config.unknown_token)
    return train_tokenizer(kind, train_texts, vocab_size=config.vocab_size)


# ---------------------------------------------------------------- encoding

_SAFE_NEWLINE = re.compile(r"(?<=\S)\n(?=\S)")
# parts of a tokenizer.json pipeline that treat the text either side of such a newline apart
_LINE_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
_LINE_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}


def _cut_rule(tokenizer: Tokenizer) -> str | None:
    """Where a text can be cut without changing its ids: "anywhere" (char), "lines" (after a
    newline with a non-space character on both sides) or None (only whole pieces)."""
    if tokenizer.kind == "char":
        return "anywhere"
    lib = getattr(tokenizer, "tokenizer", None)  # the `tokenizers.Tokenizer` of library kinds
    if lib is None:
        return None
    spec = json.loads(lib.to_str())

    def allows(part: dict | None, names: set[str]) -> bool:
        if part is None:
            return True
        if part["type"] == "Sequence":
            members = part.get("normalizers") or part.get("pretokenizers") or []
            return all(allows(p, names) for p in members)
        if part["type"] == "ByteLevel":  # GPT-2's regex ends every pre-token at such a newline
            return not part.get("add_prefix_space", True) and part.get("use_regex", True)
        return part["type"] in names

    added_ok = all(
        not t.get("lstrip") and not t.get("rstrip") and "\n" not in t["content"]
        for t in spec.get("added_tokens") or []
    )
    if (
        added_ok
        and allows(spec.get("normalizer"), _LINE_NORMALIZERS)
        and allows(spec.get("pre_tokenizer"), _LINE_PRE_TOKENIZERS)
    ):
        return "lines"
    return None


def _cut(text: str, rule: str | None, size: int | None = None) -> list[str]:
    """text in pieces of about `size` (_PIECE_CHARS) characters, cut only where `rule` allows."""
    size = size or _PIECE_CHARS
    if rule is None or len(text) <= size:
        return [text]
    if rule == "anywhere":
        return [text[i : i + size] for i in range(0, len(text), size)]
    pieces, start = [], 0
    while len(text) - start > size:
        found = _SAFE_NEWLINE.search(text, start + size)
        if found is None:
            break
        pieces.append(text[start : found.end()])
        start = found.end()
    pieces.append(text[start:])
    return pieces


def _encode_ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    lib = getattr(tokenizer, "tokenizer", None)
    # tokenizers >= 0.20: ids without the character offsets, which cost time on long texts
    fast = getattr(lib, "encode_batch_fast", None)
    if fast is None:
        return tokenizer.encode_batch(texts)
    return [e.ids for e in fast(texts, add_special_tokens=False)]


class _TaskEncoder:
    """Encodes a list of texts in one library call; picklable, so a worker process can run it."""

    def __init__(self, tokenizer: Tokenizer, dtype, sep: int | None):
        self.tokenizer, self.dtype, self.sep = tokenizer, np.dtype(dtype), sep
        self.rule = _cut_rule(tokenizer)
        self.uses_numpy = tokenizer.kind == "char"  # a numpy lookup, not a library call

    def __call__(self, texts: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """(ids of the texts one after another, each followed by sep, in one or more arrays;
        tokens per text)."""
        pieces, owners = [], []
        for i, text in enumerate(texts):
            parts = _cut(text, self.rule)
            pieces += parts
            owners += [i] * len(parts)
        if self.tokenizer.kind == "char":  # one id per character, looked up in self.dtype
            arrays = [self.tokenizer.encode_array(p, self.dtype) for p in pieces]
            counts = [len(a) for a in arrays]
            if self.sep is None:  # written as they are: no copy into one array
                return arrays, _sum_by_owner(len(texts), owners, counts)
            ids = np.concatenate(arrays) if arrays else np.zeros(0, self.dtype)
        else:
            id_lists = _encode_ids(self.tokenizer, pieces)
            counts = [len(x) for x in id_lists]
            flat = itertools.chain.from_iterable(id_lists)
            ids = np.fromiter(flat, dtype=self.dtype, count=sum(counts))
        lengths = _sum_by_owner(len(texts), owners, counts)
        if self.sep is None:
            return [ids], lengths
        lengths += 1
        ends = np.cumsum(lengths) - 1  # where each separator goes
        out = np.full(int(lengths.sum()), self.sep, dtype=self.dtype)
        is_text = np.ones(len(out), dtype=bool)
        is_text[ends] = False
        out[is_text] = ids
        return [out], lengths


def _sum_by_owner(num_texts: int, owners: list[int], counts: list[int]) -> np.ndarray:
    """Tokens per text, from the token counts of its pieces."""
    lengths = np.zeros(num_texts, dtype=np.int64)
    np.add.at(lengths, owners, counts)
    return lengths


_worker_encoder: _TaskEncoder | None = None


def _init_worker(encoder: _TaskEncoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    # one thread per worker process: --num-proc N means N busy cores, not N x the library's pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _run_in_worker(texts: list[str]):
    return _worker_encoder(texts)


def _tasks(units: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """(split, texts) groups of about _TASK_CHARS characters, each of one split, in order."""
    batches: dict[str, list[str]] = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    for split, text in units:
        batches[split].append(text)
        sizes[split] += len(text)
        if sizes[split] >= _TASK_CHARS:
            yield split, batches[split]
            batches[split], sizes[split] = [], 0
    for split, batch in batches.items():
        if batch:
            yield split, batch


def _encode(
    encoder: _TaskEncoder,
    corpus: "_TextSplit | _DocumentSplit",
    folder: Path,
    num_proc: int,
    keep_lengths: bool,
) -> dict[str, tuple[int, np.ndarray]]:
    """Encode corpus.units() into folder/{train,val}.bin; per split (tokens, tokens per unit).

    The progress bar shows bytes (corpus.total_bytes in all), advanced in proportion to the
    characters encoded: counting each text's bytes would cost as much as a char lookup.

    With num_proc 1 a task is encoded in this process: a subword one by the tokenizers library
    over its own threads (helper threads of ours measured slower: the GIL), char ones by a
    thread per core (numpy's lookup runs without the GIL). With more, a pool of worker
    processes does. Either way a few tasks are in flight, finished in order, so the memory
    used stays flat.
    """
    written = {"train": 0, "val": 0}
    lengths: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    threads = usable_cpus() if num_proc == 1 and encoder.uses_numpy else 0
    window = 2 * max(num_proc, threads)
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(open(folder / f"{s}.bin", "wb")) for s in written}
        total_bytes, total_chars = corpus.total_bytes, corpus.total_chars
        pbar = stack.enter_context(progress.bar(total_bytes, "encode", "B", unit_scale=True))
        if num_proc > 1:
            # spawn, not fork: the tokenizers library's threads do not survive a fork
            pool = mp.get_context("spawn").Pool(num_proc, _init_worker, (encoder,))
            stack.callback(pool.terminate)
        if threads > 1:
            helpers = stack.enter_context(ThreadPoolExecutor(threads))
            stack.callback(helpers.shutdown, cancel_futures=True)  # on an error: drop the queue

        def submit(texts: list[str]) -> Callable:
            if num_proc > 1:
                return pool.apply_async(_run_in_worker, (texts,)).get
            if threads > 1:
                return helpers.submit(encoder, texts).result
            result = encoder(texts)
            return lambda: result

        pending: deque = deque()

        done_chars = 0

        def finish_one() -> None:
            nonlocal done_chars
            split, num_chars, result = pending.popleft()
            arrays, task_lengths = result()
            for ids in arrays:
                files[split].write(ids.data)
                written[split] += len(ids)
            if keep_lengths:
                lengths[split].append(task_lengths)
            done_chars += num_chars
            pbar.update(done_chars * total_bytes // max(total_chars, 1) - pbar.n)

        for split, texts in _tasks(corpus.units()):
            pending.append((split, sum(map(len, texts)), submit(texts)))
            if len(pending) >= window:
                finish_one()
        while pending:
            finish_one()
    return {
        s: (written[s], np.concatenate(lengths[s]) if lengths[s] else np.zeros(0, np.int64))
        for s in written
    }
