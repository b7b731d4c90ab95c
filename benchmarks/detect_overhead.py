"""Does our detection engine cost anything? Our train step / inference vs the same torchvision model called directly.

Ours: the training engine's step (``fpsiam.train.loop.Engine.step``, detection's task) and
``fpsiam.detect.engine.predict`` (which also converts outputs to COCO results). Direct: ``model(images, targets)`` +
``sum(losses).backward()`` + ``optimizer.step()``, and ``model(images)`` under ``torch.inference_mode()``. Same model
object, same batches, timed alternately in one run (round-robin, order rotated every round), medians. Target: ratio <=
1.02.

    .venv/bin/python benchmarks/detect_overhead.py [--rounds 10] [--size 256] [--batch 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fpsiam.config import DetectConfig, load_config
from fpsiam.detect.engine import predict
from fpsiam.detect.models import build_detector
from fpsiam.detect.train import DetectTask
from fpsiam.train.distributed import DistEnv
from fpsiam.train.loop import Engine, LoopSettings


def batch(n: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    for i in range(n):
        x, y = torch.randint(0, size // 2, (2,), generator=g).tolist()
        w, h = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
        targets.append({"boxes": torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32),
                        "labels": torch.ones(1, dtype=torch.int64), "image_id": i})  # fmt: skip
    return images, targets


def measure(kind: str, arch: str, size: int, n: int, rounds: int) -> dict[str, float]:
    """Median seconds of our / the direct train step and inference, timed alternately."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_detector(kind, arch, min_size=size, max_size=size)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    images, targets = batch(n, size, 0)

    task = DetectTask.without_data(load_config(DetectConfig, None, ["optim.warmup_iters=0"]), base_lr=1e-4)
    engine = Engine(task, LoopSettings(epochs=1, batch_size=n), "unused", None, DistEnv()).attach(model, opt)

    def ours_train():
        engine.step((images, targets))

    def direct_train():
        model.train()
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def ours_infer():
        predict(model, [(images, targets)], cpu)

    def direct_infer():
        model.eval()
        with torch.inference_mode():
            model(images)

    fns = {"ours_train": ours_train, "direct_train": direct_train, "ours_infer": ours_infer,
           "direct_infer": direct_infer}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", default="resnet18")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| detector | arch | size | batch | ours train s/step | direct train s/step | train ratio "
        "| ours infer s/batch | direct infer s/batch | infer ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("faster_rcnn", "retinanet"):
        m = measure(kind, args.arch, args.size, args.batch, args.rounds)
        train = m["ours_train"] / m["direct_train"]
        infer = m["ours_infer"] / m["direct_infer"]
        print(
            f"| {kind} | {args.arch} | {args.size} | {args.batch} | {m['ours_train']:.3f} | {m['direct_train']:.3f} "
            f"| **{train:.3f}** | {m['ours_infer']:.3f} | {m['direct_infer']:.3f} | **{infer:.3f}** |"
        )


if __name__ == "__main__":
    main()
