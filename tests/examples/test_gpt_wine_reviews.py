"""examples/gpt_wine_reviews.py on a tiny budget: it trains on the real wine reviews, samples from
each prompt, and writes the attention report, the heatmaps and the loss curve."""

import html
import importlib.util
import os
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpt_wine_reviews.py"
SHARED_DATA = Path(
    os.environ.get(
        "LMFORGE_DATA_DIR", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
).resolve()
WINE = SHARED_DATA / "winemag-130k-v2.first2191.csv.gz"


def _example():
    spec = importlib.util.spec_from_file_location("gpt_wine_reviews", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_workflow_writes_samples_report_and_figures(tmp_path, monkeypatch, capsys):
    if not WINE.is_file():
        pytest.fail(
            f"test data {WINE} is missing: set LMFORGE_DATA_DIR to the folder that holds "
            "winemag-130k-v2.first2191.csv.gz (../shared/data)"
        )
    example = _example()
    run, figures = tmp_path / "run", tmp_path / "figures"
    argv = [str(EXAMPLE), "--out", str(run), "--figures", str(figures), "--num-samples", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--epochs", "0.05", "--threads", "1"])  # 4 steps
    example.main()
    printed = capsys.readouterr().out
    assert "2,191 reviews; training gpt-tiny-wine" in printed
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()

    # samples: for each prompt and temperature a header, then num_samples texts that continue it
    lines = (figures / "wine-samples.txt").read_text(encoding="utf-8").splitlines()
    groups = [(p, t) for p in example.SAMPLE_PROMPTS for t in (1.0, 0.5)]
    assert len(lines) == len(groups) * 3
    for i, (prompt, temperature) in enumerate(groups):
        header, *samples = lines[3 * i : 3 * i + 3]
        assert header == f"--- {prompt!r}, temperature {temperature} ---"
        assert all(s.startswith(prompt + " ") and len(s) > len(prompt) + 1 for s in samples)

    # the attention report holds every inspected prompt and its next-token table
    page = (figures / "wine-attention.html").read_text(encoding="utf-8")
    assert page.count('<section class="prompt"') == len(example.INSPECT_PROMPTS) == 3
    for prompt in example.INSPECT_PROMPTS:
        assert f"<code>{html.escape(prompt)}</code>" in page
        assert f"next after {prompt!r}: " in printed
    assert page.count('<table class="next">') == 3 and "http://" not in page

    # one heatmap per prompt (the preset has one layer) and the loss curve, all real PNGs
    pngs = sorted((figures / "wine-attention").iterdir())
    assert [p.name for p in pngs] == [f"prompt{n}-layer1.png" for n in (1, 2, 3)]
    for png in [*pngs, figures / "wine-loss.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
