"""The one training engine, for pretraining and detection alike (the shape of detectron2's trainer).

The engine owns what every run needs, once: the run-folder lock and clean-up (:mod:`fpsiam.train.runfolder`),
the device and DDP, AMP and channels_last, the seeded data order and per-sample randomness
(:mod:`fpsiam.train.sampling`), the step (forward, NaN stop, backward, gradient clipping, skipping a step whose
gradient is not finite), the progress bar and the metrics log, and checkpoints with exact resume (a resumed
run ends with the uninterrupted run's weights: the model, optimizer, scaler, counters, RNG states and every
task state go into each checkpoint, none holding NaN).

What differs between kinds of training is a :class:`Task`: it names its data, builds its model and optimizer,
sets the lr of each step, computes the losses of a batch, and has hooks after each step (a momentum update, a
queue) and after each epoch (a probe, an evaluation). ``fpsiam.ssl.pretrain`` and ``fpsiam.detect.train`` are
the two tasks' wiring; the engine returns values and they write the result files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fpsiam.config import save_config
from fpsiam.errors import FpsiamError
from fpsiam.train import distributed as D
from fpsiam.train import runfolder as R
from fpsiam.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fpsiam.train.metrics import MetricsLog
from fpsiam.train.provenance import console_log, write_run_info
from fpsiam.train.sampling import ResumableSampler, SeededSamples
from fpsiam.train.tracking import make_trackers

PLAIN_EVERY_S = 60.0  # without a terminal (nohup, CI, a cluster job): one plain progress line a minute


@dataclasses.dataclass
class LoopSettings:
    """The engine's own keys, read from a config's ``train`` (and ``optim``) section."""

    epochs: int
    batch_size: int
    seed: int = 0
    max_steps_per_epoch: int | None = None
    min_iters: int = 0
    amp: str = "none"
    channels_last: bool = False
    sync_bn: bool = True
    compile: bool = False
    checkpoint_every: int = 1
    checkpoint_steps: int | None = None
    keep_last: int = 2
    log_every: int = 10
    progress: bool = True
    device: str = "auto"
    tensorboard: bool = False
    mlflow: bool = False
    mlflow_uri: str | None = None
    clip_grad_norm: float | None = None
    nonfinite_skips: int = 10
    workers: int = 2
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)

    @classmethod
    def of(cls, train: Any, **extra: Any) -> LoopSettings:
        """From a ``train`` config section (keys the engine does not know are ignored) plus ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dataclasses.asdict(train).items() if k in names}, **extra)


