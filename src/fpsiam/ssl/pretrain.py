"""The pretraining loop (``fpsiam pretrain``): frames -> two views -> method -> loss -> SGD.

Single process or under ``torchrun`` (DDP, DistributedSampler seeded per epoch, SyncBN on CUDA, rank-0
logging and checkpoints). Optimisation follows DESIGN §1: SGD (momentum 0.9, wd 1e-4), lr scaled by the
global batch (lr x batch / 256), cosine decay per epoch to 0 without warm-up, the predictor at its fixed
initial lr, drop_last.

Exact resume: the augmentation of frame ``i`` in epoch ``e`` is drawn from an RNG seeded by
``(seed, e, i)`` and the sampler's order depends only on ``(seed, e)``, so a run resumed from a checkpoint
(taken at an epoch end or every ``checkpoint_steps`` steps) replays exactly the batches the uninterrupted
run would have seen; model, optimizer, grad-scaler, counters and RNG states come from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fpsiam.config import PretrainConfig, save_config, to_dict
from fpsiam.data.frames import open_frames
from fpsiam.errors import FpsiamError
from fpsiam.fileio import write_json
from fpsiam.ssl.augment import TwoViewDataset, view_transform
from fpsiam.ssl.methods import build_method, collapse_std
from fpsiam.train import distributed as D
from fpsiam.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fpsiam.train.metrics import MetricsLog
from fpsiam.train.runfolder import check_resume_config, newest_intact_checkpoint, run_folder
from fpsiam.train.sampling import ResumableSampler, SeededSamples
from fpsiam.weights import PRETRAIN_FORMAT as CHECKPOINT_FORMAT
from fpsiam.weights import init_backbone, save_backbone

# ---------------------------------------------------------------------------------------- optimiser


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig, global_batch: int) -> torch.optim.SGD:
    """SGD with two groups: everything but the predictor (cosine-decayed) and the predictor (fixed lr)."""
    lr = cfg.optim.lr * global_batch / 256
    predictor = {id(p) for p in model.predictor.parameters()}
    rest = [p for p in model.parameters() if id(p) not in predictor]
    groups = [
        {"params": rest, "fix_lr": False, "initial_lr": lr},
        {"params": list(model.predictor.parameters()), "fix_lr": cfg.optim.fix_predictor_lr, "initial_lr": lr},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing per epoch from ``base_lr`` to 0 (no warm-up), as the reference's CosineAnnealing."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def set_epoch_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, schedule: str = "cosine") -> None:
    """The epoch's lr: cosine-decayed, or constant (``schedule="constant"``); a fixed-lr group keeps its own."""
    for group in optimizer.param_groups:
        fixed = group["fix_lr"] or schedule == "constant"
        group["lr"] = group["initial_lr"] if fixed else cosine_lr(group["initial_lr"], epoch, epochs)


# ---------------------------------------------------------------------------------------- the run


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


def _check_resume(ckpt: dict[str, Any], path: Path, cfg: PretrainConfig) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FpsiamError(f"{path}: not an fpsiam pretraining checkpoint (format {ckpt.get('format')!r})")
    want = (cfg.model.method, cfg.model.backbone)
    got = (ckpt.get("method"), ckpt.get("arch"))
    if want != got:
        raise FpsiamError(
            f"{path}: checkpoint is {got[0]}/{got[1]} but the config asks for {want[0]}/{want[1]}; "
            "resume with the config the run was started with, or use a new -o RUN_DIR"
        )


def pretrain(
    cfg: PretrainConfig, run_dir: str | Path, resume: bool = False, env: D.DistEnv | None = None,
    allow_config_change: bool = False,
) -> PretrainResult:  # fmt: skip
    """Run (or resume) one pretraining run into ``run_dir``; returns the final checkpoint and backbone."""
    with D.session(cfg.train.device, env) as env, run_folder(run_dir, env.is_main) as cleaned:
        if cleaned and env.is_main:
            print(f"removed {len(cleaned)} temp file(s) of an interrupted write in {run_dir}")
        return _pretrain(cfg, Path(run_dir), resume, env, allow_config_change)


