"""Which transfer settings help a self-supervised backbone? Fine-tunes on a validation split, never on test.

Each named setting is the label-scarce protocol's detect section (``configs/experiments/kvasir_lowlabel_cpu.yaml``)
plus a few ``--set``-style overrides: the backbone lr multiplier, precise BN, GroupNorm in the FPN and heads, a
longer warm-up, and their combination. Every setting is fine-tuned from the given backbones on the same nested
label subset of TRAIN and scored on VAL (COCO mAP of the last model); the gradient-norm spikes (median, 99th
percentile, max of the per-step pre-clip norm) are read from each run's results.json. Runs are resumable: finished
ones are skipped, so the table can be rebuilt by rerunning the command.

    .venv/bin/python benchmarks/transfer_recipe.py --train runs/kvasir_lowlabel/data/train.json \\
        --val runs/kvasir_lowlabel/data/val.json --labels 0.1 \\
        fpsiam=runs/smalldata_search/const_lr006_wd5e-4/backbone.safetensors random -o runs/transfer_recipe
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from fpsiam.config import DetectConfig, ExperimentConfig, from_dict, load_config, parse_override, set_dotted, to_dict
from fpsiam.data.check import label_subsets
from fpsiam.detect.train import train_detector
from fpsiam.experiment import machine_description

PROTOCOL = "configs/experiments/kvasir_lowlabel_cpu.yaml"
SETTINGS = {
    "paper": [],
    "lr_mult_0.5": ["optim.backbone_lr_mult=0.5"],
    "lr_mult_0.1": ["optim.backbone_lr_mult=0.1"],
    "precise_bn": ["model.precise_bn=1000"],
    "gn_heads": ["model.head_norm=gn"],
    "warmup_300": ["optim.warmup_iters=300"],
    "all": ["optim.backbone_lr_mult=0.5", "model.precise_bn=1000", "model.head_norm=gn", "optim.warmup_iters=300"],
}


def detect_config(overrides: list[str]) -> DetectConfig:
    raw = to_dict(load_config(ExperimentConfig, PROTOCOL).detect)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value, DetectConfig, "setting")
    return from_dict(DetectConfig, raw, "setting")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backbones", nargs="+", help="name=weights file, or random")
    ap.add_argument("--train", required=True, help="labeled train json (the protocol's carved train)")
    ap.add_argument("--val", required=True, help="validation json carved from train (never the test split)")
    ap.add_argument("--labels", type=float, default=0.1, help="label fraction of TRAIN (nested subset, --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--set", action="append", default=[], help="extra override for every run (e.g. train.epochs=1)")
    ap.add_argument("-o", "--out", default="runs/transfer_recipe")
    args = ap.parse_args()
    out = Path(args.out)
    subset = label_subsets(Path(args.train), out / "labels", [args.labels], args.seed)[args.labels]
    rows = []
    for spec in args.backbones:
        name, _, path = spec.partition("=")
        for setting in args.settings:
            run = out / f"labels{args.labels:g}" / name / setting / f"seed{args.seed}"
            if not (run / "results.json").is_file():
                cfg = detect_config([*SETTINGS[setting], *args.set])
                cfg = copy.deepcopy(cfg)
                cfg.model.kind = "retinanet"  # the protocol's detector
                cfg.model.backbone = path or name
                cfg.data.train, cfg.data.val = str(subset), args.val
                cfg.train.seed = args.seed
                start = time.perf_counter()
                print(f"[{name} {setting}] -> {run}", flush=True)
                train_detector(cfg, run, resume=True)
                print(f"[{name} {setting}] {time.perf_counter() - start:.0f} s", flush=True)
            res = json.loads((run / "results.json").read_text())
            g = res.get("grad_norm", {})
            rows.append({"backbone": name, "setting": setting, "val_mAP": res["last"]["mAP"],
                         "val_AP50": res["last"]["AP50"], "grad_median": g.get("median"), "grad_p99": g.get("p99"),
                         "grad_max": g.get("max"), "skipped": len(res.get("skipped_steps", []))})  # fmt: skip
    print(f"\n{machine_description()}; {time.strftime('%Y-%m-%d')}; labels {args.labels:g} of {args.train}, "
          f"seed {args.seed}, val {args.val}")  # fmt: skip
    print("| backbone | setting | val mAP | val AP50 | grad norm median / p99 / max |\n|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['setting']} | {100 * r['val_mAP']:.1f} | {100 * r['val_AP50']:.1f} | "
              f"{r['grad_median']:.2f} / {r['grad_p99']:.1f} / {r['grad_max']:.1f} |")  # fmt: skip
    (out / f"table_labels{args.labels:g}_seed{args.seed}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
