"""Tests for `lmforge prepare`: it works through the CLI, and bad input gets one error line."""

import json

import pytest

from lmforge.cli.main import main
from lmforge.data.prepare import PreparedData


def _fails(capsys, args: list[str], out, *expected: str) -> str:
    """Run `lmforge prepare ARGS --out OUT`; check the one-line error and return it."""
    existed = out.parent.exists()
    code = main(["prepare", *args, "--out", str(out)])
    # a progress bar the error stopped is erased ("\r", blanks, "\r"): not on the screen
    err = capsys.readouterr().err.rsplit("\r", 1)[-1]
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


# ---- --tokenizer PATH: an existing tokenizer encodes the corpus ------------------------------

DOCS = [
    "The café serves crème brûlée and naïve visitors résumé their travels.",
    "ROMEO: But soft, what light through yonder window breaks?",
    "Don't stop; it's 3.14 > 2 — isn't it? Привет, мир! 東京 🙂",
    "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
    "A crisp white, with lemon, green apple and a long mineral finish.",
]


def _prepared_bpe(folder):
    """A tokenizer saved by an earlier `lmforge prepare`: the folder's tokenizer/ and the
    tokenizer itself, loaded from there."""
    corpus = _write(folder.with_name("corpus.txt"), "\n".join(DOCS * 30))
    args = ["--data", corpus, "--tokenizer", "bpe", "--vocab-size", "300", "--out", str(folder)]
    assert main(["prepare", *args]) == 0
    return folder / "tokenizer", PreparedData(folder).tokenizer.encode


def _gpt2_files(folder):
    """GPT-2's layout, vocab.json + merges.txt, from a byte-level BPE trained here; the ids to
    expect are those of the trained tokenizer itself, not of a loader."""
    from lmforge.tokenizers.subword import train_bpe

    bpe = train_bpe(DOCS * 20, vocab_size=320)
    folder.mkdir()
    bpe.tokenizer.model.save(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]
    return folder, bpe.encode


def _bert_vocab(folder):
    """BERT's layout, one vocab.txt; the ids to expect come from the `tokenizers` library's own
    BERT WordPiece tokenizer reading the same file."""
    from tokenizers import BertWordPieceTokenizer

    words = "the cafe serves creme brulee and naive visitors resume their travels romeo but soft"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words.split(), "##s", "##ing"]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += list(",.;:!?'>—") + list("0123456789") + ["東", "京"]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    reference = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)
    return folder, lambda text: reference.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize(
    "make, kind",
    [(_prepared_bpe, "bpe"), (_gpt2_files, "bpe"), (_bert_vocab, "wordpiece")],
    ids=["saved-by-prepare", "gpt2-vocab-merges", "bert-vocab-txt"],
)
def test_an_existing_tokenizer_folder_encodes_the_corpus(tmp_path, capsys, make, kind):
    path, encode = make(tmp_path / "existing")
    records = tmp_path / "docs.jsonl"
    _write(records, "".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / "encoded"
    args = ["--data", str(records), "--field", "text", "--val-fraction", "0", "--json"]
    capsys.readouterr()
    assert main(["prepare", *args, "--tokenizer", str(path), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    data = PreparedData(out)
    assert summary["tokenizer"] == data.meta["tokenizer"] == kind
    assert summary["documents"] == {"train": len(DOCS), "val": 0}
    expected = [encode(d) for d in DOCS]
    assert len({i for ids in expected for i in ids}) > 40  # real pieces, not all [UNK]
    assert [doc.tolist() for doc in data.documents("train")] == expected
    assert data.tokenizer.vocab_size == summary["vocab_size"]
    assert [data.tokenizer.encode(d) for d in DOCS] == expected  # the copy in --out, too


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


@pytest.mark.parametrize("num_proc", ["1", "2"])  # a helper thread, a worker process
def test_character_a_saved_char_tokenizer_lacks(tmp_path, out, capsys, num_proc):
    saved = tmp_path / "saved"
    text = "hello world? fine.\n" * 50
    assert main(["prepare", "--data", _write(tmp_path / "a.txt", text), "--out", str(saved)]) == 0
    capsys.readouterr()
    new = _write(tmp_path / "b.txt", text + "héllo\n" + text)
    args = ["--data", new, "--tokenizer", str(saved / "tokenizer"), "--num-proc", num_proc]
    _fails(capsys, args, out, "b.txt", "'é' (U+00E9)", "--unknown-token", "--tokenizer char")
    # the fix it names: map unseen characters to one of the tokenizer's own; its ids stay
    _fails(capsys, [*args, "--unknown-token", "é"], out, "would change its vocabulary")
    assert main(["prepare", *args, "--unknown-token", "?", "--out", str(out)]) == 0
    data, old = PreparedData(out), PreparedData(saved)
    assert data.tokenizer.vocab == old.tokenizer.vocab and data.tokenizer.unk_token == "?"
    decoded = "".join(data.tokenizer.decode(data.tokens(split)) for split in ("train", "val"))
    assert decoded == text + "h?llo\n" + text


def test_unknown_token_is_for_char_tokenizers(tiny_text, tmp_path, out, capsys):
    args = ["--data", str(tiny_text), "--unknown-token", "?"]
    _fails(capsys, [*args, "--tokenizer", "bpe"], out, "applies to char", "drop --unknown-token")
    saved = tmp_path / "saved"
    main(["prepare", "--data", str(tiny_text), "--tokenizer", "word", "--out", str(saved)])
    capsys.readouterr()
    _fails(capsys, [*args, "--tokenizer", str(saved / "tokenizer")], out, "holds a word one")


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
