"""SSL training-step time: FPSiam vs SimSiam, and our SimSiam vs lightly's, measured alternately.

One step = forward of both views + backward + SGD step (momentum 0.9, wd 1e-4), batch B per view, random
input at the given size. The models of one comparison are timed in alternation (round-robin, the order
rotated every round) after a few warm-up steps, so a CPU shared with other work slows them alike and the
ratio stays fair. Reported: median seconds per step and the ratios.

    .venv/bin/python benchmarks/ssl_step.py            # R18 @128 and R50 @224, batch 8
    .venv/bin/python benchmarks/ssl_step.py --quick    # R18 only

Targets: FPSiam / SimSiam <= 1.10 (same backbone, batch, size); our SimSiam / lightly's <= 1.00.
lightly is not a dependency of fpsiam; without it that comparison is skipped with a message.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from fpsiam.ssl.methods import FPSiam, SimSiam


def lightly_simsiam(arch: str) -> nn.Module | None:
    """SimSiam exactly as lightly's example builds it, with lightly's own heads and loss."""
    try:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
    except ImportError:
        return None

    class LightlySimSiam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            resnet = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
            feat = resnet.fc.in_features
            self.backbone = nn.Sequential(*list(resnet.children())[:-1])
            self.projection_head = SimSiamProjectionHead(feat, 2048, 2048)
            self.prediction_head = SimSiamPredictionHead(2048, 512, 2048)
            self.criterion = NegativeCosineSimilarity()

        def branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.projection_head(self.backbone(x).flatten(start_dim=1))
            return z.detach(), self.prediction_head(z)

        def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
            z1, p1 = self.branch(x1)
            z2, p2 = self.branch(x2)
            return {"loss": 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))}

    return LightlySimSiam()


def make_step(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05 * x1.shape[0] / 256, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x1, x2)["loss"].backward()
        opt.step()
        if x1.is_cuda:
            torch.cuda.synchronize()

    return step


def alternate(steps: dict[str, Callable[[], None]], warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each callable, timed round-robin with the order rotated each round."""
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 @128 only")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    configs = [("resnet18", 128)] if args.quick else [("resnet18", 128), ("resnet50", 224)]
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {where}, batch {args.batch}, "
        f"{args.warmup} warm-up + {args.rounds} alternated steps"
    )
    print(
        "| backbone | size | FPSiam s/step | SimSiam s/step | FPSiam/SimSiam | lightly SimSiam s/step | ours/lightly |"
    )
    print("|---|---|---|---|---|---|---|")
    for arch, size in configs:
        torch.manual_seed(0)
        x1 = torch.randn(args.batch, 3, size, size, device=device)
        x2 = torch.randn(args.batch, 3, size, size, device=device)
        models = {"fpsiam": FPSiam(arch), "simsiam": SimSiam(arch)}
        theirs = lightly_simsiam(arch)
        if theirs is not None:
            models["lightly"] = theirs
        steps = {name: make_step(m.to(device), x1, x2) for name, m in models.items()}
        t = alternate(steps, args.warmup, args.rounds)
        lightly_cols = (
            f"{t['lightly']:.3f} | {t['simsiam'] / t['lightly']:.3f}"
            if "lightly" in t
            else "(lightly not installed) | -"
        )
        print(
            f"| {arch} | {size} | {t['fpsiam']:.3f} | {t['simsiam']:.3f} | {t['fpsiam'] / t['simsiam']:.3f} | "
            f"{lightly_cols} |",
            flush=True,
        )
    if lightly_simsiam("resnet18") is None:
        print("lightly is not installed: `.venv/bin/pip install lightly` to compare with its SimSiam")


if __name__ == "__main__":
    main()
