"""Pretraining (``fpsiam pretrain``): frames -> two views -> method -> loss -> SGD, on the one training engine.

This module is the wiring: :class:`PretrainTask` tells :class:`fpsiam.train.loop.Engine` what pretraining is
(the two-view dataset, the method module, SGD with the paper's lr rules, the collapse monitor, the probe), and
:func:`pretrain` runs it and writes the results (``backbone.safetensors``, ``summary.json``). Optimisation
follows the paper: SGD (momentum 0.9, wd 1e-4), lr scaled by the global batch (lr x batch / 256), cosine decay
per epoch to 0 without warm-up (or constant, ``optim.schedule``), the predictor at its fixed initial lr.
Everything else -- DDP, AMP, exact resume, checkpoints, the NaN stop, the run-folder lock -- is the engine's.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fpsiam.config import PretrainConfig, to_dict
from fpsiam.data.frames import open_frames
from fpsiam.errors import FpsiamError
from fpsiam.fileio import write_json
from fpsiam.ssl.augment import TwoViewDataset, view_transform
from fpsiam.ssl.methods import build_method, collapse_std
from fpsiam.train import distributed as D
from fpsiam.train import runfolder as R
from fpsiam.train.checkpoint import latest_checkpoint, list_checkpoints
from fpsiam.train.lars import LARS
from fpsiam.train.loop import Engine, LoopSettings, Task
from fpsiam.weights import PRETRAIN_FORMAT as CHECKPOINT_FORMAT
from fpsiam.weights import init_backbone, pretrain_card, save_backbone

# ---------------------------------------------------------------------------------------- optimiser


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig, global_batch: int) -> torch.optim.Optimizer:
    """SGD (or LARS, ``optim.name``) at lr x batch / 256 over the trainable parameters (a momentum encoder has none).

    Groups: the method's ``fixed_lr_modules`` (SimSiam's predictor, named) keep their initial lr when
    ``optim.fix_predictor_lr``; LARS puts BatchNorm weights and biases in a group it neither adapts nor decays.
    """
    o = cfg.optim
    lr = o.lr * global_batch / 256
    fixed_ids = {id(p) for name in getattr(model, "fixed_lr_modules", ()) for p in getattr(model, name).parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in fixed_ids]
    fixed = [p for p in model.parameters() if p.requires_grad and id(p) in fixed_ids]
    common = {"fix_lr": False, "initial_lr": lr}
    if o.name == "lars":
        groups = [{"params": [p for p in rest if p.ndim > 1], **common},
                  {"params": [p for p in rest if p.ndim <= 1], "lars_exclude": True, **common}]  # fmt: skip
    else:
        groups = [{"params": rest, **common}]
    if fixed:
        groups.append({"params": fixed, "fix_lr": o.fix_predictor_lr, "initial_lr": lr, "name": "predictor"})
    if o.name == "lars":
        return LARS(
            groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, trust_coefficient=o.trust_coefficient
        )
    return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing per epoch from ``base_lr`` to 0 (no warm-up), as the reference's CosineAnnealing."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def set_epoch_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, schedule: str = "cosine") -> None:
    """The epoch's lr: cosine-decayed, or constant (``schedule="constant"``); a fixed-lr group keeps its own."""
    for group in optimizer.param_groups:
        fixed = group["fix_lr"] or schedule == "constant"
        group["lr"] = group["initial_lr"] if fixed else cosine_lr(group["initial_lr"], epoch, epochs)


# ---------------------------------------------------------------------------------------- the task


@dataclasses.dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path | None
    backbone: Path | None
    epochs: int
    global_step: int
    final: dict[str, float]
    model: torch.nn.Module  # the trained method module (unwrapped from DDP), on its device


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024.0


