"""Tests for lmforge.data.corpus: every spec form on the shared datasets and tiny files."""

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data.corpus import Document, open_source
from lmforge.data.datasets import DATASETS, resolve_dataset
from lmforge.errors import ConfigError, DataError


def _texts(source) -> list[str]:
    return [doc.text for doc in source.iter_documents()]


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


# ---- named datasets -------------------------------------------------------------------------


def test_tinyshakespeare_is_one_text_of_known_length():
    source = open_source("tinyshakespeare")
    assert source.is_single_text
    text = "".join(source.iter_chunks())
    assert len(text) == 1_115_394
    assert len(set(text)) == 65
    docs = list(source.iter_documents())
    assert len(docs) == 1 and docs[0].text == text
    assert source.num_bytes == 1_115_394
    assert source.paths == [resolve_dataset("tinyshakespeare")]


def test_wine_reviews_gives_one_document_per_row_from_description():
    source = open_source("wine-reviews")
    docs = list(source.iter_documents())
    assert len(docs) == 2191
    assert all(74 <= len(d.text) <= 690 for d in docs)
    assert sum(len(d.text) for d in docs) == 525_593
    assert docs[0].text.startswith("Aromas include tropical fruit")
    assert all(d.label is None and d.split is None for d in docs)
    assert "column 'description'" in source.description and "2,191 rows" in source.description


def test_eli5_gives_one_document_per_answer():
    docs = list(open_source("eli5").iter_documents())
    assert len(docs) == 1000
    with open(resolve_dataset("eli5"), encoding="utf-8") as f:
        records = json.load(f)
    assert [d.text for d in docs] == [r["answer"] for r in records]


def test_imdb_csv_has_labels_and_splits():
    docs = list(open_source("imdb").iter_documents())
    assert len(docs) == 50_000
    counts = Counter((d.label, d.split) for d in docs)
    assert counts == {
        (label, split): 12_500 for label in ("positive", "negative") for split in ("train", "test")
    }
    assert sum(len(d.text) for d in docs) == 65_471_551


def test_python_stdlib_reads_only_py_files_outside_site_packages():
    source = open_source("python-stdlib")
    names = [p.relative_to(source.root).parts for p in source.paths]
    assert len(names) > 100
    assert all(parts[-1].endswith(".py") for parts in names)
    skipped = {"site-packages", "dist-packages", "__pycache__", "test", "tests"}
    assert not any(skipped & set(parts) for parts in names)
    assert ("os.py",) in names and ("json", "__init__.py") in names
    assert names == sorted(names)
    first = next(source.iter_documents())
    assert first.text == source.paths[0].read_text(encoding="utf-8")


def test_dataset_default_field_can_be_overridden():
    source = open_source("wine-reviews", field="title")
    assert next(source.iter_documents()).text.startswith("Nicosia 2013 Vulkà Bianco")


def test_wine_json_variant_loads(tmp_path, monkeypatch):
    with gzip.open(resolve_dataset("wine-reviews"), "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:5]
    records = [{k: v for k, v in row.items() if k} for row in rows]
    records[1]["price"] = None  # the Kaggle JSON writes missing values as null
    _write(tmp_path / "data" / "winemag-data-130k-v2.json", json.dumps(records))
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(tmp_path / "data"))
    assert _texts(open_source("wine-reviews")) == [r["description"] for r in records]
    source = open_source("wine-reviews", field="{country} costs {price}")
    assert _texts(source)[:2] == [f"Italy costs {rows[0]['price']}", "Portugal costs "]


# ---- single text files and chunks -----------------------------------------------------------


def test_iter_chunks_cut_after_newlines_and_rejoin_exactly(tiny_text):
    text = tiny_text.read_text(encoding="utf-8")
    chunks = list(open_source(tiny_text).iter_chunks(chunk_chars=100))
    assert "".join(chunks) == text
    assert len(chunks) > 100
    assert all(len(c) <= 100 and c.endswith("\n") for c in chunks)


def test_iter_chunks_keep_crlf_and_cut_long_lines_at_chunk_size(tmp_path):
    text = "a" * 25 + "\r\nbb\r\n" + "c" * 7
    path = _write(tmp_path / "notes", text)  # no extension: plain text
    chunks = list(open_source(path).iter_chunks(chunk_chars=10))
    assert "".join(chunks) == text
    assert chunks == ["a" * 10, "a" * 10, "aaaaa\r\n", "bb\r\n", "c" * 7]


