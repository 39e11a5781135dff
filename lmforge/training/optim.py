"""The optimizer: AdamW, or Muon for the hidden matrices with AdamW for everything else.

Both leave norms, biases and embeddings undecayed. Muon orthogonalises each hidden matrix's
momentum (torch.optim.Muon, Newton-Schulz) and scales its step to AdamW's update size
("match_rms_adamw"), so one --lr and one schedule drive both parts.
"""

import functools
import math

import torch

from lmforge.device import cpu_has_bf16_matmul
from lmforge.errors import ConfigError

OPTIMIZERS = ("adamw", "muon")


class MultiOptimizer:
    """Several optimizers stepped as one; `param_groups` lists every group, so the trainer's
    learning-rate schedule reaches them all.

    Example:
        opt = MultiOptimizer(torch.optim.Muon(matrices), torch.optim.AdamW(rest))
        opt.step(); opt.zero_grad()
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz iteration in bfloat16 only where bf16 products
    run in hardware, run once for every group of same-shaped matrices (a model's blocks share
    their shapes).

    torch's runs it in bfloat16 everywhere, which a CPU without bf16 matrix units emulates: on a
    2-core AVX2 machine that made gpt-shakespeare's steps ~6x slower than with AdamW; there the
    iteration runs in the gradient's precision. With AMX, the 24 matrices of a 6 x 192 model
    took 53 ms a step one by one in float32, 49 ms stacked by shape, 15 ms stacked in bf16.
    Same update, same state ("momentum_buffer"), same hyper-parameters as torch.optim.Muon.

    Args:
        ns_dtype: the iteration's dtype: "auto" (bf16 on a CUDA GPU or a CPU with bf16 matrix
            units, else the gradient's), or a torch dtype.
    """

    def __init__(self, params, *args, ns_dtype="auto", **kwargs):
        super().__init__(params, *args, **kwargs)
        self.ns_dtype = ns_dtype

    def _iteration_dtype(self, p: torch.Tensor) -> torch.dtype:
        if self.ns_dtype != "auto":
            return self.ns_dtype
        if p.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else p.dtype
        return torch.bfloat16 if p.device.type == "cpu" and _cpu_bf16() else p.dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            shapes: dict[tuple, list] = {}  # (shape, dtype, device) -> [(param, update)]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                shapes.setdefault((p.shape, p.dtype, p.device), []).append((p, update))
            for (shape, _, _), pairs in shapes.items():
                p = pairs[0][0]
                stacked = torch.stack([update for _, update in pairs])
                orthogonal = orthogonalize(
                    stacked.to(self._iteration_dtype(p)),
                    group["ns_coefficients"],
                    group["ns_steps"],
                    group["eps"],
                ).to(p.dtype)
                alpha = -group["lr"] * _lr_ratio(group["adjust_lr_fn"], shape)
                for (p, _), update in zip(pairs, orthogonal.unbind(0)):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=alpha)
        return loss


@functools.cache
def _cpu_bf16() -> bool:
    return cpu_has_bf16_matmul()


def orthogonalize(g: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration: roughly U V^T of g = U S V^T (singular values
    land near 1, within about 0.5-1.5), in g's dtype. g is one (A, B) matrix or a stack
    (N, A, B) of them, each orthogonalized on its own."""
    a, b, c = coefficients
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    addmm = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = addmm(x, addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def _lr_ratio(adjust: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's step-size adjustment for an (A, B) matrix."""
    rows, cols = shape[:2]
    if adjust == "match_rms_adamw":  # Moonshot: the update's RMS matches AdamW's
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust in (None, "original"):  # Keller Jordan's
        return math.sqrt(max(1, rows / cols))
    return 1.0


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float], sharded: bool):
    if sharded:  # FSDP's DTensor parameters: the foreach path handles them
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def make_optimizer(
    task: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.99),
    kind: str = "adamw",
):
    """AdamW (fused where supported) with no weight decay on norms, biases and embeddings.

    kind="muon": the weights of the Linear layers inside `task.backbone` (attention and
    feed-forward matrices) go to torch.optim.Muon with the same lr and decay; embeddings, the
    output head, norms, biases and recurrent cells stay with AdamW.
    """
    if kind not in OPTIMIZERS:
        raise ConfigError(f"unknown --optimizer {kind!r}: use {' or '.join(OPTIMIZERS)}")
    no_decay = set()
    for module in task.modules():
        if isinstance(module, (torch.nn.Embedding, torch.nn.LayerNorm)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    hidden = set()
    if kind == "muon":
        backbone = getattr(task, "backbone", task)
        hidden = {id(m.weight) for m in backbone.modules() if isinstance(m, torch.nn.Linear)}
    decay, other, matrices = [], [], []
    for p in task.parameters():
        if not p.requires_grad:
            continue
        if id(p) in hidden and id(p) not in no_decay:
            matrices.append(p)
        elif p.ndim >= 2 and id(p) not in no_decay:
            decay.append(p)
        else:
            other.append(p)
    sharded = any(type(p).__name__ == "DTensor" for p in matrices + decay + other)
    groups = [  # no empty group: torch's state-dict helpers refuse them beside a second optimizer
        g
        for g in (
            {"params": decay, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0},
        )
        if g["params"] or kind == "adamw"
    ]
    adamw = _adamw(groups, lr, betas, sharded)
    if kind == "adamw":
        return adamw
    if sharded:
        raise ConfigError(
            "--optimizer muon (also the gpt-baby and gpt-shakespeare presets' choice) has no "
            "FSDP path: pass --optimizer adamw, or use --strategy ddp"
        )
    if not matrices:
        raise ConfigError("--optimizer muon found no hidden Linear weights to train: use adamw")
    muon = Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    return MultiOptimizer(muon, adamw)
