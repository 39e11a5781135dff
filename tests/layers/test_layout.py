"""decode_layout_: the same weights in another memory order, so the same outputs, the same
saved file, still tied, and int8 quantization still packs them."""

import torch
from safetensors.torch import load_file

from lmforge.layers.layout import decode_layout_
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.run_folder import save_weights


def tiny(seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2)
    return GPTCausalLM(config).eval()


def test_weights_keep_their_values_shape_and_outputs_in_another_order(tmp_path):
    model, reference = tiny(), tiny()
    ids = torch.randint(0, 50, (3, 9))
    changed = decode_layout_(model)
    assert changed == 2 * 4 + 1  # qkv, out, up, down per block, and the (tied) head
    for (name, mine), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(mine, theirs), name
    weight = model.backbone.blocks[0].attn.qkv.weight
    assert weight.t().is_contiguous() and not weight.is_contiguous()
    assert model.head.weight is model.backbone.embed.token.weight  # still tied
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
    assert decode_layout_(model) == 0  # already so
    save_weights(model, tmp_path / "a.safetensors")
    save_weights(reference, tmp_path / "b.safetensors")
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_and_int8_still_work_on_the_new_layout():
    from lmforge.layers.quant import quantize_

    model, reference = tiny(1), tiny(1)
    decode_layout_(model)
    ids = torch.randint(0, 50, (2, 8))
    for m in (model, reference):
        m.train()
        m(ids).logsumexp(-1).mean().backward()
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4)
    model.eval(), reference.eval()
    quantize_(model, "int8")
    quantize_(reference, "int8")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
