"""``fpsiam detect train``: fine-tune Faster R-CNN / RetinaNet on polyp boxes, on the one training engine.

``images + boxes -> detector(backbone from a weights file) -> predictions -> metrics``, every epoch. This module is
the wiring: :class:`DetectTask` tells :class:`fpsiam.train.loop.Engine` what fine-tuning is (the boxed frames, the
detector, SGD with the paper's schedule: lr 0.002 for a global batch of 8 scaled linearly, linear warm-up, x0.1 at
epochs 8 and 11, 12 epochs; the val evaluation after every ``eval_every`` epochs, keeping ``best.safetensors``),
and :func:`train_detector` runs it and writes ``last.safetensors`` and ``results.json`` (best and last both
reported: say which one a table shows). DDP, AMP, exact resume, clipping, skipping non-finite steps, checkpoints
and the run-folder lock are the engine's.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fpsiam import __version__
from fpsiam.config import DetectConfig
from fpsiam.data.coco import CocoDetection, collate_fn, detection_transforms
from fpsiam.detect.engine import predict, step_lr, to_device
from fpsiam.detect.evaluate import coco_metrics, write_results
from fpsiam.detect.models import DetectorSpec, build_from_spec, save_detector
from fpsiam.errors import FpsiamError
from fpsiam.fileio import write_json
from fpsiam.train import distributed as D
from fpsiam.train import runfolder as R
from fpsiam.train.loop import Engine, LoopSettings, Task
from fpsiam.train.precise_bn import precise_bn

CHECKPOINT_FORMAT = "fpsiam-detect-v1"
VAL_PREDICTIONS = R.VAL_PREDICTIONS  # COCO results of the last model on the val set


@dataclasses.dataclass
class DetectResult:
    run_dir: Path
    best: dict[str, Any]  # {"epoch": e, **val metrics} of the best val mAP
    last: dict[str, Any]  # {"epoch": e, **val metrics} of the last epoch
    best_model: Path | None
    last_model: Path | None
    model: torch.nn.Module


def model_meta(cfg: DetectConfig) -> dict[str, Any]:
    """What a model file records beside the spec: where the backbone came from."""
    return {**dataclasses.asdict(DetectorSpec.of(cfg.model)), "backbone": cfg.model.backbone}


def param_groups(model: torch.nn.Module, backbone_lr_mult: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: the FPN and heads (lr), and the backbone (lr x ``backbone_lr_mult``)."""
    body = {id(p) for p in model.backbone.body.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in trainable if id(p) not in body], "lr_mult": 1.0, "name": "neck+heads"},
        {"params": [p for _, p in trainable if id(p) in body], "lr_mult": backbone_lr_mult, "name": "backbone"},
    ]
    return [g for g in groups if g["params"]]


def precise_backbone_bn(model: torch.nn.Module, dataset: CocoDetection, images: int, batch_size: int) -> int:
    """Re-estimate the backbone's BN statistics on the first ``images`` frames of ``dataset`` (precise BN).

    The frames go through the detector's own resize and normalisation (``model.transform``), without flips; every
    BatchNorm of the backbone body is re-estimated (the frozen stem's too: its statistics stay fixed afterwards).
    Returns the number of frames used.
    """
    body, n = model.backbone.body, min(images, len(dataset))
    device = next(model.parameters()).device

    def batches():
        for i in range(0, n, batch_size):
            frames = [dataset[j][0].to(device) for j in range(i, min(n, i + batch_size))]
            yield model.transform(frames)[0].tensors

    precise_bn(body, batches())
    return n


def grad_norm_summary(norms: list[float]) -> dict[str, float]:
    """Median, 99th percentile and max of the per-step gradient norms (before clipping): the spikes, in numbers."""
    finite = sorted(v for v in norms if math.isfinite(v))
    if not finite:
        return {}
    pick = lambda q: finite[min(len(finite) - 1, int(q * len(finite)))]  # noqa: E731
    return {"median": pick(0.5), "p99": pick(0.99), "max": finite[-1], "steps": len(finite),
            "over_10": sum(v > 10 for v in finite)}  # fmt: skip