def test_iter_chunks_on_shakespeare_streams_in_pieces():
    source = open_source("tinyshakespeare")
    chunks = list(source.iter_chunks(chunk_chars=1 << 16))
    assert len(chunks) > 16
    assert all(len(c) <= 1 << 16 and c.endswith("\n") for c in chunks)
    assert sum(map(len, chunks)) == 1_115_394


def test_gzipped_text_file_is_single_text(tmp_path):
    path = tmp_path / "book.txt.gz"
    path.write_bytes(gzip.compress(b"one\ntwo\n"))
    source = open_source(path)
    assert source.is_single_text and _texts(source) == ["one\ntwo\n"]


def test_iter_chunks_is_only_for_single_text():
    with pytest.raises(ValueError, match="single text"):
        next(open_source("eli5").iter_chunks())


# ---- CSV, JSON, JSONL -----------------------------------------------------------------------


def test_template_fills_fields_and_blanks_missing_values():
    template = "wine review : {country} : {province} : {variety} : {description}"
    docs = list(open_source("wine-reviews", field=template).iter_documents())
    assert len(docs) == 2191
    assert docs[0].text == (
        "wine review : Italy : Sicily & Sardinia : White Blend : Aromas include tropical fruit, "
        "broom, brimstone and dried herb. The palate isn't overly expressive, offering "
        "unripened apple, citrus and dried sage alongside brisk acidity."
    )
    regions = _texts(open_source("wine-reviews", field="[{region_2}]"))
    assert "[]" in regions and "[Napa]" in regions


def test_csv_with_index_column_split_column_and_labels(tmp_path):
    path = _write(
        tmp_path / "x.csv",
        ',text,label,split\n0,hello there,a,train\n1,"multi\nline, quoted",b,test\n2,third,,\n',
    )
    docs = list(open_source(path, label_field="label").iter_documents())
    assert docs == [
        Document("hello there", "a", "train"),
        Document("multi\nline, quoted", "b", "test"),
        Document("third", None, None),
    ]


def test_tsv_and_byte_order_mark(tmp_path):
    path = _write(tmp_path / "x.tsv", "\ufeffbody\tscore\nfirst, with comma\t3\nsecond\t4\n")
    docs = list(open_source(path, field="body", label_field="score").iter_documents())
    assert [(d.text, d.label) for d in docs] == [("first, with comma", "3"), ("second", "4")]


