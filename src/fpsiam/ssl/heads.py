"""The heads of every method, declared as plain layer lists whose docstrings quote the papers.

Every head is an :class:`MLP`: called with ``groups=g`` on g stacked batches (the views, and FPSiam's branches) it
normalises each batch with its own BatchNorm statistics, exactly as g separate calls would, in one pass over the
weights. The losses are in :mod:`fpsiam.ssl.losses`.
"""

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

    SimSiam (Chen & He 2021, appendix): "The projection MLP has BN applied to each fully-connected (fc) layer,
    including its output fc. Its output fc has no ReLU. The hidden fc is 2048-d. This MLP has 3 layers."
    FPSiam feeds it the 256-d pooled pyramid vectors; SimSiam the C5 vector.
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

    SimSiam: "The prediction MLP has BN applied to its hidden fc layers. Its output fc does not have BN or ReLU.
    This MLP has 2 layers. The dimension of h's input and output is 2048, and h's hidden layer's dimension is 512".
    """

    def __init__(self, dim: int = 2048, hidden_dim: int = 512):
        super().__init__(
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )


class MoCoHead(MLP):
    """MoCo v2's projection head (Chen et al. 2020, "Improved baselines"): "we replace the fc head in MoCo with a
    2-layer MLP head (hidden layer 2048-d, with ReLU)"; output 128-d, no BatchNorm."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class SimCLRHead(MLP):
    """SimCLR's projection head g(.) (Chen et al. 2020): "a MLP with one hidden layer", as run in its reference
    code and MMSelfSup's NonLinearNeck: Linear-BN-ReLU-Linear-BN, no biases, 128-d output."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim),
        )  # fmt: skip


class BYOLHead(MLP):
    """BYOL's projector and predictor (Grill et al. 2020): "a multi-layer perceptron (MLP) consisting in a linear
    layer with output size 4096 followed by batch normalization, rectified linear units (ReLU), and a final
    linear layer with output dimension 256"."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )  # fmt: skip


class DenseHead(MLP):
    """DenseCL's projection heads (Wang et al. 2021): the global one is MoCo v2's 2-layer MLP; the dense one
    "1x1 conv-ReLU-1x1 conv" on the backbone's feature map, i.e. the same MLP applied at every location (run here
    on the [N*S, C] rows of the map)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class SwAVHead(MLP):
    """SwAV's projection head (Caron et al. 2020): a 2-layer MLP, Linear-BN-ReLU-Linear to a 128-d output, which
    is l2-normalised before the prototypes."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )  # fmt: skip


class BarlowTwinsHead(MLP):
    """Barlow Twins' projector (Zbontar et al. 2021): "The projector network has three linear layers, each with
    8192 output units. The first two layers of the projector are followed by a batch normalization layer and
    rectified linear units." Bias-free linear layers, as in its code."""

    def __init__(self, in_dim: int, hidden_dim: int = 8192, out_dim: int = 8192):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )  # fmt: skip


class Prototypes(nn.Linear):
    """SwAV's prototypes: "a set of K trainable prototype vectors" as a bias-free linear layer on the normalised
    projection; the vectors are re-normalised to unit length before every step (:meth:`normalize_`)."""

    def __init__(self, dim: int = 128, count: int = 3000):
        super().__init__(dim, count, bias=False)

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))