def _pretrain(cfg: PretrainConfig, run_dir: Path, resume: bool, env: D.DistEnv, allow_change: bool) -> PretrainResult:
    t = cfg.train
    if not cfg.data.source:
        raise FpsiamError("no frame source: set data.source in the config or pass --data SRC")
    if t.epochs < 1 or t.batch_size < 1:
        raise FpsiamError("train.epochs and train.batch_size must be >= 1")
    log = print if env.is_main else (lambda *a, **k: None)

    # --- frames -> two views
    source = open_frames(cfg.data.source, stride=cfg.data.stride, images=cfg.data.images)
    global_batch = t.batch_size * env.world_size
    if len(source) < global_batch:
        raise FpsiamError(
            f"{cfg.data.source}: {len(source)} frames, but one step needs {global_batch} "
            f"(batch {t.batch_size} x {env.world_size} processes, drop_last); lower train.batch_size"
        )
    d = cfg.data
    transform = view_transform(d.size, d.min_scale, d.mean, d.std, d.color_jitter, d.grayscale, d.blur)
    dataset = SeededSamples(TwoViewDataset(source, transform, temporal_k=cfg.data.temporal_k), seed=t.seed)
    sampler = ResumableSampler(dataset, env.world_size, env.rank, seed=t.seed)
    steps_per_epoch = len(sampler) // t.batch_size
    if t.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)

    # --- backbone -> pyramid -> projector -> predictor
    torch.manual_seed(t.seed)
    model = build_method(cfg.model)
    init_msg = init_backbone(model.backbone, cfg.model.backbone, cfg.model.init, cfg.model.weights_file)
    optimizer = build_optimizer(model, cfg, global_batch)
    dtype = D.autocast_dtype(t.amp, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)

    # --- resume
    epoch, step_in_epoch, global_step = 0, 0, 0
    existing = latest_checkpoint(run_dir)
    if existing is not None and not resume:
        raise FpsiamError(f"{run_dir}: already holds checkpoints; pass --resume to continue it, or a new -o RUN_DIR")
    if resume and existing is not None:
        existing, ckpt = newest_intact_checkpoint(run_dir, load_checkpoint, log)
    if resume and existing is not None:
        _check_resume(ckpt, existing, cfg)
        check_resume_config(ckpt.get("config"), to_dict(cfg), existing, allow_change)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        set_rng_state(ckpt["rng"])
        log(f"resumed from {existing} (epoch {epoch}, step {step_in_epoch} of it)")
    elif resume:
        log(f"--resume: no checkpoint in {run_dir}; starting from scratch")

    probe = None
    if cfg.probe.ann and env.is_main:  # prepared once (decodes the labeled frames); fails before any training
        from fpsiam.ssl.probe import Probe

        probe = Probe(cfg.probe, cfg.data.mean, cfg.data.std)
    model = D.prepare_model(model, env, sync_bn=t.sync_bn, channels_last=t.channels_last)
    if t.compile:
        model = torch.compile(model)
    core = D.unwrap(model)

    metrics = MetricsLog(run_dir, "metrics", enabled=env.is_main, tensorboard=t.tensorboard)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_json(
            run_dir / "run.json",
            {
                "world_size": env.world_size,
                "global_batch": global_batch,
                "device": str(env.device),
                "lr": cfg.optim.lr * global_batch / 256,
                "frames": len(source),
                "steps_per_epoch": steps_per_epoch,
                "amp": str(dtype) if dtype else "none",
                "init": init_msg,
            },
        )
        metrics.truncate_after(global_step)
    log(
        f"{cfg.model.method}/{cfg.model.backbone}: {len(source)} frames, global batch {global_batch}, "
        f"{steps_per_epoch} steps/epoch x {t.epochs} epochs on {env.device} x{env.world_size}; {init_msg}"
    )

    def checkpoint(next_epoch: int, next_step: int) -> Path | None:
        if not env.is_main:
            return None
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": cfg.model.method,
            "arch": cfg.model.backbone,
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": next_epoch,
            "step_in_epoch": next_step,
            "global_step": global_step,
            "rng": rng_state(),
            "config": to_dict(cfg),
        }
        return save_checkpoint(state, checkpoint_path(run_dir, global_step), keep_last=t.keep_last)

    probed: dict[str, float] = {}  # the newest probe row (a resumed run starts from the logged one)
    if probe is not None:
        logged = [r for r in metrics.rows() if r.get("kind") == "probe"]
        probed = {k: v for k, v in logged[-1].items() if k.startswith("probe_")} if logged else {}

    def run_probe(done_epochs: int) -> None:
        """Probe the live backbone (rank 0), log the row to metrics.jsonl, print one line."""
        if probe is None:
            return
        result = probe(core.backbone)
        probed.update({f"probe_{k}": result[k] for k in ("linear", "linear_std", "knn", "knn_std")})
        metrics.log({"kind": "probe", "epoch": done_epochs, "global_step": global_step, **probed})
        tqdm.write(
            f"probe after epoch {done_epochs}: linear {100 * result['linear']:.1f}% kNN {100 * result['knn']:.1f}%",
            file=sys.stderr,
        )

    if global_step == 0:
        run_probe(0)  # the init's own probe: where the curve starts
    loss_keys: list[str] | None = None
    last: dict[str, float] = {}
    started = time.perf_counter()
    while epoch < t.epochs:
        set_epoch_lr(optimizer, epoch, t.epochs, cfg.optim.schedule)
        sampler.set_epoch(epoch)
        sampler.start_index = step_in_epoch * t.batch_size
        dataset.epoch = epoch
        gen = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=t.batch_size,
            sampler=sampler,
            num_workers=cfg.data.workers,
            drop_last=True,
            pin_memory=env.device.type == "cuda",
            generator=gen,
            persistent_workers=False,
        )
        model.train()
        bar = tqdm(
            total=steps_per_epoch,
            initial=step_in_epoch,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            disable=not (env.is_main and t.progress),
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        warned = False
        window = {"data": 0.0, "total": 0.0, "steps": 0}
        tick = time.perf_counter()
        for x1, x2 in loader:
            got_batch = time.perf_counter()
            x1 = x1.to(env.device, non_blocking=True)
            x2 = x2.to(env.device, non_blocking=True)
            if t.channels_last and env.device.type == "cuda":
                x1 = x1.contiguous(memory_format=torch.channels_last)
                x2 = x2.contiguous(memory_format=torch.channels_last)
            with torch.autocast(env.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(x1, x2)
            loss_keys = loss_keys or sorted(k for k in out if k.startswith("loss"))
            terms = D.all_reduce_mean(torch.stack([out[k].detach().float() for k in loss_keys]), env)
            if not bool(torch.isfinite(terms).all()):
                last_ckpt = latest_checkpoint(run_dir)
                raise FpsiamError(
                    f"epoch {epoch + 1} step {step_in_epoch + 1}: loss is {terms.tolist()} (not finite); "
                    f"stopped. Last good checkpoint: {last_ckpt or 'none'}. Lower optim.lr or use train.amp=none"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            step_in_epoch += 1
            global_step += 1
            now = time.perf_counter()
            window["data"] += got_batch - tick
            window["total"] += now - tick
            window["steps"] += 1
            tick = now

            values = dict(zip(loss_keys, terms.tolist(), strict=True))
            for k in out:
                if k.startswith("z"):
                    values["collapse" + k[1:]] = collapse_std(out[k].detach().float())
            if any(k.startswith("collapse") and v < t.collapse_warn for k, v in values.items()) and not warned:
                warned = True
                if env.is_main:
                    tqdm.write(
                        f"warning: collapse monitor below {t.collapse_warn} at step {global_step}: "
                        f"{ {k: round(v, 4) for k, v in values.items() if k.startswith('collapse')} }",
                        file=sys.stderr,
                    )
            last = values
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
            if global_step % t.log_every == 0 or step_in_epoch == steps_per_epoch:
                metrics.log(
                    {
                        "epoch": epoch + 1,  # 1-based: the epoch this step belongs to
                        "step": step_in_epoch,
                        "global_step": global_step,
                        "lr": optimizer.param_groups[0]["lr"],
                        "lr_predictor": optimizer.param_groups[1]["lr"],
                        **values,
                        "samples_per_s": global_batch * window["steps"] / max(window["total"], 1e-9),
                        "data_time": window["data"] / window["steps"],
                        "compute_time": (window["total"] - window["data"]) / window["steps"],
                    }
                )
                window = {"data": 0.0, "total": 0.0, "steps": 0}
            if step_in_epoch >= steps_per_epoch:
                break
            if t.checkpoint_steps and global_step % t.checkpoint_steps == 0:
                checkpoint(epoch, step_in_epoch)
        bar.close()
        epoch += 1
        step_in_epoch = 0
        if epoch % cfg.probe.every == 0 or epoch == t.epochs:
            run_probe(epoch)  # before the checkpoint: a kill in between reruns the probe on resume
        if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
            checkpoint(epoch, 0)
        D.barrier(env)
        if env.is_main and last:
            tqdm.write(
                f"epoch {epoch}/{t.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()), file=sys.stderr
            )

    final_ckpt = latest_checkpoint(run_dir) if env.is_main else None
    backbone_path = None
    if env.is_main:
        backbone_path = save_backbone(core.backbone.state_dict(), run_dir / "backbone.safetensors")[0]
        metrics.write_csv()
        metrics.close()
        write_json(
            run_dir / "summary.json",
            {
                "method": cfg.model.method,
                "arch": cfg.model.backbone,
                "epochs": t.epochs,
                "global_step": global_step,
                "final": last,
                "probe": probed or None,
                "seconds_this_process": time.perf_counter() - started,
                "peak_rss_mb": _peak_rss_mb(),
                "checkpoint": str(final_ckpt),
                "backbone": str(backbone_path),
                "checkpoints_kept": [p.name for p in list_checkpoints(run_dir)],
            },
        )
    D.barrier(env)
    return PretrainResult(run_dir, final_ckpt, backbone_path, t.epochs, global_step, last, core)
