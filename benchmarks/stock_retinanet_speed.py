"""Is our RetinaNet slower to train than the stock torchvision one? Train step, ours vs stock, side by side.

Ours: ``fpsiam.detect.models.build_detector("retinanet", "resnet18")`` (the paper's recipe: L1 box loss,
trainable BN, frozen stem). Stock: torchvision's ``RetinaNet`` over ``resnet_fpn_backbone("resnet18")`` with
trainable ``nn.BatchNorm2d`` and P6/P7 from C5, as a user of torchvision alone would build it. Same input size,
same batches, timed alternately (order swapped every round), medians after 2 warm-up rounds. It sizes CPU
protocols: images per second here is what an epoch of fine-tuning costs.

    .venv/bin/python benchmarks/stock_retinanet_speed.py [--size 256] [--batch 4] [--rounds 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fpsiam.detect.models import build_detector
from fpsiam.experiment import machine_description


def time_train_steps(models: dict, images: list, targets: list, rounds: int) -> dict:
    """Seconds per train step (SGD, momentum 0.9) of each model on the same batch, timed alternately: the order
    rotates every round, 2 warm-up rounds are dropped. Returns ``{key: [seconds, ...]}``."""
    opts = {k: torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)
            for k, m in models.items()}  # fmt: skip
    times: dict = {k: [] for k in models}
    order = list(models)
    for r in range(rounds + 2):
        for k in order[r % len(order) :] + order[: r % len(order)]:
            m = models[k]
            m.train()
            t0 = time.perf_counter()
            loss = sum(m(images, targets).values())
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            if r >= 2:
                times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, args.size, int(args.size * 0.85), generator=g) for _ in range(args.batch)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 140.0]]), "labels": torch.ones(1, dtype=torch.int64)}
               for _ in range(args.batch)]  # fmt: skip
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d,
                                   trainable_layers=5, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(512, 256))  # fmt: skip
    models = {
        "ours": build_detector("retinanet", "resnet18", min_size=args.size, max_size=args.size),
        "stock": RetinaNet(backbone, num_classes=2, min_size=args.size, max_size=args.size),
    }
    times = time_train_steps(models, images, targets, args.rounds)
    print(f"{machine_description()}; RetinaNet R18-FPN train step, {args.size} px, batch {args.batch}, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| model | s/step | images/s |\n|---|---:|---:|")
    for k, s in med.items():
        print(f"| {k} | {s:.3f} | {args.batch / s:.2f} |")
    print(f"ours/stock step-time ratio: {med['ours'] / med['stock']:.3f}")


if __name__ == "__main__":
    main()
