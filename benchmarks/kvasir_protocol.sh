#!/usr/bin/env bash
# The Kvasir-SEG CPU protocol (configs/experiments/kvasir_cpu.yaml), lightly's SimSiam peer arm included:
#   1. Kvasir-SEG -> COCO json, split by the official train.txt/test.txt (data/kvasir/{train,test}.json);
#   2. the external peer: SimSiam with lightly's transform/heads/loss, same epochs/size/batch as ours
#      (skipped with a note when lightly is not installed: .venv/bin/pip install lightly);
#   3. fpsiam experiment: FPSiam + SimSiam pretraining, random / imagenet / lightly arms, RetinaNet x 3 seeds.
# Resumable: rerun the same command after an interruption (finished stages are skipped).
# Usage: FPSIAM_KVASIR=/path/to/kvasir-seg bash benchmarks/kvasir_protocol.sh [OUT_DIR [--set KEY=VALUE ...]]
# The same protocol on another labeled set (COCO json, e.g. from `fpsiam data convert` + `fpsiam data split`):
#   TRAIN=mine/train.json TEST=mine/test.json [IMAGES=mine/images] bash benchmarks/kvasir_protocol.sh runs/mine
# (the train split is also the unlabeled frame source, as with Kvasir-SEG).
# Results: OUT_DIR/results.json and OUT_DIR/report.html; the recorded run is in benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/kvasir_cpu}
shift || true   # anything after OUT_DIR goes to `fpsiam experiment` (e.g. --set seeds=[0] for a smoke run)
PY=${PY:-.venv/bin/python}
CONFIG=configs/experiments/kvasir_cpu.yaml
mkdir -p "$OUT"
EXTRA=()
if [ -n "${TRAIN:-}" ] || [ -n "${TEST:-}" ]; then
  : "${TRAIN:?set TRAIN and TEST (COCO json) together}" "${TEST:?set TRAIN and TEST (COCO json) together}"
  EXTRA+=(--set "frames=$TRAIN" --set "train=$TRAIN" --set "test=$TEST")
  if [ -n "${IMAGES:-}" ]; then EXTRA+=(--set "images=$IMAGES" --set "frames_images=$IMAGES"); fi
else
  : "${FPSIAM_KVASIR:?set FPSIAM_KVASIR to the Kvasir-SEG folder (or TRAIN and TEST for another data set)}"
  TRAIN=data/kvasir/train.json
  mkdir -p data/kvasir
  if [ ! -f data/kvasir/test.json ]; then
    "$PY" -m fpsiam data convert --format kvasir "$FPSIAM_KVASIR" -o data/kvasir/all.json
    "$PY" -m fpsiam data split data/kvasir/all.json --by list --list train="$FPSIAM_KVASIR/train.txt" \
        --list test="$FPSIAM_KVASIR/test.txt" -o data/kvasir
  fi
fi
LIGHTLY="$OUT/lightly_simsiam_r18.safetensors"
if "$PY" -c "import lightly" 2>/dev/null; then
  if [ ! -f "$LIGHTLY" ]; then
    # same budget as our pretraining in $CONFIG: R18, 128 px, batch 32, 25 epochs
    start=$(date +%s)
    "$PY" benchmarks/lightly_simsiam.py "$TRAIN" ${IMAGES:+--images "$IMAGES"} -o "$LIGHTLY" --arch resnet18 \
        --size 128 --batch 32 --epochs 25 | tee "$OUT/lightly_simsiam.log"
    echo "lightly_simsiam pretraining: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
  fi
  EXTRA+=(--set "weights=[lightly_simsiam=$LIGHTLY]")
else
  echo "lightly is not installed: the lightly_simsiam peer arm is left out (.venv/bin/pip install lightly)"
fi
start=$(date +%s)
"$PY" -m fpsiam experiment "$CONFIG" -o "$OUT" "${EXTRA[@]}" "$@"
echo "experiment: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
