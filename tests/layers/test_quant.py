"""Weight-only int8: per-channel quantization, Int8Linear on both kernels, quantize_ on models."""

import pytest
import torch
import torch.nn as nn

from lmforge.cli import options
from lmforge.errors import ConfigError
from lmforge.layers import quant
from lmforge.layers.heads import LMHead
from lmforge.layers.quant import DEQUANT, PACK, Int8Linear, quantize_, quantize_weight
from lmforge.models.char_rnn import CharRNNCausalLM, CharRNNConfig
from lmforge.models.gpt import GPTCausalLM, GPTConfig

needs_pack = pytest.mark.skipif(
    not quant.pack_dtypes(), reason="this torch has no working torch._weight_int8pack_mm"
)


def test_each_row_is_within_half_a_step_of_its_own_scale():
    w = torch.randn(6, 20) * torch.logspace(-3, 1, 6)[:, None]  # rows of very different sizes
    w[2] = 0  # an all-zero row: no division by zero
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    assert q.abs().max() <= 127 and (q[[0, 1, 3, 4, 5]].abs().amax(1) == 127).all()
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7 * w.abs()).all()
    assert (q[2] == 0).all()


@pytest.mark.parametrize("kernel", [PACK, DEQUANT])
@pytest.mark.parametrize("shape", [(1, 24), (5, 24), (2, 3, 24)])
def test_int8_linear_matches_the_dequantized_weight_on_both_kernels(kernel, shape):
    if kernel == PACK and not quant.pack_dtypes():
        pytest.skip("this torch has no working torch._weight_int8pack_mm")
    linear = nn.Linear(24, 10)
    layer = Int8Linear.from_float(linear.weight, linear.bias, kernel)
    x = torch.randn(*shape)
    want = x @ (layer.weight.float() * layer.scale[:, None]).T + linear.bias
    got = layer(x)
    assert got.shape == (*shape[:-1], 10) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, linear(x), rtol=0.05, atol=0.05)  # int8 vs float32


@needs_pack
def test_bfloat16_activations_stay_bfloat16_on_both_kernels():
    linear = nn.Linear(32, 16, bias=False)
    x = torch.randn(4, 32).to(torch.bfloat16)
    want = x.float() @ linear.weight.T
    for kernel in (PACK, DEQUANT):
        got = Int8Linear.from_float(linear.weight, None, kernel)(x)
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()


def _gpt(**kw) -> GPTCausalLM:
    return GPTCausalLM(GPTConfig(vocab_size=50, embed_dim=32, num_heads=2, **kw)).eval()


@pytest.mark.parametrize("kernel", [PACK, DEQUANT])
def test_quantize_swaps_every_linear_and_the_tied_head_and_keeps_embeddings_exact(kernel):
    if kernel == PACK and not quant.pack_dtypes():
        pytest.skip("this torch has no working torch._weight_int8pack_mm")
    model = _gpt(tie_embeddings=True)
    ids = torch.randint(0, 50, (2, 12))
    embedding = model.backbone.embed.token.weight.detach().clone()
    with torch.no_grad():
        want = model(ids)
    assert quantize_(model, "int8", kernel=kernel) == kernel == model.int8_kernel
    assert not any(isinstance(m, (nn.Linear, LMHead)) for m in model.modules())
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 4 + 1  # qkv, out, up, down per block, and the head
    assert isinstance(model.head, Int8Linear) and model.head.weight.shape == (50, 32)
    token = model.backbone.embed.token.weight
    assert token.dtype == torch.float32 and torch.equal(token, embedding)  # the lookup is exact
    assert model.head.weight.data_ptr() != token.data_ptr()  # the head has its own int8 copy
    with torch.no_grad():
        got = model(ids)
    assert (got - want).abs().max() <= 0.03 * want.abs().max()
    assert quantize_(model, "int8", kernel=kernel) == kernel  # again: nothing left to swap
    assert len([m for m in model.modules() if isinstance(m, Int8Linear)]) == len(layers)


@needs_pack
def test_both_kernels_give_the_same_logits():
    model = _gpt(tie_embeddings=False)
    other = _gpt(tie_embeddings=False)
    other.load_state_dict(model.state_dict())
    quantize_(model, "int8", kernel=PACK)
    quantize_(other, "int8", kernel=DEQUANT)
    ids = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), other(ids), rtol=1e-4, atol=1e-4)


def test_a_quantized_char_rnn_still_decodes_in_float32():
    model = CharRNNCausalLM(CharRNNConfig(vocab_size=20)).eval()
    ids = torch.randint(0, 20, (2, 7))
    with torch.no_grad():
        want = model(ids)
        quantize_(model, "int8")
        h, c = model.init_state(2)
        assert h.dtype == torch.float32  # not the int8 head's dtype
        logits, _ = model.step(ids, (h, c))
    assert isinstance(model.head, Int8Linear)
    assert (logits - want).abs().max() <= 0.03 * want.abs().max()


def test_an_unsupported_kind_is_one_error_naming_what_is_supported():
    with pytest.raises(ConfigError, match=r"'int4'.*supports int8 \(--quantize int8\)"):
        quantize_(_gpt(), "int4")
    assert options.QUANTIZE_KINDS == quant.KINDS  # the CLI's copy, spelled without torch
