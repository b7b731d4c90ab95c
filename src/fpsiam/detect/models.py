"""Faster R-CNN and RetinaNet (ResNet-FPN) with the paper's transfer recipes (docs/detection.md), in torchvision.

Both detectors take the backbone weights only (``init``: random, ImageNet or a torchvision-keyed file
written by ``fpsiam extract``); the FPN and the heads start fresh. One class: polyp = label 1.

What follows the reference (MMDetection 2.26 configs used by the paper) and where torchvision differs:

- Backbone: torchvision ResNet built with ``nn.BatchNorm2d`` -- *not* torchvision's detection default
  ``FrozenBatchNorm2d``, whose identity statistics never adapt (Kvasir-SEG, RetinaNet R18-FPN: 0.229 vs 0.299 AP).
  The stem (conv1 + bn1) is frozen and bn1 stays in eval mode (mmdet ``frozen_stages=0``); all four stages
  and their BNs train (``norm_eval=False``); SyncBN when distributed on CUDA (:func:`convert_sync_bn`).
  Random init uses torchvision's Kaiming init plus ``zero_init_residual=True`` (mmdet's ResNet default).
- Anchors sit on the reference's fixed strides (:class:`FixedStrideAnchorGenerator`): torchvision's
  ``AnchorGenerator`` derives each level's stride from the padded image size // the feature-map size, which
  drifts on the coarse levels (at 480 px: P6 60 instead of 64, RetinaNet's P7 120 instead of 128). Centres
  are at multiples of the stride (cell corners), as both torchvision and mmdet (``center_offset=0``) place them.
- Faster R-CNN: FPN on C2..C5 plus a stride-2 max-pool level (P2-P6); anchors scale 8 x strides 4-64
  = sizes 32..512, ratios 0.5/1/2; RPN pre/post-NMS 2000/1000 (train) and 1000/1000 (test), NMS 0.7;
  RoIAlign 7x7 on P2-P5 with adaptive sampling (``sampling_ratio=0``) and half-pixel ``aligned=True``
  (:class:`AlignedMultiScaleRoIAlign`; torchvision's ``MultiScaleRoIAlign`` has no ``aligned``), levels picked
  by torchvision's FPN mapper (= mmdet's ``finest_scale=56``); two shared FC 1024 initialised Xavier-uniform
  with zero bias, classifier normal(0, 0.01) and box regressor normal(0, 0.001), zero bias (mmdet's
  ``Shared2FCBBoxHead``; torchvision keeps PyTorch's default Linear init); test score >= 0.05, NMS 0.5,
  <= 100 per image.
  Box loss: the reference uses L1 in the RPN and the RoI head; torchvision hard-codes smooth-L1
  (beta 1/9). ``box_loss="l1"`` (default) swaps in two small subclasses that compute plain L1 with
  torchvision's own normalisation (which is mmdet's: sum over positives / number of sampled anchors or
  RoIs); ``"smooth_l1"`` keeps torchvision's.
- RetinaNet: FPN on C3..C5, P6/P7 by 3x3 stride-2 convs from C5 (``LastLevelP6P7(C5 channels, 256)``;
  mmdet ``add_extra_convs='on_input'``); anchors octave base 4, 3 scales per octave, ratios 0.5/1/2,
  strides 8-128; focal loss gamma 2, alpha 0.25; IoU assignment 0.5 / 0.4; box loss L1 (torchvision's
  default ``_loss_type``, set explicitly); test score >= 0.05, NMS 0.5, <= 100 per image, 1000 candidates
  per level. Small differences kept from torchvision: a ReLU between P6 and P7, the focal and box losses
  are normalised per image (mmdet: over the batch); in both detectors the base anchors are rounded to integer
  corners and the FPN convs start Kaiming-uniform (mmdet: unrounded, Xavier-uniform).
- ``num_classes=2`` for both (background/unused 0 + polyp 1). RetinaNet's sigmoid classifier then has an
  unused class-0 channel (trained towards "absent"); it keeps label ids identical across detectors and
  torchvision's references. :func:`fpsiam.detect.evaluate.predictions_to_coco` drops label 0.
- Input: resize keeping the aspect ratio to fit ``min_size`` x ``max_size`` (480 x 480), pad to /32,
  normalise with the LDPolypVideo detection statistics (mean 168.81/104.04/73.95, std 68.595/52.785/41.82
  on 0-255 RGB, given here on 0-1 images as torchvision expects).

Model files (:func:`save_detector` / :func:`load_detector`) are safetensors with the full state_dict and
the build arguments as JSON metadata -- never pickle. The metadata also holds what inference needs without
rebuilding the model (:func:`inference_meta`: mean/std, padding, the reporting ``score_threshold``).
Every detector here scripts with ``torch.jit.script`` (``fpsiam export``; see :class:`L1RoIHeads`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.poolers import (
    LevelMapper,
    _convert_to_roi_format,
    _filter_input,
    _onnx_merge_levels,
    _setup_scales,
)

from fpsiam.backbones import build_resnet, check_backbone
from fpsiam.backbones import channels as stage_channels
from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_path

BoxLoss = Literal["smooth_l1", "l1"]


# Input normalisation of the recipe (docs/detection.md): LDPolypVideo statistics on 0-255 RGB, divided by 255
# for torchvision's 0-1 images.
IMAGE_MEAN = tuple(v / 255.0 for v in (168.81, 104.04, 73.95))
IMAGE_STD = tuple(v / 255.0 for v in (68.595, 52.785, 41.82))
SIZE_DIVISIBLE = 32
FPN_CHANNELS = 256
ASPECT_RATIOS = (0.5, 1.0, 2.0)

# Anchor strides of the pyramid levels (mmdet's AnchorGenerator ``strides``): Faster R-CNN P2-P6, RetinaNet P3-P7.
FRCNN_ANCHOR_STRIDES = (4, 8, 16, 32, 64)
RETINA_ANCHOR_STRIDES = (8, 16, 32, 64, 128)
# Faster R-CNN: anchor scale 8 x strides 4, 8, 16, 32, 64 (one size per level).
FRCNN_ANCHOR_SIZES = tuple((8 * s,) for s in FRCNN_ANCHOR_STRIDES)
# RetinaNet: octave base 4 x strides 8..128, 3 scales per octave (2^0, 2^(1/3), 2^(2/3)).
RETINA_ANCHOR_SIZES = tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in RETINA_ANCHOR_STRIDES)

# Faster R-CNN RPN (mmdet rpn_proposal / test_cfg.rpn) and RoI head (rcnn) settings.
RPN_SETTINGS = {
    "fg_iou_thresh": 0.7,
    "bg_iou_thresh": 0.3,
    "batch_size_per_image": 256,
    "positive_fraction": 0.5,
    "pre_nms_top_n": {"training": 2000, "testing": 1000},
    "post_nms_top_n": {"training": 1000, "testing": 1000},
    "nms_thresh": 0.7,
}
ROI_SETTINGS = {
    "fg_iou_thresh": 0.5,
    "bg_iou_thresh": 0.5,
    "batch_size_per_image": 512,
    "positive_fraction": 0.25,
    "bbox_reg_weights": None,  # torchvision's (10, 10, 5, 5) = mmdet's target_stds (0.1, 0.1, 0.2, 0.2)
    "score_thresh": 0.05,
    "nms_thresh": 0.5,
    "detections_per_img": 100,
}
ROI_OUTPUT_SIZE = 7
ROI_SAMPLING_RATIO = 0  # mmdet RoIAlign(sampling_ratio=0): ceil(RoI side on the feature map / 7) points per bin axis
ROI_ALIGNED = True  # mmcv RoIAlign's default: half-pixel offset (torchvision's MultiScaleRoIAlign: legacy False)
REPRESENTATION_SIZE = 1024
# mmdet BBoxHead / ConvFCBBoxHead init: shared FCs Xavier-uniform, fc_cls normal(0, 0.01), fc_reg normal(0, 0.001),
# every bias 0.
CLS_SCORE_STD = 0.01
BBOX_PRED_STD = 0.001
RETINA_SETTINGS = {
    "fg_iou_thresh": 0.5,
    "bg_iou_thresh": 0.4,
    "score_thresh": 0.05,
    "nms_thresh": 0.5,
    "detections_per_img": 100,
    "topk_candidates": 1000,
}
# torchvision.ops.sigmoid_focal_loss defaults, used by RetinaNetClassificationHead.compute_loss.
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0

# Normalisation in the FPN and the heads. "gn": GroupNorm with 32 groups, as torchvision's v2 detectors and
# detectron2's GN recipes; batch-size independent, so it behaves the same at a CPU batch of 4 as on GPUs.
HEAD_NORMS = ("none", "gn")
GN_GROUPS = 32
# Faster R-CNN with head_norm="gn": the box head becomes 4 conv (GN) + 1 FC, torchvision's fasterrcnn v2 head.
GN_BOX_CONVS = 4

FILE_FORMAT = "fpsiam-detector/1"
META_KEY = "fpsiam_detector"
# Score at or above which a box is reported by inference (``fpsiam predict``, fpsiam.api.Detector) unless the
# caller passes another; stored in every model file as ``score_threshold`` (pass it in ``meta`` to change it).
DEFAULT_SCORE_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """Everything needed to rebuild a detector's architecture (stored in every model file)."""

    kind: str = "faster_rcnn"
    arch: str = "resnet50"
    min_size: int = 480
    max_size: int = 480
    num_classes: int = 2
    box_loss: str = "l1"
    test_proposals: int = 1000  # Faster R-CNN: RPN proposals kept before/after NMS at test time (recipe: 1000)
    roi_samples: int = 512  # Faster R-CNN: RoIs sampled per image for the box head in training (recipe: 512)
    head_norm: str = "none"  # "gn": GroupNorm in the FPN and the heads (a transfer recipe; the paper: none)
    fpn_channels: int = FPN_CHANNELS  # width of the FPN and of every head conv (the paper: 256; fewer = faster)

    @classmethod
    def of(cls, config: Any) -> DetectorSpec:
        """The spec named by a config's ``model`` section (``fpsiam.config.DetectModel``): fields copied by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dataclasses.asdict(config).items() if k in names})

    def check(self) -> None:
        check_detector(self.kind, "detector kind")
        check_backbone(self.arch, "backbone arch")
        if self.box_loss not in ("smooth_l1", "l1"):
            raise FpsiamError(f"box_loss '{self.box_loss}': expected 'l1' or 'smooth_l1'")
        if self.num_classes < 2:
            raise FpsiamError(f"num_classes={self.num_classes}: need at least 2 (background + polyp)")
        if self.test_proposals < 1 or self.roi_samples < 1:
            raise FpsiamError(f"test_proposals={self.test_proposals}, roi_samples={self.roi_samples}: need >= 1")
        if self.head_norm not in HEAD_NORMS:
            raise FpsiamError(f"head_norm '{self.head_norm}': expected one of {', '.join(HEAD_NORMS)}")
        if self.fpn_channels < 8:
            raise FpsiamError(f"fpn_channels={self.fpn_channels}: need at least 8 (the paper's width is 256)")
        if self.head_norm == "gn" and self.fpn_channels % GN_GROUPS:
            raise FpsiamError(f"fpn_channels={self.fpn_channels}: head_norm 'gn' needs a multiple of {GN_GROUPS}")
        if self.min_size < 32 or self.max_size < self.min_size:
            raise FpsiamError(f"min_size={self.min_size}, max_size={self.max_size}: need 32 <= min_size <= max_size")


# ----------------------------------------------------------------------------------------- backbone


def set_bn_train(model: nn.Module, mode: bool = True) -> nn.Module:
    """Put every BatchNorm in ``mode``, except BNs whose affine parameters are frozen: those stay in eval.

    A frozen BN (the stem's bn1 here, mmdet's frozen stages) must not update its running statistics
    either, otherwise its output drifts although nothing is being trained.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = m.weight is not None and not m.weight.requires_grad
            m.train(mode and not frozen)
    return model


