"""Corpus sources: turn a data spec (file, folder or dataset name) into a stream of Documents.

`open_source` looks at the spec once and fails early on what is cheap to check; a Source then
reads its files lazily each time it is iterated. Tokenizing and splitting happen elsewhere.
"""

import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import json
import math
import os
import string
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lmforge.data import datasets
from lmforge.errors import ConfigError, DataError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")  # always read in folders, without sniffing
SPLIT_NAMES = ("train", "test", "val")  # aclImdb-style ROOT/{split}/{class}/*.txt
SKIPPED_CLASSES = ("unsup",)  # aclImdb's unlabelled reviews
_SNIFF_BYTES = 1 << 16
_EAGER_JSON_BYTES = 32 << 20  # JSON files up to this size are parsed once more to check fields
_TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass
class Document:
    """One document: its text, and the class label and split when the source gives them."""

    text: str
    label: str | None = None  # class name for labelled data
    split: str | None = None  # "train"/"test"/"val" when the source says so


class Source:
    """A readable corpus: one text file, a folder of text files, or a CSV/JSON/JSONL table.

    Built by `open_source`; iterate `iter_documents()` (or `iter_chunks()` for one text file).

    Args:
        kind: "text", "folder", "csv", "json" or "jsonl".
        files: (path, label, split) per input file; label/split are set by labelled folders.
        field: a column or dotted field path, or a template with `{field}` slots.
    """

    def __init__(
        self,
        kind: str,
        root: Path,
        files: list[tuple[Path, str | None, str | None]],
        field: str | None = None,
        label_field: str | None = None,
        encoding: str = "utf-8",
        errors: str = "strict",
        suffixes: tuple[str, ...] | None = None,
        exclude_dirs: tuple[str, ...] = (),
    ):
        self.kind = kind
        self.root = root
        self.files = files
        self.paths: list[Path] = [path for path, _, _ in files]
        self.field = field
        self.label_field = label_field
        self.encoding = encoding
        self.errors = errors
        self.suffixes = suffixes
        self.exclude_dirs = exclude_dirs
        self.is_single_text: bool = kind == "text"
        self.num_bytes: int = sum(path.stat().st_size for path in self.paths)
        self._num_documents: int | None = None  # known after one full pass
        self._template = _parse_template(field) if field and "{" in field else None

    @property
    def description(self) -> str:
        """One line for logs, e.g. "CSV /data/x.csv column 'description' (2191 rows)"."""
        if self.kind == "text":
            return f"text file {self.root} ({self.num_bytes:,} bytes)"
        if self.kind == "folder":
            labels = sorted({label for _, label, _ in self.files if label is not None})
            splits = sorted({split for _, _, split in self.files if split is not None})
            what = "labelled folder" if labels else "folder"
            extra = f"; classes: {', '.join(labels)}" if labels else ""
            extra += f"; splits: {', '.join(splits)}" if splits else ""
            only = f" {'/'.join(self.suffixes)}" if self.suffixes else ""
            return f"{what} {self.root} ({len(self.files):,}{only} files{extra})"
        if self._num_documents is None:
            self._num_documents = sum(1 for _ in self.iter_documents())
        what = {"csv": "CSV", "json": "JSON", "jsonl": "JSONL"}[self.kind]
        unit = "rows" if self.kind == "csv" else "records"
        if self._template is not None:
            text = f"template {self.field!r}"
        else:
            text = f"{'column' if self.kind == 'csv' else 'field'} {self._text_field!r}"
        label = f" label {self.label_field!r}" if self.label_field else ""
        return f"{what} {self.root} {text}{label} ({self._num_documents:,} {unit})"

    def __repr__(self) -> str:
        return f"Source({self.kind!r}, {str(self.root)!r})"

    def fingerprint(self) -> str:
        """sha256 hex over the input files' bytes (and names within a folder) and the options."""
        digest = hashlib.sha256()
        options = dict(
            kind=self.kind,
            field=self.field,
            label_field=self.label_field,
            encoding=self.encoding,
            errors=self.errors,
            suffixes=self.suffixes,
            exclude_dirs=self.exclude_dirs,
        )
        digest.update(json.dumps(options, sort_keys=True).encode())
        for path, label, split in self.files:
            name = path.relative_to(self.root).as_posix() if self.kind == "folder" else ""
            head = json.dumps([name, label, split, path.stat().st_size])
            digest.update(head.encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        return digest.hexdigest()

    def iter_documents(self) -> Iterator[Document]:
        """Yield the documents in a fixed order; a single text file is one document."""
        if self.kind == "text":
            yield Document(text="".join(self.iter_chunks()))
            return
        reader = {"folder": self._iter_folder, "csv": self._iter_csv}.get(
            self.kind, self._iter_records
        )
        count = num_nonempty = 0
        for doc in reader():
            count += 1
            num_nonempty += bool(doc.text.strip())
            yield doc
        if not num_nonempty:
            raise DataError(self._empty_message(count))
        self._num_documents = count

    def iter_chunks(self, chunk_chars: int = 1 << 20) -> Iterator[str]:
        """Stream a single text file in pieces of at most chunk_chars characters.

        Each piece ends right after a newline (or at chunk_chars when a piece holds none);
        joined, the pieces are exactly the file's text (line ends are kept as they are).
        """
        if not self.is_single_text:
            raise ValueError(f"iter_chunks() needs a single text file, not a {self.kind} source")
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
        path = self.root
        has_text = False
        buffer = ""
        with _reading_text(path, self.encoding, self.errors) as f:
            while block := f.read(chunk_chars):
                buffer += block
                while len(buffer) >= chunk_chars:
                    cut = buffer.rfind("\n", 0, chunk_chars) + 1 or chunk_chars
                    piece, buffer = buffer[:cut], buffer[cut:]
                    has_text = has_text or bool(piece.strip())
                    yield piece
            if buffer:
                has_text = has_text or bool(buffer.strip())
                yield buffer
        if not has_text:
            raise DataError(self._empty_message(1))

    def _empty_message(self, count: int) -> str:
        if self.kind == "text":
            return f"{self.root} holds only whitespace; pass a file with text in it"
        if self.kind == "folder":
            return f"{self.root}: all {count} files are empty; pass a folder with text files in it"
        if count == 0:
            return f"{self.root} holds no records; pass a file with at least one row of data"
        return (
            f"{self.root}: {self._text_field!r} is empty in all {count} records; pick another "
            f"field (available: {_names(self._available_fields())})"
        )

    def _available_fields(self) -> list[str]:
        first = self._first_record()
        return list(first) if isinstance(first, dict) else []

    def _first_record(self) -> Any:
        with contextlib.closing(self._iter_raw_records()) as records:
            return next(records, None)

    def _iter_folder(self) -> Iterator[Document]:
        for path, label, split in self.files:
            data = _read_bytes(path)
            try:
                text = data.decode(self.encoding, self.errors)
            except UnicodeDecodeError as exc:
                raise DataError(_decode_message(path, self.encoding, exc.start)) from None
            yield Document(text=text, label=label, split=split)

    def _iter_csv(self) -> Iterator[Document]:
        for index, record in enumerate(self._iter_raw_records()):
            if index == 0:
                self._check_fields(record)
            yield self._document(record)

    def _iter_records(self) -> Iterator[Document]:
        for index, record in enumerate(self._iter_raw_records()):
            if isinstance(record, str) and self.field is None:
                yield Document(text=record)
                continue
            if not isinstance(record, dict):
                raise DataError(
                    f"{self.root}: record {index} is a {type(record).__name__}, not an object; "
                    "pass a file of JSON objects (or of strings, without --field)"
                )
            if index == 0:
                self._check_fields(record)
            yield self._document(record)

    def _iter_raw_records(self) -> Iterator[Any]:
        """Rows as {column: value} dicts (CSV) or the JSON values themselves."""
        path = self.root
        with _reading_text(path, self.encoding, self.errors) as f:
            if self.kind == "csv":
                yield from _csv_rows(f, path)
            elif self.kind == "jsonl":
                for line_number, line in enumerate(f, 1):
                    if line.strip():
                        yield _parse_json(line, path, f"line {line_number}")
            else:
                data = _parse_json(f.read(), path, "the file")
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    data = data["data"]
                if not isinstance(data, list):
                    keys = f" with keys {', '.join(data)}" if isinstance(data, dict) else ""
                    raise DataError(
                        f'{path}: expected a JSON array of records or {{"data": [...]}}, found '
                        f"a {type(data).__name__}{keys}; use JSONL or wrap the records in a list"
                    )
                yield from data

    @property
    def _text_field(self) -> str:
        return self.field if self.field is not None else "text"

    def _check_fields(self, record: dict) -> None:
        """Fail early, on the first record, when a named field does not exist."""
        if self.field is None and "text" not in record:
            raise ConfigError(
                f"{self.root}: say which field holds the text with --field (available: "
                f"{_names(record)})"
            )
        names = [n for _, n in self._template] if self._template is not None else [self._text_field]
        what = "column" if self.kind == "csv" else "field"
        for name in names + ([self.label_field] if self.label_field else []):
            problem = _missing_field(record, name)
            if problem:
                raise DataError(f"{self.root}: no {what} {name!r} ({problem}); pick one of those")

    def _document(self, record: dict) -> Document:
        if self._template is not None:
            text = "".join(lit + _to_text(_lookup(record, name)) for lit, name in self._template)
        else:
            text = _to_text(_lookup(record, self._text_field))
        label = _to_text(_lookup(record, self.label_field)) if self.label_field else ""
        split = _to_text(record.get("split"))
        return Document(text=text, label=label or None, split=split or None)


def open_source(
    spec: str | Path,
    field: str | None = None,
    label_field: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    suffixes: tuple[str, ...] | None = None,
    exclude_dirs: tuple[str, ...] = (),
) -> Source:
    """Open a corpus: a text file, a folder, a CSV/TSV/JSON/JSONL file (optionally .gz) or a
    dataset name from `datasets.DATASETS`.

    Args:
        field: the CSV column or JSON field path (`answers.text`) that holds the text, or a
            template such as "{country} : {description}"; a dataset name supplies a default.
        label_field: the column or field that holds the class label.
        errors: how undecodable bytes are handled ("strict" fails, "replace" substitutes).
        suffixes: in folders, read only files with these suffixes (default: any text file).
        exclude_dirs: in folders, skip folders with these names (hidden ones are always skipped).

    Example:
        >>> source = open_source("wine-reviews")
        >>> next(source.iter_documents()).text[:30]
        'Aromas include tropical fruit,'
    """
    _check_codec(encoding, errors)
    path, info = _resolve_spec(spec)
    if info is not None:
        suffixes = suffixes if suffixes is not None else info.suffixes
        exclude_dirs = exclude_dirs or info.exclude_dirs
    options = dict(encoding=encoding, errors=errors, suffixes=suffixes, exclude_dirs=exclude_dirs)
    if path.is_dir():
        if field is not None or label_field is not None:
            raise ConfigError(
                f"{path} is a folder: --field/--label-field apply only to CSV and JSON files; "
                "drop them (labels come from class folder names)"
            )
        return Source(
            "folder", path, _folder_files(path, suffixes, exclude_dirs, encoding), **options
        )
    kind = _TABLE_SUFFIXES.get(_inner_suffix(path), "text")
    if kind == "text":
        if field is not None or label_field is not None:
            raise ConfigError(
                f"{path} is a plain text file: --field/--label-field apply only to CSV and JSON "
                "files; drop them"
            )
        _check_text_head(path, encoding, errors)
        return Source("text", path, [(path, None, None)], **options)
    if info is not None:
        field = field if field is not None else info.field
        label_field = label_field if label_field is not None else info.label_field
    source = Source(kind, path, [(path, None, None)], field, label_field, **options)
    # a JSON array must be parsed whole: a big one is checked when iterated instead
    if kind != "json" or source.num_bytes <= _EAGER_JSON_BYTES:
        first = source._first_record()
        if first is None:
            raise DataError(source._empty_message(0))
        if isinstance(first, dict):
            source._check_fields(first)
    return source


# ---- spec resolution --------------------------------------------------------------------------


def _resolve_spec(spec: str | Path) -> tuple[Path, "datasets.DatasetInfo | None"]:
    path = Path(spec).expanduser()
    if path.exists():
        return path, None
    name = str(spec)
    if name in datasets.DATASETS:
        return datasets.resolve_dataset(name), datasets.DATASETS[name]
    if isinstance(spec, Path) or os.sep in name or "/" in name or path.suffix:
        raise DataError(f"{spec} does not exist; check the path (or pass a dataset name)")
    raise ConfigError(
        f"{name!r} is neither an existing path nor a dataset name; pass a file or folder, or one "
        f"of: {', '.join(datasets.DATASETS)}"
    )


def _check_codec(encoding: str, errors: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"unknown --encoding {encoding!r}; use e.g. utf-8 or latin-1") from None
    try:
        codecs.lookup_error(errors)
    except LookupError:
        raise ConfigError(f"unknown --errors {errors!r}; use strict, replace or ignore") from None


def _inner_suffix(path: Path) -> str:
    """The suffix that says the format, looking through a trailing .gz."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return os.path.splitext(name)[1]


# ---- reading and decoding ---------------------------------------------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _open_text(path: Path, encoding: str, errors: str) -> IO[str]:
    # newline="" keeps "\r\n" as it is, so the text is exactly the file's
    return io.TextIOWrapper(_open_binary(path), encoding=encoding, errors=errors, newline="")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"could not read {path} ({exc}); check the file") from None


@contextlib.contextmanager
def _reading_text(path: Path, encoding: str, errors: str) -> Iterator[IO[str]]:
    """Open `path` as text; decode and gzip errors while reading it become DataErrors."""
    try:
        with _open_text(path, encoding, errors) as f:
            yield f
    except UnicodeDecodeError:
        raise DataError(_decode_message(path, encoding, _find_bad_byte(path, encoding))) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"could not read {path} ({exc}); check the file") from None


def _decode_message(path: Path, encoding: str, offset: int | None) -> str:
    where = f" at byte {offset:,}" if offset is not None else ""
    return (
        f"{path} is not valid {encoding}{where} (a binary file?); pass --encoding with the "
        "file's codec (e.g. latin-1) or --errors replace"
    )


def _find_bad_byte(path: Path, encoding: str) -> int | None:
    """Offset of the first byte that does not decode (in the uncompressed data for .gz)."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset = 0
    with _open_binary(path) as f:
        while True:
            block = f.read(1 << 20)
            pending = decoder.getstate()[0]
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                return offset - len(pending) + exc.start
            if not block:
                return None
            offset += len(block)


def _is_ascii_compatible(encoding: str) -> bool:
    try:
        return "a\n".encode(encoding).endswith(b"a\n")  # utf-8-sig adds a BOM
    except (LookupError, UnicodeError):
        return False


def _check_text_head(path: Path, encoding: str, errors: str) -> None:
    """Fail early when a text file is empty, binary, or does not decode in its first 64 KB."""
    try:
        with _open_binary(path) as f:
            head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"could not read {path} ({exc}); check the file") from None
    if not head or (len(head) < _SNIFF_BYTES and not head.strip()):
        raise DataError(f"{path} is empty; pass a file with text in it")
    if b"\0" in head and _is_ascii_compatible(encoding):
        raise DataError(
            f"{path} looks binary (NUL byte at {head.index(0):,}); pass a text file, or "
            "--encoding utf-16 if it is UTF-16 text"
        )
    try:
        codecs.getincrementaldecoder(encoding)(errors).decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise DataError(_decode_message(path, encoding, exc.start)) from None


