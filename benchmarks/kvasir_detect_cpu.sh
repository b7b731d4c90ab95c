#!/usr/bin/env bash
# Recorded CPU result: Faster R-CNN and RetinaNet (R18-FPN, 224 px) fine-tuned from random init on Kvasir-SEG's
# train split (800 images), evaluated on its test split (200). RetinaNet: 6 epochs (lr x0.1 at 5); Faster R-CNN:
# 3 epochs (x0.1 at 2) — its step costs ~3x RetinaNet's on a CPU (box head on 4x128 RoIs), so 3 epochs fit the
# same budget. Results: benchmarks/README.md ("Kvasir-SEG detection on CPU").
# Usage: FPSIAM_KVASIR=/path/to/kvasir-seg bash benchmarks/kvasir_detect_cpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${FPSIAM_KVASIR:?set FPSIAM_KVASIR to the Kvasir-SEG folder}"
OUT=${1:-runs/bench_kvasir_detect}
FPSIAM=${FPSIAM:-.venv/bin/fpsiam}
mkdir -p "$OUT/data"
"$FPSIAM" data convert --format kvasir "$FPSIAM_KVASIR" -o "$OUT/data/all.json"
"$FPSIAM" data split "$OUT/data/all.json" --by list --list train="$FPSIAM_KVASIR/train.txt" \
    --list test="$FPSIAM_KVASIR/test.txt" -o "$OUT/data"
SETS=(--set model.arch=resnet18 --set model.backbone=random --set model.min_size=224 --set model.max_size=224
      --set model.test_proposals=300 --set model.roi_samples=128 --set optim.lr=0.01 --set optim.warmup_iters=100
      --set train.batch_size=4 --set train.amp=none --set train.progress=false)
for run in "retinanet 6 5" "faster_rcnn 3 2"; do
  read -r kind epochs step <<< "$run"
  start=$(date +%s)
  "$FPSIAM" detect train "configs/${kind}_r18_fpn_cpu.yaml" --train "$OUT/data/train.json" --val "$OUT/data/test.json" \
      -o "$OUT/$kind" --resume "${SETS[@]}" --set train.epochs="$epochs" --set "optim.steps=[$step]"
  "$FPSIAM" detect eval "$OUT/$kind/last.safetensors" --ann "$OUT/data/test.json" -o "$OUT/$kind/test_metrics.json"
  echo "$kind: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
done
