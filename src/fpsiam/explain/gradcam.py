"""Class activation maps (CAMs) of backbones and detectors, and a number for "activates the polyp".

The paper shows Grad-CAM images to argue that FPSiam "activates more accurate polyp regions" than other
initialisations. This module draws such maps and turns the claim into a measurement.

Two views, both computed on the backbone's last stage (``layer4``, C5, stride 32) so that every map in a
comparison comes from the same place, the part whose weights the pretraining transfers:

- **Backbone alone** (the paper's comparison of random / ImageNet / FPSiam initialisations):
  :func:`backbone_cams`. An SSL backbone has no classifier, so there is no class score to take gradients
  of. The default is **EigenCAM** (Muhammad & Yeasin 2020): the projection of each position's C5
  activation vector on the first principal component of all positions' vectors, i.e. the strongest
  spatial pattern of the features, with no target needed. SVD leaves its sign arbitrary; here it is
  fixed so that the map correlates positively with the total activation (see :class:`SignedEigenCAM`).
  ``method="gradcam"`` instead takes Grad-CAM of the L2 norm of the pooled feature.
  Input: the frame resized to ``size`` (optional) and normalised with the detection recipe's statistics
  (docs/detection.md: mean 168.81/104.04/73.95, std 68.595/52.785/41.82 on 0-255 RGB).
- **A trained detector's own detections**: :func:`detector_cams`. Faster R-CNN: **Grad-CAM** of the
  detections scoring >= ``score_threshold``, with grad-cam's ``FasterRCNNBoxScoreTarget`` (for each
  detection, the IoU + score of the output box that matches it). The gradients reach ``layer4`` from all
  FPN levels through the top-down path. RetinaNet: **EigenCAM** by default (grad-cam's recommendation
  for one-stage detectors); ``mode="gradcam"`` works for it too, since torchvision's RetinaNet keeps its
  scores and boxes differentiable. The detector resizes and pads its input itself (to /32); the padded
  rows and columns of the feature map are cropped before the CAM is resized to the frame
  (:func:`_crop_padding`), so the map lines up with the frame.

The number (:func:`cam_box_energy`, :func:`evaluate_cams`): the fraction of the CAM's mass inside the
union of the true boxes, whether its peak falls inside a box, and the chance level (the boxes' area
fraction, which a uniform map scores). A zero map (e.g. a detector without detections) scores 0.

``fpsiam gradcam MODEL INPUT -o OUT_DIR`` is :func:`gradcam_command`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from fpsiam.data.coco import normalise_coco
from fpsiam.data.cocojson import image_root, load_coco
from fpsiam.data.frames import IMAGE_EXTENSIONS
from fpsiam.data.images import decode_rgb
from fpsiam.detect.models import IMAGE_MEAN, IMAGE_STD, META_KEY, load_detector
from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_path, write_json

# grad-cam is an optional dependency (the "explain" extra): importing this module without it is one FpsiamError
# line saying how to install it (``fpsiam gradcam`` imports this module only when it runs; the experiment's
# Grad-CAM pictures record the line and go on).
try:
    from pytorch_grad_cam import EigenCAM, GradCAM
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
except ImportError as e:  # not installed, or installed without a dependency of its own (e.g. OpenCV)
    raise FpsiamError(
        f"Grad-CAM needs the optional package grad-cam, which does not import here ({e}); install it with: "
        'pip install "fpsiam[explain]"'
    ) from None

ImageInput = str | os.PathLike | Tensor

DEFAULT_SCORE_THRESHOLD = 0.3
MODES = ("auto", "gradcam", "eigencam")
TARGET_LAYER = "layer4"
TRUE_COLOUR = (0, 255, 0)  # true boxes: green
PRED_COLOUR = (255, 0, 255)  # predicted boxes: magenta (absent from the jet colour map)
ENERGY_FILE = "cam_energy.json"


# ------------------------------------------------------------------------------------------ the number


def box_mask(shape: tuple[int, int], boxes: Any) -> np.ndarray:
    """Boolean (H, W) mask of the union of ``boxes`` (xyxy pixels, exclusive right/bottom edges).

    A pixel belongs to a box when its centre does: ``x1 <= col + 0.5 < x2`` and the same for rows.
    """
    height, width = shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask |= ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
    return mask


def cam_box_energy(cam: np.ndarray, boxes: Any) -> dict[str, float | bool]:
    """How much of a CAM lies on the true boxes.

    Args:
        cam: (H, W) map, values >= 0.
        boxes: true boxes, (N, 4) xyxy in the CAM's pixel coordinates (array, list or tensor).

    Returns:
        ``energy_in_box``: CAM mass inside the union of the boxes / total mass (0 for a zero CAM);
        ``peak_in_box``: whether the argmax pixel is inside a box (False for a zero CAM);
        ``box_area_fraction``: the union's share of the image = the chance level (a uniform CAM's energy).
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"cam must be (H, W), got shape {cam.shape}")
    if not np.isfinite(cam).all() or (cam < 0).any():
        raise ValueError("cam must be finite and >= 0")
    mask = box_mask(cam.shape, boxes)
    total = cam.sum()
    if total <= 0:
        return {"energy_in_box": 0.0, "peak_in_box": False, "box_area_fraction": float(mask.mean())}
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return {
        "energy_in_box": float(cam[mask].sum() / total),
        "peak_in_box": bool(mask[peak]),
        "box_area_fraction": float(mask.mean()),
    }


