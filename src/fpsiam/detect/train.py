"""``fpsiam detect train``: fine-tune Faster R-CNN / RetinaNet on polyp boxes with the paper's recipe.

``images + boxes -> detector(backbone from a weights file) -> predictions -> metrics``, every epoch:
SGD (lr 0.002 for a global batch of 8, scaled linearly), linear warm-up, x0.1 at epochs 8 and 11, 12 epochs
(DESIGN §2). The val set is evaluated with COCO metrics after every ``eval_every`` epochs; the best-val
and the last model are both kept (``best.safetensors``, ``last.safetensors``) and both reported in
``results.json`` — say which one a table shows.

Same engine properties as pretraining: torchrun/DDP, AMP on GPU, atomic checkpoints, exact ``--resume``
(seeded per-sample flips + resumable sampler), metrics JSONL/CSV, progress bar.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fpsiam.config import DetectConfig, save_config, to_dict
from fpsiam.data.coco import CocoDetection, collate_fn, detection_transforms
from fpsiam.detect.engine import predict, step_lr, train_one_epoch
from fpsiam.detect.evaluate import coco_metrics, write_results
from fpsiam.detect.models import build_detector, save_detector
from fpsiam.errors import FpsiamError
from fpsiam.fileio import write_json
from fpsiam.train import distributed as D
from fpsiam.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fpsiam.train.metrics import MetricsLog
from fpsiam.train.precise_bn import precise_bn
from fpsiam.train.runfolder import check_resume_config, newest_intact_checkpoint, run_folder
from fpsiam.train.sampling import ResumableSampler, SeededSamples

CHECKPOINT_FORMAT = "fpsiam-detect-v1"
VAL_PREDICTIONS = "val_predictions.json"  # COCO results of the last model on the val set


@dataclasses.dataclass
class DetectResult:
    run_dir: Path
    best: dict[str, Any]  # {"epoch": e, **val metrics} of the best val mAP
    last: dict[str, Any]  # {"epoch": e, **val metrics} of the last epoch
    best_model: Path | None
    last_model: Path | None
    model: torch.nn.Module


def model_meta(cfg: DetectConfig) -> dict[str, Any]:
    m = cfg.model
    return {"kind": m.kind, "arch": m.arch, "min_size": m.min_size, "max_size": m.max_size, "backbone": m.backbone,
            "head_norm": m.head_norm}  # fmt: skip


def param_groups(model: torch.nn.Module, backbone_lr_mult: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: the backbone (lr x ``backbone_lr_mult``) and the rest (FPN, heads)."""
    body = {id(p) for p in model.backbone.body.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in trainable if id(p) in body], "lr_mult": backbone_lr_mult, "name": "backbone"},
        {"params": [p for _, p in trainable if id(p) not in body], "lr_mult": 1.0, "name": "neck+heads"},
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


def train_detector(
    cfg: DetectConfig, run_dir: str | Path, resume: bool = False, env: D.DistEnv | None = None,
    allow_config_change: bool = False,
):  # fmt: skip
    """Train (or resume) one detector into ``run_dir``; returns best/last val metrics and model paths."""
    with D.session(cfg.train.device, env) as env, run_folder(run_dir, env.is_main) as cleaned:
        if cleaned:
            print(f"removed {len(cleaned)} temp file(s) of an interrupted write in {run_dir}")
        return _train(cfg, Path(run_dir), resume, env, allow_config_change)


def _loader(dataset, batch_size: int, sampler=None, workers: int = 0, generator=None, pin: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers, collate_fn=collate_fn,
        generator=generator, pin_memory=pin, drop_last=sampler is not None,
    )  # fmt: skip


def evaluate_on(model, dataset, batch_size: int, device, dtype, workers: int, save_to: Path | None = None):
    """COCO metrics (+ speed) of ``model`` on a CocoDetection dataset; optionally keep the COCO results."""
    results, speed = predict(model, _loader(dataset, batch_size, workers=workers), device, dtype)
    if save_to is not None:
        write_results(save_to, results)
    return {**coco_metrics(dataset.coco, results), **speed}