def test_jsonl_dotted_path_flattens_nested_lists(tmp_path):
    records = [
        {"answers": {"text": ["a", "b"]}, "split": "val", "y": 1},
        {"answers": {"text": [["c"], "d", None]}, "y": 0},
        {"answers": [{"text": "e"}, {"text": "f"}], "y": 1},
    ]
    path = _write(tmp_path / "qa.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    docs = list(open_source(path, field="answers.text", label_field="y").iter_documents())
    assert docs == [Document("a b", "1", "val"), Document("c d", "0"), Document("e f", "1")]
    templated = open_source(path, field="Q: {answers.text} ({y})")
    assert _texts(templated)[0] == "Q: a b (1)"


def test_json_data_wrapper_gzip_and_nan(tmp_path):
    payload = {"data": [{"body": "x", "n": float("nan")}, {"body": "y", "n": 2.5}]}
    path = tmp_path / "d.json.gz"
    path.write_bytes(gzip.compress(json.dumps(payload).encode()))
    assert _texts(open_source(path, field="body:{n}")) == ["body:", "body:2.5"]
    assert _texts(open_source(path, field="{body}{n}")) == ["x", "y2.5"]


def test_text_column_is_the_default_field(tmp_path):
    path = _write(tmp_path / "t.jsonl", '{"text": "hi"}\n{"text": "yo"}\n')
    assert _texts(open_source(path)) == ["hi", "yo"]


# ---- folders --------------------------------------------------------------------------------


def test_folder_reads_text_files_recursively_in_sorted_order(tmp_path):
    root = tmp_path / "code"
    _write(root / "b.py", "print(2)\n")
    _write(root / "a.md", "# A\n")
    _write(root / "sub" / "c.txt", "see\n")
    _write(root / "LICENSE", "MIT\n")  # unknown suffix, but decodes
    _write(root / "logo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    _write(root / ".hidden.txt", "no\n")
    _write(root / ".git" / "config", "no\n")
    _write(root / "__pycache__" / "b.txt", "no\n")
    source = open_source(root)
    assert [p.relative_to(root).as_posix() for p in source.paths] == [
        "LICENSE",
        "a.md",
        "b.py",
        "sub/c.txt",
    ]
    assert _texts(source) == ["MIT\n", "# A\n", "print(2)\n", "see\n"]
    assert not source.is_single_text
    only_py = open_source(root, suffixes=(".py", ".txt"), exclude_dirs=("sub",))
    assert [p.name for p in only_py.paths] == ["b.py"]


def test_labelled_folder_gives_folder_names_as_labels(tmp_path):
    root = tmp_path / "reviews"
    _write(root / "pos" / "1.txt", "great")
    _write(root / "pos" / "2.txt", "fine")
    _write(root / "neg" / "1.txt", "awful")
    _write(root / "neg" / "deeper" / "2.txt", "bad")
    source = open_source(root)
    docs = list(source.iter_documents())
    assert [(d.text, d.label, d.split) for d in docs] == [
        ("awful", "neg", None),
        ("bad", "neg", None),
        ("great", "pos", None),
        ("fine", "pos", None),
    ]
    assert "labelled folder" in source.description and "classes: neg, pos" in source.description


def test_aclimdb_layout_gives_splits_and_skips_unsup(tmp_path):
    root = tmp_path / "aclImdb"
    _write(root / "README", "readme")
    _write(root / "imdbEr.txt", "0.1\n")
    for split in ("train", "test"):
        _write(root / split / "urls_pos.txt", "http://x\n")
        _write(root / split / "pos" / "0_9.txt", f"{split} good")
        _write(root / split / "neg" / "0_2.txt", f"{split} bad")
    _write(root / "train" / "unsup" / "0_0.txt", "unlabelled")
    docs = list(open_source(root).iter_documents())
    assert sorted((d.text, d.label, d.split) for d in docs) == [
        ("test bad", "neg", "test"),
        ("test good", "pos", "test"),
        ("train bad", "neg", "train"),
        ("train good", "pos", "train"),
    ]


# ---- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_is_stable_and_follows_files_and_options(tmp_path):
    path = _write(tmp_path / "x.csv", "a,b\nfirst,1\nsecond,2\n")
    base = open_source(path, field="a").fingerprint()
    assert len(base) == 64 and base == open_source(path, field="a").fingerprint()
    assert open_source(path, field="b").fingerprint() != base
    assert open_source(path, field="a", label_field="b").fingerprint() != base
    assert open_source(path, field="{a}").fingerprint() != base
    assert open_source(path, field="a", errors="replace").fingerprint() != base
    _write(path, "a,b\nfirst,1\nsecond,3\n")
    assert open_source(path, field="a").fingerprint() != base


def test_folder_fingerprint_follows_file_names(tmp_path):
    root = tmp_path / "docs"
    _write(root / "a.txt", "alpha")
    _write(root / "b.txt", "beta")
    base = open_source(root).fingerprint()
    (root / "b.txt").rename(root / "c.txt")
    assert open_source(root).fingerprint() != base
    (root / "c.txt").rename(root / "b.txt")
    assert open_source(root).fingerprint() == base


# ---- bad input --------------------------------------------------------------------------------


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="tinyshakespeare") as info:
        open_source("tinyshakespear")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("content", ["", "  \n\n\t"])
def test_empty_text_file_fails_when_opened(tmp_path, content):
    with pytest.raises(DataError, match="empty"):
        open_source(_write(tmp_path / "empty.txt", content))


def test_empty_folder_and_all_empty_documents(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no text files"):
        open_source(tmp_path / "none")
    _write(tmp_path / "blank" / "a.txt", "")
    _write(tmp_path / "blank" / "b.txt", "\n")
    with pytest.raises(DataError, match="empty"):
        list(open_source(tmp_path / "blank").iter_documents())


def test_csv_without_rows_or_without_text(tmp_path):
    with pytest.raises(DataError, match="no records"):
        open_source(_write(tmp_path / "h.csv", "text,label\n"), field="text")
    source = open_source(_write(tmp_path / "e.csv", "text,label\n,a\n ,b\n"), field="text")
    with pytest.raises(DataError, match="'text' is empty in all 2 records.*label"):
        list(source.iter_documents())


def test_binary_file_is_refused(tmp_path):
    path = _write(tmp_path / "model.bin", b"\x00\x01\x02weights" * 10)
    with pytest.raises(DataError, match=r"model\.bin looks binary"):
        open_source(path)


def test_non_utf8_file_names_the_byte_and_the_fix(tmp_path):
    path = _write(tmp_path / "latin.txt", "caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"latin\.txt is not valid utf-8 at byte 3.*--encoding.*--errors replace"
    ):
        open_source(path)
    assert _texts(open_source(path, errors="replace")) == ["caf\ufffd au lait\n"]
    assert _texts(open_source(path, encoding="latin-1")) == ["caf\u00e9 au lait\n"]


def test_non_utf8_byte_past_the_sniffed_head(tmp_path):
    path = _write(tmp_path / "late.txt", b"ok\n" * 40_000 + b"\xff\n")
    with pytest.raises(DataError, match="at byte 120,000"):
        list(open_source(path).iter_chunks(chunk_chars=1000))
    csv_path = _write(tmp_path / "late.csv", b"text\n" + b"fine\n" * 30_000 + b"bad \xe9\n")
    with pytest.raises(DataError, match=r"late\.csv is not valid utf-8 at byte 150,009"):
        list(open_source(csv_path).iter_documents())


def test_non_utf8_file_in_folder_names_the_file(tmp_path):
    _write(tmp_path / "f" / "good.txt", "fine")
    _write(tmp_path / "f" / "bad.txt", b"ab\xff")
    with pytest.raises(DataError, match=r"bad\.txt is not valid utf-8 at byte 2"):
        list(open_source(tmp_path / "f").iter_documents())


def test_missing_column_or_field_lists_what_exists():
    with pytest.raises(DataError, match="no column 'descr'.*country, description"):
        open_source("wine-reviews", field="descr")
    with pytest.raises(DataError, match="no column 'nope'"):
        open_source("wine-reviews", field="{country} {nope}")
    with pytest.raises(DataError, match="no column 'stars'.*review, sentiment"):
        open_source("imdb", label_field="stars")
    with pytest.raises(DataError, match="no field 'answers'.*question, question_ctx, answer"):
        list(open_source("eli5", field="answers").iter_documents())


def test_missing_nested_field_lists_keys_at_that_level(tmp_path):
    path = _write(tmp_path / "q.jsonl", json.dumps({"answers": {"text": ["a"], "start": [1]}}))
    with pytest.raises(DataError, match="no field 'answers.txt'.*text, start"):
        open_source(path, field="answers.txt")


def test_csv_without_field_or_text_column_asks_for_field(tmp_path):
    with pytest.raises(ConfigError, match="--field.*body, n"):
        open_source(_write(tmp_path / "x.csv", "body,n\nhi,1\n"))


def test_labelled_folder_needs_two_classes(tmp_path):
    _write(tmp_path / "one" / "pos" / "a.txt", "good")
    with pytest.raises(DataError, match="only the class 'pos'"):
        open_source(tmp_path / "one")


def test_options_that_do_not_apply_are_refused(tiny_text):
    with pytest.raises(ConfigError, match="--field"):
        open_source(tiny_text, field="text")
    with pytest.raises(ConfigError, match="--field"):
        open_source(tiny_text.parent, label_field="y")
    with pytest.raises(ConfigError, match="unknown --encoding"):
        open_source(tiny_text, encoding="utf-99")
    with pytest.raises(ConfigError, match="unknown --errors"):
        open_source(tiny_text, errors="maybe")
    with pytest.raises(ConfigError, match="format specs"):
        open_source("wine-reviews", field="{price:.0f}")


def test_bad_json_and_non_record_json(tmp_path):
    with pytest.raises(DataError, match="invalid JSON in line 2"):
        list(open_source(_write(tmp_path / "b.jsonl", '{"text": "a"}\n{oops\n')).iter_documents())
    with pytest.raises(DataError, match="expected a JSON array"):
        list(open_source(_write(tmp_path / "o.json", '{"rows": []}')).iter_documents())
