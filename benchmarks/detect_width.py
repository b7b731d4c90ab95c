"""What does the FPN and head width (``model.fpn_channels``) cost a RetinaNet train step? Widths side by side.

RetinaNet's two towers (4 conv layers each) run at the FPN's width on every level P3-P7, so at small inputs they
outweigh a ResNet-18 body. Each width is the same recipe (``build_detector("retinanet", "resnet18",
fpn_channels=w)``) on the same batches, timed alternately (order rotated every round), medians after 2 warm-up
rounds; the ratio is each width's step time over the paper's 256. It sizes CPU protocols.

    .venv/bin/python benchmarks/detect_width.py [--widths 256 128 64] [--head-norms none gn] [--size 224] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from stock_retinanet_speed import time_train_steps  # this folder's script: the same alternating timer

from fpsiam.detect.models import build_detector
from fpsiam.experiment import machine_description


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[256, 128, 64])
    p.add_argument("--head-norms", nargs="+", default=["none"], choices=["none", "gn"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, args.size, args.size, generator=g) for _ in range(args.batch)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 140.0]]), "labels": torch.ones(1, dtype=torch.int64)}
               for _ in range(args.batch)]  # fmt: skip
    models = {}
    for w in args.widths:
        for norm in args.head_norms:
            torch.manual_seed(0)
            models[(w, norm)] = build_detector("retinanet", "resnet18", min_size=args.size, max_size=args.size,
                                               fpn_channels=w, head_norm=norm)  # fmt: skip
    times = time_train_steps(models, images, targets, args.rounds)
    print(f"{machine_description()}; RetinaNet R18-FPN train step, {args.size} px, batch {args.batch}, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med.get((256, "none"), next(iter(med.values())))  # the first width when 256 was not timed
    print("| fpn_channels | head_norm | parameters (M) | s/step | images/s | step time / 256's |")
    print("|---:|---|---:|---:|---:|---:|")
    for (w, norm), s in med.items():
        n = sum(q.numel() for q in models[(w, norm)].parameters()) / 1e6
        print(f"| {w} | {norm} | {n:.1f} | {s:.3f} | {args.batch / s:.2f} | {s / base:.2f} |")


if __name__ == "__main__":
    main()
