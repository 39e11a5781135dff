"""LoRA adapters in PEFT's format, both ways: PEFT on transformers gives lmforge's logits."""

import json

import pytest
import torch

from lmforge.errors import CheckpointError
from lmforge.interop.hf import load_hf_model
from lmforge.interop.peft import load_adapter, save_adapter
from lmforge.layers.lora import apply_lora, lora_layers

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=120, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _llama():  # grouped-query attention: q and k/v parts of different sizes
    config = transformers.LlamaConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _gpt_neox():  # lmforge's rotary GPTs: q/k/v rows head by head there, [q | k | v] here
    config = transformers.GPTNeoXConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, rotary_pct=1.0,
        use_parallel_residual=False,
    )  # fmt: skip
    return transformers.GPTNeoXForCausalLM(config)


def _bert_classifier():
    config = transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


MODELS = {"gpt2": _gpt2, "llama": _llama, "gpt_neox": _gpt_neox}
# what PEFT targets in the adapters it makes; Llama: PEFT's usual q/v only (k left out) and gate
# without up, so each fused part has its own A (or none)
PEFT_TARGETS = {
    "gpt2": ["c_attn", "c_fc"],
    "llama": ["q_proj", "v_proj", "gate_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
}


@pytest.fixture(params=sorted(MODELS))
def base(request, tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / request.param
    MODELS[request.param]().save_pretrained(folder)
    return request.param, folder


def _randomize_b(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)


def _auto(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


IDS = torch.randint(0, 120, (2, 11), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("targets", ["all-linear", "attn"])
def test_our_adapter_loads_in_peft_with_the_same_logits(base, tmp_path, targets):
    kind, folder = base
    ours = load_hf_model(folder).eval()
    apply_lora(ours, rank=4, alpha=8, targets=targets)
    _randomize_b(ours)
    save_adapter(ours, tmp_path, base=str(folder))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["fan_in_fan_out"] is (kind == "gpt2") and config["bias"] == "none"
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    expected = {
        "gpt2": "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
        "llama": "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
        "gpt_neox": "base_model.model.gpt_neox.layers.1.attention.query_key_value.lora_B.weight",
    }[kind]
    assert expected in keys
    theirs = peft.PeftModel.from_pretrained(_auto(folder), tmp_path).eval()
    torch.testing.assert_close(ours(IDS), theirs(IDS).logits, atol=1e-4, rtol=1e-4)


def test_a_peft_made_adapter_loads_into_lmforge_with_the_same_logits(base, tmp_path):
    kind, folder = base
    config = peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=PEFT_TARGETS[kind], fan_in_fan_out=kind == "gpt2"
    )
    theirs = peft.get_peft_model(_auto(folder), config)
    _randomize_b(theirs)
    theirs.save_pretrained(tmp_path / "adapter")
    ours = load_hf_model(folder).eval()
    load_adapter(ours, tmp_path / "adapter")
    expected = theirs.eval()(IDS).logits
    torch.testing.assert_close(ours(IDS), expected, atol=1e-4, rtol=1e-4)
    # and back: written again by lmforge (block form where A differ), PEFT reads the same model
    save_adapter(ours, tmp_path / "again")
    again = peft.PeftModel.from_pretrained(_auto(folder), tmp_path / "again").eval()
    torch.testing.assert_close(again(IDS).logits, expected, atol=1e-4, rtol=1e-4)


def test_a_classifier_adapter_carries_its_head(tmp_path):
    torch.manual_seed(0)
    _bert_classifier().save_pretrained(tmp_path / "bert")
    ours = load_hf_model(tmp_path / "bert").eval()
    apply_lora(ours, rank=2, alpha=4, targets="attn")
    _randomize_b(ours)
    with torch.no_grad():
        ours.head.weight.normal_()  # a classifier's head trains in full
    save_adapter(ours, tmp_path / "adapter", trained=("head",))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = IDS.clamp(min=5)
    torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)
    again = load_hf_model(tmp_path / "bert").eval()
    load_adapter(again, tmp_path / "adapter")
    torch.testing.assert_close(again(ids), ours(ids), atol=1e-5, rtol=1e-5)
    assert set(lora_layers(again)) == set(lora_layers(ours))


def test_an_adapter_for_another_model_is_refused_in_one_line(base, tmp_path):
    kind, folder = base
    other = "llama" if kind != "llama" else "gpt2"
    torch.manual_seed(0)
    MODELS[other]().save_pretrained(tmp_path / other)
    ours = load_hf_model(tmp_path / other).eval()
    apply_lora(ours, rank=2, alpha=4, targets="attn")
    save_adapter(ours, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="was it made for another model"):
        load_adapter(load_hf_model(folder), tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="not a PEFT adapter folder"):
        load_adapter(load_hf_model(folder), tmp_path)


def _llama_tied():
    config = transformers.LlamaConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
        tie_word_embeddings=True,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _embedding(model):
    return model.backbone.get_submodule("embed.token" if model.family == "gpt" else "embed").weight


HEADS = {"gpt2": _gpt2, "llama": _llama, "llama-tied": _llama_tied}  # tied, untied, tied


@pytest.fixture(params=sorted(HEADS))
def lm(request, tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / request.param
    HEADS[request.param]().save_pretrained(folder)
    return folder


def test_a_trained_lm_head_travels_as_modules_to_save(lm, tmp_path):
    ours = load_hf_model(lm).eval()
    embedding = _embedding(ours).detach().clone()
    apply_lora(ours, rank=4, alpha=8, targets="attn")
    _randomize_b(ours)
    ours.head.untie()  # what train --lora-train-head does: the head's own copy trains
    with torch.no_grad():
        ours.head.weight.normal_(std=0.3)
    assert torch.equal(_embedding(ours), embedding)
    save_adapter(ours, tmp_path / "adapter", trained=("head",))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["lm_head"] and config["task_type"] == "CAUSAL_LM"
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert torch.equal(saved["base_model.model.lm_head.weight"], ours.head.weight)
    theirs = peft.PeftModel.from_pretrained(_auto(lm), tmp_path / "adapter").eval()
    torch.testing.assert_close(ours(IDS), theirs(IDS).logits, atol=1e-4, rtol=1e-4)
    again = load_hf_model(lm).eval()
    load_adapter(again, tmp_path / "adapter")
    torch.testing.assert_close(again(IDS), ours(IDS), atol=1e-5, rtol=1e-5)
    assert torch.equal(_embedding(again), embedding)  # the copy moved, not it


def test_a_peft_made_adapter_with_lm_head_loads_into_lmforge(lm, tmp_path):
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=PEFT_TARGETS[lm.name.split("-")[0]],
        fan_in_fan_out=lm.name == "gpt2", modules_to_save=["lm_head"],
    )  # fmt: skip
    theirs = peft.get_peft_model(_auto(lm), config)
    _randomize_b(theirs)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "modules_to_save" in name:  # PEFT's trainable copy of lm_head
                p.normal_(std=0.3)
    theirs.save_pretrained(tmp_path / "adapter")
    ours = load_hf_model(lm).eval()
    embedding = _embedding(ours).detach().clone()
    load_adapter(ours, tmp_path / "adapter")
    expected = theirs.eval()(IDS).logits
    torch.testing.assert_close(ours(IDS), expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(_embedding(ours), embedding)
