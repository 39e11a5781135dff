"""examples/gpt2_finetune_eli5.py --tiny: the whole workflow runs offline, on held-out records."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpt2_finetune_eli5.py"


def _example():
    spec = importlib.util.spec_from_file_location("gpt2_finetune_eli5", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_workflow_fine_tunes_and_scores_held_out_records(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    out = tmp_path / "demo"
    argv = [str(EXAMPLE), "--tiny", "--pretrain-steps", "5", "--threads", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    _example().main()
    report = json.loads((out / "report.json").read_text())
    assert report["eli5_held_out_records"] == 100 and report["eli5_train_records"] == 900
    assert report["eli5_val_perplexity_after"] < report["eli5_val_perplexity_before"]
    after = pytest.approx(report["eli5_val_perplexity_after"], rel=1e-3)
    assert report["eli5_val_perplexity_per_epoch"][-1] == after  # the trainer scored the same
    assert report["transformers_pipeline"].startswith("Why is the sky blue?")
    assert isinstance(report["sample"], str) and isinstance(report["beam_search"], str)
    assert json.loads((out / "hf" / "config.json").read_text())["model_type"] == "gpt2"
