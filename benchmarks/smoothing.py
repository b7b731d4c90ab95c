"""What does temporal smoothing (``fpsiam predict --smooth``) do to false alarms and to how fast polyps are found?

A detector's raw predictions on a labeled *video* json (frames with ``video_id`` / ``frame_index``, boxes with
``track_id``: the synthetic videos, LDPolypVideo, SUN, CVC sequences) are compared with the same predictions
smoothed by the IoU tracker with k-of-n hysteresis and dropout hold (``fpsiam.detect.track``), for a grid of
settings, all at the same score threshold. Reported with the per-frame and per-polyp metrics of ``detect eval``:
false positives per frame, per-frame recall and precision, the fraction of polyps detected, and the median number of
frames from a polyp's first appearance to its first detection. The default is chosen from these numbers: fewer
false alarms for at most a small delay.

    .venv/bin/python benchmarks/smoothing.py MODEL ANN.json [--images DIR] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from torch.utils.data import DataLoader

from fpsiam.data.coco import CocoDetection, collate_fn, detection_transforms
from fpsiam.detect.engine import predict
from fpsiam.detect.evaluate import clinical_metrics
from fpsiam.detect.models import load_detector
from fpsiam.detect.track import TrackConfig, smooth_results
from fpsiam.experiment import machine_description

SETTINGS = {
    "raw": None,
    "k1/n1, hold 0 (tracking only)": TrackConfig(k=1, n=1, hold=0),
    "k2/n2, hold 0": TrackConfig(k=2, n=2, hold=0),
    "k2/n3, hold 0": TrackConfig(k=2, n=3, hold=0),
    "k3/n3, hold 0": TrackConfig(k=3, n=3, hold=0),
    "k3/n5, hold 0": TrackConfig(k=3, n=5, hold=0),
    "k2/n3, hold 1": TrackConfig(k=2, n=3, hold=1),
    "k2/n3, hold 3": TrackConfig(k=2, n=3, hold=3),
    "k3/n5, hold 5 (default)": TrackConfig(k=3, n=5, hold=5),
    "k4/n6, hold 8": TrackConfig(k=4, n=6, hold=8),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("ann", help="labeled video json (video_id, frame_index, track_id)")
    ap.add_argument("--images")
    ap.add_argument("--threshold", type=float, default=0.5, help="score threshold for every setting")
    ap.add_argument("-o", "--output", help="also write the rows as json")
    args = ap.parse_args()
    model, _ = load_detector(args.model)
    data = CocoDetection(args.ann, args.images, detection_transforms(False), keep_negatives=True)
    raw, _speed = predict(model, DataLoader(data, batch_size=4, collate_fn=collate_fn), next(model.parameters()).device)
    rows = []
    for name, config in SETTINGS.items():
        config = dataclasses.replace(config, score_threshold=args.threshold) if config else None
        preds = smooth_results(data.coco["images"], raw, config) if config else raw
        m = clinical_metrics(data.coco, preds, fixed_threshold=args.threshold)["at_fixed"]
        polyps = m.get("per_polyp") or {}
        rows.append({"setting": name, "fp_per_frame": m["fp_per_frame"], "recall": m["recall"],
                     "precision": m["precision"], "detected": polyps.get("detected_fraction"),
                     "median_delay": polyps.get("median_frames_to_detection")})  # fmt: skip
    print(f"{machine_description()}; {time.strftime('%Y-%m-%d')}; {args.ann}, threshold {args.threshold}")
    print("| setting | FP / frame | recall (frames) | precision | polyps detected | median frames to detection |")
    print("|---|---:|---:|---:|---:|---:|")
    fmt = lambda v, pct=True: "—" if v is None else (f"{100 * v:.1f} %" if pct else f"{v:g}")  # noqa: E731
    for r in rows:
        print(f"| {r['setting']} | {r['fp_per_frame']:.3f} | {fmt(r['recall'])} | {fmt(r['precision'])} | "
              f"{fmt(r['detected'])} | {fmt(r['median_delay'], pct=False)} |")  # fmt: skip
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
