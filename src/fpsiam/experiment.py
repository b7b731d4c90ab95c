"""``fpsiam experiment``: the whole study, resumable — pretrain -> extract -> fine-tune -> evaluate -> report.

For every self-supervised method: pretrain on the unlabeled frames (``OUT/pretrain/<method>``), keep its
backbone. Every arm (each method's backbone, random, ImageNet, external weight files) is then fine-tuned
with every detector and seed (``OUT/detect/<arm>/<detector>/seed<k>``) and evaluated on the test set.
Finally ``OUT/results.json`` collects every metric and ``OUT/report.html`` shows the comparison.

Each stage leaves a marker file when it is finished (``summary.json``, ``results.json``,
``test_metrics.json``, ``cam_energy.json``); rerunning the same command skips finished stages and resumes
interrupted ones from their newest checkpoint. A failing arm is recorded with its reason; the others go on.
"""

from __future__ import annotations

import copy
import datetime
import functools
import platform
import shutil
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from fpsiam.config import DetectConfig, ExperimentConfig, from_dict, parse_override, save_config, set_dotted, to_dict
from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_open, write_json
from fpsiam.train import distributed as D
from fpsiam.train import runfolder as R
from fpsiam.train.provenance import console_log, write_run_info
from fpsiam.train.runfolder import run_folder

