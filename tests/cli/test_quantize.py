"""int8 weights from the command line and Python: `lmforge quantize`, `--quantize int8` on sample,
eval and inspect, `lmforge.load(..., quantize="int8")`, on a tiny GPT trained a few hundred
steps."""

import json

import pytest
import torch
from safetensors import safe_open

import lmforge
from lmforge.cli.main import main
from lmforge.layers.quant import Int8Linear
from tests.cli.test_train import _error  # one line, exit 2, no traceback

SHAPE = ["--num-layers", "2", "--embed-dim", "64", "--num-heads", "2", "--ffn-dim", "256"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """(run, its int8 copy by `lmforge quantize`): a tied GPT trained 300 steps on tiny_text."""
    root = tmp_path_factory.mktemp("quant")
    text = root / "tiny.txt"
    lines = [
        "ROMEO: But soft, what light through yonder window breaks?",
        "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
        "MERCUTIO: A plague o' both your houses!",
    ]
    text.write_text("\n".join(lines[i % 3] for i in range(360)) + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        argv = ["train", "--data", str(text), "--tokenizer", "char", "--preset", "gpt-baby",
                *SHAPE, "--max-seq-len", "32", "--batch-size", "8", "--max-steps", "300",
                "--precision", "fp32", "--threads", "1", "--eval-every", "1000",
                "--eval-tokens", "512", "--json", "--out", str(root / "run")]  # fmt: skip
        assert main(argv) == 0
        assert main(["quantize", str(root / "run"), "--out", str(root / "run-int8")]) == 0
    return root / "run", root / "run-int8"


def _run(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _eval(capsys, argv) -> float:
    return json.loads(_run(capsys, ["eval", *argv, "--precision", "fp32", "--json"]))["loss"]


def test_int8_validation_loss_is_within_one_percent_of_float32(trained, capsys):
    run, run_int8 = trained
    fp32 = _eval(capsys, [str(run)])
    assert fp32 < 2.0  # trained: well below the uniform guess, ln(vocab) ~ 3.6
    in_memory = _eval(capsys, [str(run), "--quantize", "int8"])
    from_folder = _eval(capsys, [str(run_int8)])
    assert in_memory != fp32  # int8 weights really ran
    assert abs(in_memory - fp32) <= 0.01 * fp32
    assert from_folder == pytest.approx(in_memory, rel=1e-6)


def test_int8_logits_stay_close_to_float32_and_the_folder_round_trips(trained):
    run, run_int8 = trained
    fp32 = lmforge.load(run)
    in_memory = lmforge.load(run, quantize="int8")
    from_folder = lmforge.load(run_int8)
    for model in (in_memory, from_folder):
        assert model.quantized == "int8" and isinstance(model.head, Int8Linear)
    ids = torch.randint(0, fp32.config.vocab_size, (2, 24))
    with torch.no_grad():
        want, got, loaded = fp32(ids), in_memory(ids), from_folder(ids)
    assert (got - want).abs().max() <= 0.03 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95
    torch.testing.assert_close(loaded, got, rtol=0, atol=0)  # quantize -> save -> load: exact


def test_the_int8_folder_holds_int8_weights_and_float32_scales_at_a_third_of_the_size(trained):
    run, run_int8 = trained
    config = json.loads((run_int8 / "config.json").read_text())
    assert config["quantize"] == "int8"
    assert config["data"] == json.loads((run / "config.json").read_text())["data"]
    assert (run_int8 / "tokenizer").is_dir()
    with safe_open(run_int8 / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(run / "model.safetensors", "pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
    int8 = sorted(k for k, t in tensors.items() if t.dtype == torch.int8)
    assert len(int8) == 2 * 4 + 1 and "head.weight" in int8  # 4 linears a block, the head
    for key in int8:
        scale = tensors[key.replace(".weight", ".scale")]
        assert scale.dtype == torch.float32 and scale.shape == (tensors[key].shape[0],)
        if key != "head.weight":  # the tied head is the embedding in the float32 file
            want = original[key]
            assert (tensors[key].float() * scale[:, None] - want).abs().max() <= scale.max() / 2
    token = "backbone.embed.token.weight"
    assert torch.equal(tensors[token], original[token])  # the lookup stays exact
    # the float32 embeddings stay: about a quarter for the linear layers, a third for all here
    size = (run_int8 / "model.safetensors").stat().st_size
    assert size < 0.35 * (run / "model.safetensors").stat().st_size


def test_sample_and_inspect_load_the_int8_folder_like_quantizing_in_memory(trained, capsys):
    run, run_int8 = trained
    argv = ["--prompt", "ROMEO:", "--max-new-tokens", "30", "--temperature", "0"]
    from_folder = _run(capsys, ["sample", str(run_int8), *argv])
    assert _run(capsys, ["sample", str(run), "--quantize", "int8", *argv]) == from_folder
    assert from_folder.startswith("ROMEO:") and len(from_folder) > 30
    text = lmforge.generate_text(run, "ROMEO:", quantize="int8", max_new_tokens=30, temperature=0)
    assert "ROMEO:" + text + "\n" == from_folder
    report = run_int8.parent / "inspect.html"
    out = _run(capsys, ["inspect", str(run_int8), "--prompt", "ROMEO", "--out", str(report)])
    assert report.is_file() and "ROMEO" in out


def test_bad_input_is_one_line_naming_the_fix(trained, capsys, tmp_path):
    run, run_int8 = trained
    for verb in ("sample", "eval", "inspect"):
        err = _error(capsys, [verb, str(run), "--prompt", "x", "--quantize", "int4"])
        assert "--quantize" in err and "'int8'" in err and f"lmforge {verb} --help" in err
    assert "'int8'" in _error(capsys, ["quantize", str(run), "--out", "x", "--kind", "int4"])
    err = _error(capsys, ["quantize", str(run), "--out", str(run_int8)])
    assert "not empty" in err and "--overwrite" in err
    err = _error(capsys, ["quantize", str(run_int8), "--out", str(tmp_path / "again")])
    assert f"already quantized (int8); quantize {run}" in err
    assert not (tmp_path / "again").exists()
    err = _error(capsys, ["convert", str(run_int8), str(tmp_path / "hf")])
    assert "convert the run it was quantized from" in err
    with pytest.raises(lmforge.ConfigError, match="supports int8"):
        lmforge.load(run, quantize="int4")


def test_overwrite_replaces_the_folder_atomically(trained, capsys, tmp_path):
    run, _ = trained
    out = tmp_path / "q"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    _run(capsys, ["quantize", str(run), "--out", str(out), "--overwrite"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_hugging_face_folder_quantizes_to_a_run_folder(hf_gpt2, tmp_path, capsys):
    out = tmp_path / "gpt2-int8"
    _run(capsys, ["quantize", str(hf_gpt2), "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "gpt" and config["quantize"] == "int8"
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        want = lmforge.load(hf_gpt2, quantize="int8")(ids)
        torch.testing.assert_close(lmforge.load(out)(ids), want, rtol=0, atol=0)
    argv = ["--prompt", "Why is the sky", "--max-new-tokens", "8", "--temperature", "0"]
    assert _run(capsys, ["sample", str(out), *argv]) == _run(
        capsys, ["sample", str(hf_gpt2), "--quantize", "int8", *argv]
    )


def test_a_preset_with_random_weights_loads_quantized():
    model = lmforge.load("gpt-baby", quantize="int8")
    assert isinstance(model.head, Int8Linear) and model.int8_kernel == model.head.kernel
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(model(ids)).all()