class PretrainTask(Task):
    """Self-supervised pretraining of one method (``model.method``) on unlabeled frames."""

    checkpoint_format = CHECKPOINT_FORMAT
    data_unit = "frames"

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.warned = False
        self.init_message = ""
        self.probe = None
        self.probed: dict[str, float] = {}  # the newest probe row
        self.lr = 0.0
        self.steps_per_epoch = 1
        d = cfg.data
        if not d.source:
            raise FpsiamError("no frame source: set data.source in the config or pass --data SRC")
        # opened before the run folder exists: a bad source leaves no half-made run behind
        self.source = open_frames(d.source, stride=d.stride, images=d.images)

    def identity(self) -> dict[str, Any]:
        return {"method": self.cfg.model.method, "arch": self.cfg.model.backbone}

    def dataset(self):
        d = self.cfg.data
        source = self.source
        self.data_where = d.source
        transform = view_transform(d.size, d.min_scale, d.mean, d.std, d.color_jitter, d.grayscale, d.blur)
        local = None
        if d.local_crops:  # multi-crop (SwAV): small crops of the same frame besides the two views
            local_t = view_transform(d.local_size, d.local_min_scale, d.mean, d.std, d.color_jitter, d.grayscale,
                                     d.blur, max_scale=d.local_max_scale)  # fmt: skip
            local = (local_t, d.local_crops)
        return TwoViewDataset(source, transform, temporal_k=d.temporal_k, local=local)

    def build_model(self):
        model = build_method(self.cfg.model)  # an unknown model.method is one line naming the known ones
        m = self.cfg.model
        self.init_message = init_backbone(model.backbone, m.backbone, m.init, m.weights_file)
        return model

    def optimizer(self, model, global_batch):
        if hasattr(model, "check_batch"):  # queues are filled per micro-batch
            model.check_batch(global_batch // self.cfg.train.accumulate)
        self.lr = self.cfg.optim.lr * global_batch / 256
        return build_optimizer(model, self.cfg, global_batch)

    def set_lr(self, optimizer, epoch, iteration):
        set_epoch_lr(optimizer, epoch, self.cfg.train.epochs, self.cfg.optim.schedule)
        warmup = self.cfg.optim.warmup_epochs * self.steps_per_epoch
        if iteration < warmup:  # linear warm-up over the first epochs, on top of the schedule
            for group in optimizer.param_groups:
                group["lr"] *= (iteration + 1) / warmup

    def losses(self, model, batch, device):
        views = [x.to(device, non_blocking=True) for x in batch]
        if self.cfg.train.channels_last and device.type == "cuda":
            views = [x.contiguous(memory_format=torch.channels_last) for x in views]
        return model(*views)

    def after_step(self, engine):
        if hasattr(engine.core, "on_step"):  # momentum encoders, queues, counters
            total = max(1, self.cfg.train.epochs * engine.steps_per_epoch)
            upcoming = engine.epoch + int(engine.step_in_epoch >= engine.steps_per_epoch)  # the next step's epoch
            engine.core.on_step(engine.global_step, upcoming, engine.global_step / total)

    def step_values(self, out):
        values = {"collapse" + k[1:]: collapse_std(v.detach().float()) for k, v in out.items() if k.startswith("z")}
        low = {k: round(v, 4) for k, v in values.items() if v < self.cfg.train.collapse_warn}
        if low and not self.warned:
            self.warned = True
            tqdm.write(f"warning: collapse monitor below {self.cfg.train.collapse_warn}: {low}", file=sys.stderr)
        return values

    def before_training(self, engine, fresh):
        self.steps_per_epoch = engine.steps_per_epoch
        if self.cfg.probe.ann and engine.env.is_main:  # decodes the labeled frames once; fails before training
            from fpsiam.ssl.probe import Probe

            self.probe = Probe(self.cfg.probe, self.cfg.data.mean, self.cfg.data.std)
            logged = [r for r in engine.metrics.rows() if r.get("kind") == "probe"]
            self.probed = {k: v for k, v in logged[-1].items() if k.startswith("probe_")} if logged else {}
            if engine.global_step == 0:
                self.run_probe(engine, 0)  # the init's own probe: where the curve starts

    def after_epoch(self, engine, epoch):
        if epoch % self.cfg.probe.every == 0 or epoch == self.cfg.train.epochs:
            self.run_probe(engine, epoch)

    def run_probe(self, engine, epoch: int) -> None:
        """Probe the live backbone (main process), log the row to metrics.jsonl, print one line."""
        if self.probe is None:
            return
        result = self.probe(engine.core.backbone)
        self.probed = {f"probe_{k}": result[k] for k in ("linear", "linear_std", "knn", "knn_std")}
        engine.log_row({"kind": "probe", "epoch": epoch, "global_step": engine.global_step, **self.probed})
        tqdm.write(f"probe after epoch {epoch}: linear {100 * result['linear']:.1f}% kNN {100 * result['knn']:.1f}%",
                   file=sys.stderr)  # fmt: skip

    def describe(self):
        m = self.cfg.model
        return {"what": f"{m.method}/{m.backbone}", "init": self.init_message, "lr": self.lr}


# ---------------------------------------------------------------------------------------- the run


def pretrain(
    cfg: PretrainConfig, run_dir: str | Path, resume: bool = False, env: D.DistEnv | None = None,
    allow_config_change: bool = False,
) -> PretrainResult:  # fmt: skip
    """Run (or resume) one pretraining run into ``run_dir``; writes the backbone and summary.json."""
    run_dir = Path(run_dir)
    task = PretrainTask(cfg)
    with D.session(cfg.train.device, env) as env:
        engine = Engine(task, LoopSettings.of(cfg.train, workers=cfg.data.workers), run_dir, cfg, env, resume,
                        allow_config_change)  # fmt: skip
        core = engine.run()
        final_ckpt = latest_checkpoint(run_dir) if env.is_main else None
        backbone_path = None
        if env.is_main:
            card = pretrain_card(to_dict(cfg), cfg.model.backbone, cfg.train.epochs, engine.global_step,
                                 frames=len(engine.dataset), probe=task.probed or None)  # fmt: skip
            backbone_path = save_backbone(core.backbone.state_dict(), run_dir / R.BACKBONE, card=card)[0]
            write_json(run_dir / R.SUMMARY, {
                "method": cfg.model.method, "arch": cfg.model.backbone, "epochs": cfg.train.epochs,
                "global_step": engine.global_step, "final": engine.last, "probe": task.probed or None,
                "seconds_this_process": engine.seconds(), "peak_rss_mb": _peak_rss_mb(),
                "checkpoint": str(final_ckpt), "backbone": str(backbone_path),
                "checkpoints_kept": [p.name for p in list_checkpoints(run_dir)],
            })  # fmt: skip
        D.barrier(env)
    return PretrainResult(run_dir, final_ckpt, backbone_path, cfg.train.epochs, engine.global_step, engine.last, core)
