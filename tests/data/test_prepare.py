"""Tests for lmforge.data.prepare: the named datasets end to end, reuse, dtypes, exact ids."""

import csv
import gzip
import json
import re
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge import progress
from lmforge.data import prepare as prepare_module
from lmforge.data.corpus import Document, Source, open_source
from lmforge.data.datasets import resolve_dataset
from lmforge.data.prepare import PrepareConfig, PreparedData, prepare
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import train_tokenizer
from tests.conftest import shared_data


def _prepare(tmp_path, name="out", **options) -> PreparedData:
    return prepare(PrepareConfig(num_proc=1, **options), tmp_path / name)


@pytest.fixture
def small_tasks(monkeypatch):
    """Cut texts into many small pieces and tasks, so short corpora take the long-text paths."""
    monkeypatch.setattr(prepare_module, "_PIECE_CHARS", 300)
    monkeypatch.setattr(prepare_module, "_TASK_CHARS", 2000)


def _check_offsets(data: PreparedData, split: str, num_docs: int) -> None:
    offsets = data.offsets(split)
    assert len(offsets) == num_docs + 1 == data.meta["splits"][split]["documents"] + 1
    assert offsets[0] == 0 and offsets[-1] == data.num_tokens(split) == len(data.tokens(split))
    assert np.all(np.diff(offsets) > 0)
    sep = data.doc_separator
    docs = data.documents(split)
    assert [len(d) for d in docs] == list(np.diff(offsets) - (sep is not None))
    if sep is not None:  # every document ends in the separator, which appears nowhere else
        toks = data.tokens(split)
        assert np.all(toks[offsets[1:] - 1] == sep)
        assert (toks == sep).sum() == num_docs


# ---- the named datasets ---------------------------------------------------------------------


def test_tinyshakespeare_char_keeps_every_character_and_holds_out_the_tail(tmp_path):
    data = _prepare(tmp_path, data="tinyshakespeare", tokenizer="char")
    text = resolve_dataset("tinyshakespeare").read_text(encoding="utf-8")
    tok = data.tokenizer
    assert data.meta["vocab_size"] == tok.vocab_size == 65
    assert data.meta["dtype"] == "uint16" and data.tokens("train").dtype == np.uint16
    num_train, num_val = data.num_tokens("train"), data.num_tokens("val")
    assert num_train + num_val == 1_115_394
    assert abs(num_val / 1_115_394 - 0.1) < 0.001
    cut = num_train
    assert text[cut - 1] == "\n"  # the validation split starts at a line start
    np.testing.assert_array_equal(data.tokens("train"), tok.encode_array(text[:cut]))
    np.testing.assert_array_equal(data.tokens("val"), tok.encode_array(text[cut:]))
    assert data.offsets("train") is None and data.labels("train") is None
    assert (tmp_path / "out" / "train.bin").stat().st_size == 2 * num_train


def test_wine_reviews_word_gives_one_document_per_review(tmp_path):
    data = _prepare(tmp_path, data="wine-reviews", tokenizer="word")
    assert data.meta["splits"]["train"]["documents"] == 1972
    assert data.meta["splits"]["val"]["documents"] == 219
    for split, num_docs in (("train", 1972), ("val", 219)):
        _check_offsets(data, split, num_docs)
    tok = data.tokenizer
    by_words = {
        re.sub(r"\s+", "", d.text.lower()): d.text
        for d in open_source("wine-reviews").iter_documents()
    }
    for doc in data.documents("train")[:20]:
        decoded = tok.decode(doc)
        text = by_words[re.sub(r"\s+", "", decoded)]  # the same review, modulo case and spacing
        assert tok.encode(text) == doc.tolist()
    assert "[UNK]" not in tok.decode(data.tokens("train"))  # every training word is in the vocab


