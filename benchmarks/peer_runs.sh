#!/usr/bin/env bash
# A short real run of every self-supervised method on real frames: does the loss go down, does the collapse
# monitor stay up, does the probe move? Each method's CPU preset (configs/<method>_r18_cpu.yaml: ResNet-18 from
# scratch, 64 px, batch 32) for EPOCHS epochs on the train frames, the probe every PROBE_EVERY epochs on the same
# labeled train json (cross-validated; never the test split). Then one table: first and last epoch's loss, the
# last collapse monitor(s), and the probe at epoch 0 (random init) and at the end.
# Resumable: rerun the same command; finished methods are skipped.
# Usage: FPSIAM_KVASIR=/path/to/kvasir-seg bash benchmarks/peer_runs.sh [OUT [METHOD ...]]
#        TRAIN=mine/train.json bash benchmarks/peer_runs.sh runs/peer_runs_mine
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/peer_runs}
shift || true
PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-10}
PROBE_EVERY=${PROBE_EVERY:-5}
if [ -z "${TRAIN:-}" ]; then
  source benchmarks/kvasir_json.sh
  kvasir_json
  TRAIN=data/kvasir/train.json
fi
METHODS=(fpsiam simsiam mocov2 simclr byol densecl swav barlowtwins)
[ $# -gt 0 ] && METHODS=("$@")
mkdir -p "$OUT"
for method in "${METHODS[@]}"; do
  preset=configs/${method}_r18_cpu.yaml
  [ "$method" = fpsiam ] || [ "$method" = simsiam ] && preset=configs/${method}_r18_smalldata_cpu.yaml
  run="$OUT/$method"
  if [ -f "$run/summary.json" ]; then echo "[$method] done"; continue; fi
  echo "[$method] $preset, $EPOCHS epochs"
  start=$(date +%s)
  "$PY" -m fpsiam pretrain "$preset" --data "$TRAIN" -o "$run" --resume --set train.epochs="$EPOCHS" \
      --set train.checkpoint_every=1 --set train.progress=false --set probe.ann="$TRAIN" \
      --set probe.every="$PROBE_EVERY" --set data.workers="${WORKERS:-1}"
  echo "$method: $(( $(date +%s) - start )) s" >> "$OUT/times.txt"
done
"$PY" - "$OUT" "${METHODS[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, methods = Path(sys.argv[1]), sys.argv[2:]
times = dict(line.split(": ") for line in (out / "times.txt").read_text().splitlines()) if (out / "times.txt").exists() else {}
print("| method | loss epoch 1 -> last | collapse (last) | probe linear / kNN, epoch 0 | probe at the end | wall |")
print("|---|---|---|---|---|---|")
for m in methods:
    rows = [json.loads(x) for x in (out / m / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "loss" in r and r.get("kind") is None]
    probes = [r for r in rows if r.get("kind") == "probe"]
    first = [r["loss"] for r in steps if r["epoch"] == 1]
    last_epoch = steps[-1]["epoch"]
    last = [r["loss"] for r in steps if r["epoch"] == last_epoch]
    collapse = ", ".join(f"{k.removeprefix('collapse_') or 'z'} {v:.3f}".replace("collapse ", "")
                         for k, v in steps[-1].items() if k.startswith("collapse"))
    p = lambda r: f"{100 * r['probe_linear']:.1f} / {100 * r['probe_knn']:.1f}"  # noqa: E731
    print(f"| {m} | {sum(first) / len(first):.3f} -> {sum(last) / len(last):.3f} (epoch {last_epoch}) | {collapse} | "
          f"{p(probes[0]) if probes else '-'} | {p(probes[-1]) if probes else '-'} (epoch {probes[-1]['epoch'] if probes else '-'}) | "
          f"{times.get(m, '?')} |")
EOF