def _loader(dataset, batch_size: int, workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_fn)


def evaluate_on(model, dataset, batch_size: int, device, dtype, workers: int, save_to: Path | None = None):
    """COCO metrics (+ speed) of ``model`` on a CocoDetection dataset; optionally keep the COCO results."""
    results, speed = predict(model, _loader(dataset, batch_size, workers), device, dtype)
    if save_to is not None:
        write_results(save_to, results)
    return {**coco_metrics(dataset.coco, results), **speed}


def best_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluated epoch with the best val mAP (the earliest on ties)."""
    return max(rows, key=lambda r: (r["mAP"], -r["epoch"])) if rows else {}


class DetectTask(Task):
    """Fine-tuning one detector on a COCO train json, evaluated on a val json."""

    checkpoint_format = CHECKPOINT_FORMAT
    collate_fn = staticmethod(collate_fn)
    measure_grad_norm = True  # every step's norm: the spikes of a transfer are in results.json
    data_unit = "training images"

    def __init__(self, cfg: DetectConfig, run_dir: Path):
        d = cfg.data
        if not d.train or not d.val:
            raise FpsiamError("set data.train and data.val (COCO json files), or pass --train/--val")
        self.cfg, self.run_dir = cfg, run_dir
        self.data_where = d.train
        self.train_set = CocoDetection(d.train, d.images, detection_transforms(True, d.hflip),
                                       keep_negatives=d.keep_negatives)  # fmt: skip
        self.val_set = CocoDetection(d.val, d.images, detection_transforms(False), keep_negatives=True)
        self.history: list[dict[str, Any]] = []
        self.grad_norms: list[float] = []  # every step's (pre-clip) gradient norm
        self.init_message = ""
        self.base_lr = 0.0
        self.epoch_started = (0, 0.0)  # (global step, seconds) when the epoch began

    @classmethod
    def without_data(cls, cfg: DetectConfig, base_lr: float) -> DetectTask:
        """A task with no data sets: its lr rule and losses are all :meth:`Engine.step` needs (tests, benchmarks)."""
        task = cls.__new__(cls)
        task.cfg, task.base_lr, task.grad_norms, task.history = cfg, base_lr, [], []
        return task

    def identity(self):
        return {"kind": self.cfg.model.kind, "arch": self.cfg.model.arch}

    def dataset(self):
        return self.train_set

    def build_model(self):
        m = self.cfg.model
        model = build_from_spec(DetectorSpec.of(m), init=m.backbone, weights_file=m.weights_file)
        self.init_message = getattr(model, "init_message", "")
        return model

    def optimizer(self, model, global_batch):
        o = self.cfg.optim
        self.base_lr = o.lr * global_batch / 8
        groups = param_groups(model, o.backbone_lr_mult)
        return torch.optim.SGD(groups, lr=self.base_lr, momentum=o.momentum, weight_decay=o.weight_decay)

    def set_lr(self, optimizer, epoch, iteration):
        o = self.cfg.optim
        lr = step_lr(self.base_lr, epoch, iteration, o.steps, o.gamma, o.warmup_iters, o.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def losses(self, model, batch, device):
        images, targets = to_device(*batch, device)
        losses = model(images, targets)
        return {**losses, "loss": sum(losses[k] for k in sorted(losses))}

    def before_training(self, engine, fresh):
        if fresh and self.cfg.model.precise_bn:
            d = self.cfg.data
            plain = CocoDetection(d.train, d.images, detection_transforms(False), keep_negatives=d.keep_negatives)
            used = precise_backbone_bn(engine.core, plain, self.cfg.model.precise_bn, self.cfg.train.batch_size)
            self.init_message += f"; precise BN: backbone statistics re-estimated on {used} train images"
        self.epoch_started = (engine.global_step, engine.seconds())

    def after_step(self, engine):
        self.grad_norms.append(engine.last_grad_norm)

    def after_epoch(self, engine, epoch):
        t, env = self.cfg.train, engine.env
        steps, seconds = engine.global_step - self.epoch_started[0], engine.seconds() - self.epoch_started[1]
        row: dict[str, Any] = {"epoch": epoch, "global_step": engine.global_step,
                               "train_images_per_s": steps * engine.global_batch / max(seconds, 1e-9)}  # fmt: skip
        if epoch % t.eval_every == 0 or epoch == t.epochs:
            if env.is_main:
                keep = self.run_dir / VAL_PREDICTIONS if epoch == t.epochs else None  # the final model's val results
                row.update(evaluate_on(engine.core, self.val_set, t.batch_size, env.device, engine.dtype,
                                       self.cfg.data.workers, save_to=keep))  # fmt: skip
                is_best = not any(h.get("mAP", -1) >= row["mAP"] for h in self.history)
                if is_best:
                    save_detector(engine.core, self.run_dir / R.BEST_MODEL, {**model_meta(self.cfg), "epoch": epoch})
                engine.log(f"epoch {epoch}: val mAP {row['mAP']:.4f} AP50 {row['AP50']:.4f} AP75 {row['AP75']:.4f}"
                           + (" (best)" if is_best else ""))  # fmt: skip
            D.barrier(env)
        self.history.append(row)
        engine.log_row({**row, "kind": "epoch"})
        self.epoch_started = (engine.global_step, engine.seconds())

    def state_dict(self):
        return {"history": self.history, "grad_norms": self.grad_norms}

    def load_state_dict(self, state):
        self.history = list(state.get("history", []))
        self.grad_norms = list(state.get("grad_norms", []))

    def describe(self):
        m = self.cfg.model
        return {"what": f"{m.kind}/{m.arch} from {m.backbone}", "init": self.init_message, "lr": self.base_lr,
                "val_images": len(self.val_set)}  # fmt: skip


def train_detector(
    cfg: DetectConfig, run_dir: str | Path, resume: bool = False, env: D.DistEnv | None = None,
    allow_config_change: bool = False,
) -> DetectResult:  # fmt: skip
    """Train (or resume) one detector into ``run_dir``; writes last.safetensors and results.json."""
    run_dir = Path(run_dir)
    task = DetectTask(cfg, run_dir)
    settings = LoopSettings.of(cfg.train, workers=cfg.data.workers, clip_grad_norm=cfg.optim.clip_grad_norm)
    with D.session(cfg.train.device, env) as env:
        engine = Engine(task, settings, run_dir, cfg, env, resume, allow_config_change)
        core = engine.run()
        evaluated = [h for h in task.history if "mAP" in h]
        best_path = last_path = None
        if env.is_main:
            last = evaluated[-1] if evaluated else {}
            card = {"trained_on": cfg.data.train, "train_images": len(task.train_set), "validated_on": cfg.data.val,
                    "val_metrics": {k: last[k] for k in ("mAP", "AP50", "AP75") if k in last},
                    "init": task.init_message, "fpsiam": __version__}  # fmt: skip
            last_path = save_detector(core, run_dir / R.LAST_MODEL,
                                      {**model_meta(cfg), "epoch": cfg.train.epochs, "card": card})  # fmt: skip
            best_path = run_dir / R.BEST_MODEL
            write_json(run_dir / R.RESULTS, {
                "model": model_meta(cfg), "init": task.init_message, "best": best_of(evaluated),
                "train_images": len(task.train_set), "last": evaluated[-1] if evaluated else {},
                "history": task.history, "grad_norm": grad_norm_summary(task.grad_norms),
                "skipped_steps": engine.skipped,
                "note": "best = best val mAP epoch (model best.safetensors); last = final epoch (last.safetensors)",
            })  # fmt: skip
        D.barrier(env)
    return DetectResult(run_dir, best_of(evaluated), evaluated[-1] if evaluated else {}, best_path, last_path, core)
