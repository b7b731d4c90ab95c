#!/usr/bin/env bash
# The label-scarce CPU protocol (configs/experiments/kvasir_lowlabel_cpu.yaml), lightly's SimSiam arm included:
#   1. Kvasir-SEG -> COCO json, split by the official train.txt/test.txt (data/kvasir/{train,test}.json);
#   2. a validation split carved from train (20 % of its frames, whole videos when it has video ids):
#      OUT/data/{train,val}.json. Settings are chosen on val; the test split is only read for the table;
#   3. lightly's SimSiam on the same frames, size, batch and epochs as our pretraining (probed like ours);
#   4. fpsiam experiment: FPSiam + SimSiam pretraining on all train frames (unlabeled), then RetinaNet fine-tunes
#      of random / FPSiam / SimSiam / lightly backbones on nested 10 / 25 / 100 % subsets of the carved train
#      labels, 3 seeds, evaluated on the test split.
# Resumable: rerun the same command after an interruption (finished stages are skipped).
# Usage: FPSIAM_KVASIR=/path/to/kvasir-seg bash benchmarks/kvasir_lowlabel.sh [OUT_DIR [--set KEY=VALUE ...]]
# Any other labeled COCO split (e.g. from `fpsiam data convert` + `fpsiam data split`):
#   TRAIN=mine/train.json TEST=mine/test.json [IMAGES=mine/images] bash benchmarks/kvasir_lowlabel.sh runs/mine
# Quick form (1 seed, 10 % and 100 %, random vs FPSiam, no lightly arm):
#   QUICK=1 FPSIAM_KVASIR=... bash benchmarks/kvasir_lowlabel.sh runs/lowlabel_quick
# Where a run stands (runs nothing, safe while it runs): the same command with --report-only after OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/kvasir_lowlabel}
shift || true   # anything after OUT_DIR goes to `fpsiam experiment`
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-configs/experiments/kvasir_lowlabel_cpu.yaml}
# --report-only writes nothing before fpsiam has checked that OUT holds a study (no conversion, carve or lightly run)
REPORT_ONLY=; [[ " $* " == *" --report-only "* ]] && REPORT_ONLY=1
[ -n "$REPORT_ONLY" ] || mkdir -p "$OUT"
if [ -n "${TRAIN:-}" ] || [ -n "${TEST:-}" ]; then
  : "${TRAIN:?set TRAIN and TEST (COCO json) together}" "${TEST:?set TRAIN and TEST (COCO json) together}"
else
  : "${FPSIAM_KVASIR:?set FPSIAM_KVASIR to the Kvasir-SEG folder (or TRAIN and TEST for another data set)}"
  TRAIN=data/kvasir/train.json TEST=data/kvasir/test.json
  if [ ! -f "$TEST" ] && [ -z "$REPORT_ONLY" ]; then
    mkdir -p data/kvasir
    "$PY" -m fpsiam data convert --format kvasir "$FPSIAM_KVASIR" -o data/kvasir/all.json
    "$PY" -m fpsiam data split data/kvasir/all.json --by list --list train="$FPSIAM_KVASIR/train.txt" \
        --list test="$FPSIAM_KVASIR/test.txt" -o data/kvasir
  fi
fi
# the validation carve: by video when every frame has a video id, else by image
if [ ! -f "$OUT/data/val.json" ] && [ -z "$REPORT_ONLY" ]; then
  BY=$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); \
print('video' if d['images'] and all(i.get('video_id') is not None for i in d['images']) else 'image')" "$TRAIN")
  "$PY" -m fpsiam data split "$TRAIN" --by "$BY" --fractions 0.8 0.2 0 --seed 0 ${IMAGES:+--images "$IMAGES"} \
      -o "$OUT/data"
fi
SETS=(--set "frames=$TRAIN" --set "train=$OUT/data/train.json" --set "val=$OUT/data/val.json" --set "test=$TEST"
      --set "pretrain.probe.ann=$TRAIN")
if [ -n "${IMAGES:-}" ]; then
  SETS+=(--set "images=$IMAGES" --set "frames_images=$IMAGES" --set "pretrain.probe.images=$IMAGES")
fi
if [ -n "${QUICK:-}" ]; then
  SETS+=(--set "seeds=[0]" --set "label_fractions=[0.1, 1.0]" --set "methods=[fpsiam]")
elif "$PY" -c "import lightly" 2>/dev/null; then
  LIGHTLY="$OUT/lightly_simsiam_r18.safetensors"
  if [ ! -f "$LIGHTLY" ] && [ -z "$REPORT_ONLY" ]; then
    # the same budget as our pretraining in $CONFIG (epochs, size, batch), probed as often
    read -r EPOCHS SIZE BATCH PROBE_EVERY < <("$PY" -c "import sys; from fpsiam.config import ExperimentConfig, load_config; \
p = load_config(ExperimentConfig, sys.argv[1]).pretrain; print(p.train.epochs, p.data.size, p.train.batch_size, p.probe.every)" \
        "$CONFIG")
    start=$(date +%s)
    "$PY" benchmarks/lightly_simsiam.py "$TRAIN" ${IMAGES:+--images "$IMAGES"} -o "$LIGHTLY" --arch resnet18 \
        --size "$SIZE" --batch "$BATCH" --epochs "$EPOCHS" --probe "$TRAIN" --probe-every "$PROBE_EVERY" | tee -a "$OUT/lightly_simsiam.log"
    echo "lightly_simsiam pretraining: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
  fi
  SETS+=(--set "weights=[lightly_simsiam=$LIGHTLY]")
else
  echo "lightly is not installed: the lightly_simsiam peer arm is left out (.venv/bin/pip install lightly)"
fi
start=$(date +%s)
"$PY" -m fpsiam experiment "$CONFIG" -o "$OUT" "${SETS[@]}" "$@"
[ -n "$REPORT_ONLY" ] || echo "experiment: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
