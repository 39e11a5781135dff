"""`train(lora_rank=...)`: a frozen base, adapters only in the optimizer, exact resume, the
run's adapter/ folder in PEFT, and merged exports equal to the adapter model."""

import json

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge.cli.main import main
from lmforge.interop.hf import load_hf_model
from lmforge.layers.lora import LoRALinear
from lmforge.layers.quant import quantize_weight
from lmforge.run_folder import load_state

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TEXT = "Why is the sky blue? Sunlight scatters off the air, and blue light scatters the most.\n"
IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))


def _train(hf_gpt2, tmp_path, out, **kw):
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT * 40, encoding="utf-8")
    options = dict(
        data=str(corpus), init_from=str(hf_gpt2), out=str(tmp_path / out), lora_rank=4,
        lora_alpha=8, lora_targets="attn", block_size=16, batch_size=4, threads=1,
        precision="fp32", lr=1e-2, warmup_steps=1, schedule="constant", eval_every=1000,
        eval_tokens=256, log_every=1,
    )  # fmt: skip
    return lmforge.train(**{**options, **kw})


def test_only_adapters_train_and_peft_loads_the_run_adapter(hf_gpt2, tmp_path):
    _train(hf_gpt2, tmp_path, "run", max_steps=6)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["lora"]["targets"] == [
        f"backbone.blocks.{i}.attn.{n}" for i in range(2) for n in ("qkv", "out")
    ]
    weights = load_file(run / "model.safetensors")
    base = load_hf_model(hf_gpt2).state_dict()
    for key, tensor in weights.items():  # every base weight as it was: only adapters moved
        if ".lora_" not in key:
            assert torch.equal(tensor, base[key.replace(".base_layer.", ".")]), key
    assert all(weights[k].abs().max() > 0 for k in weights if ".lora_B" in k)
    # the optimizer holds the 8 adapter matrices (A and B of 4 layers) and nothing else
    state = load_state(sorted((run / "checkpoints").iterdir())[-1])
    assert len(state["optimizer"]["state"]) == 8
    model = lmforge.load(run)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(hf_gpt2) and adapter["r"] == 4
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_gpt2)
    theirs = peft.PeftModel.from_pretrained(reference, run / "adapter").eval()
    torch.testing.assert_close(model(IDS), theirs(IDS).logits, atol=1e-4, rtol=1e-4)


