"""torchrun set-up and teardown, FSDP sharding, and full (gathered) states for checkpoints.

Under `torchrun` the variables RANK, WORLD_SIZE and LOCAL_RANK are set; without them everything
here is a no-op for a single process. gloo on CPU, nccl on CUDA. FSDP is torch's `fully_shard`
(FSDP2), which also runs on CPU with gloo; checkpoints always hold full, unsharded states, so a
run can resume under any world size or strategy.
"""

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from lmforge.errors import ConfigError


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup(device: torch.device, backend: str | None = None, timeout_s: float = 120.0) -> None:
    """Join the process group when launched by torchrun with more than one process."""
    _, size, _ = world()
    if size == 1 or dist.is_initialized():
        return
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("the nccl backend needs CUDA GPUs: use gloo on CPU machines")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean_across_ranks(value: float, device: torch.device) -> float:
    """The average of a Python number over all ranks (the value itself when single-process)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (the flag itself when single-process)."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def fully_shard_fn():
    """torch's FSDP2 `fully_shard`: public since torch 2.6, private in 2.4 and 2.5.

    Raises ImportError when this torch has neither.
    """
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def shard(task: torch.nn.Module) -> None:
    """FSDP: shard each transformer block, then the rest of the model, across the ranks."""
    fully_shard = fully_shard_fn()
    blocks = getattr(getattr(task, "backbone", None), "blocks", None) or []
    for block in blocks:
        fully_shard(block)
    fully_shard(task)


def fsdp_no_sync(task: torch.nn.Module):
    """A no_sync() factory for FSDP: skip gradient reduce-scatter on accumulation micro-steps."""

    @contextlib.contextmanager
    def no_sync():
        task.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            task.set_requires_gradient_sync(True)

    return no_sync


def full_model_state(task: torch.nn.Module) -> dict:
    """The full state dict of a sharded model on rank 0 (a collective: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(
        task, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    # tied weights appear under every name; keep the one named_parameters() keeps
    keep = {n for n, _ in task.named_parameters()} | {n for n, _ in task.named_buffers()}
    return {k: v.contiguous() for k, v in full.items() if k in keep}


def full_optimizer_state(task: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter names, unsharded (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        task,
        getattr(optimizer, "optimizers", optimizer),  # a MultiOptimizer's parts
        options=StateDictOptions(full_state_dict=True, cpu_offload=is_distributed()),
    )


def load_optimizer_state(
    task: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a full optimizer state (from any world size) into this rank's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        task,
        getattr(optimizer, "optimizers", optimizer),
        optim_state_dict=state,
        options=StateDictOptions(full_state_dict=True),
    )
