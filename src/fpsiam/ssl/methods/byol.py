"""BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) predicts a target network's
projection of the other view; the target is a momentum copy of the online encoder and projector.

loss = l(p1, z2') + l(p2, z1') with l = 2 - 2 cos (normalised MSE) and z' the target's (no gradient). The target's
momentum rises from ``momentum`` (0.99 in the paper's comparison runs) to ``momentum_end`` (1) along a cosine over
the run. Projector and predictor: 4096 hidden, 256 out. LARS, lr 4.8 per 4096 (the presets).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.ssl.encoders import SimSiamEncoder
from fpsiam.ssl.heads import BYOLHead
from fpsiam.ssl.losses import byol_loss
from fpsiam.ssl.momentum import cosine_momentum, ema_update, frozen_copy


class BYOL(nn.Module):
    method = "byol"

    def __init__(self, arch: str, hidden_dim: int = 4096, head_dim: int = 256, momentum: float = 0.99,
                 momentum_end: float = 1.0):  # fmt: skip
        super().__init__()
        self.arch, self.m, self.m_end = arch, momentum, momentum_end
        self.encoder = SimSiamEncoder(arch)
        self.projector = BYOLHead(self.encoder.out_dim, hidden_dim, head_dim)
        self.predictor = BYOLHead(head_dim, hidden_dim, head_dim)
        self.target = nn.Sequential(frozen_copy(self.encoder), frozen_copy(self.projector))

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        z = self.projector(torch.cat([self.encoder(x1), self.encoder(x2)]), groups=2)
        p1, p2 = self.predictor(z, groups=2).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target[1](torch.cat([self.target[0](x1), self.target[0](x2)]), groups=2).chunk(2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss, "z": z.chunk(2)[0].detach()}

    def on_step(self, step: int, epoch: int, progress: float) -> None:
        m = cosine_momentum(self.m, self.m_end, progress)
        ema_update(self.target[0], self.encoder, m)
        ema_update(self.target[1], self.projector, m)


def build(cfg: PretrainModel) -> BYOL:
    return BYOL(cfg.backbone, cfg.hidden_dim, cfg.head_dim, cfg.momentum, cfg.momentum_end)