def freeze_stem(backbone: nn.Module) -> list[str]:
    """Freeze a ResNet's stem (conv1 + bn1): no gradients, bn1 in eval. Returns the frozen parameter names.

    ``backbone`` is a torchvision ResNet or anything holding its ``conv1``/``bn1`` (IntermediateLayerGetter).
    """
    frozen = []
    for name in ("conv1", "bn1"):
        module = getattr(backbone, name)
        for pname, p in module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{name}.{pname}")
    backbone.bn1.eval()
    return frozen


class ResNetFPN(BackboneWithFPN):
    """``BackboneWithFPN`` whose frozen BatchNorms (the stem's bn1) stay in eval under ``model.train()``."""

    def train(self, mode: bool = True) -> ResNetFPN:
        super().train(mode)
        set_bn_train(self, mode)
        return self


def init_resnet(net: resnet.ResNet, arch: str, init: str, weights_file: str | None) -> str:
    """Initialise the ResNet from ``init`` (random | imagenet | path); returns what was loaded, in words.

    Delegates to :func:`fpsiam.weights.init_backbone`, which fails loudly (FpsiamError naming the file)
    on weights that do not fit the architecture and reports "loaded N/M tensors from FILE".
    """
    from fpsiam.weights import init_backbone  # lazy: the weights module is only needed here

    return str(init_backbone(net, arch, init, weights_file))


