"""SSL training-step time of our peer methods against the same methods built from lightly, measured alternately.

For each peer method (mocov2, simclr, byol, densecl, swav, barlowtwins) one training step of OUR module
(``build_method`` on the model keys of the ``<method>_r18_cpu`` preset, backbone from ``--arch``, MoCo / DenseCL
queue from ``--queue``) is timed against the same method written the way lightly 1.6's examples write it, with
lightly's own heads, losses and momentum utilities:

- mocov2: ``MoCoProjectionHead``, momentum copies (``deactivate_requires_grad`` / ``update_momentum``),
  ``NTXentLoss(memory_bank_size=(queue, head_dim))``; query from view 1, key from view 2 (asymmetric, as ours).
- simclr: ``SimCLRProjectionHead`` + ``NTXentLoss`` (in-batch negatives).
- byol: ``BYOLProjectionHead`` / ``BYOLPredictionHead``, momentum copies, ``NegativeCosineSimilarity``, momentum
  from ``cosine_schedule`` (ours: ``cosine_momentum``; both over a nominal 1,000-step run).
- densecl: lightly's DenseCL example: ``DenseCLProjectionHead`` for the global term (on the pooled C5) and for the
  local term (per location of the C5 map), momentum copies, one ``NTXentLoss`` with a memory bank for each term,
  key locations matched by backbone-feature similarity (``select_most_similar``).
- barlowtwins: ``BarlowTwinsProjectionHead`` + ``BarlowTwinsLoss`` (each view through the network on its own).
- swav: ``SwaVProjectionHead`` + ``SwaVPrototypes`` (``normalize()`` before every step) + ``SwaVLoss``, with 2
  crops at ``--size`` and ``--local-crops`` crops at ``--local-size``, each crop through the network on its own
  (lightly's example). Prototypes trained from the first step on both sides (ours: ``freeze_prototypes_steps=0``,
  the steady state; lightly's default), no SwAV queue (ours enables it only from ``queue_start_epoch``).

Both sides of a pair use the same torchvision ResNet (random init, ``zero_init_residual=True``), the same head
sizes, temperature and momentum (read from our preset), the same random input (batch ``--batch`` per view) and
the same optimizer: SGD, momentum 0.9, weight decay 1e-4, lr 0.05 * batch / 256, for every method (the presets
train SimCLR / BYOL / SwAV with LARS; SGD on both sides keeps the pair fair). One step = forward of all views +
loss + backward + optimizer step + the method's per-step update (ours: ``model.on_step(step, 0, progress)``;
lightly's: ``update_momentum`` of every momentum copy; the MoCo / DenseCL memory banks are updated inside the
loss, ours inside ``forward``).

DenseCL: ours pools the C5 map to a ``grid`` x ``grid`` grid before the dense head; lightly's example uses the raw
C5 map. ``--densecl-grid`` defaults to the C5 map's side at ``--size`` (2 at 64 px, 7 at 224 px) so both sides do
the same work; ``--densecl-grid 7`` measures the preset's grid (at 64 px: 49 locations instead of 4).

Context rows: FPSiam vs our SimSiam (target <= 1.10) and our SimSiam vs lightly's (``ssl_step.lightly_simsiam``),
the three timed alternately together.

The models of one comparison are timed in alternation (round-robin, the order rotated every round) after
``--warmup`` steps each, so a CPU shared with other work slows them alike; reported are median seconds per step.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_step.py                 # R18 @64, batch 32, all five
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_step.py --methods mocov2 swav --rounds 20
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_step.py --batch 8 --size 32 --rounds 2 --warmup 1  # smoke

Target: ours / lightly <= 1.00 for every method. lightly is not a dependency of fpsiam
(``.venv/bin/pip install lightly``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainConfig, PretrainModel, load_config
from fpsiam.ssl.methods import build_method

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ssl_step import alternate, cpu_model, lightly_simsiam  # noqa: E402

try:
    import lightly
    from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.models.modules import (
        BarlowTwinsProjectionHead,
        BYOLPredictionHead,
        BYOLProjectionHead,
        DenseCLProjectionHead,
        MoCoProjectionHead,
        SimCLRProjectionHead,
        SwaVProjectionHead,
        SwaVPrototypes,
    )
    from lightly.models.utils import deactivate_requires_grad, select_most_similar, update_momentum
    from lightly.utils.scheduler import cosine_schedule
except ImportError:
    lightly = None

PEERS = ("mocov2", "simclr", "byol", "densecl", "swav", "barlowtwins")
NOMINAL_STEPS = 1000  # the run length the momentum schedules (BYOL) are evaluated against


# ----------------------------------------------------------------------------------------------------
# lightly's side: each method as lightly's examples write it.
# ----------------------------------------------------------------------------------------------------


def resnet(arch: str, keep_pool: bool = True) -> tuple[nn.Module, int]:
    """lightly's examples' backbone: a torchvision ResNet without fc (and without the pool for dense methods)."""
    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    return nn.Sequential(*list(net.children())[: -1 if keep_pool else -2]), net.fc.in_features


def momentum_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    deactivate_requires_grad(copied)
    return copied


class LightlyMoCo(nn.Module):
    def __init__(self, arch: str, cfg: PretrainModel):
        super().__init__()
        self.backbone, dim = resnet(arch)
        self.projection_head = MoCoProjectionHead(dim, cfg.hidden_dim, cfg.head_dim)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = NTXentLoss(cfg.temperature, memory_bank_size=(cfg.queue_size, cfg.head_dim))
        self.m = cfg.momentum

    def forward(self, x_query: Tensor, x_key: Tensor) -> dict[str, Tensor]:
        query = self.projection_head(self.backbone(x_query).flatten(start_dim=1))
        key = self.projection_head_momentum(self.backbone_momentum(x_key).flatten(start_dim=1)).detach()
        return {"loss": self.criterion(query, key)}

    def on_step(self, step: int, epoch: int, progress: float) -> None:
        update_momentum(self.backbone, self.backbone_momentum, m=self.m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.m)


class LightlySimCLR(nn.Module):
    def __init__(self, arch: str, cfg: PretrainModel):
        super().__init__()
        self.backbone, dim = resnet(arch)
        self.projection_head = SimCLRProjectionHead(dim, cfg.hidden_dim, cfg.head_dim)
        self.criterion = NTXentLoss(cfg.temperature)

    def forward(self, x0: Tensor, x1: Tensor) -> dict[str, Tensor]:
        z0 = self.projection_head(self.backbone(x0).flatten(start_dim=1))
        z1 = self.projection_head(self.backbone(x1).flatten(start_dim=1))
        return {"loss": self.criterion(z0, z1)}


class LightlyBYOL(nn.Module):
    def __init__(self, arch: str, cfg: PretrainModel):
        super().__init__()
        self.backbone, dim = resnet(arch)
        self.projection_head = BYOLProjectionHead(dim, cfg.hidden_dim, cfg.head_dim)
        self.prediction_head = BYOLPredictionHead(cfg.head_dim, cfg.hidden_dim, cfg.head_dim)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()
        self.m, self.m_end = cfg.momentum, cfg.momentum_end

    def online(self, x: Tensor) -> Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def target(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def forward(self, x0: Tensor, x1: Tensor) -> dict[str, Tensor]:
        p0, z0 = self.online(x0), self.target(x0)
        p1, z1 = self.online(x1), self.target(x1)
        return {"loss": 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))}

    def on_step(self, step: int, epoch: int, progress: float) -> None:
        m = cosine_schedule(step, NOMINAL_STEPS, self.m, self.m_end)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)


class LightlyDenseCL(nn.Module):
    def __init__(self, arch: str, cfg: PretrainModel):
        super().__init__()
        self.backbone, dim = resnet(arch, keep_pool=False)
        self.projection_head_global = DenseCLProjectionHead(dim, cfg.hidden_dim, cfg.head_dim)
        self.projection_head_local = DenseCLProjectionHead(dim, cfg.hidden_dim, cfg.head_dim)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_global_momentum = momentum_copy(self.projection_head_global)
        self.projection_head_local_momentum = momentum_copy(self.projection_head_local)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.criterion_global = NTXentLoss(cfg.temperature, memory_bank_size=(cfg.queue_size, cfg.head_dim))
        self.criterion_local = NTXentLoss(cfg.temperature, memory_bank_size=(cfg.queue_size, cfg.head_dim))
        self.w, self.m = cfg.dense_weight, cfg.momentum

    def encode(self, x: Tensor, backbone: nn.Module, head_global: nn.Module, head_local: nn.Module):
        """(features [B, H*W, C], global projection [B, D], local projections [B, H*W, D])."""
        features = backbone(x)
        global_ = head_global(self.pool(features).flatten(start_dim=1))
        features = features.flatten(start_dim=2).permute(0, 2, 1)
        return features, global_, head_local(features)

    def forward(self, x_query: Tensor, x_key: Tensor) -> dict[str, Tensor]:
        q_feat, q_global, q_local = self.encode(
            x_query, self.backbone, self.projection_head_global, self.projection_head_local
        )
        with torch.no_grad():
            k_feat, k_global, k_local = self.encode(
                x_key, self.backbone_momentum, self.projection_head_global_momentum, self.projection_head_local_momentum
            )
        k_local = select_most_similar(q_feat, k_feat, k_local)
        loss_global = self.criterion_global(q_global, k_global)
        loss_local = self.criterion_local(q_local.flatten(end_dim=1), k_local.flatten(end_dim=1))
        return {"loss": (1 - self.w) * loss_global + self.w * loss_local}

    def on_step(self, step: int, epoch: int, progress: float) -> None:
        update_momentum(self.backbone, self.backbone_momentum, m=self.m)
        update_momentum(self.projection_head_global, self.projection_head_global_momentum, m=self.m)
        update_momentum(self.projection_head_local, self.projection_head_local_momentum, m=self.m)


class LightlySwaV(nn.Module):
    def __init__(self, arch: str, cfg: PretrainModel):
        super().__init__()
        self.backbone, dim = resnet(arch)
        self.projection_head = SwaVProjectionHead(dim, cfg.hidden_dim, cfg.head_dim)
        self.prototypes = SwaVPrototypes(cfg.head_dim, n_prototypes=cfg.prototypes)
        self.criterion = SwaVLoss(cfg.temperature, cfg.sinkhorn_iterations, cfg.sinkhorn_epsilon)

    def embed(self, x: Tensor) -> Tensor:
        z = F.normalize(self.projection_head(self.backbone(x).flatten(start_dim=1)), dim=1, p=2)
        return self.prototypes(z)

    def forward(self, *crops: Tensor) -> dict[str, Tensor]:
        self.prototypes.normalize()
        scores = [self.embed(crop) for crop in crops]
        return {"loss": self.criterion(scores[:2], scores[2:])}


class LightlyBarlowTwins(nn.Module):
    def __init__(self, arch: str, cfg: PretrainModel):
        super().__init__()
        self.backbone, dim = resnet(arch)
        self.projection_head = BarlowTwinsProjectionHead(dim, cfg.hidden_dim, cfg.head_dim)
        self.criterion = BarlowTwinsLoss()

    def forward(self, x0: Tensor, x1: Tensor) -> dict[str, Tensor]:
        z0 = self.projection_head(self.backbone(x0).flatten(start_dim=1))
        z1 = self.projection_head(self.backbone(x1).flatten(start_dim=1))
        return {"loss": self.criterion(z0, z1)}


LIGHTLY: dict[str, Callable[[str, PretrainModel], nn.Module]] = {
    "mocov2": LightlyMoCo,
    "simclr": LightlySimCLR,
    "byol": LightlyBYOL,
    "densecl": LightlyDenseCL,
    "swav": LightlySwaV,
    "barlowtwins": LightlyBarlowTwins,
}


# ----------------------------------------------------------------------------------------------------
# Our side, the step, the table.
# ----------------------------------------------------------------------------------------------------


def c5_side(size: int) -> int:
    """Side of a torchvision ResNet's C5 map for a ``size`` input (five stride-2 stages, each rounding up)."""
    for _ in range(5):
        size = (size + 1) // 2
    return size


