"""Does streamed prediction keep up with the model, and does its memory stay flat with video length?

For each video length (default 1,000 and 10,000 frames of a synthetic colonoscopy mp4, 128 x 112), one
``fpsiam predict`` run in a fresh process (so peak RSS is that run's): the model-only FPS (the model call timed
inside the pipeline), the end-to-end FPS (frames / wall time: decode, preprocess, inference, tracking, drawing and
encoding the annotated mp4), their ratio (target >= 0.9), and the process's peak RSS (target: the same for 10x the
frames). The detector is RetinaNet R18 at the CPU preset's input size, random weights (speed does not depend on
them; a trained model only draws more boxes), or ``--model FILE``.

    .venv/bin/python benchmarks/predict_stream.py [--frames 1000 10000] [--threads 2] [--model last.safetensors]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(int(sys.argv[4]))
from fpsiam.detect.predict import predict_source
s = predict_source(sys.argv[1], sys.argv[2], sys.argv[3], score_threshold=0.05, smooth=True)
s["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(s))
"""


def synthetic_video(folder: Path, frames: int) -> Path:
    from fpsiam.data.synthetic import SynthOptions, generate

    generate(folder, SynthOptions(videos=1, frames=frames, width=128, height=112, seed=1))
    return next((folder / "videos").glob("*.mp4"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128, help="detector input size (random-weight model only)")
    ap.add_argument("--model", help="a detector file (default: RetinaNet R18, random weights)")
    args = ap.parse_args()
    from fpsiam.detect.models import build_detector, save_detector
    from fpsiam.experiment import machine_description

    work = Path(tempfile.mkdtemp(prefix="predict_stream_"))
    if args.model is None:
        net = build_detector("retinanet", "resnet18", min_size=args.size, max_size=args.size)
        args.model = str(save_detector(net, work / "model.safetensors"))
    model = args.model
    rows = []
    for n in args.frames:
        video = synthetic_video(work / f"v{n}", n)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, model, str(video), str(work / f"out{n}"), str(args.threads)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        s = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"frames": s["frames"], "model_fps": s["model_fps"], "end_to_end_fps": s["end_to_end_fps"],
                     "ratio": s["end_to_end_fps"] / s["model_fps"], "peak_rss_mb": s["peak_rss_mb"],
                     "dropped": s["dropped_frames"], "seconds": time.perf_counter() - start})  # fmt: skip
    print(f"{machine_description()}; {args.threads} threads; {time.strftime('%Y-%m-%d')}; model {Path(model).name}")
    print("| frames | model FPS | end-to-end FPS | end-to-end / model (target >= 0.9) | peak RSS (MB) | dropped |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['frames']:,} | {r['model_fps']:.1f} | {r['end_to_end_fps']:.1f} | **{r['ratio']:.3f}** | "
              f"{r['peak_rss_mb']:.0f} | {r['dropped']} |")  # fmt: skip


if __name__ == "__main__":
    main()