def head_norm_layer(head_norm: str) -> Callable[[int], nn.Module] | None:
    """The normalisation layer the FPN and heads use: None (the paper's recipe) or GroupNorm(32, C)."""
    return functools.partial(nn.GroupNorm, GN_GROUPS) if head_norm == "gn" else None


def resnet_fpn(
    net: resnet.ResNet, arch: str, kind: str, head_norm: str = "none", fpn_channels: int = FPN_CHANNELS
) -> ResNetFPN:
    """Wrap a ResNet into the detector's FPN: C2..C5 + max-pool P6 (Faster R-CNN), C3..C5 + P6/P7 (RetinaNet)."""
    channels = stage_channels(arch)
    if kind == "faster_rcnn":
        stages = (1, 2, 3, 4)
        extra: nn.Module = LastLevelMaxPool()
    else:
        stages = (2, 3, 4)
        # in_channels (C5 width) != 256 for every ResNet here, so torchvision takes P6 from C5 (mmdet 'on_input').
        extra = LastLevelP6P7(channels[3], fpn_channels)
    return_layers = {f"layer{s}": str(i) for i, s in enumerate(stages)}
    in_channels = [channels[s - 1] for s in stages]
    return ResNetFPN(net, return_layers, in_channels, fpn_channels, extra_blocks=extra,
                     norm_layer=head_norm_layer(head_norm))  # fmt: skip


