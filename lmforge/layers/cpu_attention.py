"""Causal self-attention for compiled bf16 training on a CPU: torch's flash kernel forward, and a
backward written as batched matmuls that torch.compile fuses around.

torch 2.13's CPU flash-attention backward in bfloat16 is slow for short contexts: at head size 32
it took 11.5 ms against its forward's 1.5 (batch 6, 8 heads, context 256, AMX Xeon), 19 ms
at context 128, and was a third of an 8 x 256 GPT's training step. The backward here recomputes
the probabilities from the forward's log-sum-exp (as flash attention does), in float32, and
takes 7 ms; 4.8 against 19 at context 128. Past 256 positions it works in blocks of 256 queries,
each against the keys up to its last row only, so the quarter of the scores above the diagonal
at context 512 is never computed: forward and backward 15 ms there (batch 3, compiled) against
torch's 24 and one block's 19-21. At 1024 (batch 1) it is 16 against torch's 17.5, so `wanted`
keeps it to 512; and to compiled code, as eagerly the unfused elementwise steps lose.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 256  # query rows per block of the backward (more, smaller blocks measured slower)
MAX_CONTEXT = 512  # measured faster up to here


def wanted(q: Tensor, k: Tensor, options: dict) -> bool:
    """True for plain causal self-attention of (B, H, T, D) bf16 CPU tensors that will be
    differentiated, inside torch.compile: no mask, no dropout, no key/value groups, T <= 512."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and torch.is_grad_enabled()
        and q.requires_grad
        and torch.compiler.is_compiling()
        and options.get("is_causal", False)
        and not options.get("dropout_p")
        and set(options) <= {"is_causal", "dropout_p"}
        and q.shape == k.shape
        and q.shape[-2] <= MAX_CONTEXT
    )


class CausalAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(D), causal) v, with the backward below.

    Example:
        y = CausalAttention.apply(q, k, v)  # (B, H, T, D) each
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        T = q.shape[-2]
        if T <= BLOCK:
            return _block_backward(q, k, v, out, lse, grad_out, 0)
        blocks = []
        for start in range(0, T, BLOCK):
            end = min(start + BLOCK, T)
            rows = slice(start, end)
            blocks.append(_block_backward(
                q[..., rows, :], k[..., :end, :], v[..., :end, :], out[..., rows, :],
                lse[..., rows], grad_out[..., rows, :], start,
            ))  # fmt: skip
        grad_q, grad_k, grad_v = zip(*blocks)
        return torch.cat(grad_q, -2), _sum_padded(grad_k, T), _sum_padded(grad_v, T)


def _sum_padded(parts, T: int) -> Tensor:
    """Per-block gradients (B, H, end, D) of the keys 0..end-1, added up in float32 as (B, H, T,
    D): keys past a block's `end` get nothing from its rows."""
    total = sum(F.pad(p.float(), (0, 0, 0, T - p.shape[-2])) for p in parts)
    return total.to(parts[0].dtype)


def _block_backward(q, k, v, out, lse, grad_out, start: int):
    """Gradients from the query rows start.. (q, out, lse, grad_out) against the keys 0..end-1."""
    rows, keys, scale = q.shape[-2], k.shape[-2], q.shape[-1] ** -0.5
    scores = q.float() @ k.float().transpose(-1, -2)  # (B, H, rows, keys), float32 like the kernel
    future = torch.ones(rows, keys, dtype=torch.bool, device=q.device).triu(start + 1)
    probs = torch.exp(scores * scale - lse.unsqueeze(-1)).masked_fill(future, 0.0)
    grad_v = probs.to(q.dtype).transpose(-1, -2) @ grad_out
    grad_probs = (grad_out @ v.transpose(-1, -2)).float()
    # softmax's backward: d scores = P * (dP - rowsum(dO * O))
    rowsum = (grad_out.float() * out.float()).sum(-1, keepdim=True)
    grad_scores = (probs * (grad_probs - rowsum) * scale).to(q.dtype)
    return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, grad_v
