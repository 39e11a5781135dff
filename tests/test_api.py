"""lmforge.api: loading a run to sample never imports training/ (the layering rule, at run time)."""

import json
import subprocess
import sys


def test_loading_a_run_for_sampling_does_not_import_training(char_run):
    code = (
        "import json, sys, lmforge.api as api\n"
        f"model, tok = api.load_for_sampling({str(char_run)!r}, device='cpu')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lmforge.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(out.stdout.splitlines()[-1])
    assert "lmforge.run_folder" in modules
    assert not [m for m in modules if m.startswith("lmforge.training")]