# -------------------------------------------------------------------------- anchors, RoIAlign, head init


class FixedStrideAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with the reference's fixed stride per level.

    torchvision derives level ``i``'s stride as ``padded image size // feature-map size`` (per axis), which is
    exact for P2-P5 at sizes divisible by 32 but not for the coarser levels (at 480 px: P6 60 instead of 64,
    RetinaNet's P7 120 instead of 128). Here level ``i`` uses ``strides[i]`` on both axes; the feature maps
    still give the grid (``H_i x W_i`` positions). Anchors are centred on the cell corners ``(x * s, y * s)``,
    as torchvision and mmdet 2.x (``center_offset=0``) place them; the base anchors are torchvision's (ratio =
    height / width, corners rounded to whole pixels).

    :meth:`grid_anchors` keeps torchvision's signature and ignores its ``strides`` argument, so callers that
    compute strides themselves (torchvision's ``forward``, the per-level ONNX path in
    :mod:`fpsiam.detect.export`) get the fixed strides too. Scripts with ``torch.jit.script``; traces for ONNX
    with dynamic feature-map sizes (the strides are constants).
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]) -> None:  # fmt: skip
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        if len(strides) != len(self.cell_anchors) or any(int(s) != s or s < 1 for s in strides):
            raise ValueError(f"strides {tuple(strides)}: need one positive integer per level ({len(self.sizes)})")
        self.strides = [int(s) for s in strides]

    def fixed_grid_anchors(self, grid_sizes: list[list[int]]) -> list[Tensor]:
        """Per level, the ``H * W * A`` anchors (xyxy): base anchors shifted to ``(x * stride, y * stride)``."""
        torch._assert(
            len(grid_sizes) == len(self.strides) == len(self.cell_anchors),
            "FixedStrideAnchorGenerator: one feature map per anchor level expected",
        )
        anchors: list[Tensor] = []
        for size, stride, base_anchors in zip(grid_sizes, self.strides, self.cell_anchors):  # noqa: B905 (TorchScript)
            grid_height, grid_width = size
            device = base_anchors.device
            # the op sequence of torchvision's grid_anchors, with the level's fixed stride
            shifts_x = torch.arange(0, grid_width, dtype=torch.int32, device=device) * stride
            shifts_y = torch.arange(0, grid_height, dtype=torch.int32, device=device) * stride
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x = shift_x.reshape(-1)
            shift_y = shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def grid_anchors(self, grid_sizes: list[list[int]], strides: list[list[Tensor]]) -> list[Tensor]:
        """torchvision's signature; ``strides`` (derived from the padded size) is ignored for the fixed ones."""
        return self.fixed_grid_anchors(grid_sizes)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [list(feature_map.shape[-2:]) for feature_map in feature_maps]
        self.set_cell_anchors(feature_maps[0].dtype, feature_maps[0].device)
        per_level = self.fixed_grid_anchors(grid_sizes)
        all_levels = torch.cat(per_level)
        return [all_levels for _ in range(len(image_list.image_sizes))]