TABLE_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a jsonl file beside an external weights file (``*.probe.jsonl``); [] when absent."""
    return R.RunFolder(path.parent).rows_of(path.name) if path.is_file() else []


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300] if not isinstance(e, FpsiamError) else str(e)[:300]


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}; {versions}"


def check_config(cfg: ExperimentConfig, where: str, files: bool = True) -> None:
    """Errors a user can fix before hours of compute are spent (``files=False``: weights files may be missing)."""
    if len(set(cfg.methods)) != len(cfg.methods):  # each name was checked against the method table at load
        raise FpsiamError(f"{where}: 'methods' lists a method twice")
    if cfg.methods and not cfg.frames:
        raise FpsiamError(f"{where}: 'frames' (unlabeled frames for pretraining) is empty but methods are listed")
    for key in ("train", "test"):
        if not getattr(cfg, key):
            raise FpsiamError(f"{where}: '{key}' (a COCO json) is required")
    if cfg.methods and cfg.pretrain.model.backbone != cfg.detect.model.arch:
        raise FpsiamError(
            f"{where}: pretrain.model.backbone is {cfg.pretrain.model.backbone} but detect.model.arch is "
            f"{cfg.detect.model.arch}; the pretrained backbone must be the detector's"
        )
    if not cfg.seeds or not cfg.detectors or not cfg.label_fractions:
        raise FpsiamError(f"{where}: 'seeds', 'detectors' and 'label_fractions' need at least one entry")
    for i, f in enumerate(cfg.label_fractions):
        if not 0 < f <= 1:
            raise FpsiamError(f"{where}: key 'label_fractions[{i}]': must be in (0, 1], got {f}")
    for item in cfg.transfer:  # fails here, not hours later at the first pretrained arm
        key, value = parse_override(item)
        raw = to_dict(cfg.detect)
        set_dotted(raw, key, value, DetectConfig, "transfer")
        from_dict(DetectConfig, raw, f"{where}: transfer entry {item!r}", "detect.")
    names = set()
    for item in cfg.weights:
        if "=" not in item:
            raise FpsiamError(f"{where}: weights entry {item!r}: expected name=path/to/backbone.safetensors")
        name, path = item.split("=", 1)
        if files and not Path(path).is_file():
            raise FpsiamError(f"{where}: weights entry {name}: file {path} not found")
        names.add(name)
    clash = names & (set(cfg.methods) | set(cfg.inits))
    if clash:
        raise FpsiamError(f"{where}: weights names {sorted(clash)} clash with methods/inits; rename them")


def imagenet_weights(cfg: ExperimentConfig, download: bool = True) -> tuple[str | None, str | None]:
    """``(weights_file_or_None, None)`` when ImageNet weights can be had, else ``(None, reason)``.

    An offline file (``detect.model.weights_file``) or torchvision's cache is used as is; otherwise one
    download is tried through torchvision's own mechanism (with a time-out), unless ``download`` is False.
    """
    if cfg.detect.model.weights_file:
        return cfg.detect.model.weights_file, None
    from fpsiam.backbones import imagenet_weights as weights_of

    weights = weights_of(cfg.detect.model.arch)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return str(cached), None
    if not download:
        return (
            None,
            f"ImageNet weights not in torchvision's cache; set detect.model.weights_file to a copy of {cached.name}",
        )
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        weights.get_state_dict(progress=False)
        return str(cached), None
    except Exception as e:  # noqa: BLE001 - any download failure means: not available
        return None, (
            f"ImageNet weights not available offline ({type(e).__name__}); set detect.model.weights_file to a "
            f"copy of {Path(weights.url).name}"
        )
    finally:
        socket.setdefaulttimeout(old)


class Stages:
    """Counts the study's stages and prints "stage k of N" with the elapsed time and an ETA before each.

    Stages differ in kind and cost (a pretraining takes an hour, a fine-tune on 10 % of the labels minutes), so
    each stage has a kind, e.g. ``("pretrain",)`` or ``("finetune", 0.25)``. The ETA sums, over the stages left,
    the mean time of the stages of the same kind that actually ran in this session (skipped ones cost nothing);
    a kind not yet timed takes the mean of its first word (``finetune``), else of every stage that ran. The
    fine-tune stages of arms that cannot run (no ImageNet weights, a failed pretraining) leave the plan once known.
    """

    def __init__(self, plan: list[tuple] | None = None, log=print):
        self.plan: list[tuple] = list(plan or [])
        self.log = log
        self.done = 0
        self.started = time.perf_counter()
        self.ran: dict[tuple, list[float]] = {}
        self._t0 = self.started
        self._kind: tuple = ()

    @property
    def total(self) -> int:
        return len(self.plan)

    def eta(self) -> float | None:
        """Seconds for the stages not yet begun plus the current one, or None before any stage ran."""
        every = [t for times in self.ran.values() for t in times]
        if not every:
            return None

        def mean(kind: tuple) -> float:
            same = self.ran.get(kind) or [t for k, ts in self.ran.items() if k[:1] == kind[:1] for t in ts]
            return statistics.fmean(same or every)

        return sum(mean(kind) for kind in self.plan[self.done - 1 :])

    def begin(self, what: str, kind: tuple = ()) -> None:
        self.done += 1
        self._t0, self._kind = time.perf_counter(), kind
        eta = self.eta()
        self.log(f"== stage {self.done} of {self.total}: {what} (elapsed {_hms(self._t0 - self.started)}, "
                 f"eta {'?' if eta is None else _hms(eta)})")  # fmt: skip

    def end(self, ran: bool) -> None:
        if ran:
            self.ran.setdefault(self._kind, []).append(time.perf_counter() - self._t0)


def _unfinished(folder: R.RunFolder) -> str:
    """Why a stage counts as pending in a report-only pass: never started, or started and not finished."""
    return "not finished" if folder.has(R.METRICS) else "not run yet"


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Experiment:
    """Runs the stages of one experiment into ``out``; every stage can be skipped, resumed or fail alone."""

    def __init__(self, cfg: ExperimentConfig, out: Path, env: D.DistEnv, command: str = "", report_only: bool = False):
        self.cfg, self.out, self.env, self.command = cfg, Path(out), env, command
        # report_only: run nothing, write nothing but the report files; a stage not finished is "pending"
        self.report_only = report_only
        self.log = print if env.is_main else (lambda *a, **k: None)
        self.stages = Stages(log=(lambda *a, **k: None) if report_only else self.log)

    def prune(self, run: Path) -> None:
        """Delete a finished stage's resume checkpoints unless ``keep_checkpoints``: its weights files stay.

        A finished stage is skipped on rerun, so its checkpoints are never read again; they are the bulk of a
        study's disk use (an R18 RetinaNet checkpoint with SGD momentum is 160 MB; 36 stages x 2 kept = 11 GB).
        """
        if self.cfg.keep_checkpoints or not self.env.is_main or self.report_only:
            return
        folder = run / "checkpoints"
        if folder.is_dir():
            shutil.rmtree(folder)

    # ------------------------------------------------------------------ pretraining
    def pretrain(self, method: str) -> dict[str, Any]:
        from fpsiam.ssl.pretrain import pretrain

        run = self.out / "pretrain" / method
        folder = R.RunFolder(run)
        entry: dict[str, Any] = {"run_dir": str(run.relative_to(self.out))}
        self.stages.begin(f"pretrain {method}", ("pretrain",))
        if folder.has(R.SUMMARY):
            if not self.report_only:
                self.log(f"[pretrain {method}] done before; skipping")
            self.stages.end(ran=False)
        elif self.report_only:
            entry.update(status="pending", reason=_unfinished(folder))
            return entry
        else:
            cfg = copy.deepcopy(self.cfg.pretrain)
            cfg.model.method = method
            cfg.data.source = self.cfg.frames
            cfg.data.images = self.cfg.frames_images
            self.log(f"[pretrain {method}] -> {run}")
            try:
                pretrain(cfg, run, resume=True, env=self.env)
                self.stages.end(ran=True)
            except Exception as e:  # noqa: BLE001 - a failed arm is reported, the others go on
                entry.update(status="failed", reason=_reason(e), curve=folder.rows())
                self.log(f"[pretrain {method}] FAILED: {entry['reason']}")
                if not isinstance(e, FpsiamError):
                    traceback.print_exc(file=sys.stderr)
                return entry
        self.prune(run)
        summary = folder.read(R.SUMMARY)
        keys = ("kind", "global_step", "epoch", "loss", "loss_local", "loss_global", "collapse", "collapse_local",
                "collapse_global", "probe_linear", "probe_linear_std", "probe_knn", "probe_knn_std")  # fmt: skip
        curve = [{k: r[k] for k in keys if k in r} for r in folder.rows()]
        entry.update(status="done", reason=None, seconds=summary.get("seconds_this_process"), curve=curve,
                     backbone=str(folder.file(R.BACKBONE).relative_to(self.out)), final=summary.get("final"),
                     peak_rss_mb=summary.get("peak_rss_mb"), probe=summary.get("probe"))  # fmt: skip
        return entry

    # ------------------------------------------------------------------ fine-tuning + test evaluation
    def detect_config(self, backbone: str) -> DetectConfig:
        """The detect section, with the ``transfer`` overrides when the backbone was pretrained (not random)."""
        if backbone == "random" or not self.cfg.transfer:
            return copy.deepcopy(self.cfg.detect)
        raw = to_dict(self.cfg.detect)
        for item in self.cfg.transfer:
            key, value = parse_override(item)
            set_dotted(raw, key, value, DetectConfig, "transfer")
        return from_dict(DetectConfig, raw, "transfer", "detect.")

    def label_set(self, labels: float, seed: int) -> str:
        """The train json of a label fraction: the whole train set, or its nested subset (written once)."""
        if labels == 1.0:
            return self.cfg.train
        from fpsiam.data.check import label_subsets, labels_name

        draw = self.cfg.label_seed if self.cfg.label_seed is not None else seed
        folder = self.out / "labels" / (f"seed{draw}" if self.cfg.label_seed is None else "fixed")
        path = folder / f"{labels_name(labels)}.json"
        if self.env.is_main and not path.is_file():
            label_subsets(Path(self.cfg.train), folder, self.cfg.label_fractions, draw, images=self.cfg.images)
        D.barrier(self.env)
        return str(path)

    def finetune(
        self, arm: str, backbone: str, weights_file: str | None, detector: str, seed: int, labels: float = 1.0
    ) -> dict[str, Any]:
        from fpsiam.data.check import labels_name
        from fpsiam.detect.train import train_detector

        run = self.out / "detect" / arm / detector
        if self.cfg.label_fractions != [1.0]:
            run = run / labels_name(labels)
        run = run / f"seed{seed}"
        entry: dict[str, Any] = {
            "arm": arm,
            "detector": detector,
            "seed": seed,
            "labels": labels,
            "run_dir": str(run.relative_to(self.out)),
        }
        folder = R.RunFolder(run)
        if self.report_only:
            if not folder.has(R.RESULTS):
                entry.update(status="pending", reason=_unfinished(folder))
                return entry
            if not folder.has(R.TEST_METRICS):
                entry.update(status="pending", reason="trained; test evaluation not run yet")
                return entry
            return self.finished(entry, folder)
        self.stages.begin(f"{arm} {detector} seed {seed}, {100 * labels:g} % of the labels", ("finetune", labels))
        try:
            if folder.has(R.RESULTS):
                self.log(f"[{arm} {detector} seed {seed}] trained before; skipping")
                self.stages.end(ran=False)
            else:
                cfg = self.detect_config(backbone)
                cfg.model.kind = detector
                cfg.model.backbone = backbone
                cfg.model.weights_file = weights_file
                cfg.train.seed = seed
                cfg.data.train, cfg.data.val, cfg.data.images = (
                    self.label_set(labels, seed),
                    self.cfg.val or self.cfg.test,
                    self.cfg.images,
                )
                self.log(f"[{arm} {detector} seed {seed}] -> {run}")
                train_detector(cfg, run, resume=True, env=self.env)
                self.stages.end(ran=True)
            if self.env.is_main and not folder.has(R.TEST_METRICS):
                self.test_metrics(run)
            self.prune(run)
        except Exception as e:  # noqa: BLE001 - a failed arm is reported, the others go on
            entry.update(status="failed", reason=_reason(e))
            self.log(f"[{arm} {detector} seed {seed}] FAILED: {entry['reason']}")
            if not isinstance(e, FpsiamError):
                traceback.print_exc(file=sys.stderr)
            return entry
        finally:
            D.barrier(self.env)  # every rank, also when rank 0 failed in the test evaluation
        return self.finished(entry, folder)

    def finished(self, entry: dict[str, Any], folder: R.RunFolder) -> dict[str, Any]:
        """``entry`` completed from a finished fine-tune's results and test metrics."""
        results = folder.read(R.RESULTS)
        test = folder.read(R.TEST_METRICS)
        history = [
            {k: h[k] for k in ("epoch", "mAP", "AP50", "AP75") if k in h} for h in results["history"] if "mAP" in h
        ]
        metrics = {k: test["coco"][k] for k in TABLE_KEYS}
        source = "last epoch"
        k = self.cfg.average_last
        if k > 1 and (self.cfg.val in (None, self.cfg.test)) and len(history) >= 1:
            last_k = history[-k:]
            metrics.update({m: statistics.fmean(h[m] for h in last_k) for m in ("mAP", "AP50", "AP75")})
            source = f"mean of the last {len(last_k)} test evaluations"
        entry.update(
            status="done", reason=None, metrics=metrics, metrics_source=source, clinical=test["clinical"],
            history=history, speed=test["speed"], best_val=results["best"], init=results.get("init"),
            grad_norm=results.get("grad_norm"), train_images=results.get("train_images"),
        )  # fmt: skip
        return entry

    @functools.cached_property
    def test_set(self):
        """The test set, read once for every run's metrics and pictures (negative frames included)."""
        from fpsiam.data.coco import CocoDetection

        return CocoDetection(self.cfg.test, self.cfg.images, keep_negatives=True)

    @functools.cached_property
    def polyp_frames(self) -> list[int]:
        """Indices of the test frames that have at least one box."""
        with_boxes = {a["image_id"] for a in self.test_set.coco["annotations"]}
        return [i for i, image_id in enumerate(self.test_set.image_ids) if image_id in with_boxes]

    def test_metrics(self, run: Path) -> None:
        """Evaluate the last model on the test set; when val is the test set, reuse its final val predictions."""
        from fpsiam.detect.engine import evaluate_file, metrics_report
        from fpsiam.detect.models import read_detector_meta

        folder = R.RunFolder(run)
        out = folder.file(R.TEST_METRICS)
        if self.cfg.val in (None, self.cfg.test) and folder.has(R.VAL_PREDICTIONS):
            last = folder.read(R.RESULTS)["last"]
            speed = {k: last.get(k) for k in ("images", "model_images_per_s", "predict_images_per_s")}
            meta = read_detector_meta(folder.file(R.LAST_MODEL))
            metrics_report(self.test_set.coco, folder.read(R.VAL_PREDICTIONS), meta, self.cfg.test, speed, out)
        else:
            evaluate_file(folder.file(R.LAST_MODEL), self.cfg.test, self.cfg.images, out,
                          batch_size=self.cfg.detect.train.batch_size, device=str(self.env.device))  # fmt: skip

    # ------------------------------------------------------------------ pictures
    def samples(self, entry: dict[str, Any], n: int) -> list[dict[str, str]]:
        """Predicted vs true boxes on the first ``n`` test frames with polyps, drawn at the run's F1-best threshold."""
        from fpsiam.detect.samples import save_samples

        folder = R.RunFolder(self.out / entry["run_dir"])
        best = (entry.get("clinical") or {}).get("at_best_f1") or {}
        threshold = best.get("threshold", 0.5)
        if self.report_only:  # the pictures a full run drew, if any
            ids = [int(self.test_set.image_ids[i]) for i in self.polyp_frames[:n]]
            paths = [folder.file(R.SAMPLES) / f"{i}.png" for i in ids]
            return [{"png": str(p.relative_to(self.out)), "threshold": threshold} for p in paths if p.is_file()]
        paths = save_samples(self.test_set, self.polyp_frames[:n], folder.read(R.TEST_PREDICTIONS), threshold,
                             folder.file(R.SAMPLES))  # fmt: skip
        return [{"png": str(p.relative_to(self.out)), "threshold": threshold} for p in paths]

    def gradcam(self, arm: str, backbone: str) -> dict[str, Any] | None:
        """The paper's view: CAM of the backbone alone on the same test frames, and its in-box energy.

        None in a report-only pass when a full run has not drawn them yet."""
        from fpsiam.explain import gradcam as G

        folder = self.out / "gradcam" / arm
        done = folder / G.ENERGY_FILE
        if not done.is_file() and self.report_only:
            return None
        if not done.is_file():
            G.gradcam_command(backbone, str(self.cfg.test), folder, images=self.cfg.images,
                              arch=self.cfg.detect.model.arch, max_images=self.cfg.gradcam_images,
                              size=self.cfg.detect.model.max_size)  # fmt: skip
        e = R.RunFolder(folder).read(G.ENERGY_FILE)["energy"]
        pngs = sorted(folder.rglob("*.png"))
        return {
            "energy_in_box": e["mean_energy_in_box"], "peak_in_box": e["peak_in_box_rate"],
            "chance": e["mean_box_area_fraction"], "n": e["n_frames"],
            "images": [str(p.relative_to(self.out)) for p in pngs],
        }  # fmt: skip

    # ------------------------------------------------------------------ the whole study
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.env.is_main and not self.report_only:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / R.CONFIG)
        fractions = sorted(cfg.label_fractions)

        def finetunes(arm_count: int) -> list[tuple]:  # the fine-tune stages' kinds, in the order they run
            return [
                ("finetune", f) for _ in cfg.seeds for f in fractions for _ in range(arm_count * len(cfg.detectors))
            ]

        self.stages.plan = [("pretrain",)] * len(cfg.methods) + finetunes(
            len(cfg.inits) + len(cfg.methods) + len(cfg.weights)
        )
        pretrain = {m: self.pretrain(m) for m in cfg.methods}

        # (name, backbone, weights_file, None or why its fine-tunes cannot run: (status, reason))
        arms: list[tuple[str, str, str | None, tuple[str, str] | None]] = []
        for init in cfg.inits:
            if init == "imagenet":
                wf, why = imagenet_weights(cfg, download=not self.report_only)
                arms.append(("imagenet", "imagenet", wf, ("skipped", why) if why else None))
            else:
                arms.append((init, init, None, None))
        for m, p in pretrain.items():
            skip = {"done": None, "pending": ("pending", "pretraining not finished")}.get(
                p["status"], ("failed", f"pretraining failed: {p['reason']}")
            )
            arms.append((m, "" if skip else str(self.out / p["backbone"]), None, skip))
        for item in cfg.weights:
            name, path = item.split("=", 1)
            arms.append((name, path, None, None))
            probe_rows = _jsonl(Path(path).with_suffix(".probe.jsonl"))  # an external arm's probe curve, if kept
            if probe_rows:
                pretrain[name] = {"status": "done", "external": True, "curve": probe_rows, "run_dir": None}

        # the fine-tune stages, now that the arms that cannot run (no ImageNet weights, a failed pretraining) are known
        self.stages.plan[len(cfg.methods) :] = finetunes(sum(not skip for *_, skip in arms))
        # Seed-major order (then fewest labels first): a study stopped early (or still running) has every arm at
        # the seeds done so far.
        by_key: dict[tuple[str, str, float, int], dict[str, Any]] = {}
        for seed in cfg.seeds:
            for labels in fractions:
                for name, backbone, weights_file, skip in arms:
                    for detector in cfg.detectors:
                        if skip:
                            entry = {"arm": name, "detector": detector, "seed": seed, "labels": labels,
                                     "status": skip[0], "reason": skip[1]}  # fmt: skip
                        else:
                            entry = self.finetune(name, backbone, weights_file, detector, seed, labels)
                        by_key[name, detector, labels, seed] = entry
        runs = [by_key[a[0], d, f, s] for f in fractions for a in arms for d in cfg.detectors for s in cfg.seeds]
        gradcam: dict[str, Any] = {}
        if self.env.is_main:
            for entry in runs:
                first = entry["seed"] == cfg.seeds[0] and entry.get("labels", 1.0) == fractions[-1]
                if entry["status"] == "done" and first and cfg.sample_images > 0:
                    try:
                        entry["samples"] = self.samples(entry, cfg.sample_images)
                    except Exception as e:  # noqa: BLE001 - pictures are optional
                        entry["samples_error"] = _reason(e)
            if cfg.gradcam_images > 0:
                for name, backbone, _wf, skip in arms:
                    if skip or name == "imagenet":
                        continue  # imagenet: the backbone file is torchvision's; CAMs of it come with the weights
                    try:
                        cam = self.gradcam(name, backbone)
                    except Exception as e:  # noqa: BLE001 - pictures are optional
                        cam = {"error": _reason(e)}
                    if cam is not None:
                        gradcam[name] = cam
        results = {
            "title": f"fpsiam experiment: {cfg.name}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_description(),
            "command": self.command,
            "config": to_dict(cfg),
            "detectors": list(cfg.detectors),
            "label_fractions": fractions,
            "arms": [a[0] for a in arms],
            "val_is_test": cfg.val in (None, cfg.test),
            "runs": runs,
            "pretrain": pretrain,
            "gradcam": gradcam,
        }
        if self.env.is_main:
            from fpsiam.report.html import write_report
            from fpsiam.report.markdown import markdown_report

            if self.report_only:
                self.log(pending_summary(results))
            write_json(self.out / "results.json", results)
            write_report(results, self.out / "report.html")
            with atomic_open(self.out / "table.md", "w", encoding="utf-8") as f:
                f.write(markdown_report(results))
        D.barrier(self.env)
        return results


