"""Do the ONNX and TorchScript exports of a trained detector give PyTorch's boxes on every image of a test set, and
how fast is each?

The model is exported to both formats (``fpsiam export``), then PyTorch eager, ONNX Runtime and TorchScript run on
every image of ANN, one image at a time (:func:`fpsiam.detect.export.compare_backends`). Per backend: images whose
detection count above the threshold differs, boxes without a partner (IoU >= 0.99 and |score diff| <= 1e-3), the
smallest matched IoU, the largest score difference, boxes within 1e-3 of the threshold, and seconds per image.

    .venv/bin/python benchmarks/export_check.py MODEL.safetensors data/kvasir/test.json [--threads 2] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from fpsiam.data.cocojson import load_coco, locate_image
from fpsiam.detect.export import compare_backends, export_model
from fpsiam.experiment import machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="detector file of fpsiam detect train")
    parser.add_argument("ann", help="COCO json of the images to run (e.g. the test split)")
    parser.add_argument("--images", default=None, help="images root (default: the json's)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-o", "--output", default=None, help="also write the report as json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_coco(args.ann)
    paths = [str(locate_image(args.ann, args.images, im["file_name"], data)[0]) for im in data["images"]]
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_model(args.model, "onnx", Path(tmp) / "model.onnx")
        ts = export_model(args.model, "torchscript", Path(tmp) / "model.torchscript.pt")
        report = compare_backends(args.model, paths, onnx, ts, args.threshold)
    report["machine"] = machine_description()
    report["command"] = " ".join(sys.argv)
    eager = report["backends"]["torch"]["seconds_per_image"]
    print(f"{report['machine']}; {report['images']} images of {args.ann}, threshold {args.threshold}")
    print(
        "| backend | s/image | speed vs eager | detections | count-mismatch images | unmatched | boundary "
        "| tie swaps | min IoU | max score diff | ok |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in report["backends"].items():
        if name == "torch":
            print(f"| PyTorch eager | {eager:.4f} | 1.00 | {r['detections']} | — | — | — | — | — | — | — |")
            continue
        print(
            f"| {name} | {r['seconds_per_image']:.4f} | {eager / r['seconds_per_image']:.2f}x | {r['detections']} "
            f"| {r['count_mismatch_images']} | {r['unmatched']} | {r['boundary']} | {r['tie_swaps']} "
            f"| {r['min_iou']:.4f} "
            f"| {r['max_score_diff']:.2e} | {r['ok']} |"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