def _multiscale_roi_align(
    x_filtered: list[Tensor],
    boxes: list[Tensor],
    output_size: list[int],
    sampling_ratio: int,
    aligned: bool,
    scales: list[float] | None,
    mapper: LevelMapper | None,
) -> Tensor:
    """torchvision's ``poolers._multiscale_roi_align`` with ``aligned`` passed on to ``roi_align``."""
    if scales is None or mapper is None:
        raise ValueError("scales and mapper should not be None")
    rois = _convert_to_roi_format(boxes)
    if len(x_filtered) == 1:
        return roi_align(x_filtered[0], rois, output_size=output_size, spatial_scale=scales[0],
                         sampling_ratio=sampling_ratio, aligned=aligned)  # fmt: skip
    levels = mapper(boxes)
    dtype, device = x_filtered[0].dtype, x_filtered[0].device
    result = torch.zeros((len(rois), x_filtered[0].shape[1]) + output_size, dtype=dtype, device=device)
    tracing_results = []
    for level, (per_level_feature, scale) in enumerate(zip(x_filtered, scales)):  # noqa: B905 (TorchScript)
        idx_in_level = torch.where(levels == level)[0]
        result_idx_in_level = roi_align(
            per_level_feature, rois[idx_in_level], output_size, scale, sampling_ratio, aligned=aligned
        )
        if torchvision._is_tracing():
            tracing_results.append(result_idx_in_level.to(dtype))
        else:
            result[idx_in_level] = result_idx_in_level.to(result.dtype)
    if torchvision._is_tracing():
        result = _onnx_merge_levels(levels, tracing_results)
    return result


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with RoIAlign's ``aligned`` flag (mmcv's RoIAlign: ``aligned=True``).

    Same level assignment (``LevelMapper``: level ``floor(4 + log2(sqrt(area) / 224))`` clamped to the pooled
    levels, which is mmdet's ``floor(log2(sqrt(area) / 56))`` over P2-P5) and the same scale inference
    (``_setup_scales``); every level is pooled by ``torchvision.ops.roi_align(..., aligned=aligned)``.
    ``aligned=True`` shifts the box by -0.5 px in feature coordinates (pixel centres), as the reference.
    ONNX: ``aligned=True`` is exported as ``RoiAlign(coordinate_transformation_mode='half_pixel')``, opset >= 16.
    """

    def __init__(self, featmap_names: list[str], output_size: int | tuple[int, int], sampling_ratio: int,
                 aligned: bool = True) -> None:  # fmt: skip
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned = aligned

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        x_filtered = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level
            )
        return _multiscale_roi_align(
            x_filtered, boxes, self.output_size, self.sampling_ratio, self.aligned, self.scales, self.map_levels
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, aligned={self.aligned})"


def init_box_head(box_head: nn.Module, predictor: FastRCNNPredictor) -> None:
    """mmdet's box-head init: every Linear of ``box_head`` Xavier-uniform (gain 1), the predictor's classifier
    normal(0, 0.01) and box regressor normal(0, 0.001); all their biases 0. Convolutions (the GN head's) keep
    torchvision's init."""
    for m in box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for layer, std in ((predictor.cls_score, CLS_SCORE_STD), (predictor.bbox_pred, BBOX_PRED_STD)):
        nn.init.normal_(layer.weight, mean=0.0, std=std)
        nn.init.zeros_(layer.bias)


# ------------------------------------------------------------------------------ L1 box loss (Faster R-CNN)


def _box_regression_loss(pred: Tensor, target: Tensor, box_loss: str) -> Tensor:
    """Summed L1 (mmdet's L1Loss) or torchvision's smooth-L1 with beta 1/9."""
    if box_loss == "l1":
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum")


class L1RegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with an L1 box loss; sampling and normalisation are torchvision's (= mmdet's)."""

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        labels_all = torch.cat(labels, dim=0)
        targets_all = torch.cat(regression_targets, dim=0)
        box_loss = _box_regression_loss(pred_bbox_deltas[pos], targets_all[pos], "l1") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_all[sampled])
        return objectness_loss, box_loss


class L1RoIHeads(RoIHeads):
    """torchvision's box-only RoIHeads with an L1 box loss in training; inference is unchanged.

    ``forward`` is written out rather than delegating to ``super().forward`` because TorchScript cannot call
    a parent's ``forward`` (``fpsiam export --format torchscript`` scripts the whole detector). The inference
    branch is the op sequence of ``RoIHeads.forward`` for a box-only head (pool, box head, predictor,
    ``postprocess_detections``), so its outputs are torchvision's, bit for bit; training is :meth:`l1_losses`.
    """

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        result: list[dict[str, Tensor]] = []
        if self.training:
            if targets is None:
                raise ValueError("L1RoIHeads: training needs targets")
            return result, self.l1_losses(features, proposals, image_shapes, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        for i in range(len(boxes)):
            result.append({"boxes": boxes[i], "labels": labels[i], "scores": scores[i]})
        return result, {}

    def l1_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """torchvision's ``fastrcnn_loss`` on the sampled RoIs, with L1 instead of smooth-L1 for the boxes."""
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        labels_all = torch.cat(labels, dim=0)
        targets_all = torch.cat(regression_targets, dim=0)
        loss_classifier = F.cross_entropy(class_logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        box_regression = box_regression.reshape(class_logits.shape[0], -1, 4)
        loss_box_reg = (
            _box_regression_loss(box_regression[pos, labels_all[pos]], targets_all[pos], "l1") / labels_all.numel()
        )
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


# ------------------------------------------------------------------------------------------ detectors


def _transform_kwargs(spec: DetectorSpec) -> dict[str, Any]:
    return {
        "min_size": spec.min_size,
        "max_size": spec.max_size,
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "size_divisible": SIZE_DIVISIBLE,
    }


def _faster_rcnn(backbone: ResNetFPN, spec: DetectorSpec) -> FasterRCNN:
    anchors = FixedStrideAnchorGenerator(FRCNN_ANCHOR_SIZES, (ASPECT_RATIOS,) * len(FRCNN_ANCHOR_SIZES),
                                         FRCNN_ANCHOR_STRIDES)  # fmt: skip
    width = spec.fpn_channels
    rpn_head = RPNHead(width, anchors.num_anchors_per_location()[0])
    roi_pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO, ROI_ALIGNED)
    if spec.head_norm == "none":
        box_head: nn.Module = TwoMLPHead(width * ROI_OUTPUT_SIZE**2, REPRESENTATION_SIZE)
    else:
        box_head = FastRCNNConvFCHead((width, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE), [width] * GN_BOX_CONVS,
                                      [REPRESENTATION_SIZE], norm_layer=head_norm_layer(spec.head_norm))  # fmt: skip
    predictor = FastRCNNPredictor(REPRESENTATION_SIZE, spec.num_classes)
    init_box_head(box_head, predictor)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=predictor,
        **_transform_kwargs(spec),
    )
    # Rebuild the RPN and RoI heads from the recipe tables above (one source of truth for every value),
    # as the L1 subclasses when asked; the modules inside are the ones just built.
    rpn_cls = L1RegionProposalNetwork if spec.box_loss == "l1" else RegionProposalNetwork
    model.rpn = rpn_cls(anchors, rpn_head, **copy.deepcopy(RPN_SETTINGS))  # the model owns its dicts
    model.rpn._pre_nms_top_n["testing"] = model.rpn._post_nms_top_n["testing"] = spec.test_proposals
    roi_cls = L1RoIHeads if spec.box_loss == "l1" else RoIHeads
    model.roi_heads = roi_cls(
        roi_pool, box_head, predictor, **{**ROI_SETTINGS, "batch_size_per_image": spec.roi_samples}
    )
    return model


