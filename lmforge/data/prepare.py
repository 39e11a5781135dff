"""`prepare`: split a corpus, train or load a tokenizer, encode to memory-mapped token files.

A prepared folder holds `meta.json`, the tokenizer files, `{train,val}.bin` (flat token ids,
uint16 when the vocabulary fits), `{split}_offsets.npy` (document starts) and `{split}_labels.npy`.
The folder is written under a temporary name and renamed, so it is either complete or absent.
"""

import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from dataclasses import field as option
from pathlib import Path

import numpy as np

from lmforge import __version__, progress
from lmforge.data.corpus import Source, open_source
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import TOKENIZER_KINDS, Tokenizer, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_VAL_SPLITS = {"val", "valid", "validation", "test", "dev"}
_CHUNK_CHARS = 1 << 20  # text handed to one worker task


@dataclass
class PrepareConfig:
    """Options of `lmforge prepare` (and of the on-the-fly preparation in `train`)."""

    data: str = option(default="", metadata={"help": "a file, folder or dataset name"})
    tokenizer: str = option(
        default="char", metadata={"help": f"{'|'.join(TOKENIZER_KINDS)} or a tokenizer folder"}
    )
    vocab_size: int | None = option(default=None, metadata={"help": "for trained tokenizers"})
    field: str | None = option(
        default=None, metadata={"help": "CSV column, dotted JSON path or '{a} : {b}' template"}
    )
    label_field: str | None = option(default=None, metadata={"help": "column/field with labels"})
    val_fraction: float = option(default=0.1, metadata={"help": "held-out share"})
    seed: int = option(default=0, metadata={"help": "seed of the document split"})
    encoding: str = option(default="utf-8", metadata={"help": "text encoding of the input"})
    errors: str = option(
        default="strict", metadata={"help": "strict|replace: what to do with undecodable bytes"}
    )
    unknown_token: str | None = option(
        default=None, metadata={"help": "char tokenizer: map unseen characters to this token"}
    )
    num_proc: int | None = option(default=None, metadata={"help": "encoding processes"})

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.errors not in ("strict", "replace", "ignore"):
            raise ConfigError(f"--errors {self.errors!r}: use strict, replace or ignore")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ConfigError(f"--vocab-size {self.vocab_size} must be positive")


