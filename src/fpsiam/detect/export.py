"""Export a saved detector to ONNX or TorchScript, load those files back, and check they agree with PyTorch.

``export_model(MODEL, "onnx")`` writes an ONNX graph of the detector's whole inference, as ``model.eval()``
runs it in PyTorch:

- input ``image``: float32 ``[1, 3, H, W]``, RGB in 0..1, at the frame's own size. The graph resizes it to the
  model's ``min_size``/``max_size``, normalises it with the model's mean/std and pads it to /32 (torchvision's
  ``GeneralizedRCNNTransform``, traced), so no preprocessing is needed beyond decoding to RGB and dividing by
  255. ``H`` and ``W`` are dynamic by default; ``size=(H, W)`` fixes them (for runtimes that need static
  shapes): :class:`OnnxRunner` then letterboxes each frame into that size (keeping its aspect ratio, padding
  with the mean colour) and maps the boxes back, which is close to, not exactly, what PyTorch computes.
- outputs ``boxes`` float32 ``[N, 4]`` (xyxy, in the input's pixels), ``scores`` float32 ``[N]``, ``labels``
  int64 ``[N]``: every detection the model keeps (score >= its internal 0.05, NMS, at most 100); the caller
  applies the reporting threshold.

RetinaNet is exported through a per-level wrapper (:func:`_retinanet_inference`): torchvision's forward splits
the concatenated head outputs with sizes computed in Python, which tracing freezes to the example's feature
sizes; running the head and the anchors level by level computes the same numbers without that split, so the
graph stays correct at every input size.

``export_model(MODEL, "torchscript")`` writes ``torch.jit.script`` of the detector (any number and size of
images, as ``model(images)`` in PyTorch; a scripted torchvision detector returns ``(losses, detections)``).

Both files carry what inference needs: the ONNX ``metadata_props`` entry ``fpsiam`` and the TorchScript extra
file ``fpsiam.json`` hold the same JSON (format, kind, arch, num_classes, min/max size, image_mean/std,
score_threshold, the input layout and the sha256 of the model file it was exported from). A file without it
(exported by another tool or from another model) is refused with an FpsiamError naming it.

:func:`compare_backends` runs PyTorch eager, ONNX Runtime and TorchScript on the same images and reports how
far apart their boxes are (matched IoU, score differences, counts above a threshold).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_path

FORMATS = ("onnx", "torchscript")
ONNX_FORMAT = "fpsiam-detector-onnx/1"
TORCHSCRIPT_FORMAT = "fpsiam-detector-torchscript/1"
META_KEY = "fpsiam"  # ONNX metadata_props key
TS_EXTRA = "fpsiam.json"  # TorchScript extra file
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
MIN_OPSET = 16  # RoIAlign with aligned=True (the reference's half-pixel RoIAlign) exists in ONNX from opset 16
INPUT = "image"
OUTPUTS = ("boxes", "scores", "labels")


# ------------------------------------------------------------------------------------------- export


def _retinanet_inference(model: nn.Module, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RetinaNet.forward (eval, one image) with the head and the anchors computed level by level.

    Same operations as torchvision's forward on each level (the head's convs and the anchor grid are
    per level there too); only the concatenate-then-split round trip is left out (see the module docstring).
    """
    original = [(image.shape[-2], image.shape[-1])]
    images, _ = model.transform([image])
    features = list(model.backbone(images.tensors).values())
    heads = [model.head([f]) for f in features]
    per_level = {k: [h[k] for h in heads] for k in ("cls_logits", "bbox_regression")}
    generator = model.anchor_generator
    grid_sizes = [f.shape[-2:] for f in features]
    size = images.tensors.shape[-2:]
    strides = [
        [
            torch.empty((), dtype=torch.int64, device=image.device).fill_(size[0] // g[0]),
            torch.empty((), dtype=torch.int64, device=image.device).fill_(size[1] // g[1]),
        ]
        for g in grid_sizes
    ]
    generator.set_cell_anchors(features[0].dtype, features[0].device)
    anchors = generator.grid_anchors(grid_sizes, strides)
    detections = model.postprocess_detections(per_level, [anchors], images.image_sizes)
    out = model.transform.postprocess(detections, images.image_sizes, original)[0]
    return out["boxes"], out["scores"], out["labels"]


class OnnxInference(nn.Module):
    """What the ONNX graph computes: ``[1, 3, H, W]`` 0..1 RGB -> ``boxes``, ``scores``, ``labels``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.retinanet = model.fpsiam_spec.kind == "retinanet"

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.retinanet:
            return _retinanet_inference(self.model, image[0])
        out = self.model([image[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def sha256_of(path: str | os.PathLike) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_out(out: Path) -> None:
    """Refuse an output in a folder that does not exist (a typo should not create a tree of folders)."""
    if not out.parent.is_dir():
        raise FpsiamError(f"{out}: the folder {out.parent} does not exist; create it first or pass another path")
    if out.is_dir():
        raise FpsiamError(f"{out}: is a folder; pass the path of the file to write")


def _size_arg(size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= 8192 for v in hw):
        raise FpsiamError(f"export size {size!r}: expected H or (H, W) in pixels, 32..8192")
    return hw  # type: ignore[return-value]


def export_model(
    model_path: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    *,
    opset: int = 17,
    size: int | tuple[int, int] | None = None,
) -> Path:
    """Write ``model_path`` (a detector file of ``fpsiam detect train``) as ONNX or TorchScript; returns the path.

    ``out``: default beside the model file (``.onnx`` / ``.torchscript.pt``); its folder must exist. ``opset``:
    ONNX opset (>= 11). ``size``: ONNX only, fix the input to ``(H, W)`` (default: dynamic height and width).
    The file is written atomically with the metadata of the module docstring.
    """
    from fpsiam.detect.models import inference_meta, load_detector

    if fmt not in FORMATS:
        raise FpsiamError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise FpsiamError(f"ONNX opset {opset!r}: the detectors need opset >= {MIN_OPSET} (aligned RoIAlign)")
    model_path = Path(model_path)
    model, info = load_detector(model_path, device="cpu")
    meta = inference_meta(info)
    hw = _size_arg(size)
    if fmt == "torchscript" and hw is not None:
        raise FpsiamError("export size: only for ONNX (a TorchScript detector takes images of any size)")
    out = Path(out) if out is not None else model_path.with_name(model_path.stem + SUFFIXES[fmt])
    _check_out(out)
    meta = {
        **meta,
        "format": ONNX_FORMAT if fmt == "onnx" else TORCHSCRIPT_FORMAT,
        "source_model": model_path.name,
        "source_sha256": sha256_of(model_path),
        "input": _input_doc(fmt, hw),
    }
    if fmt == "onnx":
        _export_onnx(model, out, opset, hw, meta)
    else:
        _export_torchscript(model, out, meta)
    return out


def _input_doc(fmt: str, hw: tuple[int, int] | None) -> dict[str, Any]:
    if fmt == "torchscript":
        return {"layout": "list of float32 [3, H, W] RGB 0..1 tensors, any size", "returns": "(losses, detections)"}
    return {
        "name": INPUT,
        "layout": "float32 [1, 3, H, W] RGB 0..1, resized and normalised inside the graph",
        "size": list(hw) if hw is not None else None,  # None: dynamic H and W
        "outputs": list(OUTPUTS),
    }


def _optional(name: str) -> Any:
    """Import onnx / onnxruntime (the optional extra ``fpsiam[onnx]``) or say how to install them."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise FpsiamError(f"ONNX needs the package {name}: pip install 'fpsiam[onnx]'") from None


def _export_onnx(model: nn.Module, out: Path, opset: int, hw: tuple[int, int] | None, meta: dict) -> None:
    onnx = _optional("onnx")

    spec = model.fpsiam_spec
    _with_transform(model, OnnxScaleTransform)
    example = torch.rand(1, 3, *(hw or (spec.min_size, spec.max_size)), generator=torch.Generator().manual_seed(0))
    dynamic = {INPUT: {2: "height", 3: "width"}} if hw is None else {}
    dynamic.update({name: {0: "detections"} for name in OUTPUTS})
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():  # tracer warnings about python values in torchvision's code: expected
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(OnnxInference(model), (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=dynamic)  # fmt: skip
            except Exception as e:  # an unsupported opset, an operator the exporter lacks
                raise FpsiamError(f"{out}: ONNX export failed at opset {opset} ({str(e).splitlines()[0]})") from None
        graph = onnx.load(str(tmp))
        graph.metadata_props.add(key=META_KEY, value=json.dumps(meta))
        graph.doc_string = "fpsiam polyp detector; see the 'fpsiam' metadata"
        onnx.save(graph, str(tmp))


class EagerScaleTransform(GeneralizedRCNNTransform):
    """torchvision's transform whose *scripted* resize computes the scale in double precision, as eager does.

    Scripted, torchvision computes the scale from a float32 tensor: ``64 / 100`` in float32 times 100 is
    63.99999, so a 100 x 70 frame becomes 63 x 44 instead of eager's 64 x 44 and the boxes move. Here the
    scale is ``min(min_size / min(h, w), max_size / max(h, w))`` in Python floats (double in TorchScript),
    the same number eager computes, and the same ``interpolate`` call. Inference only.
    """

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.training or target is not None:
            raise RuntimeError("an exported fpsiam detector only runs inference (eval, no targets)")
        h, w = image.shape[-2], image.shape[-1]
        scale = min(float(self.min_size[-1]) / min(h, w), float(self.max_size) / max(h, w))
        image = torch.nn.functional.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]
        return image, target


class OnnxScaleTransform(GeneralizedRCNNTransform):
    """torchvision's transform whose *traced* resize computes the output size as eager does, in double precision.

    Traced, torchvision computes the scale in float32 and hands ONNX Resize a scale, so a 531 x 598 frame becomes
    198 x 224 in ONNX Runtime where eager (Python floats) gives 198 x 223; the boxes then move (matched IoU 0.985
    on Kvasir-SEG's test images). Here the scale ``min(min_size / min(h, w), max_size / max(h, w))`` and the size
    ``floor(side * scale)`` are computed on float64 tensors (1-D: a 0-d constant would be cast to float32 by the
    exporter) and Resize gets the size, which is what eager's ``recompute_scale_factor=True`` does. Inference only.
    """

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.training or target is not None:
            raise RuntimeError("an exported fpsiam detector only runs inference (eval, no targets)")
        side = torch._shape_as_tensor(image)[-2:].to(torch.float64)
        limits = torch.tensor([float(self.min_size[-1]), float(self.max_size)], dtype=torch.float64)
        scale = (limits / torch.stack([side.min(), side.max()])).min(dim=0, keepdim=True)[0]
        size = torch.floor(side * scale).to(torch.int64)
        image = torch.nn.functional.interpolate(
            image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False
        )[0]
        return image, target


def _with_transform(model: nn.Module, kind: type[GeneralizedRCNNTransform]) -> None:
    """Replace ``model.transform`` by the same settings in ``kind``."""
    t = model.transform
    model.transform = kind(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size,
                           _skip_resize=t._skip_resize)  # fmt: skip


def _export_torchscript(model: nn.Module, out: Path, meta: dict) -> None:
    _with_transform(model, EagerScaleTransform)
    with warnings.catch_warnings(), atomic_path(out) as tmp:
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated for torch.export; still supported
        scripted = torch.jit.script(model.eval())
        torch.jit.save(scripted, str(tmp), _extra_files={TS_EXTRA: json.dumps(meta)})


# ------------------------------------------------------------------------------------------- loading


def _bad_export(path: Path, what: str) -> FpsiamError:
    return FpsiamError(
        f"{path}: {what}; pass a file written by 'fpsiam export' (or the detector's .safetensors file)"
    )  # fmt: skip


def _parse_meta(path: Path, raw: str | None, fmt: str) -> dict[str, Any]:
    if not raw:
        raise _bad_export(path, f"no fpsiam metadata in this {fmt} file (exported by another tool or model?)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise _bad_export(path, "corrupt fpsiam metadata (not JSON)") from None
    want = ONNX_FORMAT if fmt == "ONNX" else TORCHSCRIPT_FORMAT
    if not isinstance(meta, dict) or meta.get("format") != want:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise _bad_export(path, f"fpsiam metadata of format {got!r}, expected {want}")
    return meta


def load_onnx(path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> tuple[Any, dict]:
    """An onnxruntime session for an fpsiam ONNX export, and its metadata; FpsiamError for any other file.

    ``threads``: intra-op threads (default: ``torch.get_num_threads()``, so both backends use the same budget).
    """
    ort = _optional("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise FpsiamError(f"{path}: ONNX file not found; write one with 'fpsiam export MODEL --format onnx'")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise _bad_export(path, f"not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
    meta = _parse_meta(path, session.get_modelmeta().custom_metadata_map.get(META_KEY), "ONNX")
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT], list(OUTPUTS)):
        raise _bad_export(path, f"inputs/outputs {names}, expected ([{INPUT!r}], {list(OUTPUTS)})")
    return session, meta


def load_torchscript(path: str | os.PathLike, device: str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """A TorchScript export and its metadata (extra file ``fpsiam.json``); FpsiamError for any other file."""
    path = Path(path)
    if not path.is_file():
        raise FpsiamError(
            f"{path}: TorchScript file not found; write one with 'fpsiam export MODEL --format torchscript'"
        )
    extra = {TS_EXTRA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load: deprecated, still supported
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:  # RuntimeError/ValueError for non-TorchScript archives
        raise _bad_export(path, f"not a loadable TorchScript file ({str(e).splitlines()[0][:200]})") from None
    raw = extra[TS_EXTRA]
    meta = _parse_meta(path, raw.decode() if isinstance(raw, bytes) else raw, "TorchScript")
    return module.eval(), meta


# ------------------------------------------------------------------------------------------- runners


def letterbox(image: Tensor, hw: tuple[int, int], mean: list[float]) -> tuple[Tensor, float]:
    """Resize ``[3, h, w]`` 0..1 to fit ``hw`` keeping the aspect ratio, pad bottom/right with ``mean``."""
    h, w = image.shape[-2:]
    scale = min(hw[0] / h, hw[1] / w)
    nh, nw = min(hw[0], round(h * scale)), min(hw[1], round(w * scale))
    resized = torch.nn.functional.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    canvas = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1).expand(3, *hw).clone()
    canvas[:, :nh, :nw] = resized
    return canvas, scale


class OnnxRunner:
    """Runs an fpsiam ONNX export on a list of ``[3, H, W]`` float 0..1 CPU tensors, one image at a time."""

    backend = "onnxruntime"

    def __init__(self, session: Any, meta: dict[str, Any]) -> None:
        self.session, self.meta = session, meta
        size = (meta.get("input") or {}).get("size")
        self.fixed = tuple(size) if size else None

    def __call__(self, images: list[Tensor]) -> list[dict[str, np.ndarray]]:
        outs = []
        for image in images:
            h, w = image.shape[-2:]
            scale = 1.0
            if self.fixed is not None and (h, w) != self.fixed:
                image, scale = letterbox(image, self.fixed, self.meta["image_mean"])
            boxes, scores, labels = self.session.run(None, {INPUT: image[None].numpy()})
            if scale != 1.0:
                boxes = boxes / scale
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            outs.append({"boxes": boxes, "scores": scores, "labels": labels})
        return outs


class TorchScriptRunner:
    """Runs a TorchScript export (``(losses, detections) = module(images)``)."""

    backend = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule, device: torch.device) -> None:
        self.module, self.device = module, device

    @torch.inference_mode()
    def __call__(self, images: list[Tensor]) -> list[dict[str, np.ndarray]]:
        with warnings.catch_warnings():  # "... always returns a (Losses, Detections) tuple in scripting": known
            warnings.simplefilter("ignore", UserWarning)
            _, detections = self.module([im.to(self.device) for im in images])
        return [{k: v.cpu().numpy() for k, v in d.items()} for d in detections]


# ------------------------------------------------------------------------------------------- checking


def _pairs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[list[tuple[int, int]], np.ndarray]:
    from fpsiam.detect.track import box_iou, match_boxes

    iou = box_iou(a["boxes"], b["boxes"])
    same = np.abs(a["boxes"][:, None, :] - b["boxes"][None, :, :]).max(axis=2, initial=0.0) <= 1e-4
    iou[same & (iou == 0.0)] = 1.0  # identical zero-area boxes (clipped at the image border) have no IoU
    iou[a["labels"][:, None] != b["labels"][None, :]] = 0.0
    return match_boxes(iou, 1e-9), iou


def compare_outputs(
    ref: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    threshold: float,
    tol: float = 1e-3,
    *,
    min_iou: float = 0.99,
    nms_iou: float = 0.5,
) -> dict[str, Any]:
    """How far ``other``'s detections (score >= ``threshold``) are from ``ref``'s, on one image.

    Boxes are matched one-to-one by IoU (Hungarian). Returns the counts, the smallest matched IoU, the largest
    score difference, and ``unmatched``: boxes without a partner, except ``boundary`` ones whose score lies
    within ``tol`` of the threshold (the other backend may put them on the other side of it).

    ``tie_swaps``: matched pairs below ``min_iou`` whose scores agree within ``tol`` and which overlap by more
    than ``nms_iou``. Two candidates with (near) equal scores that overlap that much are ones NMS keeps only
    one of, and which one depends on the order in which a backend sorts equal scores (flat image regions give
    bit-equal scores at neighbouring anchors). They are counted, not hidden: ``min_iou`` is over the other
    pairs, so it still catches a box the backend moved.
    """
    ref = {k: v[ref["scores"] >= threshold - tol] for k, v in ref.items()}
    other = {k: v[other["scores"] >= threshold - tol] for k, v in other.items()}
    pairs, iou = _pairs(ref, other)
    matched_ref = {r for r, _ in pairs}
    matched_other = {c for _, c in pairs}
    lone = [float(s) for i, s in enumerate(ref["scores"]) if i not in matched_ref]
    lone += [float(s) for i, s in enumerate(other["scores"]) if i not in matched_other]
    strict = [s for s in lone if s >= threshold + tol]
    diffs = {(r, c): abs(float(ref["scores"][r] - other["scores"][c])) for r, c in pairs}
    swaps = [(r, c) for r, c in pairs if nms_iou < iou[r, c] < min_iou and diffs[r, c] <= tol]
    kept = [(r, c) for r, c in pairs if (r, c) not in swaps]
    return {
        "count_ref": int((ref["scores"] >= threshold).sum()),
        "count_other": int((other["scores"] >= threshold).sum()),
        "min_iou": min((float(iou[r, c]) for r, c in kept), default=None),
        "max_score_diff": max(diffs.values(), default=None),
        "unmatched": len(strict),
        "boundary": len(lone) - len(strict),
        "tie_swaps": len(swaps),
    }


def compare_backends(
    model_path: str | os.PathLike,
    images: list[Any],
    onnx_path: str | os.PathLike | None,
    ts_path: str | os.PathLike | None,
    threshold: float = 0.5,
    *,
    device: str = "cpu",
    min_iou: float = 0.99,
    max_score_diff: float = 1e-3,
) -> dict[str, Any]:
    """Run PyTorch eager, ONNX Runtime and TorchScript on ``images`` and report how much their boxes differ.

    ``images``: anything :meth:`fpsiam.api.Detector.predict` takes (paths, PIL, numpy, tensors). Per backend:
    the images where the counts above ``threshold`` differ, the smallest matched IoU, the largest score
    difference, unmatched, boundary and tie-swapped boxes (see :func:`compare_outputs`), seconds per image,
    and ``ok``: every box clear of the threshold (by more than ``max_score_diff``) has a partner, with IoU >=
    ``min_iou`` (or a tie swap) and a score within ``max_score_diff`` (so counts differ at most by boxes on the
    threshold, which ``count_mismatch_images`` shows). An export made from another model file is an FpsiamError
    (sha256 differs).
    """
    from fpsiam.api import Detector, to_tensor

    eager = Detector.load(model_path, device=device, backend="torch")
    frames = [to_tensor(f, f"images[{i}]") for i, f in enumerate(images)]
    if not frames:
        raise FpsiamError("compare_backends: no images given")
    digest = sha256_of(model_path)
    report: dict[str, Any] = {"images": len(frames), "threshold": threshold, "min_iou": min_iou,
                              "max_score_diff": max_score_diff, "backends": {}}  # fmt: skip
    ref, seconds = _run_all(eager, frames)
    report["backends"]["torch"] = {"seconds_per_image": seconds, "detections": _count(ref, threshold)}
    for name, path in (("onnxruntime", onnx_path), ("torchscript", ts_path)):
        if path is None:
            continue
        other = Detector.load(path, device=device)
        if other.meta.get("source_sha256") != digest:
            raise FpsiamError(f"{path}: exported from another model file than {model_path}; export this model again")
        outs, seconds = _run_all(other, frames)
        per_image = [compare_outputs(a, b, threshold, max_score_diff, min_iou=min_iou)
                     for a, b in zip(ref, outs, strict=True)]  # fmt: skip
        report["backends"][name] = _summarise(per_image, seconds, outs, threshold, min_iou, max_score_diff)
    return report


def _run_all(detector: Any, frames: list[Tensor]) -> tuple[list[dict[str, np.ndarray]], float]:
    start = time.perf_counter()
    outs = [detector.infer([f])[0] for f in frames]
    return outs, (time.perf_counter() - start) / len(frames)


def _count(outs: list[dict[str, np.ndarray]], threshold: float) -> int:
    return int(sum((o["scores"] >= threshold).sum() for o in outs))


def _summarise(per_image: list[dict], seconds: float, outs: list, threshold: float, min_iou: float,
               max_diff: float) -> dict[str, Any]:  # fmt: skip
    ious = [r["min_iou"] for r in per_image if r["min_iou"] is not None]
    diffs = [r["max_score_diff"] for r in per_image if r["max_score_diff"] is not None]
    count_mismatch = sum(r["count_ref"] != r["count_other"] for r in per_image)
    unmatched = sum(r["unmatched"] for r in per_image)
    worst_iou, worst_diff = min(ious, default=1.0), max(diffs, default=0.0)
    return {
        "seconds_per_image": seconds,
        "detections": _count(outs, threshold),
        "count_mismatch_images": count_mismatch,
        "unmatched": unmatched,
        "boundary": sum(r["boundary"] for r in per_image),
        "tie_swaps": sum(r["tie_swaps"] for r in per_image),
        "min_iou": worst_iou,
        "max_score_diff": worst_diff,
        "ok": unmatched == 0 and worst_iou >= min_iou and worst_diff <= max_diff,
    }


__all__ = [
    "OnnxInference",
    "OnnxRunner",
    "TorchScriptRunner",
    "compare_backends",
    "compare_outputs",
    "export_model",
    "letterbox",
    "load_onnx",
    "load_torchscript",
    "sha256_of",
]
