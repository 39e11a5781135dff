"""`lmforge convert` both ways, `sample` and `train --init-from` on Hugging Face folders, and the
bad inputs of checkpoint loading: one line, exit code 2, no traceback."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.interop.hf import write_lmforge_folder
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.tokenizers.base import train_tokenizer

TEXT = (
    "Why is the sky blue? Sunlight scatters off the air, and blue light scatters the most.\n"
    "How do birds fly? Their wings push air down, so the air pushes them up.\n"
    "Why do cats purr? Nobody knows for sure, but it may calm them and heal bones.\n"
)
GPT2_SHAPED = [
    "--preset", "gpt-baby", "--position", "learned", "--use-bias", "--num-layers", "1",
    "--embed-dim", "32", "--num-heads", "2", "--ffn-dim", "64", "--max-seq-len", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A GPT-2-shaped run trained for 3 steps with a byte-level BPE, and its Hugging Face export."""
    root = tmp_path_factory.mktemp("convert")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 30, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        argv = ["train", "--data", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300"]
        argv += [*GPT2_SHAPED, "--batch-size", "4", "--max-steps", "3", "--threads", "1"]
        assert main([*argv, "--eval-tokens", "256", "--out", str(root / "run")]) == 0
    assert main(["convert", str(root / "run"), "--to", "hf", str(root / "hf")]) == 0
    return root / "run", root / "hf"


def _error(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_run_to_hf_loads_in_transformers(folders):
    transformers = pytest.importorskip("transformers")
    run, hf = folders
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu"
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    ids = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        assert (lmforge.load(run)(ids) - reference(ids).logits).abs().max().item() <= 1e-4
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    assert tokenizer(TEXT)["input_ids"] == lmforge.load_tokenizer(run).encode(TEXT)
    pipe = transformers.pipeline("text-generation", model=str(hf))
    assert pipe("Why is", max_new_tokens=4, do_sample=False)[0]["generated_text"].startswith("Why")


def test_hf_to_lmforge_and_sample_both(folders, tmp_path, capsys):
    _, hf = folders
    back = tmp_path / "back"
    assert main(["convert", str(hf), "--to", "lmforge", str(back)]) == 0
    assert json.loads((back / "config.json").read_text())["family"] == "gpt"
    outputs = []
    for folder in (hf, back):
        capsys.readouterr()
        argv = ["sample", str(folder), "--prompt", "Why is", "--max-new-tokens", "8"]
        assert main([*argv, "--seed", "1", "--top-k", "50", "--top-p", "0.95"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("Why is")
    assert main(["convert", str(hf), "--to", "lmforge", str(back), "--overwrite"]) == 0


def test_convert_refuses_a_non_empty_out_and_unexportable_runs(folders, tmp_path, capsys):
    run, hf = folders
    assert "--overwrite" in _error(capsys, ["convert", str(run), "--to", "hf", str(hf)])
    char_run = tmp_path / "char"
    tok = train_tokenizer("char", [TEXT])
    write_lmforge_folder(GPTCausalLM(GPTConfig(vocab_size=tok.vocab_size)), tok, char_run)
    # a char tokenizer exports now (#15): a tokenizer.json of one token per character
    assert main(["convert", str(char_run), "--to", "hf", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    rotary = tmp_path / "rotary"  # post-norm: neither GPT-2 nor GPT-NeoX
    bpe = lmforge.load_tokenizer(run)
    config = GPTConfig(vocab_size=bpe.vocab_size, position="rotary", norm_first=False)
    write_lmforge_folder(GPTCausalLM(config), bpe, rotary)
    assert "position='rotary'" in _error(
        capsys, ["convert", str(rotary), "--to", "hf", str(tmp_path / "b")]
    )
    assert not (tmp_path / "b").exists()


def test_a_rotary_run_converts_to_gpt_neox(tmp_path):
    """gpt-shakespeare's switches (pre-norm, rotary, tied, no biases; without its Canon layers,
    which GPT-NeoX has no place for) at a tiny size: the exported folder loads in transformers
    with the same logits."""
    transformers = pytest.importorskip("transformers")
    from lmforge.models.gpt import PRESETS

    tok = train_tokenizer("char", [TEXT])
    switches = {**PRESETS["gpt-shakespeare"]["config"], "vocab_size": tok.vocab_size}
    switches.update(embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, canon=0)
    model = GPTCausalLM(GPTConfig(**switches)).eval()
    write_lmforge_folder(model, tok, tmp_path / "run")
    assert main(["convert", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")]) == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.model_type == "gpt_neox"
    ids = torch.tensor([tok.encode(TEXT[:40])])
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)).abs().max().item() <= 1e-4


def test_train_init_from_a_hugging_face_folder(folders, tmp_path, capsys):
    _, hf = folders
    data = tmp_path / "qa.json"
    records = [
        {"question": f"q{i}", "answer": line} for i, line in enumerate(TEXT.splitlines() * 12)
    ]
    data.write_text(json.dumps(records))
    out = tmp_path / "ft"
    argv = ["train", "--init-from", str(hf), "--data", str(data), "--field", "answer"]
    argv += ["--block-size", "16", "--lr", "1e-9", "--weight-decay", "0.01", "--epochs", "2"]
    argv += ["--threads", "1"]  # the conftest's setting: a failing run must not change it
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["val_perplexity"] > 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["batching"] == "blocks" and saved["train"]["init_from"] == str(hf)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = saved["train"]["eval_every"]  # set to the steps of one epoch
    assert 1 < per_epoch < result["steps"]
    periodic = [r["step"] for r in rows if "val_loss" in r and not r.get("final")]
    assert periodic and all(step % per_epoch == 0 for step in periodic)
    assert any(r.get("final") for r in rows)
    pretrained, tuned = lmforge.load(hf), lmforge.load(out)  # lr 1e-9: the weights barely move
    ids = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        assert (pretrained(ids) - tuned(ids)).abs().max().item() < 1e-3
    assert main(["sample", str(out), "--prompt", "Why", "--max-new-tokens", "4"]) == 0
    assert "--tokenizer" in _error(
        capsys, [*argv, "--tokenizer", "bpe", "--out", str(tmp_path / "x")]
    )
    assert "--embed-dim" in _error(
        capsys, [*argv, "--embed-dim", "64", "--out", str(tmp_path / "y")]
    )


def _damage(hf: Path, folder: Path, how: str) -> Path:
    shutil.copytree(hf, folder)
    config = json.loads((folder / "config.json").read_text())
    if how == "no-config":
        (folder / "config.json").unlink()
    elif how == "no-weights":
        (folder / "model.safetensors").unlink()
    elif how == "gemma":
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    elif how == "big-vocab":
        train_tokenizer("bpe", [TEXT, TEXT.upper()], vocab_size=400).tokenizer.save(
            str(folder / "tokenizer.json")
        )
    elif how == "pickle":
        (folder / "model.safetensors").unlink()
        torch.save({"wte.weight": torch.zeros(1), "code": _Payload()}, folder / "pytorch_model.bin")
    return folder


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "how, message",
    [
        ("no-config", "config.json"),
        ("no-weights", "no weights (model.safetensors or pytorch_model.bin)"),
        (
            "gemma",
            "model_type 'gemma' is not supported; supported: gpt2, gpt_neox, llama, mistral, "
            "qwen2, qwen3, bert",
        ),
        ("big-vocab", "tokens but the model embeds only 300"),
        ("pickle", "needs full pickle loading"),
    ],
)
def test_broken_folders(folders, tmp_path, capsys, how, message):
    folder = _damage(folders[1], tmp_path / how, how)
    assert message in _error(capsys, ["sample", str(folder), "--prompt", "Why"])
    assert message in _error(
        capsys, ["convert", str(folder), "--to", "lmforge", str(tmp_path / "o")]
    )
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([{"answer": line} for line in TEXT.splitlines() * 8]))
    argv = ["train", "--init-from", str(folder), "--data", str(data), "--field", "answer"]
    assert message in _error(capsys, [*argv, "--block-size", "16", "--out", str(tmp_path / "r")])
    assert "this must never run" not in capsys.readouterr().out
    assert not (tmp_path / "o").exists() and not (tmp_path / "r" / "model.safetensors").exists()


def test_unknown_names_say_where_they_looked(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("LMFORGE_MODELS_DIR", str(tmp_path / "models"))
    for argv in (
        ["sample", "no-such-model"],
        ["convert", "distilgpt2", "--to", "lmforge", str(tmp_path / "o")],
        ["train", "--init-from", "no-such-model", "--data", "eli5", "--out", str(tmp_path / "r")],
    ):
        err = _error(capsys, argv)
        assert "LMFORGE_MODELS_DIR" in err and str(tmp_path / "hub") in err, err
        assert "HF_HUB_OFFLINE" in err
    (tmp_path / "models").mkdir()
    shutil.copytree(folders[1], tmp_path / "models" / "distilgpt2")  # now the name resolves
    assert main(["sample", "distilgpt2", "--prompt", "Why", "--max-new-tokens", "3"]) == 0


def test_fine_tune_on_eli5_answers_in_blocks_of_128(tmp_path, capsys):
    """The issue's recipe on the real ../shared/data ELI5 file, from a tiny random GPT-2 saved by
    transformers: blocks of 128 (remainder dropped), the end-of-text separators kept as targets,
    held-out records scored once per epoch with perplexity = exp(loss)."""
    import math

    import numpy as np

    from lmforge.data.prepare import PreparedData
    from lmforge.training.run_data import make_examples

    transformers = pytest.importorskip("transformers")
    hf = tmp_path / "tiny-gpt2"
    tok = train_tokenizer("bpe", [TEXT * 20], vocab_size=300)
    config = transformers.GPT2Config(
        vocab_size=300, n_positions=128, n_embd=32, n_layer=2, n_head=4, eos_token_id=tok.eos_id
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(hf)
    tok.tokenizer.model.save(str(hf))  # vocab.json + merges.txt
    run = tmp_path / "run"
    argv = ["train", "--init-from", str(hf), "--data", "eli5", "--field", "answer"]
    argv += ["--block-size", "128", "--lr", "2e-5", "--weight-decay", "0.01", "--epochs", "3"]
    argv += ["--max-steps", "3", "--threads", "1", "--out", str(run), "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 3
    assert result["val_perplexity"] == pytest.approx(math.exp(result["val_loss"]))
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["lr"] == 2e-5 and saved["train"]["weight_decay"] == 0.01
    assert saved["data"]["batching"] == "blocks" and saved["data"]["block_size"] == 128

    data = PreparedData(saved["data"]["path"])
    train = make_examples(data, "train", "blocks", 128)
    assert len(train) == data.num_tokens("train") // 128  # the remainder is dropped
    assert saved["train"]["eval_every"] == len(train) // 8  # one evaluation per epoch
    batch = train.get(np.arange(len(train)))
    assert batch["token_ids"].shape == (len(train), 128) and "padding_mask" not in batch
    eos = batch["token_ids"][:, 1:] == tok.eos_id  # each record ends with end-of-text,
    assert eos.sum() > 100 and (batch["labels"][:, :-1][eos] == tok.eos_id).all()  # a target
    val_docs = {tuple(d) for d in data.documents("val")}  # held-out records are really held out
    train_docs = {tuple(d) for d in data.documents("train")}
    assert (len(val_docs), len(train_docs)) == (100, 900) and not val_docs & train_docs


def test_convert_refusal_lists_every_reason_on_one_line(tmp_path, capsys):
    """A post-norm GPT with an untied head (gpt-tiny-wine's switches): exit 2, one line with
    both reasons, a flag that exists, and no output folder."""
    tok = train_tokenizer("char", TEXT)
    config = GPTConfig(
        vocab_size=tok.vocab_size, embed_dim=16, num_heads=2, num_layers=1, ffn_dim=16,
        norm_first=False, tie_embeddings=False,
    )  # fmt: skip
    write_lmforge_folder(GPTCausalLM(config), tok, tmp_path / "run")
    line = _error(capsys, ["convert", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")])
    assert "norm_first=False" in line and "tie_embeddings=False" in line and "--to lmforge" in line
    assert not (tmp_path / "hf").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]  # no temporary folder left behind


@pytest.mark.parametrize("name", ["chatml", "jinja"])
def test_the_export_carries_the_runs_chat_template(folders, tmp_path, name):
    transformers = pytest.importorskip("transformers")
    from lmforge.api import load_tokenizer
    from lmforge.tokenizers.chat import (
        ChatTemplate,
        load_chat_template,
        messages_to_ids,
        save_chat_template,
    )

    run = tmp_path / "run"
    shutil.copytree(folders[0], run)
    source = "{{ bos_token }}{% for m in messages %}<{{ m.role }}> {{ m.content }}\n{% endfor %}"
    save_chat_template(run, ChatTemplate(name, source if name == "jinja" else None))
    assert main(["convert", str(run), "--to", "hf", str(tmp_path / "hf")]) == 0
    ours = load_tokenizer(run)
    template = load_chat_template(ours, run)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    for add_generation_prompt in (True, False):
        theirs = hf.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True
        )
        theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
        assert theirs == messages_to_ids(ours, messages, template, add_generation_prompt)
    back = tmp_path / "back"  # and a run converted back from the export keeps it
    assert main(["convert", str(tmp_path / "hf"), "--to", "lmforge", str(back)]) == 0
    assert load_chat_template(load_tokenizer(back), back).source == template.source


def test_a_run_without_a_template_exports_none(folders):
    config = json.loads((folders[1] / "tokenizer_config.json").read_text())
    assert "chat_template" not in config


def test_merge_lora_needs_a_lora_run(folders, tmp_path, capsys):
    run, _ = folders
    err = _error(capsys, ["convert", str(run), "--merge-lora", "--to", "hf", str(tmp_path / "x")])
    assert "has no LoRA adapter (it was not trained with --lora-rank): drop --merge-lora" in err
    assert not (tmp_path / "x").exists()