# ---------------------------------------------------------------- reading a prepared folder


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
    source = open_source(
        config.data,
        field=config.field,
        label_field=config.label_field,
        encoding=config.encoding,
        errors=config.errors,
    )
    key = cache_key(config, source)
    if out.exists():
        meta = out / "meta.json"
        if meta.is_file():
            try:
                if json.loads(meta.read_text()).get("key") == key:
                    log.info("reusing %s (input and options unchanged)", out)
                    return PreparedData(out)
            except json.JSONDecodeError:
                pass
        elif not out.is_dir() or any(out.iterdir()):
            raise DataError(
                f"output folder {out} exists and is not a prepared data folder: "
                "choose another --out or empty it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write(config, source, key, tmp)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PreparedData(out)


def cache_key(config: PrepareConfig, source: Source) -> str:
    """Hash of the input bytes and every option that changes the output."""
    opts = asdict(config)
    opts.pop("num_proc")
    opts.pop("data")
    if config.tokenizer not in TOKENIZER_KINDS and Path(config.tokenizer).exists():
        opts["tokenizer_files"] = _hash_tree(Path(config.tokenizer))
    blob = json.dumps([FORMAT_VERSION, source.fingerprint(), opts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_tree(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _write(config: PrepareConfig, source: Source, key: str, tmp: Path) -> None:
    if source.is_single_text:
        train_texts, val_texts = _split_text(source, config.val_fraction)
        train_docs = val_docs = None
    else:
        train_docs, val_docs = _split_documents(source, config.val_fraction, config.seed)
        train_texts = [d.text for d in train_docs]
        val_texts = [d.text for d in val_docs]

    tokenizer = _get_tokenizer(config, train_texts, val_texts)
    tokenizer.save(tmp / "tokenizer")
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    sep = tokenizer.eos_id if train_docs is not None else None

    labels = None
    if train_docs is not None and any(d.label is not None for d in train_docs + val_docs):
        labels = sorted({d.label for d in train_docs + val_docs if d.label is not None})
        if len(labels) < 2:
            raise DataError(
                f"labelled data has only the label {labels}: "
                "a classifier needs at least two classes"
            )

    splits = {}
    num_proc = config.num_proc or len(os.sched_getaffinity(0))
    with _Encoder(tokenizer, num_proc) as encoder:
        for split, texts, docs in (
            ("train", train_texts, train_docs),
            ("val", val_texts, val_docs),
        ):
            info = {"file": f"{split}.bin"}
            n, lengths = _encode_split(encoder, texts, tmp / info["file"], dtype, sep, split)
            info["tokens"] = n
            if docs is not None:
                info["documents"] = len(docs)
                info["offsets"] = f"{split}_offsets.npy"
                np.save(tmp / info["offsets"], np.concatenate([[0], np.cumsum(lengths)]))
                if labels is not None:
                    ids = {name: i for i, name in enumerate(labels)}
                    info["labels"] = f"{split}_labels.npy"
                    np.save(
                        tmp / info["labels"],
                        np.array([ids.get(d.label, -1) for d in docs], dtype=np.int64),
                    )
            splits[split] = info

    if splits["train"]["tokens"] == 0:
        raise DataError(
            f"{config.data}: the training split holds no tokens; "
            "use a larger corpus or a smaller --val-fraction"
        )
    meta = {
        "format": FORMAT_VERSION,
        "lmforge_version": __version__,
        "key": key,
        "source": source.description,
        "source_sha256": source.fingerprint(),
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "doc_separator": sep,
        "labels": labels,
        "splits": splits,
        "options": {k: v for k, v in asdict(config).items() if k != "num_proc"},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


class _TextPart:
    """A re-iterable slice of one long text: streamed from the file chunk by chunk."""

    def __init__(self, source: Source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[str]:
        pos = 0
        for chunk in self.source.iter_chunks(_CHUNK_CHARS):
            a, b = max(self.start - pos, 0), min(self.stop - pos, len(chunk))
            if a < b:
                yield chunk[a:b]
            pos += len(chunk)
            if pos >= self.stop:
                break


def _split_text(source: Source, val_fraction: float) -> tuple[_TextPart, _TextPart]:
    """One long text: the last `val_fraction` of it, cut at a line start, is validation."""
    total, cut, pos = 0, None, 0
    for chunk in source.iter_chunks(_CHUNK_CHARS):
        total += len(chunk)
    if total == 0:
        raise DataError(f"{source.description} is empty: give a corpus with text in it")
    target = int(total * (1.0 - val_fraction))
    for chunk in source.iter_chunks(_CHUNK_CHARS):
        if pos + len(chunk) > target:
            at = chunk.find("\n", target - pos)
            cut = pos + (len(chunk) if at < 0 else at + 1)
            break
        pos += len(chunk)
    cut = total if cut is None else cut
    return _TextPart(source, 0, cut), _TextPart(source, cut, total)


def _split_documents(source: Source, val_fraction: float, seed: int):
    docs = [d for d in source.iter_documents() if d.text]
    if not docs:
        raise DataError(f"{source.description} holds no text: give a corpus with text in it")
    if any(d.split is not None for d in docs):
        train = [d for d in docs if d.split not in _VAL_SPLITS]
        val = [d for d in docs if d.split in _VAL_SPLITS]
        return train, val
    if val_fraction == 0 or len(docs) == 1:
        return docs, []
    rng = np.random.default_rng(seed)
    num_val = max(1, round(len(docs) * val_fraction))
    is_val = np.zeros(len(docs), dtype=bool)
    is_val[rng.permutation(len(docs))[:num_val]] = True
    return ([d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v])


def _get_tokenizer(config: PrepareConfig, train_texts, val_texts) -> Tokenizer:
    kind = config.tokenizer
    if kind not in TOKENIZER_KINDS:
        if Path(kind).exists():
            return load_tokenizer(kind)
        raise ConfigError(
            f"unknown tokenizer {kind!r}: use one of {', '.join(TOKENIZER_KINDS)} "
            "or the path of a tokenizer folder"
        )
    if kind == "char":
        # The character set is a property of the whole corpus: an unseen validation character
        # would otherwise stop evaluation, and it leaks nothing a model could exploit.
        every = itertools.chain(train_texts, val_texts)
        return train_tokenizer("char", every, unknown_token=config.unknown_token)
    return train_tokenizer(kind, train_texts, vocab_size=config.vocab_size)


# ---------------------------------------------------------------- encoding


def _batches(texts: Iterable[str], limit: int = _CHUNK_CHARS) -> Iterator[list[str]]:
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= limit:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_batch(texts: list[str], tokenizer: Tokenizer | None = None):
    tok = tokenizer or _worker_tokenizer
    if tok.kind == "char":
        arrays = [tok.encode_array(t) for t in texts]
    else:
        arrays = [np.asarray(ids, dtype=np.int64) for ids in tok.encode_batch(texts)]
    return arrays, sum(len(t) for t in texts)


class _Encoder:
    """Encodes batches of texts in order, inline or in a pool of worker processes."""

    def __init__(self, tokenizer: Tokenizer, num_proc: int):
        self.tokenizer, self.num_proc, self.pool = tokenizer, max(1, num_proc), None

    def __enter__(self):
        if self.num_proc > 1:
            ctx = mp.get_context("spawn")  # no fork: the tokenizers library's threads dislike it
            self.pool = ctx.Pool(
                self.num_proc, initializer=_init_worker, initargs=(self.tokenizer,)
            )
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()

    def map(self, batches: Iterable[list[str]]):
        if self.pool is None:
            return (_encode_batch(b, self.tokenizer) for b in batches)
        return self.pool.imap(_encode_batch, batches)


def _encode_split(encoder: _Encoder, texts: list[str], path: Path, dtype, sep, split: str):
    total_chars = len(texts) if isinstance(texts, _TextPart) else sum(len(t) for t in texts)
    lengths, num_tokens = [], 0
    with (
        open(path, "wb") as f,
        progress.bar(total_chars, f"encode {split}", "char", unit_scale=True) as pbar,
    ):
        for arrays, num_chars in encoder.map(_batches(texts)):
            for ids in arrays:
                if sep is not None:
                    ids = np.append(ids, sep)
                f.write(ids.astype(dtype).tobytes())
                lengths.append(len(ids))
                num_tokens += len(ids)
            pbar.update(num_chars)
    return num_tokens, lengths
