"""Projector, predictor and the SimSiam loss D(p, z), declared as plain layer lists (DESIGN §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Sequential):
    """A layer list whose ``forward`` can run several batches at once, as if called once per batch.

    ``forward(x, groups=g)``: ``x`` is g equal batches stacked along dim 0. Linear layers and activations
    act row by row, so they run once on the stack (one pass over the 2048x2048 weights instead of g,
    which is what a small-batch step spends its head time on); every BatchNorm normalises each batch with
    its own statistics (and updates its running statistics once per batch, in order), exactly as g
    separate calls would. SimSiam's heads see each view as its own batch; FPSiam's see each view and branch.
    """

    def forward(self, x: Tensor, groups: int = 1) -> Tensor:
        for layer in self:
            if groups > 1 and isinstance(layer, (nn.BatchNorm1d, nn.SyncBatchNorm)):
                x = torch.cat([layer(batch) for batch in x.chunk(groups)])
            else:
                x = layer(x)
        return x


class Projector(MLP):
    """The 3-layer projection MLP, one instance shared by FPSiam's local and global branch.

    DESIGN §1: "Linear(256->2048, no bias)-BN-ReLU-Linear(2048->2048, no bias)-BN-ReLU-
    Linear(2048->2048, no bias)-BN(affine=False)" (SimSiam's projector, fed 256-d pyramid vectors in
    FPSiam and 2048-d C5 vectors in SimSiam).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim, affine=False),
        )


class Predictor(MLP):
    """The bottleneck prediction MLP (shared too).

    DESIGN §1: "Linear(2048->512, no bias)-BN-ReLU-Linear(512->2048, with bias)".
    """

    def __init__(self, dim: int = 2048, hidden_dim: int = 512):
        super().__init__(
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch (SimSiam eq. 1; DESIGN §1).

    The stop-gradient is inside: no gradient ever reaches ``z``. Vectors are l2-normalised with
    ``F.normalize`` (eps 1e-12), as the reference's LatentPredictHead does.
    """
    p = F.normalize(p, dim=1)
    z = F.normalize(z.detach(), dim=1)
    return -(p * z).sum(dim=1).mean()