def pending_summary(results: dict[str, Any]) -> str:
    """How far a study stands, in words: the finished stages over all, and the next stages to run, in run order."""
    pre = {m: p for m, p in results["pretrain"].items() if not p.get("external")}
    runs = [r for r in results["runs"] if r["status"] != "skipped"]  # skipped: cannot run here (no weights)
    text = (
        f"report only: {sum(r['status'] == 'done' for r in runs)} of {len(runs)} fine-tunes and "
        f"{sum(p.get('status') == 'done' for p in pre.values())} of {len(pre)} pretrainings finished"
    )
    failed = sum(r["status"] == "failed" for r in runs) + sum(p.get("status") == "failed" for p in pre.values())
    if failed:
        text += f" ({failed} failed: see the report)"
    arms, seeds = results["arms"], results["config"]["seeds"]
    pending = sorted(  # the order the stages run in: seed, then label fraction, then arm
        (r for r in runs if r["status"] == "pending"),
        key=lambda r: (seeds.index(r["seed"]), r.get("labels", 1.0), arms.index(r["arm"])),
    )
    waiting = [f"pretrain {m}" for m, p in pre.items() if p.get("status") == "pending"] + [
        f"{r['arm']} {r['detector']} seed {r['seed']} at {100 * r.get('labels', 1.0):g} %" for r in pending
    ]
    if waiting:
        more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        text += f"; next: {', '.join(waiting[:3])}{more} (rerun without --report-only to run them)"
    return text


def run_experiment(
    cfg: ExperimentConfig, out: str | Path, where: str = "config", command: str = "", report_only: bool = False
) -> dict[str, Any]:
    """Check the config, then run (or resume) every stage; returns the results dict (also results.json).

    ``report_only``: run no stage and take no lock (a running study may be writing the folder): write
    results.json, report.html and table.md from the stages finished so far, the others marked "pending".
    """
    check_config(cfg, where, files=not report_only)  # report-only: an arm whose file is not written yet is pending
    if report_only:
        if not (Path(out) / R.CONFIG).is_file():
            raise FpsiamError(
                f"{out}: no experiment has started in this folder (no {R.CONFIG}); "
                "run `fpsiam experiment` without --report-only first"
            )
        return Experiment(cfg, Path(out), D.DistEnv(), command, report_only=True).run()
    with (
        D.session(cfg.detect.train.device) as env,
        run_folder(out, env.is_main),
        console_log(Path(out) / R.LOG, env.is_main),
    ):
        if env.is_main:
            write_run_info(Path(out) / R.RUN_INFO, {"kind": "experiment", "name": cfg.name}, seed=None)
        return Experiment(cfg, Path(out), env, command).run()
