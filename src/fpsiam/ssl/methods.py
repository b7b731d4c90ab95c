"""SimSiam and FPSiam, each one readable ``nn.Module`` that returns its losses (DESIGN §1).

``forward(x1, x2) -> dict``: keys starting with ``"loss"`` are scalar losses and ``"loss"`` is the one to
backpropagate; keys starting with ``"z"`` are detached projector outputs of the first view, for the
collapse monitor (:func:`collapse_std`). Both modules expose ``.backbone`` (the torchvision ResNet, no
fc), ``.projector``, ``.predictor`` (the training loop keeps its lr fixed), ``.method`` and ``.arch``.
In ``state_dict()`` the backbone sits under exactly one prefix, ``encoder.backbone.``
(:data:`fpsiam.weights.BACKBONE_PREFIX`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import FPSiamEncoder, SimSiamEncoder
from fpsiam.ssl.heads import Predictor, Projector, negative_cosine


class SimSiam(nn.Module):
    """SimSiam (Chen & He, CVPR 2021): backbone -> C5 GAP -> projector -> predictor, symmetric D.

    loss = 1/2 D(p1, z2) + 1/2 D(p2, z1), with D(p, z) = -cos(p, stopgrad(z)).
    """

    method = "simsiam"

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


class FPSiam(nn.Module):
    """FPSiam (Gan et al., Sci. Rep. 2023): SimSiam on a feature-pyramid encoder with two branches.

    Each view gives a local vector (GAP of the fused stride-4 level P2) and a global vector (GAP of the
    C5 lateral P5); one projector and one predictor serve both branches. DESIGN §1:
    local = 1/2 [D(p1_l, z2_l) + D(p2_l, z1_l)], global = the same on P5,
    loss = loss_scale * (lam * local + (1 - lam) * global), lam = 0.5.

    ``loss_scale`` (fidelity note in DESIGN §1): 1.0 is the paper's formula (default). The reference
    runs' training framework summed every logged term whose name contained "loss", so the gradient it
    applied was 1.5 (local + global) = 3x the lam-average: ``loss_scale=3.0`` reproduces that. The
    returned ``loss_local`` / ``loss_global`` are the unscaled terms.

    As in the reference, the heads' BatchNorm statistics are per branch and per view (pooling them into
    one batch would change the method); :class:`~fpsiam.ssl.heads.MLP` runs the four batches in one
    pass with exactly those statistics.
    """

    method = "fpsiam"

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


def build_method(cfg: PretrainModel) -> SimSiam | FPSiam:
    """The method module named by ``cfg.method`` (``model.*`` keys of a pretraining config)."""
    if not 0.0 <= cfg.lam <= 1.0:
        raise FpsiamError(f"model.lam: must be in [0, 1], got {cfg.lam}")
    if cfg.loss_scale <= 0:
        raise FpsiamError(f"model.loss_scale: must be > 0, got {cfg.loss_scale}")
    if min(cfg.pyramid_channels, cfg.proj_dim, cfg.pred_dim) < 1:
        raise FpsiamError("model.pyramid_channels, model.proj_dim and model.pred_dim must be >= 1")
    if cfg.method == "fpsiam":
        return FPSiam(cfg.backbone, cfg.pyramid_channels, cfg.proj_dim, cfg.pred_dim, cfg.lam, cfg.loss_scale)
    if cfg.method == "simsiam":
        return SimSiam(cfg.backbone, cfg.proj_dim, cfg.pred_dim)
    raise FpsiamError(f"model.method: unknown method '{cfg.method}'; choose fpsiam or simsiam")


@torch.no_grad()
def collapse_std(z: Tensor) -> float:
    """Collapse monitor of SimSiam §4: mean per-dimension std of l2-normalised ``z``, times sqrt(d).

    About 1 for healthy (roughly isotropic Gaussian) outputs, 0 when every sample maps to the same
    vector. NaN for a batch of one.
    """
    if z.shape[0] < 2:
        return float("nan")
    d = z.shape[1]
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean() * math.sqrt(d))
