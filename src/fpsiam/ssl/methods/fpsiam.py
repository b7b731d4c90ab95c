"""FPSiam (Gan et al., Sci. Rep. 2023): SimSiam on a feature-pyramid encoder, local (P2) and global (P5) branches."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.ssl.encoders import FPSiamEncoder
from fpsiam.ssl.heads import Predictor, Projector
from fpsiam.ssl.losses import negative_cosine


class FPSiam(nn.Module):
    """FPSiam (Gan et al., Sci. Rep. 2023): SimSiam on a feature-pyramid encoder with two branches.

    Each view gives a local vector (GAP of the fused stride-4 level P2) and a global vector (GAP of the
    C5 lateral P5); one projector and one predictor serve both branches (docs/method.md):
    local = 1/2 [D(p1_l, z2_l) + D(p2_l, z1_l)], global = the same on P5,
    loss = loss_scale * (lam * local + (1 - lam) * global), lam = 0.5.

    ``loss_scale`` (docs/fidelity.md): 1.0 is the paper's formula (default). The reference
    runs' training framework summed every logged term whose name contained "loss", so the gradient it
    applied was 1.5 (local + global) = 3x the lam-average: ``loss_scale=3.0`` reproduces that. The
    returned ``loss_local`` / ``loss_global`` are the unscaled terms.

    As in the reference, the heads' BatchNorm statistics are per branch and per view (pooling them into
    one batch would change the method); :class:`~fpsiam.ssl.heads.MLP` runs the four batches in one
    pass with exactly those statistics.
    """

    method = "fpsiam"
    fixed_lr_modules = ("predictor",)  # as SimSiam: the predictor keeps its initial lr

    def __init__(
        self,
        arch: str,
        pyramid_channels: int = 256,
        proj_dim: int = 2048,
        pred_dim: int = 512,
        lam: float = 0.5,
        loss_scale: float = 1.0,
    ):
        super().__init__()
        self.arch = arch
        self.lam = lam
        self.loss_scale = loss_scale
        self.encoder = FPSiamEncoder(arch, pyramid_channels)
        self.projector = Projector(pyramid_channels, proj_dim, proj_dim)
        self.predictor = Predictor(proj_dim, pred_dim)

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        local1, global1 = self.encoder(x1)
        local2, global2 = self.encoder(x2)
        # One pass through each shared head for the 4 (view, branch) batches, each its own BN batch.
        z = self.projector(torch.cat([global1, local1, global2, local2]), groups=4)
        p1_g, p1_l, p2_g, p2_l = self.predictor(z, groups=4).chunk(4)
        z1_g, z1_l, z2_g, z2_l = z.chunk(4)
        loss_local = 0.5 * (negative_cosine(p1_l, z2_l) + negative_cosine(p2_l, z1_l))
        loss_global = 0.5 * (negative_cosine(p1_g, z2_g) + negative_cosine(p2_g, z1_g))
        loss = self.loss_scale * (self.lam * loss_local + (1.0 - self.lam) * loss_global)
        return {
            "loss": loss,
            "loss_local": loss_local.detach(),
            "loss_global": loss_global.detach(),
            "z_local": z1_l.detach(),
            "z_global": z1_g.detach(),
        }


def build(cfg: PretrainModel) -> FPSiam:
    return FPSiam(cfg.backbone, cfg.pyramid_channels, cfg.proj_dim, cfg.pred_dim, cfg.lam, cfg.loss_scale)
