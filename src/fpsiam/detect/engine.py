"""Detection's schedule and inference over a dataset (torchvision references/detection/engine.py, reshaped).

``images + boxes -> detector -> predictions``: :func:`step_lr` is the paper's warm-up and step schedule (the
steps themselves run on the one training engine, :mod:`fpsiam.train.loop`); :func:`predict` runs the detector
over a dataset and returns COCO results (the input of :mod:`fpsiam.detect.evaluate`), timing the model alone and
the whole predict path; :func:`evaluate_file` is ``fpsiam detect eval``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpsiam.detect.evaluate import clinical_metrics, coco_metrics, predictions_to_coco, write_results
from fpsiam.errors import FpsiamError
from fpsiam.fileio import write_json


def step_lr(base_lr: float, epoch: int, iteration: int, steps: list[int], gamma: float, warmup_iters: int,
            warmup_ratio: float) -> float:  # fmt: skip
    """The paper's schedule: x gamma at each epoch in ``steps``; linear warm-up over the first iterations.

    Warm-up as MMDetection's ``linear``: lr = regular * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio)).
    """
    lr = base_lr * gamma ** sum(epoch >= s for s in steps)
    if iteration < warmup_iters:
        lr *= 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)
    return lr


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
    return images, targets


@torch.inference_mode()
def predict(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run the detector over ``batches``; return COCO results and speed (images/s of model and of the path)."""
    model.eval()
    results: list[dict[str, Any]] = []
    model_seconds = 0.0
    images_seen = 0
    start = time.perf_counter()
    for images, targets in batches:
        images = [img.to(device, non_blocking=True) for img in images]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            outputs = model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_seconds += time.perf_counter() - t0
        images_seen += len(images)
        outputs = [{k: v.float().cpu() for k, v in o.items()} for o in outputs]
        results += predictions_to_coco(outputs, [int(t["image_id"]) for t in targets])
    total = time.perf_counter() - start
    speed = {
        "images": images_seen,
        "model_images_per_s": images_seen / model_seconds if model_seconds > 0 else math.nan,
        "predict_images_per_s": images_seen / total if total > 0 else math.nan,
    }
    return results, speed


def evaluate_file(
    model_path: str | Path,
    ann: str | Path,
    images: str | None = None,
    output: str | Path | None = None,
    batch_size: int = 4,
    device: str = "auto",
    fixed_threshold: float = 0.5,
    workers: int = 0,
) -> dict[str, Any]:
    """``fpsiam detect eval``: COCO + clinical metrics and speed of a saved detector on a COCO json.

    Writes ``<output>`` (metrics json) and, beside it, ``<stem>.predictions.json`` (COCO results).
    """
    from torch.utils.data import DataLoader

    from fpsiam.data.coco import CocoDetection, collate_fn, detection_transforms
    from fpsiam.detect.models import load_detector
    from fpsiam.train.distributed import check_device, wants_cuda

    check_device(device)
    dev = torch.device(device if device != "auto" else ("cuda" if wants_cuda() else "cpu"))
    model, meta = load_detector(model_path, device=dev)
    dataset = CocoDetection(ann, images, detection_transforms(False), keep_negatives=True)
    if len(dataset) == 0:
        raise FpsiamError(f"{ann}: no images to evaluate; pass a COCO json with images")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_fn)
    results, speed = predict(model, loader, dev)
    speed = {**speed, "device": str(dev), "batch_size": batch_size}
    return metrics_report(dataset.coco, results, meta, str(ann), speed, output, fixed_threshold)


def metrics_report(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    meta: dict[str, Any],
    ann: str,
    speed: dict[str, Any],
    output: str | Path | None = None,
    fixed_threshold: float = 0.5,
) -> dict[str, Any]:
    """COCO + clinical metrics of COCO ``results`` against ``gt``; written to ``output`` (+ predictions)."""
    metrics = {
        "model": {k: meta.get(k) for k in ("kind", "arch", "min_size", "max_size", "epoch")},
        "ann": ann,
        "coco": coco_metrics(gt, results),
        "clinical": clinical_metrics(gt, results, fixed_threshold=fixed_threshold),
        "speed": speed,
    }
    if output is not None:
        output = Path(output)
        write_results(output.with_name(output.stem + ".predictions.json"), results)
        write_json(output, metrics)
    return metrics
