"""The one backbone table: architecture name -> torchvision builder, stage channels, ImageNet weights.

Pretraining (:mod:`fpsiam.ssl`), detection (:mod:`fpsiam.detect`), Grad-CAM, the weights tools and the experiment
all build and describe their ResNets from here, so a new backbone is one line in :data:`BACKBONES`. A backbone is
a plain torchvision ResNet without its classifier (``fc`` = ``nn.Identity``): its ``state_dict`` keys are
torchvision's own minus ``fc.*``, so weights move to and from torchvision, MMDetection and detectron2 unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torchvision
from torch import nn

from fpsiam.errors import FpsiamError


@dataclasses.dataclass(frozen=True)
class Backbone:
    build: Callable[..., torchvision.models.ResNet]  # torchvision's constructor
    channels: tuple[int, int, int, int]  # C2, C3, C4, C5 (strides 4, 8, 16, 32)
    imagenet: Callable[[], torchvision.models.WeightsEnum]  # torchvision's ImageNet weights (V1: mmcv's torchvision://)


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(torchvision.models.resnet18, (64, 128, 256, 512),
                         lambda: torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": Backbone(torchvision.models.resnet34, (64, 128, 256, 512),
                         lambda: torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": Backbone(torchvision.models.resnet50, (256, 512, 1024, 2048),
                         lambda: torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}  # fmt: skip
ARCHS = tuple(BACKBONES)


def check_backbone(name: str, where: str = "") -> None:
    """One line (naming the key ``where``) listing the known backbones when ``name`` is not in :data:`BACKBONES`."""
    if name not in BACKBONES:
        prefix = f"{where}: " if where else ""
        raise FpsiamError(f"{prefix}unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")


def backbone_spec(arch: str) -> Backbone:
    """The table entry of ``arch``; an unknown name is one line listing the known ones."""
    check_backbone(arch)
    return BACKBONES[arch]


def channels(arch: str) -> tuple[int, int, int, int]:
    """Channels of C2..C5."""
    return backbone_spec(arch).channels


def build_resnet(arch: str, zero_init_residual: bool = True) -> torchvision.models.ResNet:
    """A randomly initialised ResNet with trainable ``nn.BatchNorm2d`` and ``fc`` = Identity.

    ``model(x)`` is then the pooled C5 vector. ``zero_init_residual=True`` (the last BN of every residual block
    starts at 0) is what the reference configs, the official SimSiam code and MMDetection's ResNet use; it matters
    only for random init (loaded weights overwrite it). Not torchvision's detection default ``FrozenBatchNorm2d``,
    whose identity statistics never adapt.
    """
    net = backbone_spec(arch).build(weights=None, norm_layer=nn.BatchNorm2d, zero_init_residual=zero_init_residual)
    net.fc = nn.Identity()
    return net


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet weights of ``arch`` (V1: the ones mmcv's ``torchvision://resnet50`` points to)."""
    return backbone_spec(arch).imagenet()
