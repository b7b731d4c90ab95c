"""GPU checks in one short run: pretraining step throughput and detector train/inference speed on one GPU.

Prints a markdown table. Nothing is installed or downloaded; random weights, random data. Run it through
``benchmarks/gpu_check.sh`` on a machine with a CUDA GPU.

- FPSiam vs SimSiam step (R50, 224 px, batch 64 per GPU = the paper's per-GPU batch), bf16 autocast,
  channels_last: samples/s and the FPSiam/SimSiam time ratio (target <= 1.10).
- Faster R-CNN and RetinaNet R50-FPN at 480x480: training images/s (batch 8, bf16 autocast) and inference
  FPS (batch 1 and batch 8, fp16 weights/inputs; target >= 60 FPS for R50-FPN in fp16).
- The deployment paths at 480 px, batch 1: PyTorch eager in fp16 and bf16, the TorchScript export (fp32 and
  fp16), and ONNX Runtime's CUDA provider on the ONNX export (skipped with a note when onnxruntime-gpu is missing).
"""

from __future__ import annotations

import argparse
import time

import torch

from fpsiam.config import PretrainModel
from fpsiam.detect.models import build_detector
from fpsiam.ssl.methods import build_method


def timed(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def ssl_rows(steps: int, batch: int) -> list[str]:
    dev = torch.device("cuda")
    rows, secs = [], {}
    for method in ("simsiam", "fpsiam"):
        model = build_method(PretrainModel(method=method, backbone="resnet50")).to(dev)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x1 = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
        x2 = torch.randn_like(x1)

        def step(model=model, opt=opt, x1=x1, x2=x2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x1, x2)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        secs[method] = timed(step, steps)
        rows.append(f"| pretrain {method} R50@224 bf16, batch {batch} | {batch / secs[method]:.0f} samples/s | "
                    f"{secs[method] * 1000:.0f} ms/step |")  # fmt: skip
    rows.append(f"| FPSiam / SimSiam step time (target <= 1.10) | **{secs['fpsiam'] / secs['simsiam']:.3f}** | |")
    return rows


def detector_rows(steps: int) -> list[str]:
    dev = torch.device("cuda")
    rows = []
    for kind in ("faster_rcnn", "retinanet"):
        model = build_detector(kind, "resnet50", min_size=480, max_size=480).to(dev)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
        images = [torch.rand(3, 480, 560, device=dev) for _ in range(8)]
        targets = [{"boxes": torch.tensor([[100.0, 120.0, 220.0, 260.0]], device=dev),
                    "labels": torch.ones(1, dtype=torch.int64, device=dev)} for _ in range(8)]  # fmt: skip

        def train_step(model=model, opt=opt, images=images, targets=targets):
            model.train()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_train = timed(train_step, steps)
        rows.append(
            f"| {kind} R50-FPN train, batch 8 @480, bf16 | {8 / t_train:.1f} img/s | {t_train * 1000:.0f} ms/step |"
        )
        half = model.eval().half()
        for n in (1, 8):
            batch = [im.half() for im in images[:n]]

            def infer(half=half, batch=batch):
                with torch.inference_mode():
                    half(batch)

            t = timed(infer, steps * 2)
            rows.append(
                f"| {kind} R50-FPN inference @480 fp16, batch {n} | {n / t:.1f} FPS | {t * 1000:.1f} ms/batch |"
            )
    return rows


def deploy_rows(steps: int) -> list[str]:
    """Inference FPS at 480 px, batch 1, of each deployment path (eager fp16/bf16, TorchScript, ONNX Runtime)."""
    import tempfile
    from pathlib import Path

    from fpsiam.detect.export import export_model
    from fpsiam.detect.models import save_detector

    dev = torch.device("cuda")
    rows = []
    work = Path(tempfile.mkdtemp())
    frame = torch.rand(3, 480, 560, device=dev)
    for kind in ("faster_rcnn", "retinanet"):
        model = build_detector(kind, "resnet50", min_size=480, max_size=480)
        path = save_detector(model, work / f"{kind}.safetensors")
        eager = model.to(dev).eval()
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):

            def run(dtype=dtype, eager=eager):
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                    eager([frame])

            rows.append(f"| {kind} eager {name} autocast @480, batch 1 | {1 / timed(run, steps * 2):.1f} FPS | |")
        scripted = torch.jit.load(str(export_model(path, "torchscript", work / f"{kind}.pt")), map_location=dev)
        for name, x in (("fp32", frame), ("fp16", frame.half())):
            m = scripted.half() if name == "fp16" else scripted

            def run_ts(m=m, x=x):
                with torch.inference_mode():
                    m([x])

            try:
                rows.append(f"| {kind} TorchScript {name} @480, batch 1 | {1 / timed(run_ts, steps * 2):.1f} FPS | |")
            except RuntimeError as e:
                rows.append(f"| {kind} TorchScript {name} @480 | failed: {str(e).splitlines()[0][:80]} | |")
        try:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ImportError("onnxruntime without CUDA")
            onnx = export_model(path, "onnx", work / f"{kind}.onnx")
            sess = ort.InferenceSession(str(onnx), providers=["CUDAExecutionProvider"])
            x = frame.cpu().numpy()[None]
            name = sess.get_inputs()[0].name
            t0 = time.perf_counter()
            for _ in range(steps * 2):
                sess.run(None, {name: x})
            rows.append(f"| {kind} ONNX Runtime CUDA fp32 @480, batch 1 | "
                        f"{steps * 2 / (time.perf_counter() - t0):.1f} FPS | |")  # fmt: skip
        except ImportError as e:
            rows.append(f"| {kind} ONNX Runtime CUDA | skipped ({e}; pip install onnxruntime-gpu) | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a GPU machine")
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| check | throughput | time |")
    print("|---|---|---|")
    for row in ssl_rows(args.steps, args.batch) + detector_rows(args.steps) + deploy_rows(args.steps):
        print(row, flush=True)


if __name__ == "__main__":
    main()