def _imdb_head(tmp_path, num_rows: int = 2000):
    """The first rows of the shared IMDB CSV, same columns, as a small CSV file."""
    with gzip.open(resolve_dataset("imdb"), "rt", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        rows = [next(reader) for _ in range(num_rows + 1)]
    path = tmp_path / "imdb-head.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    header = rows[0]
    return path, [dict(zip(header, row)) for row in rows[1:]]


def test_imdb_wordpiece_keeps_labels_and_the_test_split(tmp_path):
    path, rows = _imdb_head(tmp_path)
    data = _prepare(
        tmp_path,
        data=str(path),
        tokenizer="wordpiece",
        vocab_size=2000,
        field="review",
        label_field="sentiment",
    )
    tok = data.tokenizer
    assert data.label_names == ["negative", "positive"]
    assert data.doc_separator == tok.token_to_id("[END]")
    for split, source_split in (("train", "train"), ("val", "test")):
        expected = [r for r in rows if r["split"] == source_split]
        labels = data.labels(split)
        assert labels.dtype == np.int64
        assert labels.tolist() == [int(r["sentiment"] == "positive") for r in expected]
        _check_offsets(data, split, len(expected))
        first = data.documents(split)[0]
        assert tok.encode(expected[0]["review"]) == first.tolist()
    assert data.meta["splits"]["train"]["documents"] + data.meta["splits"]["val"][
        "documents"
    ] == len(rows)


def test_eli5_bpe_answers_round_trip_exactly(tmp_path):
    data = _prepare(tmp_path, data="eli5", tokenizer="bpe", vocab_size=600, field="answer")
    assert data.meta["vocab_size"] == 600
    assert data.doc_separator == data.tokenizer.token_to_id("<|endoftext|>")
    answers = [r["answer"] for r in json.loads(resolve_dataset("eli5").read_text())]
    decoded = [
        data.tokenizer.decode(doc) for split in ("train", "val") for doc in data.documents(split)
    ]
    assert len(decoded) == 1000 and data.meta["splits"]["val"]["documents"] == 100
    assert sorted(decoded) == sorted(answers)  # byte-level BPE loses nothing


def test_imdb_named_dataset_wordpiece_with_its_own_defaults(tmp_path):
    # the whole dataset: 50,000 reviews, labels from its 'sentiment' column, val = its test split
    csv_path = shared_data("imdb-50k.csv.gz")
    data = _prepare(tmp_path, data="imdb", tokenizer="wordpiece", vocab_size=1000)
    tok = data.tokenizer
    assert data.meta["tokenizer"] == "wordpiece" and data.meta["vocab_size"] == 1000
    assert data.meta["dtype"] == "uint16"
    assert "column 'review' label 'sentiment'" in data.meta["source"]
    assert data.label_names == ["negative", "positive"]
    assert data.doc_separator == tok.token_to_id("[END]")
    with gzip.open(csv_path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for split, source_split in (("train", "train"), ("val", "test")):
        expected = [r for r in rows if r["split"] == source_split]
        assert len(expected) == data.meta["splits"][split]["documents"] == 25_000
        labels = data.labels(split)
        assert labels.tolist() == [int(r["sentiment"] == "positive") for r in expected]
        assert np.bincount(labels).tolist() == [12_500, 12_500]
        _check_offsets(data, split, 25_000)
        docs = data.documents(split)
        for i in (0, 1, 12_345, 24_999):
            assert docs[i].tolist() == tok.encode(expected[i]["review"])


def test_python_stdlib_named_dataset_bpe(tmp_path):
    stdlib = resolve_dataset("python-stdlib")
    if not (stdlib / "os.py").is_file():
        pytest.fail(f"the Python standard library is missing: no os.py in {stdlib}")
    data = _prepare(tmp_path, data="python-stdlib", tokenizer="bpe", vocab_size=300)
    texts = [d.text for d in open_source("python-stdlib").iter_documents() if d.text]
    assert len(texts) > 300
    assert data.meta["tokenizer"] == "bpe" and data.tokenizer.vocab_size == 300
    assert data.meta["dtype"] == "uint16" and data.label_names is None
    assert data.doc_separator == data.tokenizer.token_to_id("<|endoftext|>")
    num_val = round(len(texts) * 0.1)
    for split, num_docs in (("train", len(texts) - num_val), ("val", num_val)):
        _check_offsets(data, split, num_docs)
        size = (tmp_path / "out" / f"{split}.bin").stat().st_size
        assert size == 2 * data.num_tokens(split) > 0
    assert data.num_tokens("train") > 5 * data.num_tokens("val")  # ~13 MB of code, 2-3 B a token
    known = set(texts)
    for split in ("train", "val"):
        for doc in data.documents(split)[::25]:
            text = data.tokenizer.decode(doc)
            assert text in known  # byte-level BPE gives back the exact file
            assert data.tokenizer.encode(text) == doc.tolist()


class _MadeUpSource(Source):
    """A labelled corpus made up while it is read; it fails as soon as more than `max_live`
    of its document texts are alive at once, so a reader that collects them all fails."""

    def __init__(self, num_docs: int, max_live: int):
        super().__init__("jsonl", Path("made-up"), [])
        self.num_docs, self.max_live = num_docs, max_live
        self.live = self.peak = 0

    @property
    def description(self) -> str:
        return f"made-up corpus ({self.num_docs} documents)"

    def fingerprint(self) -> str:
        return "made-up"

    @staticmethod
    def text(i: int) -> str:
        return f"document {i} of the made-up corpus: " + "lorem ipsum " * (i % 13 + 5)

    def iter_documents(self):
        for i in range(self.num_docs):
            text = _Text(self.text(i))
            self.live += 1
            weakref.finalize(text, self._gone)
            self.peak = max(self.peak, self.live)
            if self.live > self.max_live:
                raise AssertionError(f"{self.live} document texts are held in memory at once")
            yield Document(text, label="odd" if i % 2 else "even")

    def _gone(self) -> None:
        self.live -= 1


class _Text(str):
    """A str that can be watched with weakref (a plain str cannot)."""


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_documents_stream_and_are_never_all_in_memory(tmp_path, monkeypatch, small_tasks, kind):
    # small_tasks: a task holds ~2,000 characters (~20 documents), so a reader that streams
    # keeps a few dozen texts alive, and one that lists the 5,000 documents fails at the 501st
    source = _MadeUpSource(num_docs=5000, max_live=500)
    monkeypatch.setattr(prepare_module, "open_source", lambda *args, **kw: source)
    vocab = 300 if kind == "bpe" else None
    data = _prepare(tmp_path, data="made-up", tokenizer=kind, vocab_size=vocab)
    assert 0 < source.peak <= 500
    assert source.live == 0
    assert data.meta["splits"]["val"]["documents"] == 500  # the seeded 10%
    assert data.label_names == ["even", "odd"]
    seen = []
    for split in ("train", "val"):
        _check_offsets(data, split, 4500 if split == "train" else 500)
        for doc, label in zip(data.documents(split), data.labels(split)):
            i = int(data.tokenizer.decode(doc).split()[1])
            assert data.tokenizer.decode(doc) == source.text(i)
            assert label == i % 2
            seen.append(i)
    assert sorted(seen) == list(range(5000))


def test_progress_bar_counts_utf8_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "_enabled", True)  # a disabled bar counts nothing
    bars = []
    real_bar = progress.bar

    def recording_bar(total=None, desc="", unit="it", **kw):
        bar = real_bar(total, desc, unit, **kw)
        bars.append((total, unit, kw, bar))
        return bar

    monkeypatch.setattr(progress, "bar", recording_bar)
    text = "".join(f"ligne {i}: déjà vu, naïve café — 日本語 {i}\n" for i in range(2000))
    (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
    with open(tmp_path / "utf8.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([line] for line in text.splitlines())])
    for name in ("utf8.txt", "utf8.csv"):
        _prepare(tmp_path, name + ".out", data=str(tmp_path / name), tokenizer="char")
        total, unit, kw, bar = bars.pop()
        expected = len(text.encode()) - (name == "utf8.csv") * 2000  # the CSV has no newlines
        assert total == expected > len(text) and bar.n == total
        assert unit == "B" and kw.get("unit_scale") is True


# ---- reuse and rebuild ----------------------------------------------------------------------


def test_unchanged_input_is_reused_without_encoding(tmp_path, tiny_text, monkeypatch):
    first = _prepare(tmp_path, data=str(tiny_text), tokenizer="char")
    meta = tmp_path / "out" / "meta.json"
    stamp = meta.stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("encoded again")

    monkeypatch.setattr(prepare_module, "_write", fail)
    again = prepare(PrepareConfig(data=str(tiny_text), tokenizer="char", num_proc=2), first.path)
    assert meta.stat().st_mtime_ns == stamp
    assert again.meta == first.meta


def test_changed_options_or_input_rebuild(tmp_path, tiny_text):
    first = _prepare(tmp_path, data=str(tiny_text), tokenizer="char")
    second = _prepare(tmp_path, data=str(tiny_text), tokenizer="char", val_fraction=0.3)
    assert second.meta["key"] != first.meta["key"]
    assert second.num_tokens("val") > first.num_tokens("val")
    tiny_text.write_text(tiny_text.read_text() + "ROMEO: more.\n", encoding="utf-8")
    third = _prepare(tmp_path, data=str(tiny_text), tokenizer="char", val_fraction=0.3)
    assert third.meta["key"] != second.meta["key"]
    assert third.num_tokens("train") + third.num_tokens("val") == len(tiny_text.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.txt"]  # no leftovers


# ---- dtypes, determinism, exact ids ---------------------------------------------------------


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c < 0xE000]
    text = "\n".join("".join(chars[i : i + 100]) for i in range(0, len(chars), 100)) + "\n"
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    data = _prepare(tmp_path, data=str(tmp_path / "wide.txt"), tokenizer="char")
    assert data.tokenizer.vocab_size > 65536
    assert data.meta["dtype"] == "uint32" and data.tokens("train").dtype == np.uint32
    assert (tmp_path / "out" / "train.bin").stat().st_size == 4 * data.num_tokens("train")
    both = np.concatenate([data.tokens("train"), data.tokens("val")])
    np.testing.assert_array_equal(both, data.tokenizer.encode_array(text))


def _small_csv(tmp_path, num_rows: int = 200):
    path = tmp_path / "notes.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, f"note number {i}: {'abc' * (i % 7 + 1)}"] for i in range(num_rows))
    return path


def test_document_split_depends_only_on_the_seed(tmp_path):
    path = _small_csv(tmp_path)

    def val_texts(name, seed):
        data = _prepare(tmp_path, name, data=str(path), tokenizer="char", seed=seed)
        return [data.tokenizer.decode(d) for d in data.documents("val")]

    first, again, other = val_texts("a", 0), val_texts("b", 0), val_texts("c", 1)
    assert first == again and len(first) == 20
    assert set(first) != set(other)
    for name in ("train.bin", "val.bin", "train_offsets.npy", "val_offsets.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "wordpiece", "unigram"])
def test_token_files_hold_exactly_the_tokenizers_ids(tmp_path, kind, small_tasks):
    text = resolve_dataset("tinyshakespeare").read_text(encoding="utf-8")[:30_000]
    (tmp_path / "shakes.txt").write_text(text, encoding="utf-8")
    vocab = None if kind == "char" else 300
    data = _prepare(tmp_path, data=str(tmp_path / "shakes.txt"), tokenizer=kind, vocab_size=vocab)
    cut = text.index("\n", int(len(text) * 0.9)) + 1
    tok = data.tokenizer
    assert data.tokens("train").tolist() == tok.encode(text[:cut])
    assert data.tokens("val").tolist() == tok.encode(text[cut:])


def test_documents_hold_exactly_the_tokenizers_ids(tmp_path, small_tasks):
    path = _small_csv(tmp_path, 300)
    data = _prepare(tmp_path, data=str(path), tokenizer="bpe", vocab_size=300)
    texts = {d.text for d in open_source(str(path), field="text").iter_documents()}
    tok = data.tokenizer
    for split in ("train", "val"):
        for doc in data.documents(split):
            assert tok.decode(doc) in texts
            assert tok.encode(tok.decode(doc)) == doc.tolist()


def test_two_processes_write_the_same_files_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "_TASK_CHARS", 1 << 15)  # many tasks, in order
    text = resolve_dataset("tinyshakespeare").read_text(encoding="utf-8")[:300_000]
    (tmp_path / "shakes.txt").write_text(text, encoding="utf-8")
    for data in (str(tmp_path / "shakes.txt"), "wine-reviews"):
        for n in (1, 2):
            opts = dict(data=data, tokenizer="bpe", vocab_size=400, num_proc=n)
            prepare(PrepareConfig(**opts), tmp_path / f"{n}")
        written = sorted(p.name for p in (tmp_path / "1").iterdir() if p.is_file())
        assert "train.bin" in written and "val.bin" in written
        for name in written:
            if name != "meta.json":
                assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()
        shutil.rmtree(tmp_path / "1")
        shutil.rmtree(tmp_path / "2")


_LINE_TEXT = st.text(alphabet="ab \n\t.,'é\r", max_size=120)


@settings(max_examples=150, deadline=None)
@given(text=_LINE_TEXT, size=st.integers(1, 12))
def test_cutting_at_safe_newlines_keeps_the_ids(text, size):
    for tok in _LINE_TOKENIZERS:
        rule = prepare_module._cut_rule(tok)
        pieces = prepare_module._cut(text, rule, size)
        assert "".join(pieces) == text
        assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)


_CORPUS = ["ab ba. a\nb 'a, b\t", "aab\n\nbab\r\n a b. ab", "é a b\nab ab ab. 'ab'"] * 20
_LINE_TOKENIZERS = [
    train_tokenizer("bpe", _CORPUS, vocab_size=270),
    train_tokenizer("wordpiece", _CORPUS, vocab_size=40),
    train_tokenizer("word", _CORPUS, vocab_size=20),
]


def test_cut_rules_per_tokenizer_kind():
    assert [prepare_module._cut_rule(t) for t in _LINE_TOKENIZERS] == ["lines"] * 3
    assert prepare_module._cut_rule(train_tokenizer("unigram", _CORPUS, vocab_size=30)) is None
    assert prepare_module._cut_rule(train_tokenizer("char", _CORPUS)) == "anywhere"


# ---- the split and the folder ---------------------------------------------------------------


def test_val_fraction_zero_keeps_every_document_for_training(tmp_path):
    path, rows = _imdb_head(tmp_path, 50)
    data = _prepare(tmp_path, data=str(path), tokenizer="char", field="review", val_fraction=0)
    assert data.meta["splits"]["train"]["documents"] == 50
    assert data.num_tokens("val") == 0 and len(data.tokens("val")) == 0


@pytest.mark.parametrize(
    "content, problem",
    [("x", "too short to split"), ("id,text\n1,only row\n", "single document")],
)
def test_corpus_too_small_to_split(tmp_path, content, problem):
    path = tmp_path / ("tiny.csv" if "," in content else "tiny.txt")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=problem):
        _prepare(tmp_path, data=str(path), tokenizer="char")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    data = _prepare(tmp_path, data=str(path), tokenizer="char", val_fraction=0)
    assert data.num_tokens("train") > 0


def test_options_are_checked_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="unknown tokenizer 'nope'"):
        _prepare(tmp_path, data="no-such-file.txt", tokenizer="nope")
    with pytest.raises(ConfigError, match="drop --vocab-size"):
        _prepare(tmp_path, data="tinyshakespeare", tokenizer="char", vocab_size=100)
    with pytest.raises(ConfigError, match="--num-proc"):
        PrepareConfig(data="x", num_proc=0)


