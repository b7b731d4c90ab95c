"""torchrun environment, process group, DDP and SyncBN — one place for everything distributed.

The same command runs single-process or under ``torchrun --nproc_per_node=N`` (one node or many through
torchrun's rendezvous): torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and we read them here.
Backend: NCCL on CUDA, gloo on CPU (so the distributed path is testable on a laptop).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def wants_cuda(device: str = "auto") -> bool:
    """``auto``: CUDA when available; otherwise whatever ``device`` names (``cpu``, ``cuda``, ``cuda:1``)."""
    return torch.cuda.is_available() if device == "auto" else device.startswith("cuda")


def check_device(device: str) -> None:
    """A CUDA device asked for explicitly must exist (``auto`` falls back to the CPU)."""
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= count:
            from fpsiam.errors import FpsiamError

            have = f"{count} CUDA device(s)" if count else "no CUDA GPU (torch.cuda.is_available() is False)"
            raise FpsiamError(f"device '{device}': this machine has {have}; use device auto or cpu")


def init_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick the device and start the process group when world_size > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = wants_cuda(device)
    check_device(device)
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
            **({"device_id": dev} if use_cuda else {}),
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


@contextlib.contextmanager
def session(device: str = "auto", env: DistEnv | None = None) -> Iterator[DistEnv]:
    """The given ``env``, or a new one from torchrun's environment that is torn down on exit."""
    if env is not None:
        yield env
        return
    env = init_distributed(device)
    try:
        yield env
    finally:
        cleanup()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``t`` over all processes (a copy; ``t`` itself is left alone)."""
    if not env.distributed:
        return t.detach().clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / env.world_size


def prepare_model(model: nn.Module, env: DistEnv, sync_bn: bool = True, channels_last: bool = False) -> nn.Module:
    """Move to the device; SyncBN only when distributed on CUDA (it raises on CPU); wrap in DDP."""
    if env.distributed and env.device.type == "cuda" and sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(env.device)
    if channels_last and env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if env.device.type == "cuda" else None
        )
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, nothing on CPU. Returns None when autocast is off."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp in ("auto", "bf16"):
        return torch.bfloat16
    return torch.float16
