"""`lmforge inspect` on a tiny run trained on the real wine reviews: tables, report, heatmaps, and
one-line errors (exit 2) for prompts, --top-k and paths that cannot work."""

import os
from pathlib import Path

import pytest

from lmforge.cli.main import main

SHARED_DATA = Path(
    os.environ.get(
        "LMFORGE_DATA_DIR", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
).resolve()
TEMPLATE = "wine review : {country} : {province} : {variety} : {description}"
TRAIN = ["--data", "wine-reviews", "--tokenizer", "word", "--field", TEMPLATE, "--vocab-size",
         "400", "--preset", "gpt-tiny-wine", "--num-layers", "1", "--embed-dim", "32",
         "--head-dim", "16", "--ffn-dim", "32", "--max-seq-len", "24", "--batch-size", "8",
         "--max-steps", "6", "--eval-tokens", "512", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_DATA_DIR", str(SHARED_DATA))
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        assert main(["train", *TRAIN, "--out", str(root / "run")]) == 0
    return root / "run"


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_inspect_prints_tables_and_writes_report_and_heatmaps(run, tmp_path, capsys):
    capsys.readouterr()
    prompts = ["wine review : germany", "Wine review : Italy : Tuscany"]
    argv = ["inspect", str(run), "--prompt", prompts[0], "--prompt", prompts[1], "--top-k", "3"]
    code = main([*argv, "--out", str(tmp_path / "r.html"), "--png", str(tmp_path / "maps")])
    out = capsys.readouterr().out
    assert code == 0
    assert "prompt: wine review : germany  (4 tokens)" in out
    assert "prompt: Wine review : Italy : Tuscany  (6 tokens)" in out
    assert sum(line.strip().startswith(("1.", "2.", "3.")) for line in out.splitlines()) == 6
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count('<section class="prompt"') == 2 and "tuscany" in page
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "prompt1-layer1.png",
        "prompt2-layer1.png",
    ]


def test_the_report_goes_into_the_run_by_default(run, capsys):
    assert main(["inspect", str(run), "--prompt", "wine review"]) == 0
    assert f"report: {run / 'inspect.html'}" in capsys.readouterr().out
    assert (run / "inspect.html").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "wine", "--top-k", "0"], "must be a positive integer"),
        (["--prompt", "wine", "--out", "{tmp}/nope/r.html"], "nope does not exist"),
        (["--prompt", "wine", "--png", "{tmp}/nope/maps"], "nope does not exist"),
        (["--prompt", "  "], "encodes to no tokens"),
        ([], "give at least one --prompt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert message in _error(capsys, ["inspect", str(run), *args])
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    ("png", "message"),
    [
        ("file.png", "is a file, not a folder; give a folder (created if missing)"),
        ("maps", "prompt1-layer1.png is a folder but a file goes there"),
        ("r.html", "are the same path"),
    ],
)
def test_output_paths_are_checked_before_anything_is_written(run, tmp_path, capsys, png, message):
    (tmp_path / "file.png").write_bytes(b"not a folder")
    (tmp_path / "maps" / "prompt1-layer1.png").mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["inspect", str(run), "--prompt", "wine review", "--out", str(tmp_path / "r.html")]
    capsys.readouterr()
    assert main([*argv, "--png", str(tmp_path / png)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the tables: the failure comes before any output
    err = captured.err.strip()
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err
    assert message in err and f"--png {tmp_path / png}" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_existing_file_that_is_not_html_is_never_overwritten(run, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my own notes\n")
    err = _error(capsys, ["inspect", str(run), "--prompt", "wine", "--out", str(notes)])
    assert "notes.txt exists and is not an .html file" in err and "--out" in err
    assert notes.read_text() == "my own notes\n"
    # the suggested name works, and a new non-.html name is still allowed
    assert (
        main(["inspect", str(run), "--prompt", "wine", "--out", str(tmp_path / "notes.html")]) == 0
    )
    assert main(["inspect", str(run), "--prompt", "wine", "--out", str(tmp_path / "new.txt")]) == 0
    assert "<html" in (tmp_path / "new.txt").read_text(encoding="utf-8").lower()


def test_a_missing_run_folder_is_named(tmp_path, capsys):
    err = _error(capsys, ["inspect", str(tmp_path / "gone"), "--prompt", "wine"])
    assert "gone" in err and "does not exist" in err


def test_a_long_prompt_and_a_large_top_k_are_cut_to_what_fits(run, tmp_path, capsys, caplog):
    out = tmp_path / "r.html"
    with caplog.at_level("WARNING"):
        code = main(["inspect", str(run), "--prompt", "wine " * 25, "--top-k", "401",
                     "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "(24 tokens)" in printed  # the last 24 of 25, the model's context
    assert "  400. " in printed and "  401. " not in printed  # the whole vocabulary, no more
    assert sum("keeping its last 24 tokens" in r.message for r in caplog.records) == 1