def test_prepared_data_needs_meta(tmp_path):
    with pytest.raises(DataError, match="run `lmforge prepare"):
        PreparedData(tmp_path)


def test_char_tasks_of_every_width_encode_in_order_on_threads_and_processes(
    tmp_path, small_tasks, monkeypatch
):
    # ~150 tasks of 2,000 characters, cut in 300-character pieces of 1-, 2- and 4-byte strings,
    # looked up on helper threads (1 process) or in worker processes (2): same files, in order
    lines = [f"line {i} {'aé’😀'[i % 4] * (i % 50)}\n" for i in range(6000)]
    text = "".join(lines)
    (tmp_path / "mixed.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(prepare_module, "usable_cpus", lambda: 3)  # 3 threads here
    for n in (1, 2):
        data = prepare(
            PrepareConfig(data=str(tmp_path / "mixed.txt"), tokenizer="char", num_proc=n),
            tmp_path / f"{n}",
        )
        vocab = sorted(set(text))
        cut = text.index("\n", int(len(text) * 0.9)) + 1
        for split, part in (("train", text[:cut]), ("val", text[cut:])):
            assert data.tokens(split).tolist() == [vocab.index(c) for c in part]
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_char_documents_of_every_width_hold_their_ids(tmp_path, small_tasks):
    path = tmp_path / "docs.jsonl"
    texts = [f"doc {i}: {'aé’😀'[i % 4] * (i % 40 + 1)}" for i in range(400)]
    path.write_text("".join(json.dumps({"t": t}) + "\n" for t in texts), encoding="utf-8")
    data = _prepare(tmp_path, data=str(path), field="t", tokenizer="char")
    tok = data.tokenizer
    assert data.doc_separator is None  # a char tokenizer has no separator: offsets alone
    _check_offsets(data, "train", 360)
    decoded = [tok.decode(d) for s in ("train", "val") for d in data.documents(s)]
    assert sorted(decoded) == sorted(texts)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_text_too_long_to_keep_is_read_again_with_the_same_result(tmp_path, monkeypatch, kind):
    text = resolve_dataset("tinyshakespeare").read_text(encoding="utf-8")[:40_000] + "né 😀\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    opts = dict(
        data=str(tmp_path / "t.txt"), tokenizer=kind, vocab_size=None if kind == "char" else 300
    )
    kept = _prepare(tmp_path, "kept", **opts)
    monkeypatch.setattr(prepare_module, "_CHUNK_CHARS", 1000)  # read in 1,000-character chunks
    monkeypatch.setattr(prepare_module, "_KEEP_CHARS", 2500)  # ... and stream them each pass
    streamed = _prepare(tmp_path, "streamed", **opts)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "kept" / name).read_bytes() == (
            tmp_path / "streamed" / name
        ).read_bytes()
    assert streamed.tokenizer.decode(streamed.tokens("val")).endswith("né 😀\n")
    assert kept.num_tokens("train") > 0


