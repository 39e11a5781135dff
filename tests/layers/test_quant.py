"""Weight-only int8: per-channel quantization, Int8Linear on both kernels, quantize_ on models."""

import pytest
import torch
import torch.nn as nn

from lmforge.cli import options
from lmforge.errors import ConfigError
from lmforge.layers import quant
from lmforge.layers.heads import LMHead
from lmforge.layers.quant import DEQUANT, PACK, Int8Linear, quantize_, quantize_weight
from lmforge.models.bert import BertConfig, BertTextClassifier
from lmforge.models.char_rnn import CharRNNCausalLM, CharRNNConfig
from lmforge.models.gpt import GPTCausalLM, GPTConfig

needs_pack = pytest.mark.skipif(
    not quant.pack_dtypes(), reason="this torch has no working torch._weight_int8pack_mm"
)
# (kernel, activation dtype of torch._weight_int8pack_mm or "small": lmforge's small-rows kernel
# for a few rows, or "vnni": its int8 op where the CPU has VNNI): every path this machine can run
PATHS = (
    [(DEQUANT, None), (PACK, "small")]
    + [(PACK, "vnni")] * (quant.int8_linear() is not None)
    + [(PACK, dt) for dt in (torch.bfloat16, torch.float32) if quant._pack_works(dt)]
)


@pytest.fixture(params=PATHS, ids=lambda p: p[0] + (f"-{p[1]}".replace("torch.", "")))
def path(request, monkeypatch):
    """Each kernel, the packed one in each activation dtype it computes right here, lmforge's
    small-rows kernel only where asked (it would run a few rows otherwise)."""
    kernel, dtype = request.param
    if dtype != "vnni":
        monkeypatch.setattr(quant, "int8_linear", lambda: None)
    if dtype == "small":
        assert quant.small_linear() is not None, "the small-rows kernel did not build here"
    elif dtype != "vnni":
        monkeypatch.setattr(quant, "small_linear", lambda: None)
    if isinstance(dtype, torch.dtype):
        monkeypatch.setattr(quant, "_pack_dtypes", (dtype,))
    return kernel, dtype


def test_each_row_is_within_half_a_step_of_its_own_scale():
    w = torch.randn(6, 20) * torch.logspace(-3, 1, 6)[:, None]  # rows of very different sizes
    w[2] = 0  # an all-zero row: no division by zero
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    assert q.abs().max() <= 127 and (q[[0, 1, 3, 4, 5]].abs().amax(1) == 127).all()
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7 * w.abs()).all()
    assert (q[2] == 0).all()


@pytest.mark.parametrize(
    "shape", [(1, 32), (3, 32), (5, 32), (2, 3, 32), (3, 24), (4, 5, 32), (1, 24)]
)
def test_int8_linear_matches_the_dequantized_weight_on_every_kernel(path, shape, monkeypatch):
    kernel, _ = path
    width, rows = shape[-1], torch.Size(shape[:-1]).numel()
    # from INT_MM_MIN_ROWS rows: torch._int_mm; fewer: the packed kernel, except 24 wide (too
    # narrow for its bfloat16 path: it crashes), which takes the fallback
    used = Int8Linear(torch.zeros(10, width, dtype=torch.int8), torch.ones(10), None, kernel)
    used = used.path(rows)
    if width == 24 and rows < quant.INT_MM_MIN_ROWS:
        assert used != torch.bfloat16
    if path[1] == "vnni" and rows <= quant.MAX_ROWS:
        assert used == "vnni"
    elif path[1] == "small" and rows <= quant.SMALL_MAX_ROWS:
        assert used == "small_linear"
    elif kernel == PACK and rows >= quant.INT_MM_MIN_ROWS and quant.int_mm_works():
        assert used == "int_mm"
    linear = nn.Linear(width, 10)
    layer = Int8Linear.from_float(linear.weight, linear.bias, kernel)
    x = torch.randn(*shape)
    if used in ("int_mm", "vnni"):  # what the kernel reads: activations rounded to int8 per row
        q, row_scale = quant.quantize_rows(x.reshape(-1, width))
        rounded = (q.float() * row_scale).view(shape)
    else:
        rounded = x if used in (None, "small_linear") else x.to(used).float()
    want = rounded @ (layer.weight.float() * layer.scale[:, None]).T + linear.bias
    calls = []

    def spy(name, fn):
        return lambda *a: calls.append(name) or fn(*a)

    for name in ("_weight_int8pack_mm", "_int_mm"):
        if hasattr(torch, name):
            monkeypatch.setattr(torch, name, spy(name, getattr(torch, name)))
    got = layer(x)
    ran = {None: [], "small_linear": [], "vnni": [], "int_mm": ["_int_mm"]}
    ran = ran.get(used, ["_weight_int8pack_mm"])
    assert calls == ran  # the kernel ran exactly when it should
    assert got.shape == (*shape[:-1], 10) and got.dtype == torch.float32
    tol = 1e-2 if used == torch.bfloat16 else 1e-5  # bfloat16 also rounds the products
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
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


def test_quantize_swaps_every_linear_and_the_tied_head_and_keeps_embeddings_exact(path):
    kernel, _ = path
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
        a, b = model(ids), other(ids)
    assert (a - b).abs().max() <= 0.01 * b.abs().max()  # bfloat16 activations, if picked


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


def test_a_model_that_is_no_causal_lm_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="causal language models.*BertTextClassifier") as err:
        quantize_(BertTextClassifier(BertConfig(vocab_size=40)), "int8")
    assert "\n" not in str(err.value)
