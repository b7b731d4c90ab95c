"""Did pretraining learn polyp features? A linear probe and a kNN probe of frozen backbones, polyp vs mucosa.

For every labeled frame, two crops: the polyp (its largest true box) and a same-sized patch of mucosa that
overlaps no true box by more than 10 % of its area (drawn at random; frames where none fits are skipped).
Each crop is resized to SIZE x SIZE and normalised as in pretraining; the frozen backbone (eval mode) gives
its global-average-pooled C5 vector. A logistic regression (L-BFGS, L2) is fit on the train split's crops
and scored on the test split's; the kNN probe (k=20, cosine) classifies each test crop by its train
neighbours. Chance is 50 %. This is the cheapest evidence of whether a self-supervised backbone carries
anything a detector could use, independent of the fine-tuning schedule.

    .venv/bin/python benchmarks/probe_backbones.py data/kvasir/train.json data/kvasir/test.json \\
        random fpsiam=runs/kvasir_cpu/pretrain/fpsiam/backbone.safetensors \\
        simsiam=runs/kvasir_cpu/pretrain/simsiam/backbone.safetensors \\
        lightly_simsiam=runs/kvasir_cpu/lightly_simsiam_r18.safetensors [--size 128] [--images DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from fpsiam.config import PretrainData
from fpsiam.data.coco import CocoDetection
from fpsiam.errors import FpsiamError
from fpsiam.experiment import machine_description
from fpsiam.ssl.encoders import build_resnet
from fpsiam.weights import load_backbone


def overlap_fraction(a: list[float], b: list[float]) -> float:
    """Area of a ∩ b over the area of a (boxes x1, y1, x2, y2)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / max(1e-9, (a[2] - a[0]) * (a[3] - a[1]))


def crops(ann: str, images: str | None, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Polyp and mucosa crops of every boxed frame: float [N, 3, size, size] in 0..1 and labels (1 polyp)."""
    rng = random.Random(seed)
    out, labels = [], []
    for image, target in CocoDetection(ann, images):  # boxed frames only, boxes XYXY clipped to the image
        H, W = image.shape[-2:]
        boxes = target["boxes"].tolist()
        polyp = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        bw, bh = min(polyp[2] - polyp[0], W / 2), min(polyp[3] - polyp[1], H / 2)  # a huge polyp: smaller patch
        background = None
        for _ in range(100):
            x, y = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
            cand = [x, y, x + bw, y + bh]
            if all(overlap_fraction(cand, b) <= 0.1 for b in boxes):
                background = cand
                break
        if background is None:
            continue
        for box, label in ((polyp, 1), (background, 0)):
            x1, y1, x2, y2 = (round(v) for v in box)
            out.append(TF.resized_crop(image, y1, x1, max(1, y2 - y1), max(1, x2 - x1), [size, size], antialias=True))
            labels.append(label)
    return torch.stack(out), torch.tensor(labels)


@torch.inference_mode()
def features(model: torch.nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    d = PretrainData()
    mean, std = torch.tensor(d.mean).view(1, 3, 1, 1), torch.tensor(d.std).view(1, 3, 1, 1)
    model.eval()
    return torch.cat([model((x[i : i + batch] - mean) / std) for i in range(0, len(x), batch)])


def linear_probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xtr @ w + b, ytr.float()) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((xte @ w + b > 0).long() == yte).float().mean().item()


def knn_probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, k: int = 20) -> float:
    sim = F.normalize(xte, dim=1) @ F.normalize(xtr, dim=1).T
    votes = ytr[sim.topk(k, dim=1).indices].float().mean(1)
    return ((votes > 0.5).long() == yte).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("train")
    p.add_argument("test")
    p.add_argument("backbones", nargs="+", help="'random' or name=weights_file")
    p.add_argument("--images")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", help="also write the table as json here")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    xtr, ytr = crops(args.train, args.images, args.size, args.seed)
    xte, yte = crops(args.test, args.images, args.size, args.seed + 1)
    print(f"crops: {len(xtr)} train / {len(xte)} test (half polyp, half mucosa), {time.perf_counter() - t0:.0f} s")
    rows = []
    for spec in args.backbones:
        name, _, path = spec.partition("=")
        torch.manual_seed(args.seed)
        model = build_resnet(args.arch)
        if path:
            load_backbone(model, path)
        ftr, fte = features(model, xtr), features(model, xte)
        linear, knn = linear_probe(ftr, ytr, fte, yte), knn_probe(ftr, ytr, fte, yte)
        rows.append({"backbone": name, "linear": linear, "knn20": knn})
    print(f"\n{machine_description()}; {args.arch} @ {args.size} px, {time.strftime('%Y-%m-%d')}")
    print("| backbone | linear probe acc (%) | kNN-20 acc (%) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {100 * r['linear']:.1f} | {100 * r['knn20']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    try:
        main()
    except FpsiamError as e:  # a bad json, image or weights file: one line, no traceback
        sys.exit(f"probe_backbones: error: {e}")
