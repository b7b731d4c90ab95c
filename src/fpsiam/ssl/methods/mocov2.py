"""MoCo v2 (Chen, Fan, Girshick & He 2020, "Improved baselines with momentum contrastive learning").

A query encoder (backbone -> C5 GAP -> 2-layer MLP head) and a momentum copy of it, the key encoder; each query is
contrasted with its key (the other view) against a queue of the keys of earlier batches (InfoNCE, temperature
0.2). The key encoder follows the query encoder with m = 0.999 after every step; the queue (65,536 keys) and the
key encoder are buffers / modules of this module, so checkpoints carry them and resume is exact.

Under DDP the queue takes every process's keys (all-gathered), and the keys are computed on a batch shuffled across
processes and un-shuffled after ("shuffle BN", MoCo's fix for BatchNorm leaking which sample is the positive);
``shuffle_bn: false`` turns that off (then use SyncBN, on CUDA).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import SimSiamEncoder
from fpsiam.ssl.heads import MoCoHead
from fpsiam.ssl.losses import gather, info_nce
from fpsiam.ssl.momentum import ema_update, frozen_copy


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def shuffled_forward(net: nn.Module, x: Tensor) -> Tensor:
    """``net(x)`` computed on a batch shuffled across processes (MoCo's shuffle BN), rows back in ``x``'s order.

    Every process's ``x`` is gathered, permuted by one permutation (drawn on rank 0, broadcast), each process runs
    its slice of the permuted batch, and the outputs are gathered and un-permuted. Single process: ``net(x)``.
    """
    if not _distributed():
        return net(x)
    rank, n = dist.get_rank(), x.shape[0]
    everything = gather(x)
    total = len(everything)
    perm = (
        torch.randperm(total, device=x.device) if rank == 0 else torch.empty(total, dtype=torch.long, device=x.device)
    )
    dist.broadcast(perm, 0)
    outs = gather(net(everything[perm[rank * n : (rank + 1) * n]]))  # row i = net(everything[perm[i]])
    unshuffled = torch.empty_like(outs)
    unshuffled[perm] = outs
    return unshuffled[rank * n : (rank + 1) * n]


class Queue(nn.Module):
    """A FIFO of ``size`` unit vectors (keys of earlier batches), filled with random unit vectors at the start."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("items", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Replace the oldest ``len(keys)`` entries (the queue size is a multiple of the global batch)."""
        n, start = len(keys), int(self.ptr)
        self.items[start : start + n] = F.normalize(keys, dim=1)
        self.ptr.fill_((start + n) % len(self.items))


class MoCoV2(nn.Module):
    method = "mocov2"

    def __init__(self, arch: str, hidden_dim: int = 2048, head_dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2, shuffle_bn: bool = True):  # fmt: skip
        super().__init__()
        self.arch, self.m, self.t, self.shuffle_bn = arch, momentum, temperature, shuffle_bn
        self.encoder = SimSiamEncoder(arch)
        self.projector = MoCoHead(self.encoder.out_dim, hidden_dim, head_dim)
        self.key = nn.Sequential(frozen_copy(self.encoder), frozen_copy(self.projector))
        self.queue = Queue(queue_size, head_dim)

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def check_batch(self, global_batch: int) -> None:
        if len(self.queue.items) % global_batch:
            raise FpsiamError(
                f"model.queue_size: {len(self.queue.items)} is not a multiple of the global batch {global_batch}; "
                "the queue replaces one batch of keys per step"
            )

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        q = self.projector(self.encoder(x1))
        with torch.no_grad():
            k = shuffled_forward(self.key, x2) if self.shuffle_bn else self.key(x2)
        loss = info_nce(q, k, self.queue.items.clone(), self.t)  # a copy: backward needs it, push changes it
        self.queue.push(gather(k))
        return {"loss": loss, "z": q.detach()}

    def on_step(self, step: int, epoch: int, progress: float) -> None:
        ema_update(self.key[0], self.encoder, self.m)
        ema_update(self.key[1], self.projector, self.m)


def build(cfg: PretrainModel) -> MoCoV2:
    return MoCoV2(cfg.backbone, cfg.hidden_dim, cfg.head_dim, cfg.queue_size, cfg.momentum, cfg.temperature,
                  cfg.shuffle_bn)  # fmt: skip
