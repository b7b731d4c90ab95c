"""Typed dataclass configs loaded from YAML, with strict validation and ``--set a.b=c`` overrides.

Every config is a tree of dataclasses. Loading is strict: an unknown key, or a value of the wrong type,
is an :class:`~fpsiam.errors.FpsiamError` naming the file, the dotted key and the expected type.
The effective config (file + overrides) is written into every run folder as ``config.yaml`` so a run
can be reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_open, check_nesting

T = TypeVar("T")


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-4`` as a float, as YAML 1.2 does (YAML 1.1 needs ``1.0e-4``)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str, where: str = "--set") -> Any:
    """Parse YAML safely (no Python objects), numbers as YAML 1.2 reads them; an alias bomb or an absurdly
    nested document is refused (:func:`fpsiam.fileio.check_nesting`)."""
    data = yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass
    check_nesting(data, where)
    return data


# ----------------------------------------------------------------------------------------------------
# Pretraining (docs/method.md). Defaults are the paper's values; CPU presets in configs/ shrink them.
# ----------------------------------------------------------------------------------------------------

LDPOLYPVIDEO_MEAN = (0.654, 0.424, 0.266)
LDPOLYPVIDEO_STD = (0.257, 0.182, 0.148)


@dataclasses.dataclass
class PretrainData:
    """Where the unlabeled frames come from and how the two views are made."""

    source: str = ""  # folder tree of images, LDPolypVideo PreTrain folder, video file/folder, or COCO json
    images: str | None = None  # images root when ``source`` is a COCO json
    stride: int = 1  # keep every n-th frame of a video / frame folder
    size: int = 224  # RandomResizedCrop output size
    min_scale: float = 0.2  # RandomResizedCrop scale=(min_scale, 1.0)
    color_jitter: float = 0.4  # ColorJitter(s, s, s, s/4) strength, applied with p=0.8 (0: none)
    grayscale: float = 0.2  # RandomGrayscale probability
    blur: float = 0.5  # Gaussian blur probability (sigma 0.1-2, kernel ~10% of size)
    mean: list[float] = dataclasses.field(default_factory=lambda: list(LDPOLYPVIDEO_MEAN))
    std: list[float] = dataclasses.field(default_factory=lambda: list(LDPOLYPVIDEO_STD))
    temporal_k: int = 0  # 0: both views from the same frame; k > 0: second view from a frame within ±k
    local_crops: int = 0  # multi-crop (SwAV): this many extra small crops per frame besides the two views
    local_size: int = 96  # their size
    local_min_scale: float = 0.05  # their RandomResizedCrop scale range
    local_max_scale: float = 0.14
    workers: int = 2  # DataLoader worker processes


@dataclasses.dataclass
class PretrainModel:
    """The method and its encoder (docs/method.md)."""

    method: str = "fpsiam"  # a name in fpsiam.ssl.methods.METHODS (`fpsiam config list` lists them)
    backbone: str = "resnet50"  # a name in fpsiam.backbones.BACKBONES
    init: str = "imagenet"  # random | imagenet | path to a torchvision-keyed weights file
    weights_file: str | None = None  # offline copy of torchvision's ImageNet weights (for init=imagenet)
    pyramid_channels: int = 256
    proj_dim: int = 2048
    pred_dim: int = 512
    lam: float = 0.5  # FPSiam: loss = lam * local + (1 - lam) * global
    loss_scale: float = 1.0  # 1.0: the paper's formula; 3.0: what the reference runs effectively applied
    # The peers (each method reads only its own keys; the presets set them as the paper's comparison ran them):
    head_dim: int = 128  # projection output of MoCo v2 / SimCLR / DenseCL / SwAV (BYOL: 256)
    hidden_dim: int = 2048  # their hidden layer (BYOL: 4096)
    temperature: float = 0.2  # MoCo v2 / DenseCL 0.2; SimCLR / SwAV 0.1
    queue_size: int = 65536  # MoCo v2 / DenseCL negatives (a multiple of the global batch); SwAV's queue (3840)
    momentum: float = 0.999  # MoCo v2 / DenseCL key encoder; BYOL's target starts here (0.99) ...
    momentum_end: float = 1.0  # ... and reaches this along a cosine over training (BYOL)
    shuffle_bn: bool = True  # MoCo v2 / DenseCL under DDP: keys computed on a batch shuffled across processes
    dense_weight: float = 0.5  # DenseCL: loss = (1 - w) global + w dense
    grid: int = 7  # DenseCL: the dense term's S x S grid of C5 locations
    prototypes: int = 3000  # SwAV
    sinkhorn_iterations: int = 3  # SwAV
    sinkhorn_epsilon: float = 0.05  # SwAV
    queue_start_epoch: int = 15  # SwAV: the queue joins the codes from this epoch on (queue_size 0: never)
    freeze_prototypes_steps: int = 313  # SwAV: the prototypes are not trained for the first steps


@dataclasses.dataclass
class PretrainOptim:
    """SGD with cosine decay per epoch; the predictor keeps its initial lr (SimSiam's fix_lr)."""

    lr: float = 0.05  # for a global batch of 256; scaled linearly with the global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    fix_predictor_lr: bool = True  # SimSiam / FPSiam: the predictor keeps its initial lr
    name: Literal["sgd", "lars"] = "sgd"  # lars: SimCLR / BYOL / SwAV (BN and biases excluded from its scaling)
    trust_coefficient: float = 0.001  # LARS eta
    warmup_epochs: int = 0  # linear warm-up before the schedule (SimCLR: 10)
    schedule: Literal["cosine", "constant"] = "cosine"  # cosine: the paper's; constant: lightly's SimSiam example


@dataclasses.dataclass
class PretrainTrain:
    """Loop length, precision, checkpointing and logging."""

    epochs: int = 200
    batch_size: int = 64  # per process; global batch = batch_size * world size * accumulate
    accumulate: int = 1  # gradient accumulation: micro-batches of batch_size per optimizer step (BYOL's 16)
    seed: int = 0
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, none on CPU
    channels_last: bool = True  # only applied on CUDA
    sync_bn: bool = True  # only applied when distributed on CUDA
    compile: bool = False
    checkpoint_every: int = 1  # epochs
    checkpoint_steps: int | None = None  # also checkpoint every n steps inside an epoch (long epochs)
    keep_last: int = 2
    log_every: int = 10  # steps
    collapse_warn: float = 0.1  # warn when the collapse monitor (std * sqrt(d)) falls below this
    progress: bool = True
    tensorboard: bool = False  # also log to TensorBoard (RUN_DIR/tensorboard; pip install "fpsiam[tensorboard]")
    mlflow: bool = False  # also log to MLflow (pip install "fpsiam[mlflow]"); resume continues the same MLflow run
    mlflow_uri: str | None = None  # default: a file store in RUN_DIR/mlruns
    device: str = "auto"  # auto | cpu | cuda


@dataclasses.dataclass
class ProbeConfig:
    """The frozen-backbone probe (``fpsiam probe``; during pretraining when ``ann`` is set), see fpsiam.ssl.probe."""

    ann: str = ""  # labeled COCO json (boxes); empty: no probe during pretraining
    images: str | None = None  # images root for ann/test (default: each json's info.images_root, else its folder)
    test: str | None = None  # held-out COCO json; default: cross-validate ann in folds of whole videos
    holdout: float = 0.25  # without a test json: each fold holds out this fraction (0.25: 4 folds)
    mode: Literal["crops", "frames"] = "crops"  # polyp vs mucosa crops, or whole frames with vs without boxes
    size: int = 128  # examples resized to size x size
    level: Literal["c2", "c3", "c4", "c5"] = "c5"  # the pooled ResNet stage probed (C5: what a classifier sees)
    bn: Literal["data", "own"] = "data"  # data: BN statistics re-estimated on the probe's train part (precise BN)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])  # each redraws mucosa patches + the folds
    every: int = 5  # during pretraining: probe before the first epoch, every n epochs and after the last


@dataclasses.dataclass
class PretrainConfig:
    """``fpsiam pretrain CONFIG.yaml``: everything a pretraining run needs."""

    data: PretrainData = dataclasses.field(default_factory=PretrainData)
    model: PretrainModel = dataclasses.field(default_factory=PretrainModel)
    optim: PretrainOptim = dataclasses.field(default_factory=PretrainOptim)
    train: PretrainTrain = dataclasses.field(default_factory=PretrainTrain)
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)