def _looks_like_text(path: Path, encoding: str) -> bool:
    """Sniff the first 64 KB: no NUL bytes and decodes (used for unknown suffixes in folders)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    if b"\0" in head and _is_ascii_compatible(encoding):
        return False
    try:
        codecs.getincrementaldecoder(encoding)("strict").decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


# ---- folders ----------------------------------------------------------------------------------


def _folder_files(
    root: Path, suffixes: tuple[str, ...] | None, exclude_dirs: tuple[str, ...], encoding: str
) -> list[tuple[Path, str | None, str | None]]:
    """(path, label, split) for each file in a folder, after working out its layout:

    ROOT/{train,test,val}/{class}/... (aclImdb), ROOT/{class}/... (labelled: no loose text files
    at the top and every subfolder holds text files), or plain recursive text files.
    """

    def is_text(path: Path) -> bool:
        if path.name.startswith("."):
            return False
        if suffixes is not None:
            return path.name.lower().endswith(tuple(s.lower() for s in suffixes))
        return path.suffix.lower() in TEXT_SUFFIXES or _looks_like_text(path, encoding)

    def is_skipped_dir(name: str) -> bool:
        return name.startswith(".") or name == "__pycache__" or name in exclude_dirs

    def subdirs(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not is_skipped_dir(p.name))

    def has_loose_text(folder: Path) -> bool:
        return any(p.is_file() and is_text(p) for p in sorted(folder.iterdir()))

    def walk(folder: Path) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not is_skipped_dir(d))
            found += [p for n in filenames if (p := Path(dirpath, n)).is_file() and is_text(p)]
        return sorted(found, key=lambda p: p.relative_to(folder).parts)

    top = subdirs(root)
    is_split_layout = bool(top) and all(
        d.name in SPLIT_NAMES
        and any(c.name not in SKIPPED_CLASSES and has_loose_text(c) for c in subdirs(d))
        for d in top
    )
    if is_split_layout:
        groups = [
            (c, c.name, d.name) for d in top for c in subdirs(d) if c.name not in SKIPPED_CLASSES
        ]
    elif top and not has_loose_text(root) and all(has_loose_text(d) for d in top):
        groups = [(d, d.name, None) for d in top]
    else:
        groups = [(root, None, None)]
    labels = sorted({label for _, label, _ in groups if label is not None})
    if groups[0][1] is not None and len(labels) < 2:
        raise DataError(
            f"{root} looks like a labelled folder but has only the class {labels[0]!r}; add a "
            f"folder per class, or pass {groups[0][0]} itself to read it unlabelled"
        )
    files = [(p, label, split) for folder, label, split in groups for p in walk(folder)]
    if not files:
        only = f" ({'/'.join(suffixes)})" if suffixes else ""
        raise DataError(f"{root} holds no text files{only}; pass a folder with text files in it")
    return files


# ---- CSV and JSON records ---------------------------------------------------------------------


def _csv_rows(f: IO[str], path: Path) -> Iterator[dict[str, str]]:
    # the process-wide default (128 KB a cell) is too small for long documents
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    delimiter = "\t" if _inner_suffix(path) == ".tsv" else ","
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        if header and header[0].startswith("\ufeff"):  # a byte-order mark from Excel
            header[0] = header[0][1:]
        for row in reader:
            if row:
                yield dict(zip(header, row))
    except csv.Error as exc:
        raise DataError(
            f"{path}: bad CSV at line {reader.line_num} ({exc}); fix the file"
        ) from None


def _parse_json(text: str, path: Path, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON in {where} ({exc}); fix the file") from None


def _parse_template(template: str) -> list[tuple[str, str]]:
    """ "a {x} b {y.z}" -> [("a ", "x"), (" b ", "y.z")]; a trailing literal gets name ""."""
    parts = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"bad template {template!r} ({exc}); write fields as {{name}} and literal braces "
            "as {{ }}"
        ) from None
    for literal, name, spec, conversion in parsed:
        if name == "" or (name is not None and name.isdigit()):
            raise ConfigError(f"template {template!r} has an unnamed {{}}; name each field")
        if spec or conversion:
            raise ConfigError(
                f"template {template!r}: format specs and !conversions are not supported; "
                "write plain {name} fields"
            )
        parts.append((literal, name or ""))
    return parts


def _lookup(record: Any, path: str) -> Any:
    """Follow a dotted path through dicts, mapping over lists; missing -> None."""
    if not path:
        return ""
    if isinstance(record, list):
        return [_lookup(item, path) for item in record]
    if not isinstance(record, dict):
        return None
    if path in record:  # a key that itself holds dots
        return record[path]
    head, _, rest = path.partition(".")
    if head not in record:
        return None
    return _lookup(record[head], rest) if rest else record[head]


def _missing_field(record: Any, path: str) -> str | None:
    """None when `path` exists in record, else what exists where the path stops."""
    if not path:
        return None
    while isinstance(record, list) and record:
        record = record[0]
    if not isinstance(record, dict):
        return f"found a {type(record).__name__} instead of an object"
    if path in record:
        return None
    head, _, rest = path.partition(".")
    if head not in record:
        return f"available: {_names(record)}"
    return _missing_field(record[head], rest) if rest else None


def _to_text(value: Any) -> str:
    """A field value as text: lists flattened and joined with spaces, missing/NaN -> ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(t for t in map(_to_text, value) if t)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _names(keys) -> str:
    """Field names for a message; the unnamed index column of a pandas CSV is left out."""
    return ", ".join(str(k) for k in keys if k != "") or "none"
