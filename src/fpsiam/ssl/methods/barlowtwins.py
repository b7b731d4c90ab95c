"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny 2021): redundancy reduction between the two views' projections.

Both views go through one encoder and projector; the cross-correlation matrix of their batch-standardised
projections is pushed to the identity: the diagonal to 1 (invariance), the rest to 0 (redundancy reduction, weight
lambda = 5e-3, "a trade-off" the paper fixes for all its runs). No predictor, no momentum encoder, no negatives.
Projector: three bias-free linear layers (8192 wide in the paper; ``hidden_dim`` / ``head_dim``), BN + ReLU after
the first two. LARS, lr 0.2 per 256 (the presets).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.ssl.encoders import SimSiamEncoder
from fpsiam.ssl.heads import BarlowTwinsHead
from fpsiam.ssl.losses import barlow_twins


class BarlowTwins(nn.Module):
    method = "barlowtwins"
    LAMBDA = 5e-3  # "lambda = 5 x 10^-3", the paper's weight of the off-diagonal term

    def __init__(self, arch: str, hidden_dim: int = 8192, head_dim: int = 8192):
        super().__init__()
        self.arch = arch
        self.encoder = SimSiamEncoder(arch)
        self.projector = BarlowTwinsHead(self.encoder.out_dim, hidden_dim, head_dim)

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        # Each view is its own BatchNorm batch, in the backbone and in the projector (heads.MLP).
        z1, z2 = self.projector(torch.cat([self.encoder(x1), self.encoder(x2)]), groups=2).chunk(2)
        return {"loss": barlow_twins(z1, z2, self.LAMBDA), "z": z1.detach()}


def build(cfg: PretrainModel) -> BarlowTwins:
    return BarlowTwins(cfg.backbone, cfg.hidden_dim, cfg.head_dim)
