#!/usr/bin/env bash
# CI packaging check: what a pip user gets. Builds the wheel, installs it (core dependencies only, no extras) into a
# fresh virtual environment outside the checkout, and from an empty folder runs: fpsiam config list, a tiny
# pretraining from a packaged preset by name on synthetic frames, fpsiam demo --quick, and fpsiam gradcam without
# grad-cam (which must be one line naming the "explain" extra). Nothing in the checkout is written.
#
#   bash .ci/package_check.sh            # PY=python3.11 to choose the interpreter (default python3)
#   KEEP=1 bash .ci/package_check.sh     # keep the temporary folder (its path is printed)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fpsiam-package-check.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then
  echo "package check: work folder $WORK (kept)"
else
  trap 'rm -rf "$WORK"' EXIT
fi
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*"; }

# 1. The wheel, built from a copy of the checkout's files (tracked and untracked-but-not-ignored), so that a stale
#    build/ folder of an earlier in-place build cannot leak into it.
step "build the wheel"
SRC="$WORK/src"
mkdir -p "$SRC"
"$PY" - "$ROOT" "$SRC" <<'EOF'
import os, shutil, subprocess, sys

root, dest = sys.argv[1:]
out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                     capture_output=True, check=True).stdout.decode()
for name in sorted(set(filter(None, out.split("\0")))):
    src, dst = os.path.join(root, name), os.path.join(dest, name)
    if not os.path.lexists(src):  # deleted in the work tree, not yet in git
        continue
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isfile(src):
        shutil.copy2(src, dst)
EOF
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip wheel --no-deps -w "$WORK/dist" "$SRC" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
if grep -i -E "deprecat" "$WORK/build.log"; then
  echo "package check: the build warns of a deprecation (above); fix pyproject.toml" >&2
  exit 1
fi
WHEEL="$(ls "$WORK"/dist/fpsiam-*.whl)"
"$VPY" - "$WHEEL" <<'EOF'
import sys, zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
presets = [n for n in names if n.startswith("fpsiam/configs/") and n.endswith(".yaml")]
assert "fpsiam/configs/fpsiam_r18_cpu.yaml" in presets, "the presets are not in the wheel"
assert any(n.startswith("fpsiam/configs/experiments/") for n in presets), "the experiment presets are not in the wheel"
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, {len(presets)} presets")
EOF

# 2. A fresh environment: torch as the Makefile installs it, then the wheel with its core dependencies (no extras).
step "install torch and the wheel into a fresh venv"
"$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1 || "$VPY" -m pip install -q "torch>=2.6" "torchvision>=0.21"
"$VPY" -m pip install -q "$WHEEL"
"$VPY" -m pip check
FPSIAM="$WORK/venv/bin/fpsiam"

# 3. From an empty folder: nothing of the checkout (configs/, src/) can be found there.
RUN="$WORK/run"
mkdir -p "$RUN"
cd "$RUN"
"$VPY" - <<'EOF'
import importlib.util, os, sys

import fpsiam

where = os.path.realpath(fpsiam.__file__)
assert where.startswith(os.path.realpath(sys.prefix)), f"fpsiam imported from {where}, not from the fresh venv"
assert importlib.util.find_spec("pytorch_grad_cam") is None, "grad-cam is installed without the explain extra"
print(f"fpsiam {fpsiam.__version__} from {where}")
EOF
step "fpsiam config list"
"$FPSIAM" config list
"$FPSIAM" config show experiments/kvasir_cpu --set 'seeds=[0]' >/dev/null

step "fpsiam gradcam without grad-cam: one line naming the extra"
set +e
"$FPSIAM" gradcam random missing.png -o cam 2>gradcam.err
status=$?
set -e
cat gradcam.err
if [ "$status" != 2 ] || [ "$(wc -l <gradcam.err)" != 1 ] || ! grep -q 'fpsiam\[explain\]' gradcam.err; then
  echo "package check: fpsiam gradcam without grad-cam should fail with one line naming fpsiam[explain]" >&2
  exit 1
fi

step "fpsiam pretrain fpsiam_r18_cpu (a preset by name) on synthetic frames"
"$FPSIAM" data synth synth --videos 2 --frames 8 --width 96 --height 96 --no-mp4
"$FPSIAM" pretrain fpsiam_r18_cpu --data synth/frames --set train.epochs=1 --set train.max_steps_per_epoch=2 \
  --set data.size=32 --set train.batch_size=4 --set data.workers=0 --set train.progress=false -o run
test -s run/config.yaml && test -s run/backbone.safetensors

step "fpsiam demo --quick"
"$FPSIAM" demo --quick -o demo
test -s demo/report.html

step "package check passed"