def summarise_energy(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over frames of :func:`cam_box_energy` results (the frames with boxes only)."""
    n = len(records)
    if n == 0:
        return {
            "mean_energy_in_box": None,
            "peak_in_box_rate": None,
            "mean_box_area_fraction": None,
            "energy_over_chance": None,
            "n_frames": 0,
        }
    energy = float(np.mean([r["energy_in_box"] for r in records]))
    chance = float(np.mean([r["box_area_fraction"] for r in records]))
    return {
        "mean_energy_in_box": energy,
        "peak_in_box_rate": float(np.mean([bool(r["peak_in_box"]) for r in records])),
        "mean_box_area_fraction": chance,
        "energy_over_chance": energy / chance if chance > 0 else None,
        "n_frames": n,
    }


# ------------------------------------------------------------------------------------------ images


def _as_float_image(image: ImageInput) -> Tensor:
    """A float32 RGB tensor [3, H, W] in 0..1 from a file (FpsiamError naming it) or a tensor."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be [3, H, W], got {tuple(image.shape)}")
        return TF.to_dtype(image, torch.float32, scale=True) if not image.is_floating_point() else image.float()
    return TF.to_dtype(decode_rgb(image), torch.float32, scale=True)


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    """[3, H, W] float 0..1 -> (H, W, 3) uint8, for drawing."""
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------ CAM machinery


class SignedEigenCAM(EigenCAM):
    """grad-cam's EigenCAM with the sign of the principal component fixed.

    The first principal component is defined up to sign, and ``np.linalg.svd`` picks one arbitrarily;
    after the ReLU that CAMs apply, the wrong sign shows the *complement* of the pattern. The sign is
    chosen so that the map correlates positively with the total activation at each position (the C5
    outputs are post-ReLU, >= 0): the map is high where the features fire.
    """

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        projections = get_2d_projection(activations)  # [B, h, w]
        strength = np.asarray(activations).sum(axis=1)  # [B, h, w]
        for projection, total in zip(projections, strength, strict=True):
            if np.sum((projection - projection.mean()) * (total - total.mean())) < 0:
                projection *= -1
        return projections


def _unused_target(output: Any) -> Tensor:
    """EigenCAM needs no target; grad-cam only requires a non-None list (it never calls this)."""
    raise AssertionError("EigenCAM does not use targets")


def _feature_norm(output: Tensor) -> Tensor:
    """Grad-CAM target for a backbone without a classifier: the L2 norm of its pooled feature vector."""
    return output.norm(p=2)


