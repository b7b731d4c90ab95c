"""Polyp detection dataset over a COCO json, in the form torchvision's detectors take.

``CocoDetection(ann)[i]`` is ``(image, target)``: ``image`` a :class:`tv_tensors.Image` float32
[3, H, W] in 0..1, ``target`` a dict with ``boxes`` (:class:`tv_tensors.BoundingBoxes`, XYXY, float32),
``labels`` (int64, all 1 = polyp; 0 is background in torchvision), ``image_id`` (int), ``area`` and
``iscrowd``. Because the boxes are ``tv_tensors``, every :mod:`torchvision.transforms.v2` transform
(resize, flip, crop) moves them with the image.

Resizing to the paper's 480 px and normalising with the dataset statistics (docs/detection.md) are *not* done
here: torchvision's detectors do both in their ``GeneralizedRCNNTransform`` (``min_size=max_size=480``,
``image_mean``/``image_std``), so the dataset hands over 0..1 images at their own size.
:func:`resize_transform` is there for CPU-sized runs that want smaller images earlier.

As in the paper's recipe (and torchvision's reference scripts), images without boxes are dropped by
default; pass ``keep_negatives=True`` to keep them (evaluation on a test split should, since
negative frames are where false positives show).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from fpsiam.data.cocojson import CATEGORIES, image_root, load_coco
from fpsiam.data.images import decode_rgb
from fpsiam.errors import FpsiamError

POLYP_LABEL = 1


def normalise_coco(data: dict[str, Any], source: str | os.PathLike = "<dict>") -> dict[str, Any]:
    """A checked copy of a COCO dict with the fields evaluation needs filled in.

    Checks: every image has a unique integer ``id`` and a ``file_name``; every annotation has a
    4-number ``bbox`` and an ``image_id`` that names an image. Fills in missing annotation ``id``
    (sequential), ``area`` (w * h), ``iscrowd`` (0), ``category_id`` (1) and the ``categories`` list.
    Errors name ``source`` (the json file) and the offending id.
    """
    if not (
        isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)
    ):
        raise FpsiamError(f"{source}: a COCO json is an object with 'images' and 'annotations' lists")
    data = {  # copies of the records, so that filling in defaults leaves the caller's dict alone
        **data,
        "images": [dict(im) if isinstance(im, dict) else im for im in data["images"]],
        "annotations": [dict(a) if isinstance(a, dict) else a for a in data["annotations"]],
    }
    ids: set[int] = set()
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or "file_name" not in image:
            raise FpsiamError(f"{source}: images[{k}] needs an integer 'id' and a 'file_name'")
        if image["id"] in ids:
            raise FpsiamError(f"{source}: image id {image['id']} appears twice; image ids must be unique")
        ids.add(image["id"])
    given = [a["id"] for a in data["annotations"] if isinstance(a, dict) and isinstance(a.get("id"), int)]
    next_id = max(given, default=0) + 1
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise FpsiamError(f"{source}: annotations[{k}] is not an object")
        name = f"annotation {ann['id']}" if "id" in ann else f"annotations[{k}]"
        if ann.get("image_id") not in ids:
            raise FpsiamError(
                f"{source}: {name} refers to image_id {ann.get('image_id')!r}, which is not in 'images'; "
                "fix the json or regenerate it with `fpsiam data convert`"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(c, (int, float)) for c in bbox)):
            raise FpsiamError(f"{source}: {name} needs 'bbox': [x, y, w, h] (4 numbers), got {bbox!r}")
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1
        ann.setdefault("area", float(bbox[2] * bbox[3]))
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", POLYP_LABEL)
    if not data.get("categories"):
        data["categories"] = list(CATEGORIES)
    return data


def coco_api(ann: str | os.PathLike | dict[str, Any]):
    """A pycocotools ``COCO`` index over a json file or an already-loaded dict (no second file read).

    Use it as the ground truth of ``COCOeval``; the dict is normalised first (see :func:`normalise_coco`).
    """
    from pycocotools.coco import COCO

    data = normalise_coco(load_coco(ann), ann) if not isinstance(ann, dict) else normalise_coco(ann)
    api = COCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        api.createIndex()
    return api


class CocoDetection(torch.utils.data.Dataset):
    """Images and polyp boxes of a COCO json (fpsiam.data.cocojson conventions).

    Args:
        ann: the COCO json.
        images: folder the ``file_name`` entries are relative to (default: the json's images root).
        transforms: a ``transforms.v2`` callable ``(image, target) -> (image, target)``, e.g.
            :func:`detection_transforms`. It receives the uint8 image (cheaper to flip/resize); the
            result is converted to float 0..1 if the transforms did not do it already.
        keep_negatives: keep images without boxes (their ``boxes`` are ``[0, 4]``).
    """

    def __init__(
        self,
        ann: str | os.PathLike,
        images: str | os.PathLike | None = None,
        transforms=None,
        keep_negatives: bool = False,
    ) -> None:
        self.ann_path = Path(ann)
        self.transforms = transforms
        raw = load_coco(self.ann_path)
        self.root = image_root(ann, images, raw)
        self.coco = normalise_coco(raw, self.ann_path)  # all images, for evaluation
        self._boxes: dict[int, list[dict]] = {im["id"]: [] for im in self.coco["images"]}
        for a in self.coco["annotations"]:
            if a["bbox"][2] > 0 and a["bbox"][3] > 0:  # degenerate boxes are `fpsiam data check`'s finding
                self._boxes[a["image_id"]].append(a)
        self.images = [im for im in self.coco["images"] if keep_negatives or self._boxes[im["id"]]]
        if not self.images:
            if not self.coco["images"]:
                raise FpsiamError(f"{self.ann_path}: no images in the json; nothing to load")
            raise FpsiamError(
                f"{self.ann_path}: none of its {len(self.coco['images'])} images has a box; "
                "pass keep_negatives=True to use frames without polyps"
            )

    @property
    def image_ids(self) -> list[int]:
        """COCO ids of the images this dataset yields, in order (a subset of ``self.coco`` without negatives)."""
        return [im["id"] for im in self.images]

    def coco_api(self):
        """pycocotools ``COCO`` over this json's (normalised) content, built without re-reading the file."""
        return coco_api(self.coco)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        record = self.images[index]
        path = self.root / record["file_name"]
        pixels = decode_rgb(path)
        height, width = pixels.shape[-2:]
        anns = self._boxes[record["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        # boxes overhanging the image are clipped to it; any left without area are dropped
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        image = tv_tensors.Image(pixels)
        target = {
            "boxes": tv_tensors.BoundingBoxes(xyxy[keep], format="XYXY", canvas_size=(height, width)),
            "labels": torch.full((int(keep.sum()),), POLYP_LABEL, dtype=torch.int64),
            "image_id": int(record["id"]),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32).reshape(-1)[keep],
            "iscrowd": torch.tensor([int(a["iscrowd"]) for a in anns], dtype=torch.int64).reshape(-1)[keep],
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if not image.is_floating_point():
            image = v2.functional.to_dtype(image, torch.float32, scale=True)
        return image, target


def _labels_and_extras(inputs: Any) -> tuple[torch.Tensor, ...]:
    """What SanitizeBoundingBoxes filters along with the boxes: labels, area and iscrowd."""
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return tuple(target[k] for k in ("labels", "area", "iscrowd") if k in target)


def sanitize() -> v2.SanitizeBoundingBoxes:
    """Drop boxes that transforms made degenerate (< 1 px), with their labels, area and iscrowd."""
    return v2.SanitizeBoundingBoxes(labels_getter=_labels_and_extras)


def detection_transforms(train: bool, hflip: float = 0.5) -> v2.Compose:
    """The paper's detection augmentation (docs/detection.md): horizontal flip 0.5 when training, else nothing.

    Both end in ``ToDtype(float32, scale=True)`` (0..1). The resize to 480 px and the normalisation
    (mean 168.81/104.04/73.95, std 68.595/52.785/41.82 on 0-255) happen inside the torchvision
    detector's ``GeneralizedRCNNTransform``, not here.
    """
    steps: list = [v2.RandomHorizontalFlip(hflip)] if train and hflip > 0 else []
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def resize_transform(max_size: int) -> v2.Compose:
    """Resize so the longer side is ``max_size`` (aspect ratio kept), boxes scaled along, degenerate dropped.

    For CPU-sized runs; compose it before :func:`detection_transforms`, e.g.
    ``v2.Compose([resize_transform(256), detection_transforms(train=True)])``.
    """
    if max_size < 1:
        raise FpsiamError(f"resize: max_size must be >= 1, got {max_size}")
    return v2.Compose([v2.Resize(size=None, max_size=max_size, antialias=True), sanitize()])


def collate_fn(batch: list[tuple[Any, dict]]) -> tuple[list, list[dict]]:
    """Batch as the detectors want it: a list of images (sizes may differ) and a list of targets."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
