"""`lmforge plot` on the metrics.jsonl of tiny real runs, and its one-line errors (exit 2)."""

import os
import shutil
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
         "300", "--preset", "gpt-tiny-wine", "--num-layers", "1", "--embed-dim", "32",
         "--head-dim", "16", "--ffn-dim", "32", "--max-seq-len", "24", "--batch-size", "8",
         "--max-steps", "8", "--log-every", "2", "--eval-every", "4", "--eval-tokens", "512",
         "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("plot")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_DATA_DIR", str(SHARED_DATA))
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        assert main(["train", *TRAIN, "--out", str(root / "a")]) == 0
    shutil.copytree(root / "a", root / "b")  # a second run to compare with
    return [root / "a", root / "b"]


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("x", ["tokens", "time", "step"])
def test_plot_several_runs(runs, tmp_path, capsys, x):
    out = tmp_path / f"loss-{x}.png"
    assert main(["plot", *map(str, runs), "--out", str(out), "--x", x]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}"], "has no metrics.jsonl"),
        (["{tmp}/gone"], "no such run folder"),
        (["{run}", "--out", "{tmp}/nope/loss.png"], "nope does not exist"),
        (["{run}", "--out", "{tmp}/loss.jpeg"], "use one of the file types .png, .svg, .pdf"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(runs[0])) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "loss.png")]
    assert message in _error(capsys, ["plot", *args, *out])
    assert not (tmp_path / "loss.png").exists()