@contextlib.contextmanager
def _cam(cam_class: type[BaseCAM], model: nn.Module, layer: nn.Module, reshape_transform=None) -> Iterator[BaseCAM]:
    """A grad-cam object whose forward hooks are removed afterwards.

    (Not ``with cam_class(...)``: grad-cam's ``__exit__`` swallows IndexErrors.)
    """
    cam = cam_class(model=model, target_layers=[layer], reshape_transform=reshape_transform)
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def _crop_padding(model: nn.Module, image: Tensor):
    """A grad-cam ``reshape_transform`` that crops a feature map to the part covering ``image``.

    torchvision's detection transform resizes the frame and pads it to a multiple of 32 at the bottom
    and right; without the crop the padded border would be stretched over the frame.
    """
    with torch.no_grad():
        batch, _ = model.transform([image])
    (valid_h, valid_w), (padded_h, padded_w) = batch.image_sizes[0], batch.tensors.shape[-2:]

    def crop(x: Tensor) -> Tensor:
        rows = max(1, -(-x.shape[-2] * valid_h // padded_h))  # ceil: keep partly covered cells
        cols = max(1, -(-x.shape[-1] * valid_w // padded_w))
        return x[..., :rows, :cols]

    return crop


def _resize_cam(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) map to ``shape``, clipped to 0..1."""
    if cam.shape != shape:
        cam = F.interpolate(torch.from_numpy(cam)[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
        cam = cam.numpy()
    return np.clip(cam, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ backbones


def _arch_of_file(sd: dict[str, Tensor], path: str) -> str | None:
    from fpsiam.weights import infer_arch

    try:
        return infer_arch(sd, path)
    except FpsiamError:
        return None  # not a recognisable ResNet: the checked load below says what does not fit


def load_backbone_net(backbone: str | os.PathLike, arch: str = "resnet50") -> tuple[nn.Module, str]:
    """A torchvision ResNet (no fc, eval mode) from "random", "imagenet" or a weights file; and what was loaded.

    "random" is seeded (0), so that every call shows the same random network. "imagenet" uses
    torchvision's download cache (FpsiamError with an offline hint when it cannot). A file goes through
    :mod:`fpsiam.weights` (any known key layout) and must fit ``arch`` completely: a file of another
    architecture, or one that matches nothing, is an FpsiamError naming it.
    """
    from fpsiam.backbones import build_resnet
    from fpsiam.weights import init_backbone, load_state_dict_checked, load_state_file, to_torchvision_keys

    name = str(backbone)
    if name in ("random", "imagenet"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build_resnet(arch)
        return net.eval(), init_backbone(net, arch, name)
    path = Path(backbone)
    if not path.is_file():
        raise FpsiamError(f"{path}: backbone weights not found; pass a weights file, 'random' or 'imagenet'")
    sd = to_torchvision_keys(load_state_file(path))
    found = _arch_of_file(sd, str(path))
    if found is not None and found != arch:
        raise FpsiamError(f"{path}: holds {found} backbone weights, but arch is {arch}; pass --arch {found}")
    net = build_resnet(arch)
    report = load_state_dict_checked(net, sd, str(path))
    return net.eval(), f"{arch}: {report}"


def backbone_cams(
    backbone: str | os.PathLike | nn.Module,
    images: Sequence[ImageInput],
    arch: str = "resnet50",
    size: int | None = None,
    method: str = "eigencam",
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
) -> list[np.ndarray]:
    """CAMs of a backbone alone on ``images``: one float32 (H, W) map in 0..1 per image, at its own size.

    Args:
        backbone: "random", "imagenet", a weights file (see :func:`load_backbone_net`) or a ResNet module.
        images: image files or [3, H, W] tensors (uint8 0..255 or float 0..1).
        arch: the ResNet the weights belong to.
        size: resize each frame (aspect ratio kept) so its longer side is ``size`` before the network,
            as the detectors' 480 px input; None keeps the frame's size. The map is resized back.
        method: "eigencam" (default: no target needed) or "gradcam" (target: L2 norm of the pooled C5).
        mean, std: input normalisation on 0..1 RGB; default the detection recipe's (docs/detection.md).
    """
    if method not in ("eigencam", "gradcam"):
        raise FpsiamError(f"backbone CAM method '{method}': choose eigencam or gradcam")
    net = backbone if isinstance(backbone, nn.Module) else load_backbone_net(backbone, arch)[0]
    net.eval()
    layer = getattr(net, TARGET_LAYER)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    cams = []
    for item in images:
        image = _as_float_image(item)
        x = image if size is None else TF.resize(image, size=None, max_size=size, antialias=True)
        x = ((x - mean_t) / std_t)[None]
        if method == "eigencam":
            with torch.no_grad(), _cam(SignedEigenCAM, net, layer) as cam:
                grayscale = cam(x, targets=[_unused_target])[0]
        else:
            with _cam(GradCAM, net, layer) as cam:
                grayscale = cam(x, targets=[_feature_norm])[0]
        cams.append(_resize_cam(grayscale, tuple(image.shape[-2:])))
    return cams


# ------------------------------------------------------------------------------------------ detectors


def _detector_kind(model: nn.Module) -> str:
    spec = getattr(model, "fpsiam_spec", None)
    if spec is None:
        raise ValueError("not a detector built by fpsiam.detect.models.build_detector")
    return spec.kind


@contextlib.contextmanager
def _score_threshold_at_most(model: nn.Module, threshold: float) -> Iterator[None]:
    """Lower the detector's own test score threshold (0.05) while explaining detections below it."""
    owner = model.roi_heads if _detector_kind(model) == "faster_rcnn" else model
    saved = owner.score_thresh
    owner.score_thresh = min(saved, threshold)
    try:
        yield
    finally:
        owner.score_thresh = saved


def _predictions(output: dict[str, Tensor], threshold: float) -> dict[str, Any]:
    keep = output["scores"] >= threshold
    return {
        "boxes": output["boxes"][keep].detach().cpu().numpy().astype(np.float32).reshape(-1, 4),
        "scores": output["scores"][keep].detach().cpu().numpy().astype(np.float32),
        "labels": output["labels"][keep].detach().cpu().numpy().astype(np.int64),
    }


def _detector_cam(model: nn.Module, image: Tensor, threshold: float, method: str) -> tuple[np.ndarray, dict]:
    layer = getattr(model.backbone.body, TARGET_LAYER)
    crop = _crop_padding(model, image)
    x = image[None]
    shape = tuple(image.shape[-2:])
    if method == "eigencam":
        with torch.no_grad(), _cam(SignedEigenCAM, model, layer, crop) as cam:
            grayscale = cam(x, targets=[_unused_target])[0]
            predictions = _predictions(cam.outputs[0], threshold)
        return _resize_cam(grayscale, shape), {**predictions, "method": method, "note": ""}
    with torch.no_grad():
        predictions = _predictions(model(x)[0], threshold)
    if len(predictions["boxes"]) == 0:
        note = f"no detections with score >= {threshold}: nothing to explain, the CAM is zero"
        return np.zeros(shape, dtype=np.float32), {**predictions, "method": method, "note": note}
    target = FasterRCNNBoxScoreTarget(torch.from_numpy(predictions["labels"]), torch.from_numpy(predictions["boxes"]))
    with _cam(GradCAM, model, layer, crop) as cam:
        grayscale = cam(x, targets=[target])[0]
    model.zero_grad(set_to_none=True)
    return _resize_cam(grayscale, shape), {**predictions, "method": method, "note": ""}


def resolve_mode(mode: str, kind: str) -> str:
    """``auto``: Grad-CAM for Faster R-CNN, EigenCAM for RetinaNet and backbones; else ``mode`` itself."""
    if mode not in MODES:
        raise FpsiamError(f"CAM mode '{mode}': choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "gradcam" if kind == "faster_rcnn" else "eigencam"


def detector_cams(
    model_path: str | os.PathLike | nn.Module,
    images: Sequence[ImageInput],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mode: str = "auto",
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """CAMs of a trained detector on ``images``, with the detections they explain.

    Args:
        model_path: a detector file (``fpsiam detect train``'s best/last.safetensors) or a detector
            built by :func:`fpsiam.detect.models.build_detector`.
        images: image files or [3, H, W] tensors (uint8 or float 0..1).
        score_threshold: the detections to explain (and to return) score at least this.
        mode: "auto" (Faster R-CNN: Grad-CAM; RetinaNet: EigenCAM), "gradcam" or "eigencam".

    Returns one ``(cam, predictions)`` per image: ``cam`` float32 (H, W) in 0..1 at the image's size;
    ``predictions`` = ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,), ``method`` and ``note``
    (why a CAM is zero: Grad-CAM without detections to explain).
    """
    model = model_path if isinstance(model_path, nn.Module) else load_detector(model_path)[0]
    model.eval()
    method = resolve_mode(mode, _detector_kind(model))
    results = []
    with _score_threshold_at_most(model, score_threshold):
        for item in images:
            results.append(_detector_cam(model, _as_float_image(item), score_threshold, method))
    return results


# ------------------------------------------------------------------------------------------ drawing


def overlay(
    image: np.ndarray,
    cam: np.ndarray,
    pred_boxes: Any = None,
    true_boxes: Any = None,
    scores: Any = None,
    note: str = "",
) -> np.ndarray:
    """The CAM as a jet heat map over ``image`` (uint8 H x W x 3), true boxes green, predictions magenta.

    ``scores`` (one per predicted box) are written above the boxes; ``note`` in the top-left corner.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if cam.shape != image.shape[:2]:
        raise ValueError(f"cam shape {cam.shape} differs from the image's {image.shape[:2]}")
    heat = show_cam_on_image(image.astype(np.float32) / 255.0, np.clip(cam, 0, 1).astype(np.float32), use_rgb=True)
    canvas = Image.fromarray(heat)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(image.shape[:2]) / 160))
    for box in np.asarray(true_boxes if true_boxes is not None else [], dtype=np.float32).reshape(-1, 4):
        draw.rectangle([float(v) for v in box], outline=TRUE_COLOUR, width=width)
    preds = np.asarray(pred_boxes if pred_boxes is not None else [], dtype=np.float32).reshape(-1, 4)
    score_list = list(np.asarray(scores).reshape(-1)) if scores is not None else [None] * len(preds)
    for box, score in zip(preds, score_list, strict=True):
        draw.rectangle([float(v) for v in box], outline=PRED_COLOUR, width=width)
        if score is not None:
            draw.text((float(box[0]) + 2, max(0.0, float(box[1]) - 11)), f"{float(score):.2f}", fill=PRED_COLOUR)
    if note:
        draw.text((3, 3), note, fill=(255, 255, 255))
    return np.asarray(canvas)


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as PNG, atomically; returns the path."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="PNG")
    return Path(path)


# ------------------------------------------------------------------------------------------ models and inputs


@dataclasses.dataclass
class _Explainer:
    """An opened MODEL: a detector or a backbone, and how to get CAMs from it."""

    kind: str  # "faster_rcnn", "retinanet" or "backbone"
    module: nn.Module
    method: str
    loaded: str

    def cams(self, image: Tensor, score_threshold: float, size: int | None) -> tuple[np.ndarray, dict | None]:
        if self.kind == "backbone":
            return backbone_cams(self.module, [image], size=size, method=self.method)[0], None
        return detector_cams(self.module, [image], score_threshold, mode=self.method)[0]


def _is_detector_file(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False  # not safetensors: maybe a torch backbone file, loaded as such below


def open_model(model: str | os.PathLike, arch: str = "resnet50", mode: str = "auto") -> _Explainer:
    """MODEL of ``fpsiam gradcam``: a detector file, a backbone weights file, "random" or "imagenet"."""
    name = str(model)
    if name not in ("random", "imagenet"):
        path = Path(model)
        if not path.is_file():
            raise FpsiamError(
                f"{path}: model not found; pass a detector file (best.safetensors), backbone weights, "
                "'random' or 'imagenet'"
            )
        if _is_detector_file(path):
            detector, meta = load_detector(path)
            loaded = f"{meta['kind']} {meta['arch']} ({meta.get('init') or 'backbone init not recorded'})"
            return _Explainer(meta["kind"], detector, resolve_mode(mode, meta["kind"]), loaded)
    method = resolve_mode(mode, "backbone")
    try:
        net, loaded = load_backbone_net(model, arch)
    except FpsiamError as e:
        if name in ("random", "imagenet"):
            raise
        raise FpsiamError(
            f"{model}: not a detector file (no fpsiam detector metadata), nor {arch} backbone weights: {e}"
        ) from None
    return _Explainer("backbone", net, method, loaded)


@dataclasses.dataclass
class _Frame:
    path: Path
    name: str  # output file stem
    true_boxes: np.ndarray | None  # (N, 4) xyxy; None when INPUT has no annotations
    image_id: int | None = None


def _name_frames(frames: list[_Frame]) -> list[_Frame]:
    """Output names: each path relative to the frames' common folder, without suffix, "/" -> "__"."""
    if frames:
        common = Path(os.path.commonpath([str(f.path.resolve().parent) for f in frames]))
        for f in frames:
            f.name = "__".join(f.path.resolve().relative_to(common).with_suffix("").parts)
    return frames


def _annotated(ann: str | os.PathLike, images: str | os.PathLike | None) -> list[_Frame]:
    """Every image of a COCO json with its true boxes (xyxy; degenerate ones dropped), in the json's order."""
    raw = load_coco(ann)
    root = image_root(ann, images, raw)
    coco = normalise_coco(raw, ann)
    boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        if w > 0 and h > 0:
            boxes[a["image_id"]].append([x, y, x + w, y + h])
    return [
        _Frame(
            root / im["file_name"],
            "",
            np.array(boxes[im["id"]], dtype=np.float32).reshape(-1, 4),
            im["id"],
        )
        for im in coco["images"]
    ]


def _image_files(source: Path) -> list[Path]:
    """An image file, or every image under a folder (recursively, sorted)."""
    if source.is_file():
        if source.suffix.lower() not in IMAGE_EXTENSIONS:
            raise FpsiamError(f"{source}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or a COCO .json")
        return [source]
    if not source.is_dir():
        raise FpsiamError(f"{source}: input not found; pass an image, a folder of images or a COCO json")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FpsiamError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def _frames_with_boxes(ann: str | os.PathLike, images: str | os.PathLike | None) -> list[_Frame]:
    frames = [f for f in _annotated(ann, images) if f.true_boxes is not None and len(f.true_boxes)]
    if not frames:
        raise FpsiamError(f"{ann}: no image has a box; the CAM energy needs true boxes")
    return frames


def gather_frames(
    input: str | os.PathLike, ann: str | os.PathLike | None = None, images: str | os.PathLike | None = None
) -> list[_Frame]:
    """The frames of INPUT, with true boxes where annotations are known, named for their output files.

    A COCO json INPUT: its images that have boxes (``images`` = the folder its file names are relative
    to). An image or a folder: its images; with ``ann``, those the json lists get its boxes (matched by
    resolved path, else by a unique file name), the others none.
    """
    source = Path(input)
    if source.suffix.lower() == ".json":
        return _name_frames(_frames_with_boxes(source, images))
    known: dict[Path, _Frame] = {}
    by_name: dict[str, list[_Frame]] = {}
    if ann is not None:
        for frame in _annotated(ann, images):
            known[frame.path.resolve()] = frame
            by_name.setdefault(frame.path.name, []).append(frame)
    frames = []
    for path in _image_files(source):
        match = known.get(path.resolve())
        if match is None and len(by_name.get(path.name, [])) == 1:
            match = by_name[path.name][0]
        if match is None:
            frames.append(_Frame(path, "", None))
        else:
            frames.append(_Frame(path, "", match.true_boxes, match.image_id))
    return _name_frames(frames)


# ------------------------------------------------------------------------------------------ evaluation, command


def _limit(frames: list[_Frame], max_images: int | None) -> list[_Frame]:
    return frames if max_images is None or max_images <= 0 else frames[:max_images]


def evaluate_cams(
    model: str | os.PathLike,
    ann: str | os.PathLike,
    images: str | os.PathLike | None = None,
    arch: str = "resnet50",
    size: int | None = None,
    max_images: int | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mode: str = "auto",
) -> dict[str, Any]:
    """How much CAM mass lands on the true polyps of a COCO set (its frames with boxes; first ``max_images``).

    ``model``: a detector file, backbone weights, "random" or "imagenet" (as ``fpsiam gradcam``). Returns
    :func:`summarise_energy` (``mean_energy_in_box``, ``peak_in_box_rate``, ``mean_box_area_fraction``
    = chance, ``energy_over_chance``, ``n_frames``) plus ``method``, ``model`` and ``per_frame``.
    Frames are taken in the json's order, so several backbones evaluated with one ``max_images`` see the
    same frames. ``size`` applies to backbones (detectors resize their input themselves), ``score_threshold``
    to detectors.
    """
    explainer = open_model(model, arch, mode)
    frames = _limit(_frames_with_boxes(ann, images), max_images)
    per_frame = []
    for frame in frames:
        cam, _ = explainer.cams(_as_float_image(frame.path), score_threshold, size)
        per_frame.append({"image_id": frame.image_id, "file": str(frame.path), **cam_box_energy(cam, frame.true_boxes)})
    return {
        **summarise_energy(per_frame),
        "method": explainer.method,
        "model": str(model),
        "per_frame": per_frame,
    }


def gradcam_command(
    model: str,
    input: str,
    out_dir: Path,
    ann: str | None = None,
    images: str | None = None,
    arch: str = "resnet50",
    max_images: int = 16,
    mode: str = "auto",
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    size: int | None = None,
) -> dict[str, Any]:
    """``fpsiam gradcam MODEL INPUT -o OUT_DIR``: one overlay PNG per frame, and the CAM energy on true boxes.

    MODEL: a detector file (its own detections are explained, drawn magenta with scores) or backbone
    weights / "random" / "imagenet" (backbone CAMs, ``arch``). INPUT: an image, a folder of images
    (recursively) or a COCO json (its frames with boxes). True boxes (COCO INPUT, or ``ann``) are drawn
    green, and the energy statistics go to ``OUT_DIR/cam_energy.json``. ``max_images`` <= 0: all frames.
    Returns a JSON-ready summary.
    """
    out_dir = Path(out_dir)
    explainer = open_model(model, arch, mode)
    frames = _limit(gather_frames(input, ann, images), max_images)
    overlays, records, notes, used = [], [], [], set()
    for frame in frames:
        image = _as_float_image(frame.path)
        cam, predictions = explainer.cams(image, score_threshold, size)
        name = frame.name
        while name in used:  # same stem from different folders/extensions
            name += "_"
        used.add(name)
        note = predictions["note"] if predictions else ""
        drawn = overlay(
            _to_uint8_hwc(image),
            cam,
            pred_boxes=predictions["boxes"] if predictions else None,
            true_boxes=frame.true_boxes,
            scores=predictions["scores"] if predictions else None,
            note=note,
        )
        overlays.append(str(save_png(out_dir / f"{name}.png", drawn)))
        if note:
            notes.append(f"{frame.path}: {note}")
        if frame.true_boxes is not None and len(frame.true_boxes):
            records.append(
                {
                    "image_id": frame.image_id,
                    "file": str(frame.path),
                    "overlay": overlays[-1],
                    **cam_box_energy(cam, frame.true_boxes),
                }
            )
    summary: dict[str, Any] = {
        "model": str(model),
        "model_kind": explainer.kind,
        "loaded": explainer.loaded,
        "method": explainer.method,
        "layer": TARGET_LAYER,
        "input": str(input),
        "out_dir": str(out_dir),
        "images": len(frames),
        "overlays": overlays,
        "notes": notes,
        "energy": None,
        "energy_file": None,
    }
    if explainer.kind != "backbone":
        summary["score_threshold"] = score_threshold
    if records:
        summary["energy"] = summarise_energy(records)
        energy_path = out_dir / ENERGY_FILE
        write_json(energy_path, {**{k: v for k, v in summary.items() if k != "overlays"}, "per_frame": records})
        summary["energy_file"] = str(energy_path)
    return summary


__all__ = [
    "SignedEigenCAM",
    "backbone_cams",
    "box_mask",
    "cam_box_energy",
    "detector_cams",
    "evaluate_cams",
    "gather_frames",
    "gradcam_command",
    "load_backbone_net",
    "open_model",
    "overlay",
    "resolve_mode",
    "save_png",
    "summarise_energy",
]
