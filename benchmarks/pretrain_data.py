"""Can the data loader feed the model? Decode + two views on Kvasir-SEG frames vs the model's consumption.

Loader: ``TwoViewDataset`` over Kvasir-SEG's images (JPEG decode + two augmented views, the CPU preset's
96 px crops unless --size) in a DataLoader with the preset's workers, iterated without a model: samples/s.
Model: one FPSiam step (forward both views, backward, SGD) on random batches of the same shape: samples/s.
Both are measured in the same run. Target: loader >= 2x model. Then a short real pretraining run of the CPU
preset on the same frames records what the loop itself sees (data-wait vs compute per step) and peak RSS.

    FPSIAM_KVASIR=/path/to/kvasir-seg .venv/bin/python benchmarks/pretrain_data.py [--size 96] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fpsiam.config import PretrainConfig, load_config
from fpsiam.data.frames import open_frames
from fpsiam.ssl.augment import TwoViewDataset, view_transform
from fpsiam.ssl.methods import build_method
from fpsiam.ssl.pretrain import pretrain

PRESET = Path(__file__).resolve().parents[1] / "configs" / "fpsiam_r18_cpu.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=None, help="crop size (default: the preset's)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20, help="steps of the real pretraining run")
    args = ap.parse_args()
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        raise SystemExit("set FPSIAM_KVASIR to the Kvasir-SEG folder")
    sets = [f"data.source={Path(root) / 'images'}"]
    sets += [f"data.size={args.size}"] if args.size else []
    sets += [f"train.batch_size={args.batch}"] if args.batch else []
    cfg = load_config(PretrainConfig, PRESET, sets)
    d, t = cfg.data, cfg.train

    source = open_frames(d.source)
    ds = TwoViewDataset(source, view_transform(d.size, d.min_scale, d.mean, d.std))
    loader = DataLoader(ds, batch_size=t.batch_size, shuffle=True, num_workers=d.workers, drop_last=True,
                        persistent_workers=False)  # fmt: skip
    it = iter(loader)
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    loader_rate = args.batches * t.batch_size / (time.perf_counter() - t0)
    del it

    model = build_method(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x1 = torch.randn(t.batch_size, 3, d.size, d.size)
    x2 = torch.randn(t.batch_size, 3, d.size, d.size)
    steps = []
    for i in range(args.batches // 2 + 2):
        t0 = time.perf_counter()
        loss = model(x1, x2)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            steps.append(time.perf_counter() - t0)
    model_rate = t.batch_size / statistics.median(steps)

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        real = load_config(PretrainConfig, PRESET, [*sets, "train.epochs=1", f"train.max_steps_per_epoch={args.steps}",
                                                     "train.log_every=5", "train.progress=false"])  # fmt: skip
        t0 = time.perf_counter()
        pretrain(real, run)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]  # skip warm-up
        summary = json.loads((run / "summary.json").read_text())

    print(f"frames: {len(source)} Kvasir-SEG images; crop {d.size} px, batch {t.batch_size}, workers {d.workers}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print("| measure | value |")
    print("|---|---|")
    print(f"| loader alone: decode + two views | {loader_rate:.1f} samples/s |")
    print(f"| model alone: FPSiam {cfg.model.backbone} step (fwd+bwd+SGD) | {model_rate:.1f} samples/s |")
    print(f"| loader / model (target >= 2) | **{loader_rate / model_rate:.2f}** |")
    print(f"| real run: samples/s over logged steps | {statistics.fmean(r['samples_per_s'] for r in rows):.1f} |")
    print(f"| real run: data wait per step | {statistics.fmean(r['data_time'] for r in rows):.3f} s |")
    print(f"| real run: compute per step | {statistics.fmean(r['compute_time'] for r in rows):.3f} s |")
    print(f"| real run: peak RSS (process + workers) | {summary['peak_rss_mb']:.0f} MB |")
    print(f"| real run: wall time for {args.steps} steps incl. start-up | {wall:.1f} s |")


if __name__ == "__main__":
    main()
