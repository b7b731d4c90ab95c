"""Temporal smoothing of per-frame detections in a video: an IoU tracker with k-of-n hysteresis and score EMA.

A per-frame detector flickers: a polyp is found in 9 frames out of 10, a bubble or a fold fires for a single
frame. In a video the next frame is a strong prior, so the detections are tied into *tracks* and a track is
reported by its history rather than by one frame:

- **association**: the detections of a frame (score >= :attr:`TrackConfig.score_threshold`) are matched to
  the live tracks one-to-one by IoU, maximising the total IoU (Hungarian, ``scipy.optimize.linear_sum_assignment``)
  or greedily by descending IoU; a pair below :attr:`TrackConfig.iou` is not a match. An unmatched detection
  starts a new (tentative) track.
- **switch on** (suppresses flicker): a track is reported from the frame in which it has been matched in at
  least ``k`` of its last ``n`` frames, and stays reported from then on while it lives.
- **switch off** (bridges dropouts): an unmatched track keeps its last matched box and is still reported
  (``held``) for up to ``hold`` consecutive missed frames; one more miss ends it. A tentative track ends after
  ``n - k + 1`` consecutive misses, when its past matches can no longer count towards ``k`` of ``n``.
- **scores**: the reported score is an exponential moving average of the track's matched detection scores,
  ``ema = smoothing * ema + (1 - smoothing) * score`` (``smoothing=0``: the last score); a miss leaves it as is.

``k = n = 1, hold = 0`` reports every detection as it comes (with track ids). The cost of ``k`` is latency:
a new polyp is reported ``k - 1`` frames later at best, which the per-polyp ``frames_to_detection`` of
:func:`fpsiam.detect.evaluate.clinical_metrics` measures; :func:`smooth_results` applies the tracker offline to
COCO results so that metric can compare raw and smoothed predictions on a labelled video set.

Everything here is numpy (boxes ``(N, 4)`` xyxy in pixels, scores ``(N,)``); no torch.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fpsiam.errors import FpsiamError

MATCHERS = ("hungarian", "greedy")


@dataclass(frozen=True)
class TrackConfig:
    """Tracker settings (see the module docstring); the defaults suit 25-30 fps colonoscopy."""

    iou: float = 0.3  # minimum IoU between a track's last box and a detection to match them
    # k 2 of n 3, no hold: measured on video (benchmarks/README.md, "Temporal smoothing"), a third fewer false
    # alarms per frame for half a frame of median delay; a hold only lengthened the false tracks there.
    k: int = 2  # switch on: matched in at least k ...
    n: int = 3  # ... of the last n frames
    hold: int = 0  # switch off: still reported through up to `hold` consecutive missed frames
    score_threshold: float | None = None  # detections below are ignored by the tracker (None: all it is given)
    smoothing: float = 0.5  # EMA factor of the reported score (0: the last matched score)
    matcher: str = "hungarian"  # or "greedy"

    def check(self) -> TrackConfig:
        """Return self; FpsiamError naming the setting when one is out of range."""
        checks = [
            (0.0 < self.iou <= 1.0, f"iou={self.iou}: expected 0 < iou <= 1"),
            (1 <= self.k <= self.n, f"k={self.k}, n={self.n}: expected 1 <= k <= n"),
            (self.hold >= 0, f"hold={self.hold}: expected >= 0 frames"),
            (0.0 <= self.smoothing < 1.0, f"smoothing={self.smoothing}: expected 0 <= smoothing < 1"),
            (self.matcher in MATCHERS, f"matcher={self.matcher!r}: expected one of {', '.join(MATCHERS)}"),
            (
                self.score_threshold is None or 0.0 <= self.score_threshold <= 1.0,
                f"score_threshold={self.score_threshold}: expected a score in [0, 1] or None",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise FpsiamError(f"tracking: {message}")
        return self


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # (4,) xyxy of the last match
    score: float  # EMA of the matched scores
    label: int
    hits: collections.deque = field(default_factory=collections.deque)  # last n frames: matched or not
    misses: int = 0  # consecutive missed frames
    confirmed: bool = False  # reached k of n once: reported until it ends


@dataclass
class TrackedFrame:
    """What a frame reports after tracking: ``M`` boxes, each with its track id; ``held`` marks carried boxes."""

    boxes: np.ndarray  # (M, 4) float64 xyxy
    scores: np.ndarray  # (M,) float64, the tracks' EMA scores
    labels: np.ndarray  # (M,) int64
    track_ids: np.ndarray  # (M,) int64
    held: np.ndarray  # (M,) bool: the track was not matched in this frame; its last box is carried


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between (N, 4) and (M, 4) xyxy boxes -> (N, M); 0 where a union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_boxes(iou: np.ndarray, min_iou: float, matcher: str = "hungarian") -> list[tuple[int, int]]:
    """One-to-one (row, col) pairs of an IoU matrix with IoU >= ``min_iou``, maximising the total (Hungarian)
    or taking the highest remaining IoU first (greedy)."""
    if iou.size == 0:
        return []
    if matcher == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(iou, maximize=True)
        return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
    pairs = []
    work = iou.astype(np.float64, copy=True)
    while True:
        r, c = np.unravel_index(int(np.argmax(work)), work.shape)
        if work[r, c] < min_iou or work[r, c] < 0:
            return pairs
        pairs.append((int(r), int(c)))
        work[r, :] = -1.0
        work[:, c] = -1.0


class Tracker:
    """Feed it the detections of consecutive frames (:meth:`update`); it returns what each frame reports."""

    def __init__(self, config: TrackConfig | None = None) -> None:
        self.config = (config or TrackConfig()).check()
        self.tracks: list[_Track] = []
        self._next_id = 1

    def reset(self) -> None:
        """Forget every track (a new video); track ids keep counting up."""
        self.tracks = []

    def update(self, boxes: Any, scores: Any, labels: Any | None = None) -> TrackedFrame:
        """Advance one frame with its detections (``boxes`` (N, 4) xyxy, ``scores`` (N,), optional ``labels``)."""
        cfg = self.config
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        labels = np.ones(len(scores), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels in one frame")
        if cfg.score_threshold is not None:
            keep = scores >= cfg.score_threshold
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        ious = box_iou(np.stack([t.box for t in self.tracks]) if self.tracks else np.zeros((0, 4)), boxes)
        ious[np.array([t.label for t in self.tracks])[:, None] != labels[None, :]] = 0.0  # never across classes
        pairs = match_boxes(ious, cfg.iou, cfg.matcher)
        matched_tracks = {r: c for r, c in pairs}
        for r, track in enumerate(self.tracks):
            c = matched_tracks.get(r)
            if c is None:
                track.misses += 1
                track.hits.append(False)
            else:
                track.box, track.label, track.misses = boxes[c], int(labels[c]), 0
                track.score = cfg.smoothing * track.score + (1.0 - cfg.smoothing) * float(scores[c])
                track.hits.append(True)
            while len(track.hits) > cfg.n:
                track.hits.popleft()
        taken = set(matched_tracks.values())
        for c in range(len(boxes)):
            if c not in taken:
                track = _Track(self._next_id, boxes[c], float(scores[c]), int(labels[c]), collections.deque([True]))
                self._next_id += 1
                self.tracks.append(track)
        self.tracks = [t for t in self.tracks if self._alive(t)]
        for t in self.tracks:
            t.confirmed = t.confirmed or sum(t.hits) >= cfg.k
        return self._report()

    def _alive(self, t: _Track) -> bool:
        # confirmed: held through `hold` misses; tentative: after n - k + 1 misses in a row its past matches
        # can no longer be among k of the last n, so it is no different from a new track
        return t.misses <= (self.config.hold if t.confirmed else self.config.n - self.config.k)

    def _report(self) -> TrackedFrame:
        shown = [t for t in self.tracks if t.confirmed]
        return TrackedFrame(
            boxes=np.stack([t.box for t in shown]) if shown else np.zeros((0, 4)),
            scores=np.array([t.score for t in shown], np.float64),
            labels=np.array([t.label for t in shown], np.int64),
            track_ids=np.array([t.track_id for t in shown], np.int64),
            held=np.array([t.misses > 0 for t in shown], bool),
        )


def track_sequence(frames: Iterable[tuple[Any, Any]], config: TrackConfig | None = None) -> list[TrackedFrame]:
    """Run a fresh :class:`Tracker` over ``(boxes, scores)`` per frame, in order; one result per frame."""
    tracker = Tracker(config)
    return [tracker.update(boxes, scores) for boxes, scores in frames]


def smooth_results(
    images: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], config: TrackConfig | None = None
) -> list[dict[str, Any]]:
    """Apply the tracker offline to COCO ``results`` (``bbox`` xywh), video by video.

    ``images`` are COCO image records (``id``, ``video_id``, ``frame_index``): the frames of each ``video_id``
    are tracked in ``frame_index`` order (k, n and hold count the frames listed, so a set sampled every 5th
    frame is smoothed over its samples). Images without a ``video_id`` are stills: their results pass through
    unchanged. Returns new COCO results (the reported boxes, EMA scores, plus ``track_id`` and ``held``), ready
    for :func:`fpsiam.detect.evaluate.clinical_metrics`, whose per-polyp metrics then show the effect.
    """
    config = (config or TrackConfig()).check()
    by_image: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    videos: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
    out: list[dict[str, Any]] = []
    for n, img in enumerate(images):
        if img.get("video_id") is None:
            out += [dict(r) for r in by_image.get(img["id"], [])]
            continue
        if not isinstance(img.get("frame_index"), int) or isinstance(img.get("frame_index"), bool):
            raise FpsiamError(f"images[{n}] (id {img.get('id')!r}): a video frame needs an integer frame_index")
        videos[img["video_id"]].append(img)
    for video_id in sorted(videos, key=str):
        tracker = Tracker(config)
        for img in sorted(videos[video_id], key=lambda im: im["frame_index"]):
            dets = by_image.get(img["id"], [])
            xywh = np.array([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            labels = [int(d.get("category_id", 1)) for d in dets]
            frame = tracker.update(boxes, [float(d["score"]) for d in dets], labels)
            out += frame_to_coco(frame, img["id"])
    return out


def frame_to_coco(frame: TrackedFrame, image_id: Any) -> list[dict[str, Any]]:
    """A tracked frame as COCO results (``bbox`` xywh) with ``track_id`` and ``held``."""
    return [
        {
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(score),
            "track_id": int(tid),
            "held": bool(held),
        }
        for (x0, y0, x1, y1), score, label, tid, held in zip(
            frame.boxes, frame.scores, frame.labels, frame.track_ids, frame.held, strict=True
        )
    ]


def config_dict(config: TrackConfig) -> dict[str, Any]:
    """The settings as a JSON-ready dict (for summaries)."""
    return dataclasses.asdict(config)


__all__ = [
    "TrackConfig",
    "TrackedFrame",
    "Tracker",
    "box_iou",
    "config_dict",
    "frame_to_coco",
    "match_boxes",
    "smooth_results",
    "track_sequence",
]