# ----------------------------------------------------------------------------------------------------
# Detection transfer (docs/detection.md). Defaults are the paper's recipe; CPU presets in configs/ shrink them.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DetectData:
    """Labeled COCO json sets (category polyp) and the loader."""

    train: str = ""
    val: str = ""
    images: str | None = None  # images root for both jsons (default: each json's info.images_root, else its folder)
    keep_negatives: bool = False  # the reference drops frames without boxes from training
    hflip: float = 0.5
    workers: int = 2


@dataclasses.dataclass
class DetectModel:
    """The detector and where its backbone weights come from."""

    kind: str = "faster_rcnn"  # a name in fpsiam.detect.models.DETECTORS
    arch: str = "resnet50"  # a name in fpsiam.backbones.BACKBONES
    backbone: str = "imagenet"  # random | imagenet | path to a torchvision-keyed weights file (fpsiam extract)
    weights_file: str | None = None  # offline copy of torchvision's ImageNet weights (for backbone=imagenet)
    min_size: int = 480  # images resized keeping aspect ratio to fit max_size x max_size
    max_size: int = 480
    box_loss: Literal["l1", "smooth_l1"] = "l1"  # l1: the reference's; smooth_l1: torchvision's default
    test_proposals: int = 1000  # Faster R-CNN RPN proposals at test time (recipe: 1000; fewer = faster on CPU)
    roi_samples: int = 512  # Faster R-CNN RoIs per image for the box head in training (recipe: 512)
    # Transfer recipe for self-supervised backbones (off in the paper presets):
    head_norm: Literal["none", "gn"] = (
        "none"  # gn: GroupNorm(32) in the FPN and the heads (MoCo's transfer: norm there)
    )
    fpn_channels: int = 256  # width of the FPN and the heads (the paper: 256; 128 halves a CPU RetinaNet R18 step)
    precise_bn: int = 0  # re-estimate the backbone's BN statistics on this many train images first (0: off)


