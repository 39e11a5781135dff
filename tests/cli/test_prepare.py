"""Tests for `lmforge prepare`: it works through the CLI, and bad input gets one error line."""

import json

import pytest

from lmforge.cli.main import main
from lmforge.data.prepare import PreparedData


def _fails(capsys, args: list[str], out, *expected: str) -> str:
    """Run `lmforge prepare ARGS --out OUT`; check the one-line error and return it."""
    existed = out.parent.exists()
    code = main(["prepare", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert existed or not out.parent.exists()  # nothing written, not even the parent folder
    assert err.startswith("lmforge: error: ")
    assert err.count("\n") == 1 and err.endswith("\n")
    assert "Traceback" not in err
    for text in expected:
        assert text in err
    return err


@pytest.fixture
def out(tmp_path):
    """An --out folder in a folder that does not exist yet; no temporary folder may remain."""
    path = tmp_path / "prepared" / "out"
    yield path
    leftovers = [p.name for p in tmp_path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def _write(path, data: str | bytes):
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return str(path)


# ---- it works -------------------------------------------------------------------------------


def test_prepare_prints_one_json_line(tmp_path, tiny_text, out, capsys):
    code = main(["prepare", "--data", str(tiny_text), "--out", str(out), "--json"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 1
    summary = json.loads(lines[0])
    data = PreparedData(out)
    assert summary["tokenizer"] == "char" and summary["vocab_size"] == data.tokenizer.vocab_size
    assert summary["train_tokens"] + summary["val_tokens"] == len(tiny_text.read_text())


def test_cli_prepare_python_stdlib(tmp_path, capsys):
    # the real dataset through the CLI; char, since BPE over all 13 MB takes over 20 s
    out = tmp_path / "stdlib"
    assert main(["prepare", "--data", "python-stdlib", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"]["train"] > 300 and summary["documents"]["val"] > 30
    data = PreparedData(out)
    assert "def " in data.tokenizer.decode(data.documents("train")[0])


def test_config_file_supplies_options(tmp_path, tiny_text, out, capsys):
    config = _write(tmp_path / "prep.yaml", f"data: {tiny_text}\nval-fraction: 0.5\n")
    assert main(["prepare", "--config", config, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0.49 < summary["val_tokens"] / (summary["train_tokens"] + summary["val_tokens"]) < 0.5


# ---- bad input: one line naming the problem and the fix, exit 2, nothing written ------------


def test_missing_path(tmp_path, out, capsys):
    _fails(capsys, ["--data", str(tmp_path / "nope.txt")], out, "nope.txt does not exist")


def test_missing_data_option(out, capsys):
    _fails(capsys, [], out, "--data is required")


def test_empty_corpus(tmp_path, out, capsys):
    _fails(capsys, ["--data", _write(tmp_path / "empty.txt", "")], out, "is empty")
    _fails(capsys, ["--data", _write(tmp_path / "blank.txt", " \n\n")], out, "is empty")
    header_only = _write(tmp_path / "header.csv", "id,text\n")
    _fails(capsys, ["--data", header_only, "--field", "text"], out, "holds no records")


def test_corpus_too_short_to_split(tmp_path, out, capsys):
    _fails(capsys, ["--data", _write(tmp_path / "x.txt", "x")], out, "too short", "--val-fraction")
    one_row = _write(tmp_path / "one.csv", "id,text\n1,a single review\n")
    _fails(capsys, ["--data", one_row, "--field", "text"], out, "single document")


def test_binary_file(tmp_path, out, capsys):
    binary = _write(tmp_path / "data.bin", bytes(range(256)) * 64)
    _fails(capsys, ["--data", binary], out, "looks binary")


def test_non_utf8_file_suggests_encoding_and_replace(tmp_path, out, capsys):
    latin = _write(tmp_path / "latin.txt", "café au lait\nune crêpe\n".encode("latin-1"))
    _fails(capsys, ["--data", latin], out, "not valid utf-8", "--encoding", "--errors replace")
    assert main(["prepare", "--data", latin, "--errors", "replace", "--out", str(out)]) == 0
    data = PreparedData(out)
    text = data.tokenizer.decode(data.tokens("train")) + data.tokenizer.decode(data.tokens("val"))
    assert text == "caf\ufffd au lait\nune cr\ufffdpe\n"


def test_missing_csv_column_lists_the_columns(tmp_path, out, capsys):
    table = _write(tmp_path / "t.csv", "title,body\nhello,world\nfoo,bar\n")
    _fails(capsys, ["--data", table, "--field", "text"], out, "'text'", "title, body")
    _fails(capsys, ["--data", table], out, "--field", "title, body")


def test_missing_json_field_lists_the_fields(tmp_path, out, capsys):
    records = _write(tmp_path / "t.json", json.dumps([{"q": "why?", "answer": {"body": "so"}}]))
    _fails(capsys, ["--data", records, "--field", "question"], out, "'question'", "q, answer")
    _fails(capsys, ["--data", records, "--field", "answer.text"], out, "available: body")


def test_unknown_tokenizer_lists_the_kinds(tiny_text, out, capsys):
    args = ["--data", str(tiny_text), "--tokenizer", "sentencepiece"]
    _fails(capsys, args, out, "'sentencepiece'", "char, word, bpe, wordpiece, unigram")


def test_unknown_dataset_lists_the_names(out, capsys):
    _fails(capsys, ["--data", "shakespeare"], out, "'shakespeare'", "tinyshakespeare, imdb")


@pytest.mark.parametrize("kind, minimum", [("bpe", 257), ("wordpiece", 5), ("word", 2)])
def test_vocab_smaller_than_the_special_tokens(tiny_text, out, capsys, kind, minimum):
    args = ["--data", str(tiny_text), "--tokenizer", kind, "--vocab-size", "1"]
    _fails(capsys, args, out, "too small", f"--vocab-size {minimum}")


def test_output_folder_holding_something_else(tiny_text, out, capsys):
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    _fails(capsys, ["--data", str(tiny_text)], out, "exists and is not a prepared", "--out")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bad_flags_get_one_line(out, capsys):
    _fails(capsys, ["--data", "x.txt", "--val-fraction", "lots"], out, "--val-fraction")
    _fails(capsys, ["--data", "x.txt", "--val-fraction", "1.5"], out, "[0, 1)")
    code = main(["prepare", "--data", "x.txt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--out" in err
