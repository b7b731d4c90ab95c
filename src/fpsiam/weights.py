"""Backbone weights: initialise, load, extract from checkpoints, convert between key layouts.

The one internal layout is **torchvision's ResNet keys without ``fc.*``** (``conv1.weight``,
``layer1.0.bn1.running_mean``, ...), stored as safetensors. Everything else converts into it or out of it:

- in: torchvision ``.pth`` files, our pretraining checkpoints, MMSelfSup / MMDetection checkpoints
  (``backbone.*``), torchvision detection models (``backbone.body.*``), SimSiam / MoCo checkpoints
  (``module.encoder.*`` / ``module.encoder_q.*``), detectron2 ``.pth`` checkpoints (``res2.*``, ``stem.*``);
- out: torchvision (safetensors, optionally ``.pth``), MMDetection (``.pth``) and detectron2 (``.pkl``).

Files are never unpickled: torch files go through ``torch.load(..., weights_only=True)``.
Loading into a model fails loudly (:class:`FpsiamError` listing missing / unexpected keys and shape
mismatches) rather than half-loading.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torchvision
from torch import Tensor, nn

from fpsiam.backbones import ARCHS, imagenet_weights
from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_path

PRETRAIN_FORMAT = "fpsiam-pretrain-v1"
"""``format`` entry of the pretraining checkpoints written by ``fpsiam pretrain``."""

BACKBONE_PREFIX = "encoder.backbone."
"""Where the ResNet sits in the ``state_dict`` of :class:`fpsiam.ssl.methods.SimSiam` / ``FPSiam``."""

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
OUTPUT_SUFFIXES = (".safetensors", ".pth", ".pt", ".pkl")

# Wrappers whose prefix every key carries: DDP / DataParallel, torch.compile, Lightning modules.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# Where a ResNet sits inside a bigger model, most specific first: ours, torchvision detection, detectron2,
# MMSelfSup / MMDetection, MoCo, SimSiam (whose ``encoder.fc`` is its projector: dropped with fc.*).
_BACKBONE_PREFIXES = (BACKBONE_PREFIX, "backbone.body.", "backbone.bottom_up.", "backbone.", "encoder_q.", "encoder.")


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_backbone` loaded: ``loaded`` of the model's ``total`` tensors."""

    loaded: int
    total: int
    path: str
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return f"loaded {self.loaded}/{self.total} tensors from {self.path}"


