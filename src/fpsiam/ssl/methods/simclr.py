"""SimCLR (Chen, Kornblith, Norouzi & Hinton 2020): backbone -> C5 GAP -> 2-layer head, NT-Xent over the batch.

Each view's positive is the other view of its image; every other view in the global batch is a negative: under DDP
the projections of every process are all-gathered *with* gradient (as SimCLR's global negatives are), so each
process's loss sees 2NW - 2 negatives. The head normalises the 2N views of a batch together (one BatchNorm batch),
as the reference code does. Temperature 0.1; LARS, lr 0.3 per 256 with a 10-epoch warm-up (the presets).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.ssl.encoders import SimSiamEncoder
from fpsiam.ssl.heads import SimCLRHead
from fpsiam.ssl.losses import nt_xent


class SimCLR(nn.Module):
    method = "simclr"

    def __init__(self, arch: str, hidden_dim: int = 2048, head_dim: int = 128, temperature: float = 0.1):
        super().__init__()
        self.arch, self.t = arch, temperature
        self.encoder = SimSiamEncoder(arch)
        self.projector = SimCLRHead(self.encoder.out_dim, hidden_dim, head_dim)

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        z1, z2 = self.projector(self.encoder(torch.cat([x1, x2]))).chunk(2)
        return {"loss": nt_xent(z1, z2, self.t), "z": z1.detach()}


def build(cfg: PretrainModel) -> SimCLR:
    return SimCLR(cfg.backbone, cfg.hidden_dim, cfg.head_dim, cfg.temperature)