@dataclasses.dataclass
class DetectOptim:
    """SGD with linear warm-up and step decay (the paper's 1x schedule)."""

    lr: float = 0.002  # for a global batch of 8; scaled linearly with the global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    steps: list[int] = dataclasses.field(default_factory=lambda: [8, 11])  # epochs where lr x= gamma
    gamma: float = 0.1
    clip_grad_norm: float | None = None  # clip the global gradient norm (e.g. 35, MMDetection's grad_clip); off
    backbone_lr_mult: float = 1.0  # the backbone's lr = lr x this (the FPN and heads keep lr); 1: the paper's


@dataclasses.dataclass
class DetectTrain:
    epochs: int = 12
    batch_size: int = 8  # per process
    seed: int = 0
    max_steps_per_epoch: int | None = None
    min_iters: int = 0  # a short train set: every epoch is stretched (the set cycles) so the run has >= this many steps
    nonfinite_skips: int = 10  # steps with a NaN/inf gradient are skipped (never applied); the run stops past this many
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    sync_bn: bool = True
    checkpoint_every: int = 1
    keep_last: int = 2
    eval_every: int = 1  # epochs; the val set is evaluated after every n-th epoch and at the end
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False  # also log to TensorBoard (RUN_DIR/tensorboard; pip install "fpsiam[tensorboard]")
    mlflow: bool = False  # also log to MLflow (pip install "fpsiam[mlflow]"); resume continues the same MLflow run
    mlflow_uri: str | None = None  # default: a file store in RUN_DIR/mlruns
    device: str = "auto"