def _retinanet(backbone: ResNetFPN, spec: DetectorSpec) -> RetinaNet:
    anchors = FixedStrideAnchorGenerator(RETINA_ANCHOR_SIZES, (ASPECT_RATIOS,) * len(RETINA_ANCHOR_SIZES),
                                         RETINA_ANCHOR_STRIDES)  # fmt: skip
    head = RetinaNetHead(spec.fpn_channels, anchors.num_anchors_per_location()[0], spec.num_classes,
                         norm_layer=head_norm_layer(spec.head_norm))  # fmt: skip
    model = RetinaNet(
        backbone,
        num_classes=spec.num_classes,
        anchor_generator=anchors,
        head=head,
        **RETINA_SETTINGS,
        **_transform_kwargs(spec),
    )
    model.head.regression_head._loss_type = spec.box_loss
    return model


DETECTORS: dict[str, Callable[[ResNetFPN, DetectorSpec], nn.Module]] = {
    "faster_rcnn": _faster_rcnn,
    "retinanet": _retinanet,
}
"""The detectors, name -> builder on a :class:`ResNetFPN` (config keys ``model.kind`` and an experiment's
``detectors`` read their names from here)."""


def check_detector(name: str, where: str = "model.kind") -> None:
    """One line naming the key and the known detectors when ``name`` is not in :data:`DETECTORS`."""
    if name not in DETECTORS:
        raise FpsiamError(f"{where}: unknown detector '{name}'; choose one of: {', '.join(DETECTORS)}")


def build_detector(
    kind: str,
    arch: str = "resnet50",
    init: str = "random",
    weights_file: str | None = None,
    min_size: int = 480,
    max_size: int = 480,
    num_classes: int = 2,
    box_loss: BoxLoss = "l1",
    test_proposals: int = 1000,
    roi_samples: int = 512,
    head_norm: str = "none",
    fpn_channels: int = FPN_CHANNELS,
) -> nn.Module:
    """Build a torchvision FasterRCNN or RetinaNet with the paper's recipe (docs/detection.md).

    ``init``: "random", "imagenet" (torchvision's ImageNet weights; ``weights_file`` may point to an
    offline copy) or the path of a torchvision-keyed backbone file. The backbone is initialised before it
    is wrapped into the FPN; the stem is then frozen. ``box_loss``: "l1" is the reference (both detectors),
    "smooth_l1" is torchvision's (Faster R-CNN beta 1/9, RetinaNet beta 1).

    The returned model carries ``model.fpsiam_spec`` (:class:`DetectorSpec`) and ``model.init_message``
    (what was loaded into the backbone, in words) for :func:`describe` and :func:`save_detector`.
    """
    spec = DetectorSpec(
        kind, arch, min_size, max_size, num_classes, box_loss, test_proposals, roi_samples, head_norm, fpn_channels
    )
    return build_from_spec(spec, init, weights_file)


def build_from_spec(spec: DetectorSpec, init: str = "random", weights_file: str | None = None) -> nn.Module:
    """:func:`build_detector` from a :class:`DetectorSpec` (``DetectorSpec.of(cfg.model)``, or a model file's)."""
    spec.check()
    kind, arch = spec.kind, spec.arch
    net = build_resnet(arch)
    message = init_resnet(net, arch, init, weights_file)
    freeze_stem(net)
    backbone = resnet_fpn(net, arch, kind, spec.head_norm, spec.fpn_channels)
    model = DETECTORS[kind](backbone, spec)
    model.fpsiam_spec = spec
    model.init_message = message
    return model


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """SyncBatchNorm when running distributed on CUDA (the paper's recipe uses SyncBN); the model unchanged otherwise.

    Frozen BNs keep their frozen parameters and stay in eval (``ResNetFPN.train`` checks requires_grad).
    """
    dist = torch.distributed
    on_cuda = any(p.is_cuda for p in model.parameters())
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and on_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _spec_of(model: nn.Module) -> DetectorSpec:
    spec = getattr(model, "fpsiam_spec", None)
    if not isinstance(spec, DetectorSpec):
        raise ValueError("not a detector built by fpsiam.detect.models.build_detector")
    return spec


