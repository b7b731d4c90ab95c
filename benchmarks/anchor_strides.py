"""What do fixed anchor strides change in AP? RetinaNet with the reference's strides against torchvision's own.

torchvision's ``AnchorGenerator`` derives each level's stride from the padded image size // the feature-map size;
at the Kvasir CPU setting's 160 px that puts RetinaNet's P6 at stride 53 (not 64) and P7 at 80 (not 128), so the
coarse levels' anchors sit far off their cells. fpsiam uses the reference's fixed strides 8-128
(``FixedStrideAnchorGenerator``). This benchmark trains the same RetinaNet R18-FPN both ways, from random init, with
the detect section of ``configs/experiments/kvasir_cpu.yaml`` (160 px, 4 epochs, batch 4) on TRAIN for each seed,
and scores the last model on VAL (a split carved from train: this measures a fidelity fix, it chooses nothing, and
the test split stays unread). ``stock`` swaps torchvision's generator in for the run (the same sizes and ratios).
Runs are resumable (finished ones are skipped).

    .venv/bin/python benchmarks/anchor_strides.py --train runs/kvasir_lowlabel/data/train.json \\
        --val runs/kvasir_lowlabel/data/val.json --seeds 0 1 2 -o runs/anchor_strides
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from torchvision.models.detection.anchor_utils import AnchorGenerator

import fpsiam.detect.models as M
from fpsiam.config import ExperimentConfig, load_config
from fpsiam.detect.train import train_detector
from fpsiam.experiment import machine_description

PROTOCOL = "configs/experiments/kvasir_cpu.yaml"


def stock_generator(sizes, aspect_ratios, strides) -> AnchorGenerator:  # noqa: ANN001
    """torchvision's generator (strides from the padded size), same sizes and ratios; ``strides`` ignored."""
    return AnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="labeled train json")
    ap.add_argument("--val", required=True, help="validation json carved from train (never the test split)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("-o", "--out", default="runs/anchor_strides")
    args = ap.parse_args()
    out = Path(args.out)
    fixed = M.FixedStrideAnchorGenerator
    rows: dict[str, list[dict]] = {"fixed": [], "stock": []}
    for seed in args.seeds:
        for variant in rows:
            run = out / variant / f"seed{seed}"
            if not (run / "results.json").is_file():
                cfg = load_config(ExperimentConfig, PROTOCOL).detect
                cfg.model.kind, cfg.model.backbone = "retinanet", "random"
                cfg.data.train, cfg.data.val = args.train, args.val
                cfg.train.seed, cfg.train.eval_every, cfg.train.progress = seed, cfg.train.epochs, False
                M.FixedStrideAnchorGenerator = fixed if variant == "fixed" else stock_generator
                start = time.perf_counter()
                try:
                    train_detector(cfg, run, resume=True)
                finally:
                    M.FixedStrideAnchorGenerator = fixed
                print(f"[{variant} seed {seed}] {time.perf_counter() - start:.0f} s", flush=True)
            last = json.loads((run / "results.json").read_text())["last"]
            rows[variant].append({"seed": seed, "mAP": 100 * last["mAP"], "AP50": 100 * last["AP50"],
                                  "AP75": 100 * last["AP75"]})  # fmt: skip
    print(f"\n{machine_description()}; {time.strftime('%Y-%m-%d')}; RetinaNet R18-FPN, random init, "
          f"{PROTOCOL} detect section; train {args.train}, scored on {args.val}")  # fmt: skip
    print("| anchors | " + " | ".join(f"seed {s} mAP" for s in args.seeds) + " | mAP mean ± std | AP50 | AP75 |")
    print("|---|" + "---:|" * (len(args.seeds) + 3))
    for variant, rs in rows.items():
        m = [r["mAP"] for r in rs]
        sd = statistics.stdev(m) if len(m) > 1 else 0.0
        print(
            f"| {variant} | " + " | ".join(f"{v:.1f}" for v in m) + f" | {statistics.mean(m):.1f} ± {sd:.1f} | "
            f"{statistics.mean(r['AP50'] for r in rs):.1f} | {statistics.mean(r['AP75'] for r in rs):.1f} |"
        )
    gaps = [f["mAP"] - s["mAP"] for f, s in zip(rows["fixed"], rows["stock"], strict=True)]
    sd = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
    each = ", ".join(f"{g:+.1f}" for g in gaps)
    print(f"\npaired gap fixed - stock: {statistics.mean(gaps):+.2f} ± {sd:.2f} mAP ({each})")
    (out / "anchor_strides.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
