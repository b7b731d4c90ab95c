"""Encoders: a torchvision ResNet backbone (C2..C5) and FPSiam's feature pyramid (docs/method.md).

``frames -> backbone -> pyramid -> (local, global) vectors`` for FPSiam, ``backbone -> C5 -> vector`` for
SimSiam. The backbone is a plain torchvision ResNet whose ``state_dict`` keys are torchvision's own minus
``fc.*``, so its weights move to and from torchvision / MMDetection / detectron2 without renaming (see
:mod:`fpsiam.weights`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fpsiam.backbones import BACKBONES, build_resnet

RESNET_CHANNELS = {name: spec.channels for name, spec in BACKBONES.items()}
"""Channels of C2, C3, C4, C5 (strides 4, 8, 16, 32) per architecture (from :data:`fpsiam.backbones.BACKBONES`)."""


def resnet_stages(model: torchvision.models.ResNet, x: Tensor) -> list[Tensor]:
    """``[C2, C3, C4, C5]``: the outputs of ``layer1..layer4`` (strides 4, 8, 16, 32)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    c2 = model.layer1(x)
    c3 = model.layer2(c2)
    c4 = model.layer3(c3)
    c5 = model.layer4(c4)
    return [c2, c3, c4, c5]


class Pyramid(nn.Module):
    """FPSiam's feature pyramid: laterals + top-down path, then only two 3x3 output convs.

    Four 1x1 lateral convolutions (with bias, no normalisation or activation) bring C2..C5 to 256 channels; a
    top-down path adds each level to the nearest-neighbour 2x upsampling of the one above, from C5 down to C2. Only
    two 3x3 output convolutions follow: ``local_out`` on the fused stride-4 level (P2, which holds every level) and
    ``global_out`` on the C5 lateral alone (P5). All convolutions start Xavier-uniform with zero bias
    (docs/method.md).
    """

    def __init__(self, in_channels: tuple[int, ...], out_channels: int = 256):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"Pyramid expects the channels of C2..C5, got {in_channels}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in in_channels)
        self.local_out = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.global_out = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def fuse(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(P2, P5)`` before the output convs: P2 = fused stride-4 level, P5 = the C5 lateral alone."""
        laterals = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        top = laterals[-1]
        fused = top
        for lateral in reversed(laterals[:-1]):
            # ``size=`` rather than ``scale_factor=2`` so odd input sizes (e.g. 7 -> 13 -> 25) line up.
            fused = lateral + F.interpolate(fused, size=lateral.shape[-2:], mode="nearest")
        return fused, top

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(local, global)`` feature maps at strides 4 and 32."""
        p2, p5 = self.fuse(feats)
        return self.local_out(p2), self.global_out(p5)

    def pooled(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(local, global)`` vectors: exactly ``forward(feats)`` average-pooled, computed without the maps.

        Everything between C2..C5 and the pooled outputs is linear (1x1 convs, nearest upsampling, sums,
        a 3x3 conv, a mean; no norm or activation), so the pooled output is a linear function of a few
        weighted sums of each Ci, and so are its gradients. For output conv tap (di, dj), averaging over all
        output pixels reads every P2 pixel except one border row / column (zero padding); pushing these
        row / column weights down the top-down path through the nearest-upsampling index maps gives the
        weights for every level. This skips all full-resolution work (the 1x1 laterals and the 3x3 conv at
        stride 4 cost 0.39 + 1.85 GMACs per 224 px image, 55% of ResNet-50's 4.1) with identical values
        and gradients up to float rounding (tests/ssl/test_encoders.py checks both). Adding a norm or an
        activation to the pyramid would break the identity: that test would fail.
        """
        h, w = feats[0].shape[-2:]
        rows, cols = _tap_weights(h, feats[0]), _tap_weights(w, feats[0])  # [3, h], [3, w]
        p2_sums = 0
        for level, (conv, x) in enumerate(zip(self.lateral, feats, strict=True)):
            if level > 0:  # P(level-1) took row / column k of this level's fused map nearest-upsampled
                rows = rows @ _nearest_map(rows.shape[1], x.shape[-2], x)
                cols = cols @ _nearest_map(cols.shape[1], x.shape[-1], x)
            p2_sums = p2_sums + _lateral_tap_sums(conv, x, rows, cols)
        h5, w5 = feats[-1].shape[-2:]
        p5_sums = _lateral_tap_sums(
            self.lateral[-1], feats[-1], _tap_weights(h5, feats[-1]), _tap_weights(w5, feats[-1])
        )
        return _mean_of_conv3x3(self.local_out, p2_sums, h * w), _mean_of_conv3x3(self.global_out, p5_sums, h5 * w5)


def _tap_weights(n: int, like: Tensor) -> Tensor:
    """[3, n]: how often a 3x3 / padding-1 conv's tap d reads input row i, summed over all output rows.

    Output row r reads input row r + d - 1; with zero padding, tap 0 never reads the last row and tap 2
    never the first.
    """
    weights = torch.ones(3, n, dtype=like.dtype, device=like.device)
    weights[0, -1] = 0
    weights[2, 0] = 0
    return weights


@functools.lru_cache(maxsize=64)
def _nearest_index(n_out: int, n_in: int) -> Tensor:
    """The source index ``F.interpolate(mode="nearest")`` copies into each of ``n_out`` positions."""
    ramp = torch.arange(n_in, dtype=torch.float64).view(1, 1, n_in, 1)
    return F.interpolate(ramp, size=(n_out, 1), mode="nearest").view(n_out).long()


def _nearest_map(n_out: int, n_in: int, like: Tensor) -> Tensor:
    """[n_out, n_in] one-hot matrix of nearest upsampling from n_in to n_out positions."""
    return F.one_hot(_nearest_index(n_out, n_in), n_in).to(dtype=like.dtype, device=like.device)


def _lateral_tap_sums(conv: nn.Conv2d, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """[B, 9, out]: ``sum_hw rows[i, h] cols[j, w] conv(x)[:, :, h, w]`` for a 1x1 ``conv``, tap k = 3i + j."""
    masks = (rows[:, None, :, None] * cols[None, :, None, :]).reshape(9, -1)  # [9, h*w]
    sums = (x.flatten(2) @ masks.T).transpose(1, 2)  # [B, 9, C]: one matmul over all pixels
    return sums @ conv.weight[:, :, 0, 0].T + masks.sum(1)[:, None] * conv.bias


def _mean_of_conv3x3(conv: nn.Conv2d, tap_sums: Tensor, pixels: int) -> Tensor:
    """[B, out]: the spatial mean of a 3x3 / padding-1 ``conv``'s output, from its input's tap sums."""
    weight = conv.weight.flatten(2).transpose(1, 2).flatten(1)  # [out, 9 * C], tap k = 3 di + dj
    return tap_sums.flatten(1) @ weight.T / pixels + conv.bias


class FPSiamEncoder(nn.Module):
    """Backbone -> pyramid -> global average pooling: ``x -> (local_vec, global_vec)``, each [B, 256]."""

    def __init__(self, arch: str, pyramid_channels: int = 256):
        super().__init__()
        self.backbone = build_resnet(arch)
        self.pyramid = Pyramid(RESNET_CHANNELS[arch], pyramid_channels)
        self.out_dim = pyramid_channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.pyramid.pooled(resnet_stages(self.backbone, x))


class SimSiamEncoder(nn.Module):
    """Backbone -> C5 -> global average pooling: ``x -> vec`` [B, C5 channels]."""

    def __init__(self, arch: str):
        super().__init__()
        self.backbone = build_resnet(arch)
        self.out_dim = RESNET_CHANNELS[arch][-1]

    def forward(self, x: Tensor) -> Tensor:
        return resnet_stages(self.backbone, x)[-1].mean(dim=(2, 3))
