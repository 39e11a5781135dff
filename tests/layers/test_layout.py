"""decode_layout_: the same weights, so the same outputs, the same saved file, still tied, and
training and int8 quantization still work; with the small-rows kernel (modules switch to their
small-rows subclass) and without it (weights stored column-major)."""

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from lmforge.layers import layout
from lmforge.layers.heads import LMHead
from lmforge.layers.layout import SmallRowsLinear, SmallRowsLMHead, decode_layout_, train_layout_
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.run_folder import save_weights


def tiny(seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2)
    return GPTCausalLM(config).eval()


@pytest.fixture(params=["kernel", "column-major"])
def mode(request, monkeypatch):
    if request.param == "column-major":  # as where no compiler builds the kernel
        monkeypatch.setattr(layout, "_op", None)
        monkeypatch.setattr(layout, "small_linear", lambda: None)
    return request.param


def test_weights_keep_their_values_and_outputs(mode, tmp_path, monkeypatch):
    model, reference = tiny(), tiny()
    changed = decode_layout_(model)
    assert changed == 2 * 4 + 1  # qkv, out, up, down per block, and the (tied) head
    for (name, mine), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(mine, theirs), name
    qkv = model.backbone.blocks[0].attn.qkv
    if mode == "kernel":
        assert type(qkv) is SmallRowsLinear and type(model.head) is SmallRowsLMHead
        assert qkv.weight.is_contiguous()
    else:
        assert type(qkv) is nn.Linear and qkv.weight.t().is_contiguous()
        assert not qkv.weight.is_contiguous()
    assert model.head.weight is model.backbone.embed.token.weight  # still tied
    calls = []
    if mode == "kernel":  # count what reaches the kernel
        op = layout._op
        monkeypatch.setattr(layout, "_op", lambda x, *a: calls.append(x.shape[0]) or op(x, *a))
    with torch.no_grad():
        for shape in ((3, 9), (1, 1), (8, 1), (2, 4)):  # a prompt, and 1 to 8 rows
            ids = torch.randint(0, 50, shape)
            torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
    if mode == "kernel":  # 4 layers per block and the head, for the three few-row shapes only
        assert calls == [1] * 9 + [8] * 9 + [8] * 9
    assert decode_layout_(model) == 0  # already so
    save_weights(model, tmp_path / "a.safetensors")
    save_weights(reference, tmp_path / "b.safetensors")
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_layout_undoes_it(mode):
    model, reference = tiny(), tiny()
    changed = decode_layout_(model)
    assert train_layout_(model) == changed
    qkv = model.backbone.blocks[0].attn.qkv
    assert type(qkv) is nn.Linear and type(model.head) is LMHead
    assert qkv.weight.is_contiguous() and train_layout_(model) == 0
    assert model.head.weight is model.backbone.embed.token.weight
    ids = torch.randint(0, 50, (1, 5))
    torch.testing.assert_close(model(ids), reference(ids), atol=0, rtol=0)  # the same path


def test_training_and_int8_still_work_on_the_new_layout(mode):
    from lmforge.layers.quant import quantize_

    model, reference = tiny(1), tiny(1)
    decode_layout_(model)
    for rows in ((2, 8), (1, 3)):  # a batch, and a few rows (the kernel's reach, with grad)
        ids = torch.randint(0, 50, rows)
        for m in (model, reference):
            m.zero_grad()
            m.train()
            m(ids).logsumexp(-1).mean().backward()
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4)
    model.eval(), reference.eval()
    quantize_(model, "int8")
    quantize_(reference, "int8")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
