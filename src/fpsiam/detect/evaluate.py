"""Detection metrics: COCO bbox AP through pycocotools, and clinical per-frame / per-polyp metrics.

Ground truth is a COCO dict in the project's conventions (:mod:`fpsiam.data.cocojson`); predictions are
COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``. One class (polyp), so the
clinical metrics ignore ``category_id``; COCO AP uses the categories of the ground truth.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fpsiam.data.cocojson import CATEGORIES
from fpsiam.errors import FpsiamError
from fpsiam.fileio import write_json

log = logging.getLogger(__name__)

# COCOeval.stats, in its order.
COCO_STATS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# ------------------------------------------------------------------------------------------ validation


def _check_gt(gt: dict[str, Any], source: str) -> dict[Any, dict]:
    """Images by id; FpsiamError for an empty or malformed ground truth."""
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations")):
        raise FpsiamError(f"{source}: ground truth must be a COCO dict with 'images' and 'annotations' lists")
    if not gt["images"]:
        raise FpsiamError(f"{source}: empty test set (no images); evaluate on a COCO json with images")
    images = {}
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise FpsiamError(f"{source}: images[{i}] has no 'id'")
        images[img["id"]] = img
    for j, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise FpsiamError(f"{source}: annotations[{j}] refers to an image id that is not in 'images'")
        if not _is_box(ann.get("bbox")):
            raise FpsiamError(f"{source}: annotations[{j}] has no valid 'bbox' [x, y, w, h]")
    return images


def _is_box(b: Any) -> bool:
    return (
        isinstance(b, (list, tuple))
        and len(b) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
    )


def _check_predictions(predictions: Any, images: dict[Any, dict], source: str) -> None:
    if not isinstance(predictions, list):
        raise FpsiamError(f"{source}: predictions must be a list of COCO results")
    for i, p in enumerate(predictions):
        if not isinstance(p, dict):
            raise FpsiamError(f"{source}: prediction {i} is not an object")
        if p.get("image_id") not in images:
            raise FpsiamError(
                f"{source}: prediction {i} refers to image id {p.get('image_id')!r}, which is not in the ground "
                "truth; evaluate predictions against the annotation file they were made for"
            )
        if not _is_box(p.get("bbox")):
            raise FpsiamError(f"{source}: prediction {i} has no valid 'bbox' [x, y, w, h]")
        s = p.get("score")
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            raise FpsiamError(f"{source}: prediction {i} has no finite 'score'")


# ---------------------------------------------------------------------------------------------- COCO


def _coco_gt(gt: dict[str, Any]) -> Any:
    """A pycocotools COCO object from a dict (copied; ``area``/``iscrowd``/``id`` filled where missing)."""
    from pycocotools.coco import COCO

    data = {
        "info": gt.get("info", {}),
        "images": [dict(img) for img in gt["images"]],
        "categories": copy.deepcopy(gt.get("categories") or CATEGORIES),
        "annotations": [],
    }
    for k, ann in enumerate(gt["annotations"]):
        a = dict(ann)
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("category_id", 1)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
        data["annotations"].append(a)
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def coco_metrics(
    gt: dict[str, Any], predictions: list[dict[str, Any]], verbose: bool = False, source: str = "ground truth"
) -> dict[str, float]:
    """COCO bbox metrics (pycocotools ``COCOeval``): the 12 ``stats`` under the names in ``COCO_STATS``.

    Values are COCOeval's: fractions in [0, 1], -1 where undefined (e.g. APs without small boxes).
    An empty prediction list is evaluated as such (AP 0 where GT exists). pycocotools' prints go to
    stdout when ``verbose``, otherwise to this module's logger at DEBUG level.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = _check_gt(gt, source)
    _check_predictions(predictions, images, source)
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if not verbose else contextlib.nullcontext():
        coco_gt = _coco_gt(gt)
        if predictions:
            coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": coco_gt.dataset["categories"],
                               "annotations": []}  # fmt: skip
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if not verbose:
        log.debug("pycocotools output:\n%s", out.getvalue())
    return {name: float(v) for name, v in zip(COCO_STATS, ev.stats, strict=True)}


def predictions_to_coco(outputs: Iterable[dict[str, Any]], image_ids: Sequence[Any]) -> list[dict[str, Any]]:
    """torchvision detector outputs (``boxes`` xyxy, ``scores``, ``labels``) -> COCO results (``bbox`` xywh).

    Label 0 (background; RetinaNet's unused sigmoid channel with ``num_classes=2``) is dropped.
    """
    results = []
    outputs = list(outputs)
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().cpu().tolist()
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels, strict=True):
            if int(label) == 0:
                continue
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def write_results(path: str | os.PathLike, results: list[dict[str, Any]]) -> None:
    """Write COCO results as a JSON list, atomically."""
    write_json(path, results, indent=None)