def describe(model: nn.Module) -> dict[str, Any]:
    """The recipe as built, read back from the model's modules: for run logs and tests (JSON-ready)."""
    spec = _spec_of(model)
    t = model.transform
    body = model.backbone.body
    fpn = model.backbone.fpn
    levels = list(model.backbone.body.return_layers.values())
    levels += ["pool"] if isinstance(fpn.extra_blocks, LastLevelMaxPool) else ["p6", "p7"]
    anchor_gen = model.rpn.anchor_generator if spec.kind == "faster_rcnn" else model.anchor_generator
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    params = list(model.named_parameters())
    info: dict[str, Any] = {
        "kind": spec.kind,
        "arch": spec.arch,
        "head_norm": spec.head_norm,
        "fpn_channels": spec.fpn_channels,
        "num_classes": spec.num_classes,
        "box_loss": spec.box_loss,
        "init": getattr(model, "init_message", ""),
        "transform": {
            "min_size": list(t.min_size),
            "max_size": t.max_size,
            "image_mean": list(t.image_mean),
            "image_std": list(t.image_std),
            "size_divisible": t.size_divisible,
        },
        "fpn": {
            "returned_layers": list(body.return_layers.keys()),
            "levels": levels,
            "channels": model.backbone.out_channels,
            "extra": type(fpn.extra_blocks).__name__,
        },
        "anchors": {
            "sizes": [list(s) for s in anchor_gen.sizes],
            "aspect_ratios": [list(r) for r in anchor_gen.aspect_ratios],
            "per_location": anchor_gen.num_anchors_per_location(),
            "strides": list(anchor_gen.strides),  # fixed per level (FixedStrideAnchorGenerator)
        },
        "batchnorm": {
            "types": sorted({type(m).__name__ for m in bns}),
            "count": len(bns),
            # frozen BNs: no gradient and kept in eval by ResNetFPN.train (the stem's bn1)
            "frozen": [
                f"backbone.body.{n}"
                for n, m in body.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.weight.requires_grad
            ],
        },
        "frozen_parameters": [n for n, p in params if not p.requires_grad],
        "trainable_parameters": sum(p.numel() for _, p in params if p.requires_grad),
        "total_parameters": sum(p.numel() for _, p in params),
    }
    if spec.kind == "faster_rcnn":
        rpn, roi = model.rpn, model.roi_heads
        info["rpn"] = {
            "pre_nms_top_n": dict(rpn._pre_nms_top_n),
            "post_nms_top_n": dict(rpn._post_nms_top_n),
            "nms_thresh": rpn.nms_thresh,
            "fg_iou_thresh": rpn.proposal_matcher.high_threshold,
            "bg_iou_thresh": rpn.proposal_matcher.low_threshold,
            "batch_size_per_image": rpn.fg_bg_sampler.batch_size_per_image,
            "loss": type(rpn).__name__,
        }
        info["roi_heads"] = {
            "featmap_names": list(roi.box_roi_pool.featmap_names),
            "output_size": list(roi.box_roi_pool.output_size),
            "sampling_ratio": roi.box_roi_pool.sampling_ratio,
            "aligned": roi.box_roi_pool.aligned,
            "representation_size": [m for m in roi.box_head.modules() if isinstance(m, nn.Linear)][-1].out_features,
            "batch_size_per_image": roi.fg_bg_sampler.batch_size_per_image,
            "positive_fraction": roi.fg_bg_sampler.positive_fraction,
            "loss": type(roi).__name__,
        }
        info["test"] = {
            "score_thresh": roi.score_thresh,
            "nms_thresh": roi.nms_thresh,
            "detections_per_img": roi.detections_per_img,
        }
    else:
        info["retinanet"] = {
            "fg_iou_thresh": model.proposal_matcher.high_threshold,
            "bg_iou_thresh": model.proposal_matcher.low_threshold,
            "focal_alpha": FOCAL_ALPHA,
            "focal_gamma": FOCAL_GAMMA,
            "regression_loss": model.head.regression_head._loss_type,
            "topk_candidates": model.topk_candidates,
        }
        info["test"] = {
            "score_thresh": model.score_thresh,
            "nms_thresh": model.nms_thresh,
            "detections_per_img": model.detections_per_img,
        }
    return info


# ---------------------------------------------------------------------------------------- model files


