#!/usr/bin/env bash
# The small-data pretraining search (issue: a recipe that moves the probe on ~1,000 frames within 2 h of a
# 2-core CPU). Each named setting is one `fpsiam pretrain` of FPSiam R18 on the train frames with the probe
# running every 5 epochs on a carve of the same train json (never the test split); the probe curves are in
# OUT/<name>/metrics.jsonl (`grep '"kind": "probe"' OUT/<name>/metrics.jsonl` lists them).
# Resumable: rerun the same command; finished settings are skipped.
# Usage: FPSIAM_KVASIR=/path/to/kvasir-seg bash benchmarks/smalldata_search.sh [OUT [NAME ...]]
#        TRAIN=mine/train.json bash benchmarks/smalldata_search.sh runs/search_mine
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/smalldata_search}
shift || true
PY=${PY:-.venv/bin/python}
if [ -z "${TRAIN:-}" ]; then
  source benchmarks/kvasir_json.sh
  kvasir_json
  TRAIN=data/kvasir/train.json
fi
# name: the --set overrides on top of configs/fpsiam_r18_cpu.yaml at 128 px, batch 32
declare -A SETTINGS=(
  [paper_cos_lr005_wd1e-4]="optim.lr=0.4 optim.weight_decay=1e-4 optim.schedule=cosine train.epochs=40"
  [const_lr006_wd5e-4]="optim.lr=0.48 optim.weight_decay=5e-4 optim.schedule=constant train.epochs=40"
  [cos_lr01_wd5e-4]="optim.lr=0.8 optim.weight_decay=5e-4 optim.schedule=cosine train.epochs=40"
  [const_lr006_wd5e-4_96px]="optim.lr=0.48 optim.weight_decay=5e-4 optim.schedule=constant train.epochs=60 data.size=96"
  [const_lr006_wd5e-4_64px_200ep]="optim.lr=0.48 optim.weight_decay=5e-4 optim.schedule=constant train.epochs=200 data.size=64 probe.every=10"
  [const_lr006_wd5e-4_weakcolor]="optim.lr=0.48 optim.weight_decay=5e-4 optim.schedule=constant train.epochs=40 data.color_jitter=0.1 data.grayscale=0"
)
ORDER=(const_lr006_wd5e-4 cos_lr01_wd5e-4 const_lr006_wd5e-4_96px paper_cos_lr005_wd1e-4)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  [ -n "${SETTINGS[$name]:-}" ] || { echo "unknown setting $name; known: ${!SETTINGS[*]}" >&2; exit 2; }
  run="$OUT/$name"
  if [ -f "$run/summary.json" ]; then echo "[$name] done"; continue; fi
  # the setting's own keys come last: they override these (e.g. data.size)
  sets=(--set data.size=128 --set train.batch_size=32 --set train.checkpoint_every=5 --set train.progress=false
        --set probe.ann="$TRAIN" --set probe.every=5 --set data.workers=${WORKERS:-2})
  for kv in ${SETTINGS[$name]}; do sets+=(--set "$kv"); done
  echo "[$name] ${SETTINGS[$name]}"
  start=$(date +%s)
  "$PY" -m fpsiam pretrain configs/fpsiam_r18_cpu.yaml --data "$TRAIN" -o "$run" --resume "${sets[@]}"
  echo "$name: $(( $(date +%s) - start )) s" >> "$OUT/times.txt"
done