# ------------------------------------------------------------------------------------------ clinical


@dataclass
class _Matched:
    """Every prediction after greedy matching, sorted by score (descending)."""

    scores: np.ndarray  # (P,)
    tp: np.ndarray  # (P,) bool
    gt_index: np.ndarray  # (P,) index into gt["annotations"] of the matched box, -1 for a FP


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between (N, 4) and (M, 4) xywh boxes (continuous coordinates, COCO's convention) -> (N, M)."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w = np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0, None], b[None, :, 0])
    h = np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1, None], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(gt_anns: list[dict], predictions: list[dict], iou: float) -> _Matched:
    """Per frame, predictions in descending score order each take the unmatched GT box of highest IoU >= ``iou``.

    Matching all predictions once is the same as matching at every threshold: a prediction's match only
    depends on the higher-scored predictions of its frame, which any threshold keeping it also keeps.
    """
    gt_by_image: dict[Any, list[int]] = defaultdict(list)
    for j, ann in enumerate(gt_anns):
        gt_by_image[ann["image_id"]].append(j)
    order = sorted(range(len(predictions)), key=lambda i: -float(predictions[i]["score"]))  # stable for ties
    rank_by_image: dict[Any, list[int]] = defaultdict(list)
    for rank, i in enumerate(order):
        rank_by_image[predictions[i]["image_id"]].append(rank)
    gt_index = np.full(len(order), -1, dtype=np.int64)
    for image_id, ranks in rank_by_image.items():
        gts = gt_by_image.get(image_id)
        if not gts:
            continue  # a negative frame: every prediction is a FP
        boxes = np.array([predictions[order[r]]["bbox"] for r in ranks], dtype=np.float64)
        ious = _iou_matrix(boxes, np.array([gt_anns[j]["bbox"] for j in gts], dtype=np.float64))
        taken = 0
        for row, row_ious in enumerate(ious):  # rows in descending score order; a row sees earlier takes
            best = int(np.argmax(row_ious))
            if row_ious[best] >= iou:
                gt_index[ranks[row]] = gts[best]
                ious[:, best] = -1.0
                taken += 1
                if taken == len(gts):
                    break  # every box of the frame is taken: the rest are FPs
    scores = np.array([float(predictions[i]["score"]) for i in order], dtype=np.float64)
    return _Matched(scores=scores, tp=gt_index >= 0, gt_index=gt_index)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _counts_at(m: _Matched, threshold: float, n_gt: int, n_frames: int) -> dict[str, Any]:
    keep = m.scores >= threshold
    tp = int(m.tp[keep].sum())
    fp = int(keep.sum()) - tp
    fn = n_gt - tp
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, n_gt),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "fp_per_frame": fp / n_frames,
    }


def _polyp_tracks(images: dict[Any, dict], gt_anns: list[dict]) -> tuple[dict | None, str]:
    """Per polyp (video_id, track_id): its annotation indices and its video's ordered frame indices."""
    for img in images.values():
        if img.get("video_id") is None or img.get("frame_index") is None:
            return None, "per-polyp metrics need video_id and frame_index on every image"
    if not gt_anns:
        return None, "no ground-truth boxes"
    if any(ann.get("track_id") is None for ann in gt_anns):
        return None, "per-polyp metrics need track_id on every annotation"
    video_frames: dict[Any, list] = defaultdict(list)
    for img in images.values():
        video_frames[img["video_id"]].append(img["frame_index"])
    positions = {v: {f: k for k, f in enumerate(sorted(set(fs)))} for v, fs in video_frames.items()}
    polyps: dict[tuple, list[int]] = defaultdict(list)
    for j, ann in enumerate(gt_anns):
        polyps[(images[ann["image_id"]]["video_id"], ann["track_id"])].append(j)
    return {"polyps": polyps, "positions": positions}, ""