def save_detector(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors (full state_dict) with its :class:`DetectorSpec` + ``meta`` as JSON metadata.

    ``meta`` must be JSON-serialisable (e.g. epoch, metrics, the backbone's source); its keys may not
    contradict the spec's (kind, arch, ...). Besides the spec, the file records what inference needs without
    rebuilding the model (:func:`inference_meta`): ``image_mean`` / ``image_std`` (0-1 RGB), ``size_divisible``
    and ``score_threshold`` (``meta['score_threshold']`` or :data:`DEFAULT_SCORE_THRESHOLD`).
    Written atomically; returns ``path``.
    """
    from safetensors.torch import save_file

    t = model.transform
    derived = {
        **dataclasses.asdict(_spec_of(model)),
        "image_mean": [float(v) for v in t.image_mean],
        "image_std": [float(v) for v in t.image_std],
        "size_divisible": int(t.size_divisible),
    }
    meta = dict(meta or {})
    for key, value in derived.items():
        if key in meta and meta[key] != value:
            raise ValueError(f"meta['{key}']={meta[key]!r} contradicts the model's {key}={value!r}")
    threshold = meta.get("score_threshold", DEFAULT_SCORE_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"meta['score_threshold']={threshold!r}: expected a number in [0, 1]")
    info = {**meta, **derived, "score_threshold": float(threshold), "format": FILE_FORMAT,
            "init": getattr(model, "init_message", "")}  # fmt: skip
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(info)})
    return Path(path)


def read_detector_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a model file; FpsiamError when ``path`` is not an fpsiam detector file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FpsiamError(f"{path}: model file not found; pass a model.safetensors written by 'fpsiam detect train'")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise FpsiamError(f"{path}: not a safetensors model file ({e})") from None
    if raw is None:
        raise FpsiamError(
            f"{path}: a safetensors file without fpsiam detector metadata (a backbone weights file? "
            "pass it as --backbone to 'fpsiam detect train' instead)"
        )
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise FpsiamError(f"{path}: corrupt detector metadata (not JSON)") from None
    if not isinstance(info, dict) or info.get("format") != FILE_FORMAT:
        raise FpsiamError(f"{path}: unknown detector file format {info.get('format')!r}, expected {FILE_FORMAT}")
    return info


def inference_meta(info: dict[str, Any]) -> dict[str, Any]:
    """What inference needs from a model file's metadata (:func:`read_detector_meta`), JSON-ready.

    Files written before these keys existed get the values every detector of this module is built with
    (the LDPolypVideo mean/std, padding to /32) and :data:`DEFAULT_SCORE_THRESHOLD`.
    """
    return {
        "kind": info.get("kind"),
        "arch": info.get("arch"),
        "num_classes": int(info.get("num_classes", 2)),
        "min_size": int(info.get("min_size", 480)),
        "max_size": int(info.get("max_size", 480)),
        "image_mean": [float(v) for v in info.get("image_mean", IMAGE_MEAN)],
        "image_std": [float(v) for v in info.get("image_std", IMAGE_STD)],
        "size_divisible": int(info.get("size_divisible", SIZE_DIVISIBLE)),
        "score_threshold": float(info.get("score_threshold", DEFAULT_SCORE_THRESHOLD)),
    }


def load_detector(
    path: str | os.PathLike,
    kind: str | None = None,
    arch: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the detector a file describes, load its weights, return ``(model in eval mode, metadata)``.

    ``kind`` / ``arch``: what the caller expects; a file of another kind or backbone is an FpsiamError
    naming the file and the mismatch, and so is a state_dict whose keys or shapes do not fit its metadata.
    """
    from safetensors.torch import load_file

    path = Path(path)
    info = read_detector_meta(path)
    for key, want in (("kind", kind), ("arch", arch)):
        if want is not None and info.get(key) != want:
            raise FpsiamError(f"{path}: a {info.get(key)} model file, but {want} was requested; pass a {want} model")
    fields = {f.name for f in dataclasses.fields(DetectorSpec)}
    try:
        # added later: older model files lack them
        optional = {"test_proposals", "roi_samples", "head_norm", "fpn_channels"}
        spec = DetectorSpec(**{k: info[k] for k in fields if k in info or k not in optional})
    except KeyError as e:
        raise FpsiamError(f"{path}: detector metadata lacks {e}; the file is damaged") from None
    try:
        spec.check()
    except FpsiamError as e:
        raise FpsiamError(f"{path}: {e}") from None
    model = build_from_spec(spec)
    state = load_file(str(path))
    _check_state_dict(path, spec, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    model.init_message = info.get("init", "")
    return model.to(device).eval(), info


def _check_state_dict(path: Path, spec: DetectorSpec, expected: dict[str, Tensor], found: dict[str, Tensor]) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} of another shape (e.g. {k}: file {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
        )
    raise FpsiamError(
        f"{path}: its tensors do not fit a {spec.kind} {spec.arch} detector as its metadata says: "
        + "; ".join(parts)
        + ". The file is damaged or was edited; retrain or pass the right model file"
    )


__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "AlignedMultiScaleRoIAlign",
    "DetectorSpec",
    "FixedStrideAnchorGenerator",
    "L1RegionProposalNetwork",
    "L1RoIHeads",
    "ResNetFPN",
    "build_detector",
    "build_resnet",
    "convert_sync_bn",
    "describe",
    "freeze_stem",
    "inference_meta",
    "init_box_head",
    "init_resnet",
    "load_detector",
    "read_detector_meta",
    "resnet_fpn",
    "save_detector",
    "set_bn_train",
]