def _train(cfg: DetectConfig, run_dir: Path, resume: bool, env: D.DistEnv, allow_change: bool) -> DetectResult:
    t, d = cfg.train, cfg.data
    if not d.train or not d.val:
        raise FpsiamError("set data.train and data.val (COCO json files), or pass --train/--val")
    log = print if env.is_main else (lambda *a, **k: None)

    train_set = CocoDetection(d.train, d.images, detection_transforms(True, d.hflip), keep_negatives=d.keep_negatives)
    val_set = CocoDetection(d.val, d.images, detection_transforms(False), keep_negatives=True)
    global_batch = t.batch_size * env.world_size
    if len(train_set) < global_batch:
        raise FpsiamError(
            f"{d.train}: {len(train_set)} training images, but one step needs {global_batch} "
            f"(batch {t.batch_size} x {env.world_size} processes); lower train.batch_size"
        )
    seeded = SeededSamples(train_set, seed=t.seed)
    min_samples = -(-t.min_iters // t.epochs) * global_batch  # a short set: each epoch cycles it to this many
    sampler = ResumableSampler(seeded, env.world_size, env.rank, seed=t.seed, min_samples=min_samples)
    steps_per_epoch = len(sampler) // t.batch_size
    if t.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)

    torch.manual_seed(t.seed)
    model = build_detector(
        cfg.model.kind, cfg.model.arch, init=cfg.model.backbone, weights_file=cfg.model.weights_file,
        min_size=cfg.model.min_size, max_size=cfg.model.max_size, box_loss=cfg.model.box_loss,
        test_proposals=cfg.model.test_proposals,
        roi_samples=cfg.model.roi_samples, head_norm=cfg.model.head_norm,
    )  # fmt: skip
    init_msg = getattr(model, "init_message", "")
    base_lr = cfg.optim.lr * global_batch / 8
    groups = param_groups(model, cfg.optim.backbone_lr_mult)
    optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    dtype = D.autocast_dtype(t.amp, env.device)
    scaler = torch.amp.GradScaler(env.device.type) if dtype == torch.float16 else None

    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    grad_norms: list[float] = []  # every step's (pre-clip) gradient norm: the spikes of the transfer
    skipped: list[int] = []  # steps whose gradient was not finite (not applied)
    existing = latest_checkpoint(run_dir)
    if existing is not None and not resume:
        raise FpsiamError(f"{run_dir}: already holds checkpoints; pass --resume to continue it, or a new -o RUN_DIR")
    if resume and existing is not None:
        existing, ckpt = newest_intact_checkpoint(run_dir, load_checkpoint, log)
    if resume and existing is not None:
        meta = model_meta(cfg)
        got = (ckpt.get("format"), ckpt.get("kind"), ckpt.get("arch"))
        if got != (CHECKPOINT_FORMAT, meta["kind"], meta["arch"]):
            raise FpsiamError(
                f"{existing}: checkpoint is {got[0]} {got[1]}/{got[2]}, the config asks for "
                f"{meta['kind']}/{meta['arch']}; resume with the run's own config or use a new -o RUN_DIR"
            )
        check_resume_config(ckpt.get("config"), to_dict(cfg), existing, allow_change)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        history = list(ckpt["history"])
        grad_norms = list(ckpt.get("grad_norms", []))
        skipped = list(ckpt.get("skipped", []))
        set_rng_state(ckpt["rng"])
        log(f"resumed from {existing} (epoch {epoch}, step {step_in_epoch} of it)")
    elif cfg.model.precise_bn:
        plain = CocoDetection(d.train, d.images, detection_transforms(False), keep_negatives=d.keep_negatives)
        used = precise_backbone_bn(model.to(env.device), plain, cfg.model.precise_bn, t.batch_size)
        init_msg += f"; precise BN: backbone statistics re-estimated on {used} train images"

    model = D.prepare_model(model, env, sync_bn=t.sync_bn)
    core = D.unwrap(model)
    metrics = MetricsLog(run_dir, "metrics", enabled=env.is_main)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        metrics.truncate_after(global_step)
    log(f"{cfg.model.kind}/{cfg.model.arch} from {cfg.model.backbone}: {len(train_set)} train images, "
        f"{len(val_set)} val images, global batch {global_batch}, lr {base_lr:g}, {steps_per_epoch} steps/epoch "
        f"x {t.epochs} epochs on {env.device} x{env.world_size}. {init_msg}")  # fmt: skip

    def lr_at(iteration: int) -> float:
        o = cfg.optim
        return step_lr(base_lr, epoch, iteration, o.steps, o.gamma, o.warmup_iters, o.warmup_ratio)

    def checkpoint(next_epoch: int, next_step: int) -> None:
        if env.is_main:
            state = {
                "format": CHECKPOINT_FORMAT, **model_meta(cfg), "model": core.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                "epoch": next_epoch, "step_in_epoch": next_step, "global_step": global_step,
                "history": history, "grad_norms": grad_norms, "skipped": skipped, "rng": rng_state(),
                "config": to_dict(cfg),
            }  # fmt: skip
            save_checkpoint(state, checkpoint_path(run_dir, global_step), keep_last=t.keep_last)

    def best_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return max(rows, key=lambda r: (r["mAP"], -r["epoch"])) if rows else {}

    live: dict[str, Any] = {}

    def on_step(iteration: int, values: dict[str, float]) -> None:
        nonlocal global_step
        global_step = iteration
        grad_norms.append(values["grad_norm"])
        live["bar"].update(1)
        live["bar"].set_postfix(loss=f"{values['loss']:.3f}")
        if values["skipped"]:
            skipped.append(iteration)
            metrics.log({"epoch": epoch + 1, "global_step": iteration, **values})  # every skip is on record
            if len(skipped) > t.nonfinite_skips:
                raise FloatingPointError(f"{len(skipped)} steps with a non-finite gradient norm (steps {skipped[-3:]})")
        elif iteration % t.log_every == 0:
            metrics.log({"epoch": epoch + 1, "global_step": iteration, **values})  # 1-based

    while epoch < t.epochs:
        sampler.set_epoch(epoch)
        sampler.start_index = step_in_epoch * t.batch_size
        seeded.epoch = epoch
        gen = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
        loader = _loader(seeded, t.batch_size, sampler, d.workers, gen, pin=env.device.type == "cuda")
        bar = tqdm(
            total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
            disable=not (env.is_main and t.progress), dynamic_ncols=True, file=sys.stderr,
        )  # fmt: skip
        live["bar"] = bar
        started = time.perf_counter()

        try:
            done = train_one_epoch(
                model, optimizer, loader, env.device, lr_at, global_step, steps_per_epoch - step_in_epoch,
                dtype, scaler, reduce=lambda x: D.all_reduce_mean(x, env), on_step=on_step,
                clip_grad_norm=cfg.optim.clip_grad_norm,
            )  # fmt: skip
        except FloatingPointError as e:
            raise FpsiamError(
                f"epoch {epoch + 1}: not finite ({e}); stopped. Last good checkpoint: "
                f"{latest_checkpoint(run_dir) or 'none'}. Lower optim.lr, set optim.clip_grad_norm (e.g. 35) "
                "or use train.amp=none"
            ) from None
        bar.close()
        seconds = time.perf_counter() - started
        epoch += 1
        step_in_epoch = 0
        row: dict[str, Any] = {"epoch": epoch, "global_step": global_step}
        row["train_images_per_s"] = done * global_batch / max(seconds, 1e-9)
        if epoch % t.eval_every == 0 or epoch == t.epochs:
            if env.is_main:
                keep = run_dir / VAL_PREDICTIONS if epoch == t.epochs else None  # the final model's val results
                row.update(evaluate_on(core, val_set, t.batch_size, env.device, dtype, d.workers, save_to=keep))
                is_best = not any(h.get("mAP", -1) >= row["mAP"] for h in history)
                if is_best:
                    save_detector(core, run_dir / "best.safetensors", {**model_meta(cfg), "epoch": epoch})
                log(f"epoch {epoch}: val mAP {row['mAP']:.4f} AP50 {row['AP50']:.4f} AP75 {row['AP75']:.4f}"
                    + (" (best)" if is_best else ""))  # fmt: skip
            D.barrier(env)
        history.append(row)
        if env.is_main:
            metrics.log({**row, "kind": "epoch"})
        if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
            checkpoint(epoch, 0)
        D.barrier(env)

    best_path = last_path = None
    evaluated = [h for h in history if "mAP" in h]
    if env.is_main:
        last_path = save_detector(core, run_dir / "last.safetensors", {**model_meta(cfg), "epoch": t.epochs})
        best_path = run_dir / "best.safetensors"
        metrics.write_csv()
        write_json(run_dir / "results.json", {
            "model": model_meta(cfg), "init": init_msg, "best": best_of(evaluated), "train_images": len(train_set),
            "last": evaluated[-1] if evaluated else {}, "history": history, "grad_norm": grad_norm_summary(grad_norms),
            "skipped_steps": skipped,
            "note": "best = best val mAP epoch (model best.safetensors); last = final epoch (last.safetensors)",
        })  # fmt: skip
    D.barrier(env)
    return DetectResult(run_dir, best_of(evaluated), evaluated[-1] if evaluated else {}, best_path, last_path, core)
