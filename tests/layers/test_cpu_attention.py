"""The causal attention backward for compiled bf16 CPU training, against SDPA's own."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from lmforge.layers import cpu_attention
from lmforge.layers.attention import MultiHeadAttention
from lmforge.layers.cpu_attention import CausalAttention

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend needs a C++ compiler",
)


def _grads(fn, q, k, v, grad_out):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in (q, k, v)]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("block", [cpu_attention.BLOCK, 16])  # 16: three blocks of queries
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_and_gradients_match_sdpa(dtype, block, monkeypatch):
    monkeypatch.setattr(cpu_attention, "BLOCK", block)
    q, k, v, grad_out = (torch.randn(2, 4, 48, 16, dtype=dtype) for _ in range(4))
    exact_out, exact = _grads(_sdpa, *(t.double() for t in (q, k, v, grad_out)))
    out, grads = _grads(CausalAttention.apply, q, k, v, grad_out)
    ref_out, ref = _grads(_sdpa, q, k, v, grad_out)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for mine, torchs, truth in zip([out, *grads], [ref_out, *ref], [exact_out, *exact]):
        assert mine.dtype == dtype
        err = ((mine.double() - truth).norm() / truth.norm()).item()
        torch_err = ((torchs.double() - truth).norm() / truth.norm()).item()
        assert err < tol and err < 2 * torch_err + 1e-6  # as close to float64 as torch's own


def test_it_is_wanted_only_for_compiled_bf16_causal_training():
    q = torch.randn(1, 2, 8, 4, dtype=torch.bfloat16, requires_grad=True)
    causal = {"is_causal": True, "dropout_p": 0.0}
    assert not cpu_attention.wanted(q, q, causal)  # eager: torch's kernel
    calls = []

    def probe(q, k, **options):
        calls.append(cpu_attention.wanted(q, k, options))
        return q

    compiled = torch.compile(probe, backend="eager", fullgraph=True)
    compiled(q, q, **causal)
    compiled(q.float().detach().requires_grad_(), q.float(), **causal)  # float32: torch's
    compiled(q, q, is_causal=True, dropout_p=0.1)  # dropout on the probabilities
    compiled(q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool))
    long = torch.randn(
        1, 2, cpu_attention.MAX_CONTEXT + 1, 4, dtype=torch.bfloat16, requires_grad=True
    )
    compiled(long, long, **causal)
    compiled(q, q[:, :1], **causal)  # grouped keys
    with torch.no_grad():
        compiled(q, q, **causal)
    torch._dynamo.reset()
    assert calls == [True, False, False, False, False, False, False]


@needs_compiler
@pytest.mark.parametrize("block", [cpu_attention.BLOCK, 16])  # 16: three blocks of queries
def test_compiled_bf16_training_takes_it_and_matches_eager(block, monkeypatch):
    monkeypatch.setattr(cpu_attention, "BLOCK", block)
    taken = []
    real = cpu_attention.wanted
    monkeypatch.setattr(cpu_attention, "wanted", lambda *a: taken.append(real(*a)) or taken[-1])
    torch._dynamo.reset()
    attn = MultiHeadAttention(32, 4, rotary=True, max_seq_len=64)
    x = torch.randn(2, 40, 32)

    def loss_grads(fn):
        attn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(x).float().pow(2).mean()
        loss.backward()
        return [p.grad.clone() for p in attn.parameters()]

    eager = loss_grads(attn)
    compiled = loss_grads(torch.compile(attn))
    assert taken and taken[-1] is True
    for mine, ref in zip(compiled, eager):
        assert ((mine - ref).norm() / ref.norm()).item() < 2e-2  # bf16 roundings differ
    torch._dynamo.reset()