def _per_polyp(
    tracks: dict, m: _Matched, threshold: float, images: dict[Any, dict], gt_anns: list[dict]
) -> dict[str, Any]:
    detected_anns = set(m.gt_index[(m.scores >= threshold) & m.tp].tolist())
    records = []
    for (video, track), ann_ids in sorted(tracks["polyps"].items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        frames = sorted(images[gt_anns[j]["image_id"]]["frame_index"] for j in ann_ids)
        hits = sorted(images[gt_anns[j]["image_id"]]["frame_index"] for j in ann_ids if j in detected_anns)
        pos = tracks["positions"][video]
        delay = pos[hits[0]] - pos[frames[0]] if hits else None
        records.append(
            {
                "video_id": video,
                "track_id": track,
                "frames": len(frames),
                "detected_frames": len(hits),
                "first_frame": frames[0],
                "first_detection": hits[0] if hits else None,
                "frames_to_detection": delay,
            }
        )
    delays = [r["frames_to_detection"] for r in records if r["frames_to_detection"] is not None]
    return {
        "polyps": len(records),
        "detected": len(delays),
        "detected_fraction": len(delays) / len(records),
        "median_frames_to_detection": float(statistics.median(delays)) if delays else None,
        "per_polyp": records,
    }


def _decimate(n: int, max_points: int | None) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def clinical_metrics(
    gt: dict[str, Any],
    predictions: list[dict[str, Any]],
    iou: float = 0.5,
    fixed_threshold: float = 0.5,
    curve_points: int | None = 1000,
    source: str = "ground truth",
) -> dict[str, Any]:
    """Per-frame detection counts at a score threshold, the F1-best threshold, a PR curve, per-polyp delays.

    Definitions (single class; ``category_id`` ignored; every annotation is a polyp box):

    - **Frames** are all images of ``gt``, including negative frames (no box).
    - **Matching** at IoU ``iou``: within each frame, predictions in descending score order each take the
      still-unmatched GT box with the highest IoU, if that IoU >= ``iou`` (a TP); otherwise it is a FP.
      At a threshold ``t`` only predictions with score >= ``t`` count. FN = GT boxes not matched.
    - **precision** = TP / (TP + FP) (None without predictions), **recall** = TP / #GT boxes (None without
      GT boxes), **F1** = 2TP / (2TP + FP + FN) (= harmonic mean; None when all three are 0),
      **fp_per_frame** = FP / #frames.
    - **at_best_f1**: the threshold among all distinct prediction scores with the highest F1 (ties: the
      highest threshold); None without predictions. **at_fixed**: at ``fixed_threshold``.
    - **pr_curve**: precision, recall and F1 at every distinct score (descending), decimated evenly to at
      most ``curve_points`` points (None = all).
    - **Per polyp** (only when every image has ``video_id`` and ``frame_index`` and every annotation a
      ``track_id``; else ``per_polyp`` is None and ``per_polyp_note`` says why): a polyp is a
      (video_id, track_id) pair. It is *detected* at a threshold if at least one of its boxes is a TP.
      ``frames_to_detection`` = the number of the video's evaluated frames (ordered by frame_index) from
      the polyp's first annotated frame (inclusive) to its first detected frame (exclusive): 0 when it is
      detected in the frame where it first appears. ``median_frames_to_detection`` is the median over
      detected polyps (None if none); ``detected_fraction`` = detected polyps / polyps.
    """
    images = _check_gt(gt, source)
    _check_predictions(predictions, images, source)
    gt_anns = [a for a in gt["annotations"] if not a.get("iscrowd", 0)]
    n_frames, n_gt = len(images), len(gt_anns)
    m = _match(gt_anns, predictions, iou)
    tracks, note = _polyp_tracks(images, gt_anns)

    def block(t: float) -> dict[str, Any]:
        b = _counts_at(m, t, n_gt, n_frames)
        b["per_polyp"] = _per_polyp(tracks, m, t, images, gt_anns) if tracks is not None else None
        return b

    # PR curve: cumulative counts at the last prediction of each distinct score.
    cum_tp = np.cumsum(m.tp)
    cum_fp = np.cumsum(~m.tp)
    last = np.flatnonzero(np.r_[m.scores[1:] != m.scores[:-1], True]) if len(m.scores) else np.array([], int)
    tp, fp = cum_tp[last], cum_fp[last]
    f1 = 2 * tp / np.maximum(2 * tp + fp + (n_gt - tp), 1)
    best = block(float(m.scores[last[int(np.argmax(f1))]])) if len(last) else None
    keep = _decimate(len(last), curve_points)
    curve = {
        "thresholds": m.scores[last][keep].tolist(),
        "precision": (tp / np.maximum(tp + fp, 1))[keep].tolist(),
        "recall": (tp / n_gt)[keep].tolist() if n_gt else [None] * len(keep),
        "f1": f1[keep].tolist(),
    }
    negative = len(images) - len({a["image_id"] for a in gt_anns})
    return {
        "iou": iou,
        "frames": n_frames,
        "negative_frames": negative,
        "gt_boxes": n_gt,
        "predictions": len(predictions),
        "at_best_f1": best,
        "at_fixed": block(fixed_threshold),
        "pr_curve": curve,
        "per_polyp_note": note,
    }


__all__ = ["COCO_STATS", "clinical_metrics", "coco_metrics", "predictions_to_coco", "write_results"]