class Task:
    """What one kind of training supplies to the :class:`Engine`; the defaults are no-ops."""

    checkpoint_format = "fpsiam-task-v1"
    collate_fn: Callable | None = None
    data_where, data_unit = "training data", "samples"  # how errors and the start line name the data
    measure_grad_norm = False  # compute the gradient norm every step even without clipping (logged, spikes)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint of this task must match to be resumed (e.g. method and architecture)."""
        return {}

    def dataset(self) -> Dataset:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The model, initialised (the engine seeds torch first)."""
        raise NotImplementedError

    def optimizer(self, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
        raise NotImplementedError

    def set_lr(self, optimizer: torch.optim.Optimizer, epoch: int, iteration: int) -> None:
        """Set each group's lr for the step ``iteration`` (0-based, global) of ``epoch`` (0-based)."""

    def losses(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
        """Forward one batch: ``"loss"`` to backpropagate, other 0-d tensors are logged terms; any other entries
        are for :meth:`step_values`."""
        raise NotImplementedError

    def step_values(self, out: dict[str, Tensor]) -> dict[str, float]:
        """Extra values logged for a step (e.g. the collapse monitor); with accumulation, of the last micro-batch."""
        return {}

    def split_batch(self, batch: Any, parts: int) -> list[Any]:
        """``batch`` as ``parts`` micro-batches (gradient accumulation): tensors are cut along dim 0, lists, tuples
        and dicts of them part by part. Override for batches of another shape."""
        return split_batch(batch, parts)

    def before_training(self, engine: Engine, fresh: bool) -> None:
        """Once the model is built (and resumed): e.g. precise BN on a fresh start, the initial probe."""

    def after_step(self, engine: Engine) -> None:
        """After every optimizer step (a momentum-encoder update, a queue)."""

    def after_epoch(self, engine: Engine, epoch: int) -> None:
        """After epoch ``epoch`` (1-based), before its checkpoint: probe, evaluation (log rows with engine.log)."""

    def state_dict(self) -> dict[str, Any]:
        """Task state that must survive a resume (history, queues...), tensors or plain data."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """Facts for ``run.json`` and the start line."""
        return {}


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Cut ``batch`` (a tensor, or lists / tuples / dicts of them) into ``parts`` equal micro-batches along dim 0."""
    if isinstance(batch, Tensor):
        if batch.shape[0] % parts:
            raise ValueError(f"a batch of {batch.shape[0]} does not split into {parts} equal micro-batches")
        return list(batch.chunk(parts))
    if isinstance(batch, (list, tuple)):
        cut = [split_batch(x, parts) for x in batch]
        return [type(batch)(c[i] for c in cut) for i in range(parts)]
    if isinstance(batch, dict):
        cut = {k: split_batch(v, parts) for k, v in batch.items()}
        return [{k: v[i] for k, v in cut.items()} for i in range(parts)]
    return [batch] * parts


class Engine:
    """Runs a :class:`Task` into ``run_dir``: ``Engine(...).run()`` -> the unwrapped model (also ``engine.core``)."""

    def __init__(
        self, task: Task, settings: LoopSettings, run_dir: str | Path, config: Any, env: D.DistEnv,
        resume: bool = False, allow_config_change: bool = False, log: Callable[..., None] | None = None,
    ):  # fmt: skip
        self.task, self.s, self.run_dir, self.config, self.env = task, settings, Path(run_dir), config, env
        self.resume, self.allow_change = resume, allow_config_change
        self.log = log or (print if env.is_main else (lambda *a, **k: None))
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.skipped: list[int] = []
        self.last: dict[str, float] = {}
        self.started = time.perf_counter()
        self.session_start = (0, self.started)  # (global step, time) when this session's training began
        self.last_plain = self.started

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        s, env, task = self.s, self.env, self.task
        self.global_batch = s.batch_size * env.world_size * s.accumulate  # per optimizer step
        data = task.dataset()
        if len(data) < self.global_batch:
            times = f" x {s.accumulate} accumulated" if s.accumulate > 1 else ""
            raise FpsiamError(
                f"{task.data_where}: {len(data)} {task.data_unit}, but one step needs {self.global_batch} (batch "
                f"{s.batch_size} x {env.world_size} processes{times}, drop_last); lower train.batch_size"
            )
        self.dataset = SeededSamples(data, seed=s.seed)
        min_samples = -(-s.min_iters // s.epochs) * self.global_batch  # a short set cycles to this many per epoch
        self.sampler = ResumableSampler(self.dataset, env.world_size, env.rank, seed=s.seed, min_samples=min_samples)
        self.steps_per_epoch = len(self.sampler) // (s.batch_size * s.accumulate)
        if s.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, s.max_steps_per_epoch)
        torch.manual_seed(s.seed)
        model = task.build_model()
        optimizer = task.optimizer(model, self.global_batch)
        self.attach(model, optimizer)
        fresh = not self._resume(model)
        self.model = D.prepare_model(model, env, sync_bn=s.sync_bn, channels_last=s.channels_last)
        if s.compile:
            self.model = torch.compile(self.model)
        self.core = D.unwrap(self.model)
        trackers = []
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            trackers = make_trackers(self.run_dir, s.tensorboard, s.mlflow, s.mlflow_uri, _as_dict(self.config))
        self.metrics = MetricsLog(self.run_dir, "metrics", enabled=env.is_main, trackers=trackers)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / R.CONFIG)
            write_run_info(self.run_dir / R.RUN_INFO, {
                "world_size": env.world_size, "global_batch": self.global_batch, "device": str(env.device),
                "samples": len(data), "steps_per_epoch": self.steps_per_epoch,
                "amp": str(self.dtype) if self.dtype else "none", **task.describe(),
            }, seed=s.seed)  # fmt: skip
            self.metrics.truncate_after(self.global_step)
        with self.side_work():
            task.before_training(self, fresh)

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Engine:
        """Use ``model`` and ``optimizer`` as they are: enough for :meth:`step` alone (tests, benchmarks)."""
        self.model = self.core = model
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.dtype = D.autocast_dtype(self.s.amp, self.env.device)
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=self.dtype == torch.float16)
        self.global_batch = self.s.batch_size * self.env.world_size * self.s.accumulate
        return self

    def _resume(self, model: nn.Module) -> bool:
        """Load the newest intact checkpoint when resuming; True when something was resumed."""
        existing = latest_checkpoint(self.run_dir)
        if existing is not None and not self.resume:
            raise FpsiamError(
                f"{self.run_dir}: already holds checkpoints; pass --resume to continue it, or a new -o RUN_DIR"
            )
        if not self.resume:
            return False
        path, ckpt = R.newest_intact_checkpoint(self.run_dir, load_checkpoint, self.log)
        if path is None:
            self.log(f"--resume: no checkpoint in {self.run_dir}; starting from scratch")
            return False
        if ckpt.get("format") != self.task.checkpoint_format:
            raise FpsiamError(
                f"{path}: not a checkpoint of this kind of run (format {ckpt.get('format')!r}, expected "
                f"{self.task.checkpoint_format!r}); use a new -o RUN_DIR"
            )
        want = self.task.identity()
        got = {k: ckpt.get(k) for k in want}
        if got != want:
            raise FpsiamError(
                f"{path}: checkpoint is {_words(got)} but the config asks for {_words(want)}; resume with the "
                "config the run was started with, or use a new -o RUN_DIR"
            )
        R.check_resume_config(
            ckpt.get("config"), _as_dict(self.config), path, self.allow_change, _defaults(self.config)
        )
        model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.skipped = list(ckpt.get("skipped", []))
        self.task.load_state_dict(ckpt.get("task", {}))
        set_rng_state(ckpt["rng"])
        self.log(f"resumed from {path} (epoch {self.epoch}, step {self.step_in_epoch} of it)")
        return True

    # ------------------------------------------------------------------ the loop
    def run(self) -> nn.Module:
        """Lock the run folder, set up, train every remaining epoch; returns the trained (unwrapped) model.

        A run that fails in its setup (bad data, a batch larger than the data...) leaves no folder behind when it
        made the folder itself.
        """
        made, set_up = not self.run_dir.exists(), False
        try:
            with (
                R.run_folder(self.run_dir, self.env.is_main) as cleaned,
                console_log(self.run_dir / R.LOG, self.env.is_main),
            ):
                if cleaned:
                    self.log(f"removed {len(cleaned)} temp file(s) of an interrupted write in {self.run_dir}")
                self.setup()
                set_up = True
                self.train_all()
        except BaseException:
            if made and not set_up and self.env.is_main:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        return self.core

    def train_all(self) -> None:
        """Every remaining epoch, then the metrics' csv; called by :meth:`run` inside the locked folder."""
        self.log(self.start_line())
        self.session_start = (self.global_step, time.perf_counter())
        while self.epoch < self.s.epochs:
            self.train_epoch()
        self.metrics.write_csv()
        self.metrics.close()
        D.barrier(self.env)

    def start_line(self) -> str:
        facts = self.task.describe()
        what = facts.get("what", type(self.task).__name__)
        return (
            f"{what}: {len(self.dataset)} {self.task.data_unit}, global batch {self.global_batch}, "
            f"{self.steps_per_epoch} steps/epoch x {self.s.epochs} epochs on {self.env.device} x{self.env.world_size}; "
            f"{facts.get('init', '')}"
        ).rstrip("; ")

    def loader(self) -> DataLoader:
        s = self.s
        self.sampler.set_epoch(self.epoch)
        self.sampler.start_index = self.step_in_epoch * s.batch_size * s.accumulate
        self.dataset.epoch = self.epoch
        gen = torch.Generator().manual_seed(s.seed * 100_003 + self.epoch)
        return DataLoader(
            self.dataset, batch_size=s.batch_size * s.accumulate, sampler=self.sampler, num_workers=s.workers,
            drop_last=True, collate_fn=self.task.collate_fn, pin_memory=self.env.device.type == "cuda", generator=gen,
            persistent_workers=False,
        )  # fmt: skip

    def train_epoch(self) -> None:
        s, env = self.s, self.env
        self.model.train()
        show = env.is_main and s.progress
        tty = sys.stderr.isatty()
        bar = tqdm(
            total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{s.epochs}",
            disable=not (show and tty), leave=False, dynamic_ncols=True, file=sys.stderr,
        )  # fmt: skip
        window = {"data": 0.0, "total": 0.0, "steps": 0}
        tick = time.perf_counter()
        for batch in self.loader():
            got_batch = time.perf_counter()
            values = self.step(batch)
            now = time.perf_counter()
            window["data"] += got_batch - tick
            window["total"] += now - tick
            window["steps"] += 1
            tick = now
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", eta=self.eta())
            if show and not tty and now - self.last_plain >= PLAIN_EVERY_S:  # a log file, not a terminal
                self.last_plain = now
                where = f"epoch {self.epoch + 1}/{s.epochs} step {self.step_in_epoch}/{self.steps_per_epoch}"
                print(f"{where}: loss {values['loss']:.4f}, elapsed {_hms(self.seconds())}, eta {self.eta()}",
                      flush=True)  # fmt: skip
            end_of_epoch = self.step_in_epoch >= self.steps_per_epoch
            if self.global_step % s.log_every == 0 or end_of_epoch or values.get("skipped"):
                self.log_step(values, window)
                window = {"data": 0.0, "total": 0.0, "steps": 0}
            if end_of_epoch:
                break
            if s.checkpoint_steps and self.global_step % s.checkpoint_steps == 0:
                self.checkpoint()
        bar.close()
        self.epoch += 1
        self.step_in_epoch = 0
        with self.side_work():
            self.task.after_epoch(self, self.epoch)  # before the checkpoint: a kill in between reruns it on resume
        if self.epoch % s.checkpoint_every == 0 or self.epoch == s.epochs:
            self.checkpoint()
        D.barrier(env)
        if env.is_main and self.last:
            tqdm.write(f"epoch {self.epoch}/{s.epochs}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in self.last.items() if k != "skipped"), file=sys.stderr)  # fmt: skip

    @contextlib.contextmanager
    def side_work(self) -> Iterator[None]:
        """Around the hooks that evaluate or probe: the random state (torch, CUDA, numpy, python) is put back after
        them, so how often a run evaluates (``eval_every``, ``probe.every``) and on which rank cannot change what it
        trains (a loader's base seed and Faster R-CNN's box sampling both read the global generator)."""
        state = rng_state()
        try:
            yield
        finally:
            set_rng_state(state)

    def step(self, batch: Any) -> dict[str, float]:
        """One optimizer step on ``batch``: the logged values (losses averaged over processes, lr, grad norm).

        With ``accumulate`` > 1 the batch is cut into that many micro-batches, each forwarded and backpropagated
        with its loss divided by their number (gradients of DDP synchronised on the last only); the logged terms
        are their mean.
        """
        s, env, task = self.s, self.env, self.task
        task.set_lr(self.optimizer, self.epoch, self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        micro = task.split_batch(batch, s.accumulate) if s.accumulate > 1 else [batch]
        sums: Tensor | None = None
        for i, part in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with torch.autocast(env.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                    out = task.losses(self.model, part, env.device)
                names = sorted(k for k, v in out.items() if v.ndim == 0)
                terms = D.all_reduce_mean(torch.stack([out[k].detach().float() for k in names]), env)
                if not bool(torch.isfinite(terms).all()):  # every process stops here, before any update
                    self._nonfinite_loss(names, terms)
                sums = terms if sums is None else sums + terms
                self.scaler.scale(out["loss"] / len(micro)).backward()
        assert sums is not None
        terms = sums / len(micro)
        values = dict(zip(names, terms.tolist(), strict=True))
        applied = True
        self.last_grad_norm = float("nan")
        if s.clip_grad_norm or task.measure_grad_norm:
            self.scaler.unscale_(self.optimizer)  # the norm (and the clip) in real gradient units
            norm = torch.nn.utils.clip_grad_norm_(self.params, s.clip_grad_norm or float("inf"))
            values["grad_norm"] = self.last_grad_norm = float(norm)
            applied = bool(torch.isfinite(norm)) or self.scaler.is_enabled()  # fp16: the scaler skips it itself
        if applied:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_in_epoch += 1
        self.global_step += 1
        values["skipped"] = float(not applied)
        if not applied:
            self.skipped.append(self.global_step)
            if len(self.skipped) > s.nonfinite_skips:
                raise FpsiamError(
                    f"epoch {self.epoch + 1}: {len(self.skipped)} steps with a non-finite gradient norm (steps "
                    f"{self.skipped[-3:]}), none applied; stopped. Last good checkpoint: "
                    f"{latest_checkpoint(self.run_dir) or 'none'}. Lower optim.lr or set optim.clip_grad_norm"
                )
        task.after_step(self)
        values.update(task.step_values(out))
        self.last = values
        return values

    def _nonfinite_loss(self, names: list[str], terms: Tensor) -> None:
        raise FpsiamError(
            f"epoch {self.epoch + 1} step {self.step_in_epoch + 1}: loss is "
            f"{dict(zip(names, [round(v, 4) for v in terms.tolist()], strict=True))} (not finite); stopped. "
            f"Last good checkpoint: {latest_checkpoint(self.run_dir) or 'none'}. Lower optim.lr, set "
            "optim.clip_grad_norm or use train.amp=none"
        )

    # ------------------------------------------------------------------ logging and checkpoints
    def log_step(self, values: dict[str, float], window: dict[str, float]) -> None:
        groups = self.optimizer.param_groups
        lrs = {"lr": groups[0]["lr"], **{f"lr_{g['name']}": g["lr"] for g in groups[1:] if "name" in g}}
        steps = max(window["steps"], 1)
        self.log_row({
            "epoch": self.epoch + 1, "step": self.step_in_epoch, "global_step": self.global_step, **lrs, **values,
            "samples_per_s": self.global_batch * window["steps"] / max(window["total"], 1e-9),
            "data_time": window["data"] / steps, "compute_time": (window["total"] - window["data"]) / steps,
        })  # fmt: skip

    def log_row(self, row: dict[str, Any]) -> None:
        """Append a row to the run's metrics.jsonl (main process only)."""
        if self.env.is_main:
            self.metrics.log(row)

    def checkpoint(self) -> Path | None:
        """Write a checkpoint of the current state (main process); returns its path."""
        if not self.env.is_main:
            return None
        state = {
            "format": self.task.checkpoint_format, **self.task.identity(), "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "skipped": self.skipped,
            "task": self.task.state_dict(), "rng": rng_state(), "config": _as_dict(self.config),
        }  # fmt: skip
        return save_checkpoint(state, checkpoint_path(self.run_dir, self.global_step), keep_last=self.s.keep_last)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> str:
        """The whole run's remaining time, from this session's pace (h:mm:ss; "?" before the first steps)."""
        done_at_start, t0 = self.session_start
        done = self.global_step - done_at_start
        if done <= 0:
            return "?"
        remaining = self.s.epochs * self.steps_per_epoch - self.global_step
        return _hms(remaining * (time.perf_counter() - t0) / done)


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _defaults(config: Any) -> dict[str, Any] | None:
    """The defaults of ``config``'s dataclass type (None when it is not one or needs arguments)."""
    if not dataclasses.is_dataclass(config):
        return None
    try:
        return dataclasses.asdict(type(config)())
    except TypeError:
        return None


def _words(facts: dict[str, Any]) -> str:
    return "/".join(str(v) for v in facts.values())