# ---------------------------------------------------------------------------------------------- reading


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)
        return f"a dict with {len(keys)} keys ({', '.join(map(str, keys[:6]))}{', ...' if len(keys) > 6 else ''})"
    return f"a {type(obj).__name__}"


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into an FpsiamError naming the file."""
    if not path.is_file():
        raise FpsiamError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise FpsiamError(f"{path}: not a readable torch file (is it truncated or corrupt?)") from None
        raise FpsiamError(
            f"{path}: contains pickled Python objects ({found.group(1)}), which fpsiam never unpickles "
            "(torch.load weights_only=True). If you trust the file, keep only its tensors: "
            f"python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            "torch.save({'state_dict': c['state_dict']}, 'clean.pth')\" and pass clean.pth"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FpsiamError(f"{path}: not a readable torch file ({first}); is it truncated or corrupt?") from None


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a torch file (``.pth/.pt/.bin/.ckpt``).

    A torch file's top-level ``"state_dict"`` or ``"model"`` entry is unwrapped (repeatedly, e.g. a
    Lightning checkpoint, an MMSelfSup / MMDetection checkpoint, a detectron2 checkpoint, ours).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        raise FpsiamError(
            f"{path}: a pickle file (detectron2 .pkl?); fpsiam never unpickles files. If you trust it, "
            f"convert it: python -c \"import pickle, torch; d = pickle.load(open('{path}', 'rb')); "
            "torch.save({k: torch.as_tensor(v) for k, v in d.get('model', d).items()}, 'weights.pth')\""
        )
    if suffix == ".safetensors":
        if not path.is_file():
            raise FpsiamError(f"{path}: file not found")
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except Exception as e:  # SafetensorError has no importable base class across versions
            raise FpsiamError(f"{path}: not a readable safetensors file ({e}); is it truncated or corrupt?") from None
    if suffix not in TORCH_SUFFIXES:
        kinds = "/".join(TORCH_SUFFIXES)
        raise FpsiamError(f"{path}: unknown weights file type '{suffix}'; use .safetensors or {kinds}")
    obj = _torch_load(path)
    while isinstance(obj, dict):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise FpsiamError(f"{path}: no state_dict of tensors found; the file holds {_describe(obj)}")
    return obj


# ---------------------------------------------------------------------------------------------- key layouts


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def to_detectron2_key(key: str) -> str:
    """torchvision -> detectron2 ResNet key (the renaming of MoCo's convert-pretrain-to-detectron2.py)."""
    if not key.startswith("layer"):
        key = "stem." + key
    key = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn(\d)", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def from_detectron2_key(key: str) -> str:
    """detectron2 -> torchvision ResNet key (inverse of :func:`to_detectron2_key`)."""
    key = key.removeprefix("stem.")
    key = re.sub(r"^res(\d)", lambda m: f"layer{int(m.group(1)) - 1}", key)
    key = key.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    return re.sub(r"conv(\d)\.norm", r"bn\1", key)


def to_torchvision_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ResNet state_dict in any known layout -> torchvision keys without ``fc.*``.

    1. strip wrapper prefixes every key shares (``module.``, ``_orig_mod.``, ``model.``), repeatedly;
    2. if the keys hold a bigger model, keep the backbone: the first of ``encoder.backbone.`` (ours),
       ``backbone.body.`` (torchvision detection), ``backbone.bottom_up.`` (detectron2), ``backbone.``
       (MMSelfSup / MMDetection), ``encoder_q.`` (MoCo), ``encoder.`` (SimSiam) that some key carries;
    3. rename detectron2 keys (``stem.conv1``, ``res2``...) to torchvision's;
    4. drop ``fc.*`` (a classifier or, in SimSiam checkpoints, the projector).
    """
    sd = dict(sd)
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = _strip(sd, prefix)
                changed = True
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = _strip(sd, prefix)
            break
    if any(k.startswith(("stem.", "res2.")) for k in sd):
        sd = {from_detectron2_key(k): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def infer_arch(sd: dict[str, Tensor], where: str = "state_dict") -> str:
    """resnet18 / resnet34 / resnet50 from torchvision keys: block type and number of layer3 blocks."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"layer3\.(\d+)\.", k))}
    bottleneck = "layer1.0.conv3.weight" in sd
    arch = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50"}.get((len(blocks), bottleneck))
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise FpsiamError(
            f"{where}: not a ResNet-18/34/50 backbone ({len(blocks)} layer3 blocks, {kind} blocks; "
            f"keys like {', '.join(list(sd)[:3])}); supported: {', '.join(ARCHS)}"
        )
    return arch


# ---------------------------------------------------------------------------------------------- loading


def _examples(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_state_dict_checked(model: nn.Module, sd: dict[str, Tensor], where: str, strict: bool = True) -> LoadReport:
    """Load torchvision-keyed ``sd`` into ``model`` (a torchvision ResNet; ``fc`` ignored on both sides).

    Fails with one message listing missing keys, unexpected keys and shape mismatches (first few and
    counts). ``num_batches_tracked`` buffers may be absent (detectron2 / FrozenBN files lack them).
    ``strict=False`` tolerates missing and unexpected keys (they are in the report) but never a shape
    mismatch, and never a load that matches nothing.
    """
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    mismatched = [k for k in target if k in sd and sd[k].shape != target[k].shape]
    matched = [k for k in target if k in sd and k not in mismatched]
    if not matched:
        raise FpsiamError(
            f"{where}: none of its {len(sd)} tensors match the model's {len(target)} "
            f"(file keys like {_examples(list(sd), 3)}; model keys like {_examples(list(target), 3)})"
        )
    problems = []
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatches ("
            + ", ".join(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}" for k in mismatched[:3])
            + (", ..." if len(mismatched) > 3 else "")
            + ")"
        )
    if strict and missing:
        problems.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if problems:
        raise FpsiamError(
            f"{where}: does not fit the backbone: "
            + "; ".join(problems)
            + ". Are these weights of another architecture (model.backbone)?"
        )
    model.load_state_dict({k: sd[k] for k in matched}, strict=False)
    return LoadReport(len(matched), len(target), where, missing, unexpected)


def load_backbone(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a weights file in any layout :func:`to_torchvision_keys` knows into a torchvision ResNet."""
    sd = to_torchvision_keys(load_state_file(path))
    return load_state_dict_checked(model, sd, str(path), strict=strict)


def init_backbone(model: nn.Module, arch: str, init: str, weights_file: str | None = None) -> str:
    """Initialise ``model`` (a torchvision ResNet of ``arch``) per ``model.init``; returns a one-line message.

    ``random``: keep the constructor's init. ``imagenet``: torchvision's ImageNet weights (as every method
    of the paper's comparison), from ``weights_file`` when given (an offline copy such as
    ``resnet50-0676ba61.pth``), else through torchvision's own download cache. Anything else: a weights file.
    """
    if init == "random":
        return f"{arch}: random init"
    if init == "imagenet":
        if weights_file:
            return f"{arch}: ImageNet init, {load_backbone(model, weights_file)}"
        if arch not in ARCHS:
            raise FpsiamError(f"no ImageNet weights for '{arch}'; choose one of: {', '.join(ARCHS)}")
        weights = imagenet_weights(arch)
        try:
            sd = weights.get_state_dict(progress=True)
        except (OSError, RuntimeError, ValueError) as e:
            file = weights.url.rsplit("/", 1)[-1]
            raise FpsiamError(
                f"could not get torchvision's ImageNet weights for {arch} ({type(e).__name__}: {e}); without "
                f"internet access, copy {file} ({weights.url}) here and pass --set model.weights_file=PATH/{file}"
            ) from None
        report = load_state_dict_checked(model, to_torchvision_keys(sd), weights.url)
        return f"{arch}: ImageNet init, {report}"
    if not Path(init).exists():
        raise FpsiamError(
            f"backbone init '{init}': not 'random', 'imagenet' or an existing weights file; check the path"
        )
    return f"{arch}: init from file, {load_backbone(model, init)}"


# ---------------------------------------------------------------------------------------------- extraction


def _latest_in_run(run_dir: Path) -> Path:
    from fpsiam.train.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir)
    if found is None:
        raise FpsiamError(f"{run_dir}: a folder without checkpoints/ckpt_*.pt; pass a checkpoint file or a run folder")
    return found


def extract_backbone(ckpt_path: str | Path, source: str = "fpsiam") -> tuple[dict[str, Tensor], str]:
    """The torchvision-keyed backbone (no fc) and its arch, from a pretraining checkpoint.

    ``source="fpsiam"``: a checkpoint of ``fpsiam pretrain`` (``{"format": "fpsiam-pretrain-v1",
    "arch", "model": method state_dict, ...}``; the backbone is under :data:`BACKBONE_PREFIX`), or a run
    folder (its newest checkpoint). ``source="mmselfsup"``: a checkpoint of the reference implementation
    (``{"state_dict": {"backbone.conv1.weight", ...}, "meta": ...}``); the arch is read off the keys.
    """
    path = Path(ckpt_path)
    if path.is_dir():
        path = _latest_in_run(path)
    if source not in ("fpsiam", "mmselfsup"):
        raise FpsiamError(f"unknown checkpoint source '{source}'; choose fpsiam or mmselfsup")
    obj = _torch_load(path)
    if source == "fpsiam":
        if not isinstance(obj, dict) or obj.get("format") != PRETRAIN_FORMAT or not isinstance(obj.get("model"), dict):
            mm = isinstance(obj, dict) and "state_dict" in obj
            hint = " (an MMSelfSup checkpoint? pass --from mmselfsup)" if mm else ""
            raise FpsiamError(
                f"{path}: not an fpsiam pretraining checkpoint (expected format '{PRETRAIN_FORMAT}' with a "
                f"'model' entry; found {_describe(obj)}){hint}"
            )
        model_sd = obj["model"]
        for prefix in ("module.", "_orig_mod."):
            if model_sd and all(k.startswith(prefix) for k in model_sd):
                model_sd = _strip(model_sd, prefix)
        sd = _strip(model_sd, BACKBONE_PREFIX)
        if not sd:
            raise FpsiamError(
                f"{path}: no '{BACKBONE_PREFIX}*' tensors in its model (keys like {_examples(list(model_sd))})"
            )
    else:
        if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
            raise FpsiamError(
                f"{path}: not an MMSelfSup checkpoint (expected a 'state_dict' entry; found {_describe(obj)})"
            )
        sd = _strip(obj["state_dict"], "backbone.")
        if not sd:
            raise FpsiamError(
                f"{path}: no 'backbone.*' tensors in its state_dict (keys like {_examples(list(obj['state_dict']))})"
            )
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    arch = infer_arch(sd, str(path))
    if source == "fpsiam" and obj.get("arch") != arch:
        raise FpsiamError(f"{path}: says arch '{obj.get('arch')}' but its backbone tensors are a {arch}")
    return sd, arch


def _output_base(out: Path) -> Path:
    return out.with_suffix("") if out.suffix.lower() in OUTPUT_SUFFIXES else out


CARD_KEY = "fpsiam_card"  # safetensors metadata: the model card (what the weights were trained on and how)


def model_card(path: str | Path) -> dict[str, Any]:
    """The model card in a safetensors file's metadata ({} when it has none)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(CARD_KEY)
        return json.loads(raw) if raw else {}
    except Exception:  # noqa: BLE001 - a card is informative only
        return {}


def detectron2_lines(card: dict[str, Any]) -> list[str]:
    """The config lines detectron2 needs for torchvision-layout ResNet weights; without them the weights load but
    the features are silently wrong (detectron2's own ResNets stride in the 1x1 conv, read BGR and use ImageNet
    statistics on 0-255 BGR)."""
    from fpsiam.config import LDPOLYPVIDEO_MEAN, LDPOLYPVIDEO_STD

    mean = [round(255 * v, 3) for v in card.get("mean", LDPOLYPVIDEO_MEAN)]
    std = [round(255 * v, 3) for v in card.get("std", LDPOLYPVIDEO_STD)]
    return [
        "MODEL.RESNETS.STRIDE_IN_1X1: False   # torchvision ResNets stride in the 3x3 conv",
        "INPUT.FORMAT: RGB",
        f"MODEL.PIXEL_MEAN: {mean}   # the normalisation the backbone was trained with, on 0-255 RGB",
        f"MODEL.PIXEL_STD: {std}",
    ]


def save_backbone(
    sd: dict[str, Tensor], out: str | Path, to: str = "torchvision", pth: bool = False,
    card: dict[str, Any] | None = None,
) -> list[Path]:  # fmt: skip
    """Write torchvision-keyed backbone weights; returns the written paths. Atomic writes.

    ``out``'s suffix (if one of .safetensors/.pth/.pt/.pkl) is replaced by the format's own:

    - ``torchvision``: ``OUT.safetensors`` (+ ``OUT.pth``, a plain state_dict, with ``pth=True``);
      ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` reports only ``fc.*`` missing.
    - ``mmdet``: ``OUT.pth`` = ``{"state_dict": torchvision keys, "author": "fpsiam"}``: the file
      MMSelfSup's extract_backbone_weights.py writes, loaded by MMDetection's
      ``backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=OUT.pth))`` (the reference's configs;
      the keys are the ResNet's own, as in ``torchvision://resnet50``).
    - ``detectron2``: ``OUT.pkl`` = pickle of ``{"model": {detectron2 key: numpy array}, "__author__":
      "fpsiam", "matching_heuristics": True}`` (as MoCo's convert-pretrain-to-detectron2.py): detectron2
      only applies its name-matching heuristics to ``.pkl`` files, so ``MODEL.WEIGHTS OUT.pkl`` loads it
      into ``backbone.bottom_up``. ``num_batches_tracked`` is dropped (detectron2's BN has none).
    """
    out = Path(out)
    base = _output_base(out)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items() if not k.startswith("fc.")}
    if not sd:
        raise FpsiamError(f"{out}: nothing to write (empty backbone state_dict)")
    written: list[Path] = []
    if to == "torchvision":
        target = base.with_name(base.name + ".safetensors")
        with atomic_path(target) as tmp:
            meta = {"format": "pt", "layout": "torchvision-resnet"}
            if card:
                import json

                meta[CARD_KEY] = json.dumps(card)
            safetensors.torch.save_file(sd, str(tmp), metadata=meta)
        written.append(target)
        if pth:
            target = base.with_name(base.name + ".pth")
            with atomic_path(target) as tmp:
                torch.save(sd, tmp)
            written.append(target)
    elif to == "mmdet":
        target = base.with_name(base.name + ".pth")
        with atomic_path(target) as tmp:
            torch.save({"state_dict": sd, "author": "fpsiam"}, tmp)
        written.append(target)
    elif to == "detectron2":
        target = base.with_name(base.name + ".pkl")
        model = {to_detectron2_key(k): v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            pickle.dump({"model": model, "__author__": "fpsiam", "matching_heuristics": True}, f)
        written.append(target)
    else:
        raise FpsiamError(f"unknown output layout '{to}'; choose torchvision, mmdet or detectron2")
    return written


def extract(
    ckpt: str | Path, out: str | Path, to: str = "torchvision", source: str = "fpsiam", pth: bool = False
) -> list[Path]:
    """``fpsiam extract``: checkpoint -> backbone weights file(s), checked against torchvision first."""
    sd, arch = extract_backbone(ckpt, source)
    reference = getattr(torchvision.models, arch)(weights=None)
    load_state_dict_checked(reference, sd, f"{ckpt} (backbone, checked against torchvision {arch})")
    return save_backbone(sd, out, to=to, pth=pth, card=checkpoint_card(ckpt, arch) if source == "fpsiam" else None)


def checkpoint_card(ckpt: str | Path, arch: str) -> dict[str, Any]:
    """The model card of a pretraining checkpoint (or run folder): method, data, normalisation, size, epochs."""
    path = Path(ckpt)
    obj = _torch_load(_latest_in_run(path) if path.is_dir() else path)
    cfg = obj.get("config") or {}
    return pretrain_card(cfg, arch, obj.get("epoch"), obj.get("global_step"))


def pretrain_card(cfg: dict[str, Any], arch: str, epochs: Any, steps: Any, **extra: Any) -> dict[str, Any]:
    """What a pretrained backbone was trained on and how (stored in its safetensors metadata)."""
    from fpsiam import __version__

    data, model = cfg.get("data", {}), cfg.get("model", {})
    return {
        "kind": "backbone", "arch": arch, "method": model.get("method"), "init": model.get("init"),
        "trained_on": data.get("source"), "view_size": data.get("size"), "mean": data.get("mean"),
        "std": data.get("std"), "epochs": epochs, "steps": steps, "fpsiam": __version__, **extra,
    }  # fmt: skip
