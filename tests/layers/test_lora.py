"""LoRALinear against PEFT's LoRA layer, merging, target sets and bad options."""

import math

import pytest
import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.layers.lora import LoRALinear, apply_lora, merge_lora_, resolve_targets
from lmforge.models.bert import BertConfig, BertTextClassifier
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.models.llama import LlamaCausalLM, LlamaConfig


def test_a_new_adapter_changes_nothing_and_its_a_is_initialised_as_peft_does():
    base = nn.Linear(64, 48)
    layer = LoRALinear(base, rank=8, alpha=16)
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), base(x))  # B starts at zero
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on (8, 64): U(-1/sqrt(in), 1/sqrt(in))
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 3
    assert layer.scaling == 2.0 and not base.weight.requires_grad
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == [
        "lora_A.weight",
        "lora_B.weight",
    ]


def test_same_output_as_peft_on_one_linear_layer():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Linear(16, 24))
    mine = LoRALinear(nn.Linear(16, 24), rank=4, alpha=12)
    mine.base_layer.load_state_dict(theirs[0].state_dict())
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=12, target_modules=["0"]))
    with torch.no_grad():
        mine.lora_B.weight.normal_()
        theirs.base_model.model[0].lora_A["default"].weight.copy_(mine.lora_A.weight)
        theirs.base_model.model[0].lora_B["default"].weight.copy_(mine.lora_B.weight)
    x = torch.randn(5, 16)
    torch.testing.assert_close(mine(x), theirs(x), atol=1e-6, rtol=1e-5)


def test_dropout_falls_on_the_adapter_input_only():
    layer = LoRALinear(nn.Linear(8, 8), rank=2, alpha=2, dropout=0.5).train()
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), layer.base_layer(x))  # B is zero: only the base path is seen
    nn.init.normal_(layer.lora_B.weight)
    assert not torch.equal(layer(x), layer(x))  # dropout draws differ
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_merged_model_computes_what_the_adapters_do():
    torch.manual_seed(0)
    model = LlamaCausalLM(LlamaConfig()).eval()
    apply_lora(model, rank=4, alpha=8, targets="all-linear")
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B.weight, std=0.1)
    ids = torch.randint(0, 256, (2, 10))
    before = model(ids)
    assert merge_lora_(model) == 2 * 4  # qkv, out, gate_up, down in each of 2 blocks
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "targets, picked",
    [
        ("attn", ["attn.qkv", "attn.out"]),
        ("mlp", ["ffn.up", "ffn.down"]),
        ("all-linear", ["attn.qkv", "attn.out", "ffn.up", "ffn.down"]),
        ("qkv,down", ["attn.qkv", "ffn.down"]),
    ],
)
def test_target_sets_pick_block_layers_never_the_head(targets, picked):
    model = GPTCausalLM(GPTConfig(num_layers=2))
    names = resolve_targets(model, targets)
    assert names == [f"backbone.blocks.{i}.{p}" for i in range(2) for p in picked]


def test_only_adapters_train_and_a_bert_classifier_keeps_its_first_token_path():
    torch.manual_seed(0)
    model = BertTextClassifier(BertConfig(), num_classes=3).eval()
    ids = torch.randint(5, 100, (2, 12))
    before = model(ids)
    names = apply_lora(model, rank=2, alpha=4, targets="all-linear")
    assert "backbone.pooler" in names  # every backbone Linear, as PEFT's all-linear
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    torch.testing.assert_close(model(ids), before)  # zero B: the same classifier
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B.weight, std=0.1)
    after = model(ids)
    merge_lora_(model)  # the first-token shortcut (plain Linear again) gives the same logits
    torch.testing.assert_close(model(ids), after, atol=1e-5, rtol=1e-5)


def test_bad_options_and_targets_say_what_fits():
    model = GPTCausalLM(GPTConfig())
    with pytest.raises(ConfigError, match="--lora-rank 0 is not a rank"):
        apply_lora(model, rank=0, alpha=1)
    with pytest.raises(ConfigError, match=r"--lora-dropout -0.1 must be in \[0, 1\)"):
        apply_lora(model, rank=2, alpha=4, dropout=-0.1)
    with pytest.raises(ConfigError, match="layers: attn.out, attn.qkv, ffn.down, ffn.up"):
        apply_lora(model, rank=2, alpha=4, targets="q_proj")
