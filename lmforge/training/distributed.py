"""torchrun / DDP set-up and teardown: read the torchrun environment, start the process group.

Under `torchrun` the variables RANK, WORLD_SIZE and LOCAL_RANK are set; without them everything
here is a no-op for a single process. gloo on CPU, nccl on CUDA.
"""

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