def test_resumed_lora_run_equals_the_straight_one(hf_gpt2, tmp_path):
    _train(hf_gpt2, tmp_path, "straight", max_steps=8)
    _train(hf_gpt2, tmp_path, "split", max_steps=4)
    _train(hf_gpt2, tmp_path, "split", max_steps=8, resume=True)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(tmp_path / "straight" / name)
        b = load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_merged_exports_compute_what_the_adapter_model_does(hf_gpt2, tmp_path, capsys):
    _train(hf_gpt2, tmp_path, "run", max_steps=4, lora_targets="all-linear")
    run = tmp_path / "run"
    expected = lmforge.load(run)(IDS)
    assert main(["convert", str(run), "--merge-lora", "--to", "hf", str(tmp_path / "hf")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(merged(IDS).logits, expected, atol=1e-4, rtol=1e-4)
    assert main(["convert", str(run), "--merge-lora", "--to", "lmforge", str(tmp_path / "lf")]) == 0
    plain = lmforge.load(tmp_path / "lf")
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    torch.testing.assert_close(plain(IDS), expected, atol=1e-4, rtol=1e-4)
    # int8 weights of a LoRA run are those of its merged model
    int8 = lmforge.load(run, quantize="int8")
    torch.testing.assert_close(int8(IDS), lmforge.load(tmp_path / "lf", quantize="int8")(IDS))
    # sample runs on the LoRA run itself (the adapter on its base)
    assert (
        main(["sample", str(run), "--max-new-tokens", "5", "--seed", "1", "--prompt", "Why"]) == 0
    )
    assert capsys.readouterr().out.strip()


def test_a_peft_adapter_folder_on_a_base_model(hf_gpt2, tmp_path, capsys):
    _train(hf_gpt2, tmp_path, "run", max_steps=3)
    with_run = lmforge.load(tmp_path / "run")(IDS)
    on_base = lmforge.load(hf_gpt2, adapter=tmp_path / "run" / "adapter")(IDS)
    torch.testing.assert_close(on_base, with_run, atol=1e-5, rtol=1e-5)
    argv = ["convert", str(hf_gpt2), "--adapter", str(tmp_path / "run" / "adapter")]
    assert main([*argv, "--merge-lora", "--to", "hf", str(tmp_path / "hf")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(merged(IDS).logits, with_run, atol=1e-4, rtol=1e-4)
    capsys.readouterr()
    sample = ["sample", "--max-new-tokens", "8", "--seed", "1", "--prompt", "Why"]
    assert main([*sample, str(tmp_path / "run")]) == 0
    from_run = capsys.readouterr().out
    assert main([*sample, str(hf_gpt2), "--adapter", str(tmp_path / "run" / "adapter")]) == 0
    assert capsys.readouterr().out == from_run


def test_a_lora_classifier_trains_its_new_head_in_full(tmp_path):
    texts = {"pos": "a great moving film", "neg": "a dull boring waste"}
    rows = ["review,sentiment"] + [f"{texts[k]} {i},{k}" for i in range(30) for k in texts]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    lmforge.train(
        data=str(tmp_path / "reviews.csv"), field="review", label_field="sentiment",
        task="classify", tokenizer="wordpiece", vocab_size=100, preset="bert-nano", embed_dim=16,
        ffn_dim=32, max_seq_len=16, batch_size=8, threads=1, max_steps=3, lora_rank=2,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    run = tmp_path / "run"
    lora = json.loads((run / "config.json").read_text())["lora"]
    assert lora["trained"] == ["head"] and "backbone.pooler" in lora["targets"]
    state = load_state(sorted((run / "checkpoints").iterdir())[-1])
    # A and B of each wrapped layer, and the head's weight and bias
    assert len(state["optimizer"]["state"]) == 2 * len(lora["targets"]) + 2
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["classifier"] and adapter["task_type"] == "SEQ_CLS"
    assert lmforge.load(run)(torch.randint(5, 50, (2, 8))).shape == (2, 2)


def test_lora_train_head_trains_a_copy_of_the_tied_head(hf_gpt2, tmp_path, capsys):
    _train(hf_gpt2, tmp_path, "run", max_steps=4, lora_train_head=True)
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["lora"]["trained"] == ["head"]
    weights = load_file(run / "model.safetensors")
    base = load_hf_model(hf_gpt2).state_dict()
    embedding = base["backbone.embed.token.weight"]
    assert torch.equal(weights["backbone.embed.token.weight"], embedding)  # frozen
    assert not torch.equal(weights["head.weight"], embedding)  # its own copy moved
    # the optimizer holds the 8 adapter matrices and the head's weight
    state = load_state(sorted((run / "checkpoints").iterdir())[-1])
    assert len(state["optimizer"]["state"]) == 9
    model = lmforge.load(run)
    assert torch.equal(model.head.weight, weights["head.weight"])
    expected = model(IDS)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["lm_head"]
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_gpt2)
    theirs = peft.PeftModel.from_pretrained(reference, run / "adapter").eval()
    torch.testing.assert_close(theirs(IDS).logits, expected, atol=1e-4, rtol=1e-4)
    on_base = lmforge.load(hf_gpt2, adapter=run / "adapter")
    torch.testing.assert_close(on_base(IDS), expected, atol=1e-5, rtol=1e-5)
    # merged, in either format, and int8: the trained head stays
    assert main(["convert", str(run), "--merge-lora", "--to", "hf", str(tmp_path / "hf")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(merged(IDS).logits, expected, atol=1e-4, rtol=1e-4)
    assert not merged.config.tie_word_embeddings
    torch.testing.assert_close(lmforge.load(tmp_path / "hf")(IDS), expected, atol=1e-4, rtol=1e-4)
    assert main(["convert", str(run), "--merge-lora", "--to", "lmforge", str(tmp_path / "lf")]) == 0
    torch.testing.assert_close(lmforge.load(tmp_path / "lf")(IDS), expected, atol=1e-4, rtol=1e-4)
    assert main(["quantize", str(run), "--out", str(tmp_path / "int8")]) == 0
    int8 = lmforge.load(tmp_path / "int8")
    assert torch.equal(int8.head.weight, quantize_weight(weights["head.weight"])[0])
    torch.testing.assert_close(int8(IDS), lmforge.load(run, quantize="int8")(IDS))


def test_resumed_lora_run_with_its_head_equals_the_straight_one(hf_gpt2, tmp_path):
    _train(hf_gpt2, tmp_path, "straight", max_steps=6, lora_train_head=True)
    _train(hf_gpt2, tmp_path, "split", max_steps=3, lora_train_head=True)
    _train(hf_gpt2, tmp_path, "split", max_steps=6, lora_train_head=True, resume=True)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(tmp_path / "straight" / name)
        b = load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_lora_train_head_bad_input_is_one_line(hf_gpt2, tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT * 40, encoding="utf-8")
    argv = ["train", "--data", str(corpus), "--out", str(tmp_path / "run"), "--max-steps", "1"]
    assert main([*argv, "--init-from", str(hf_gpt2), "--lora-train-head"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lora-train-head" in err and "--lora-rank 8" in err and len(err.splitlines()) == 1
    mlm = ["--preset", "bert-nano", "--task", "mlm", "--tokenizer", "wordpiece"]
    assert main([*argv, *mlm, "--vocab-size", "100", "--lora-rank", "2", "--lora-train-head"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--task mlm" in err and "drop --lora-train-head" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
