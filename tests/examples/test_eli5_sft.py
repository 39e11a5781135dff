"""examples/eli5_sft.py --quick: pretrain, instruction-tune on ELI5, score held-out answers."""

import json
import runpy
import sys
from pathlib import Path

from lmforge.tokenizers.chat import CHATML_TEMPLATE

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "eli5_sft.py"


def test_quick_workflow_scores_held_out_answers_before_and_after(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    argv = [str(EXAMPLE), "--quick", "--threads", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    report = json.loads((out / "report.json").read_text())
    assert report["eli5_held_out_records"] == 100
    assert report["eli5_train_records"] + report["eli5_held_out_records"] == 1000
    assert report["answer_perplexity_after"] < report["answer_perplexity_before"]
    # the trainer's final evaluation scored the same held-out answers
    assert abs(report["sft_val_perplexity"] / report["answer_perplexity_after"] - 1) < 1e-3
    assert len(report["samples"]) == 3
    assert all(isinstance(s["answer"], str) and s["question"] for s in report["samples"])
    saved = json.loads((out / "sft" / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == CHATML_TEMPLATE  # the default, written out