@dataclasses.dataclass
class DetectConfig:
    """``fpsiam detect train CONFIG.yaml``."""

    data: DetectData = dataclasses.field(default_factory=DetectData)
    model: DetectModel = dataclasses.field(default_factory=DetectModel)
    optim: DetectOptim = dataclasses.field(default_factory=DetectOptim)
    train: DetectTrain = dataclasses.field(default_factory=DetectTrain)


# ----------------------------------------------------------------------------------------------------
# The whole study (``fpsiam experiment``): pretraining arms x inits x detectors x seeds -> report.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExperimentConfig:
    """``fpsiam experiment CONFIG.yaml``: which arms, detectors and seeds, and the presets of each stage.

    An *arm* is a backbone initialisation: each method in ``methods`` (pretrained here on ``frames``),
    each entry of ``inits`` (random, imagenet), and each ``weights`` entry (``name=path``: an external
    backbone file, e.g. one pretrained with lightly). Every arm is fine-tuned with every detector and seed.
    """

    name: str = "experiment"
    frames: str = ""  # unlabeled frames for pretraining (folder, video, LDPolypVideo PreTrain, COCO json)
    frames_images: str | None = None  # images root when ``frames`` is a COCO json
    train: str = ""  # labeled training set (COCO json)
    test: str = ""  # labeled test set (COCO json): the table's numbers
    val: str | None = None  # per-epoch validation set; default: the test set (the report says so)
    images: str | None = None  # images root for train/val/test (default: each json's info.images_root, else its folder)
    methods: list[str] = dataclasses.field(default_factory=lambda: ["fpsiam", "simsiam"])  # fpsiam.ssl.methods.METHODS
    inits: list[Literal["random", "imagenet"]] = dataclasses.field(default_factory=lambda: ["random", "imagenet"])
    # "name=path/to/backbone.safetensors"; a "backbone.probe.jsonl" beside the file (probe rows, as a pretraining
    # run's metrics.jsonl has) is drawn in the report's probe plot with the pretrained arms
    weights: list[str] = dataclasses.field(default_factory=list)
    detectors: list[str] = dataclasses.field(  # names in fpsiam.detect.models.DETECTORS
        default_factory=lambda: ["faster_rcnn", "retinanet"]
    )
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])  # fine-tuning seeds
    # Label-scarce axis: every arm x detector x seed is also fine-tuned on nested subsets of ``train`` holding these
    # fractions of its images (written to OUT/labels/); [1.0]: the whole train set only.
    label_fractions: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    label_seed: int | None = None  # the subsets' draw; null: each fine-tuning seed draws its own (nested) subsets
    # Fine-tuning overrides for arms whose backbone was pretrained (methods, weights, imagenet), --set style, e.g.
    # ["optim.backbone_lr_mult=0.5", "model.precise_bn=640"]; random init keeps the plain detect section.
    transfer: list[str] = dataclasses.field(default_factory=list)
    average_last: int = 1  # report the mean of the last k per-epoch evaluations (when val is the test set)
    gradcam_images: int = 8  # test frames for the Grad-CAM comparison (0: skip)
    sample_images: int = 6  # test frames drawn with predicted vs true boxes (0: skip)
    keep_checkpoints: bool = False  # keep finished stages' resume checkpoints (default: delete, keep the weights)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    detect: DetectConfig = dataclasses.field(default_factory=DetectConfig)