def our_config(method: str, args: argparse.Namespace) -> PretrainModel:
    """The ``model:`` keys of our ``<method>_r18_cpu`` preset, with the benchmark's backbone and queue."""
    overrides = [f"model.backbone={args.arch}"]
    if method in ("mocov2", "densecl"):
        overrides.append(f"model.queue_size={args.queue}")
    if method == "densecl":
        overrides.append(f"model.grid={args.densecl_grid or c5_side(args.size)}")
    if method == "swav":
        overrides.append("model.freeze_prototypes_steps=0")
    return load_config(PretrainConfig, f"{method}_r18_cpu", overrides).model


def make_step(model: nn.Module, views: list[Tensor]) -> Callable[[], None]:
    """One training step of ``model`` on ``views``: forward, backward, SGD step, then ``on_step`` if it has one."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05 * views[0].shape[0] / 256, momentum=0.9, weight_decay=1e-4)
    on_step = getattr(model, "on_step", None)
    model.train()
    done = 0

    def step() -> None:
        nonlocal done
        opt.zero_grad(set_to_none=True)
        model(*views)["loss"].backward()
        opt.step()
        done += 1
        if on_step is not None:
            on_step(done, 0, min(done / NOMINAL_STEPS, 1.0))

    return step


def views_for(method: str, args: argparse.Namespace) -> list[Tensor]:
    views = [torch.randn(args.batch, 3, args.size, args.size) for _ in range(2)]
    if method == "swav":
        views += [torch.randn(args.batch, 3, args.local_size, args.local_size) for _ in range(args.local_crops)]
    return views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--size", type=int, default=64, help="side of the two global views")
    parser.add_argument("--batch", type=int, default=32, help="images per view")
    parser.add_argument("--rounds", type=int, default=10, help="alternated timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--methods", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--local-crops", type=int, default=2, help="SwAV's low-resolution crops")
    parser.add_argument("--local-size", type=int, default=32, help="side of SwAV's low-resolution crops")
    parser.add_argument("--queue", type=int, default=4096, help="MoCo / DenseCL queue (memory bank) size")
    parser.add_argument("--densecl-grid", type=int, default=None, help="our DenseCL grid (default: the C5 side)")
    parser.add_argument("--no-context", action="store_true", help="skip the FPSiam / SimSiam rows")
    args = parser.parse_args()
    if lightly is None:
        sys.exit("lightly is not installed: `.venv/bin/pip install lightly` to compare with its methods")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, lightly {lightly.__version__}; "
        f"{args.arch}, batch {args.batch} per view, size {args.size}, crops 2 x {args.size} "
        f"(swav: + {args.local_crops} x {args.local_size}), queue {args.queue}, "
        f"densecl grid {args.densecl_grid or c5_side(args.size)} (C5 map {c5_side(args.size)}); "
        f"SGD m 0.9 wd 1e-4 on both sides; {args.warmup} warm-up + {args.rounds} alternated steps, medians",
        flush=True,
    )
    print("| method | ours s/step | lightly s/step | ours/lightly (target <= 1.00) |")
    print("|---|---|---|---|")
    for method in args.methods:
        cfg = our_config(method, args)
        torch.manual_seed(0)
        views = views_for(method, args)
        models = {"ours": build_method(cfg), "lightly": LIGHTLY[method](args.arch, cfg)}
        t = alternate({name: make_step(m, views) for name, m in models.items()}, args.warmup, args.rounds)
        print(f"| {method} | {t['ours']:.3f} | {t['lightly']:.3f} | {t['ours'] / t['lightly']:.3f} |", flush=True)
        del models

    if args.no_context:
        return
    torch.manual_seed(0)
    views = views_for("simsiam", args)
    models = {
        "fpsiam": build_method(our_config("fpsiam", args)),
        "simsiam": build_method(our_config("simsiam", args)),
        "lightly": lightly_simsiam(args.arch),  # 2048-2048-2048 projector, 2048-512-2048 predictor, as our preset
    }
    t = alternate({name: make_step(m, views) for name, m in models.items()}, args.warmup, args.rounds)
    print(f"| simsiam | {t['simsiam']:.3f} | {t['lightly']:.3f} | {t['simsiam'] / t['lightly']:.3f} |")
    print()
    print("| context | FPSiam s/step | our SimSiam s/step | FPSiam / SimSiam (target <= 1.10) |")
    print("|---|---|---|---|")
    print(f"| fpsiam vs simsiam | {t['fpsiam']:.3f} | {t['simsiam']:.3f} | {t['fpsiam'] / t['simsiam']:.3f} |")


if __name__ == "__main__":
    main()