def _labelled_csv(path: Path) -> Path:
    with path.open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["text", "label"])
        for i in range(20):
            rows.writerow([f"review number {i} is fine", "positive" if i % 2 else "negative"])
        rows.writerow(["a late review, typed by hand", "Positive "])
        rows.writerow(["another one", "Positive "])
        rows.writerow(["a review nobody labelled", ""])
        rows.writerow(["a blank label", "   "])
    return path


def test_labels_that_differ_in_case_or_spaces_and_empty_labels_are_warned(tmp_path, caplog):
    source = _labelled_csv(tmp_path / "reviews.csv")
    config = PrepareConfig(data=str(source), tokenizer="char", label_field="label")
    with caplog.at_level("WARNING", logger="lmforge.data.prepare"):
        data = prepare(config, tmp_path / "raw")
    assert data.label_names == ["Positive ", "negative", "positive"]  # as written: 3 classes
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "2 of 24 labelled texts" in said and "empty label" in said
    assert "'Positive ' (2 rows), 'positive' (10 rows)" in said and "--normalize-labels" in said
    # the rows with no label are left out of the prepared data, not given label -1
    ids = np.concatenate([data.labels("train"), data.labels("val")])
    assert len(ids) == 22 and ids.min() >= 0


def test_normalize_labels_strips_and_lower_cases_them(tmp_path, caplog):
    source = _labelled_csv(tmp_path / "reviews.csv")
    config = PrepareConfig(
        data=str(source), tokenizer="char", label_field="label", normalize_labels=True
    )
    with caplog.at_level("WARNING", logger="lmforge.data.prepare"):
        data = prepare(config, tmp_path / "normalized")
    assert data.label_names == ["negative", "positive"]
    ids = np.concatenate([data.labels("train"), data.labels("val")])
    assert np.bincount(ids).tolist() == [10, 12]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "differ only in case" not in said and "2 of 24 labelled texts" in said