# ----------------------------------------------------------------------------------------------------
# Loading, overriding, validating, writing.
# ----------------------------------------------------------------------------------------------------


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or its defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():  # a preset name (fpsiam config list), or FpsiamError with the closest names
            from fpsiam.presets import resolve

            kind = {PretrainConfig: "pretrain", DetectConfig: "detect", ExperimentConfig: "experiment"}.get(cls)
            p = resolve(path, kind)
        try:
            raw = yaml_load(p.read_text(encoding="utf-8"), str(path)) or {}
        except UnicodeDecodeError:
            raise FpsiamError(f"{path}: not a UTF-8 text file; a config is YAML text") from None
        except (yaml.YAMLError, RecursionError) as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise FpsiamError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise FpsiamError(f"{path}: a config is a mapping of sections (data:, model:, ...)")
    for item in overrides or []:
        key, value = parse_override(item)
        check_override(cls, key, value, f"--set {_short(item, 80)}")  # a typo names --set and the key, not the file
        set_dotted(raw, key, value, cls, "--set")
    return from_dict(cls, raw, where)


def check_override(cls: type, key: str, value: Any, where: str) -> None:
    """Check one ``--set key=value`` against the schema of ``cls``: the key exists, the value has its type and
    range. Errors name ``where`` (the ``--set`` item) and the key."""
    node: Any = cls
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise FpsiamError(f"{where}: '{'.'.join(parts[:depth])}' is a value, not a section")
        names = [f.name for f in dataclasses.fields(node)]
        dotted = ".".join(parts[: depth + 1])
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            prefix = ".".join(parts[:depth]) + "." if depth else ""
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; known keys: {', '.join(names)}"
            raise FpsiamError(f"{where}: unknown key '{dotted}'{hint}")
        node = typing.get_type_hints(node)[part]
    if dataclasses.is_dataclass(node):
        if not isinstance(value, dict):
            raise FpsiamError(f"{where}: '{key}' is a section; set one of its keys, e.g. --set {key}.KEY=VALUE")
        from_dict(node, value, where, key + ".")
    else:
        _check_range(parts[-1], _coerce(node, value, where, key), where, key)


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in item:
        raise FpsiamError(f"--set {item}: expected key=value, e.g. --set train.epochs=2")
    key, text = item.split("=", 1)
    try:
        value = yaml_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def set_dotted(raw: dict, key: str, value: Any, cls: type, where: str) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FpsiamError(f"{where} {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a number key: ``low``/``high`` bounds (None: unbounded), each inclusive or not."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, v: float) -> bool:
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.high_open and v == self.high)))

    def __str__(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``: as the error message says it."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{'-inf' if self.low is None else f'{self.low:g}'}, {self.high:g}{right}"


def _at_least(n: int) -> Range:
    return Range(n)


POSITIVE, FRACTION, PROBABILITY = Range(0, None, low_open=True), Range(0, 1, low_open=True), Range(0, 1)
# Every number key's range, by key name (any section), in one place. Counts: a 0 would divide by zero or loop
# never. Floats: a negative lr, momentum -5 or a std of 0 pass the type check and then crash or diverge.
# Non-finite floats (NaN, inf) are refused for every key. List keys check each item.
RANGES: dict[str, Range] = {
    **{k: _at_least(1) for k in ("epochs", "batch_size", "checkpoint_every", "checkpoint_steps", "eval_every",
                                 "accumulate", "log_every", "keep_last", "max_steps_per_epoch", "average_last",
                                 "test_proposals", "roi_samples", "every", "proj_dim", "pred_dim", "pyramid_channels",
                                 "stride")},
    **{k: _at_least(0) for k in ("workers", "warmup_iters", "gradcam_images", "sample_images", "min_iters",
                                 "precise_bn", "nonfinite_skips", "temporal_k", "seed", "seeds", "label_seed",
                                 "queue_size", "queue_start_epoch", "freeze_prototypes_steps", "local_crops",
                                 "warmup_epochs")},
    **{k: _at_least(1) for k in ("head_dim", "hidden_dim", "prototypes", "sinkhorn_iterations", "grid")},
    **{k: POSITIVE for k in ("temperature", "sinkhorn_epsilon", "trust_coefficient")},
    "local_size": _at_least(16),
    "momentum_end": PROBABILITY,
    "dense_weight": PROBABILITY,
    "local_min_scale": FRACTION,
    "local_max_scale": FRACTION,
    **{k: _at_least(32) for k in ("min_size", "max_size", "size")},
    **{k: POSITIVE for k in ("lr", "clip_grad_norm", "backbone_lr_mult", "loss_scale", "std")},
    "momentum": Range(0, 1, high_open=True),
    "weight_decay": Range(0),
    "warmup_ratio": FRACTION,
    "gamma": FRACTION,
    "min_scale": FRACTION,
    "holdout": Range(0, 1, low_open=True, high_open=True),
    "label_fractions": FRACTION,
    "lam": PROBABILITY,
    "mean": PROBABILITY,
    "grayscale": PROBABILITY,
    "blur": PROBABILITY,
    "hflip": PROBABILITY,
    "color_jitter": Range(0, 2),
    "collapse_warn": Range(0),
}  # fmt: skip
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def from_dict(cls: type[T], raw: Any, where: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(raw, dict):
        raise FpsiamError(f"{where}: key '{prefix or '<root>'}': expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; known keys: {', '.join(names)}"
            raise FpsiamError(f"{where}: unknown key '{dotted}'{hint}")
        kwargs[key] = _coerce(hints[key], value, where, dotted)
        _check_range(key, kwargs[key], where, dotted)
        _check_names(cls.__name__, key, kwargs[key], where, dotted)
    return cls(**kwargs)


def _check_range(key: str, value: Any, where: str, dotted: str) -> None:
    """Refuse a value outside its key's range (see :data:`RANGES`), a non-finite float, or an unknown device."""
    if key == "device" and isinstance(value, str) and not DEVICE.match(value):
        raise FpsiamError(f"{where}: key '{dotted}': expected auto, cpu, cuda or cuda:N, got {_short(value)}")
    values = value if isinstance(value, list) else [value]
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        name = f"{dotted}[{i}]" if isinstance(value, list) else dotted
        if isinstance(v, float) and not math.isfinite(v):
            raise FpsiamError(f"{where}: key '{name}': must be a finite number, got {v}")
        allowed = RANGES.get(key)
        if allowed is not None and not allowed.holds(v):
            raise FpsiamError(f"{where}: key '{name}': must be {allowed}, got {v:g}")


def _methods() -> Callable[[str, str], None]:
    from fpsiam.ssl.methods import check_method

    return check_method


def _detectors() -> Callable[[str, str], None]:
    from fpsiam.detect.models import check_detector

    return check_detector


def _backbones() -> Callable[[str, str], None]:
    from fpsiam.backbones import check_backbone

    return check_backbone


# Keys whose values are names from a table (method, detector, backbone): (config class, key) -> the table's check.
# Each table is imported only when such a key is read (they import torch), and no name list is repeated here.
NAME_KEYS: dict[tuple[str, str], Callable[[], Callable[[str, str], None]]] = {
    ("PretrainModel", "method"): _methods,
    ("ExperimentConfig", "methods"): _methods,
    ("PretrainModel", "backbone"): _backbones,
    ("DetectModel", "arch"): _backbones,
    ("DetectModel", "kind"): _detectors,
    ("ExperimentConfig", "detectors"): _detectors,
}


def _check_names(cls: str, key: str, value: Any, where: str, dotted: str) -> None:
    """Refuse a name that is not in its table (:data:`NAME_KEYS`), one line listing the known ones."""
    table = NAME_KEYS.get((cls, key))
    if table is None:
        return
    check = table()
    for i, name in enumerate(value if isinstance(value, list) else [value]):
        check(name, f"{where}: key '{dotted}[{i}]'" if isinstance(value, list) else f"{where}: key '{dotted}'")


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line stays one line, whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text):,} chars)"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    def bad() -> FpsiamError:
        return FpsiamError(f"{where}: key '{key}': expected {_type_name(tp)}, got {_short(value)}")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, key)
            except FpsiamError:
                continue
        raise bad()
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if tp is Any:
        return value
    raise bad()


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the effective config as YAML, atomically (``RUN_DIR/config.yaml``)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
