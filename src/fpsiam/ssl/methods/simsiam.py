"""SimSiam (Chen & He, CVPR 2021): backbone -> C5 GAP -> projector -> predictor, symmetric negative cosine."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.ssl.encoders import SimSiamEncoder
from fpsiam.ssl.heads import Predictor, Projector
from fpsiam.ssl.losses import negative_cosine


class SimSiam(nn.Module):
    """SimSiam (Chen & He, CVPR 2021): backbone -> C5 GAP -> projector -> predictor, symmetric D.

    loss = 1/2 D(p1, z2) + 1/2 D(p2, z1), with D(p, z) = -cos(p, stopgrad(z)).
    """

    method = "simsiam"
    fixed_lr_modules = ("predictor",)  # SimSiam's fix_lr: the predictor is not decayed

    def __init__(self, arch: str, proj_dim: int = 2048, pred_dim: int = 512):
        super().__init__()
        self.arch = arch
        self.encoder = SimSiamEncoder(arch)
        self.projector = Projector(self.encoder.out_dim, proj_dim, proj_dim)
        self.predictor = Predictor(proj_dim, pred_dim)

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        # Both views through each head at once; every view is still its own BatchNorm batch (heads.MLP).
        z = self.projector(torch.cat([self.encoder(x1), self.encoder(x2)]), groups=2)
        p1, p2 = self.predictor(z, groups=2).chunk(2)
        z1, z2 = z.chunk(2)
        loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
        return {"loss": loss, "z": z1.detach()}


def build(cfg: PretrainModel) -> SimSiam:
    return SimSiam(cfg.backbone, cfg.proj_dim, cfg.pred_dim)
