"""The Python API of fpsiam's polyp detectors: load a model file, get boxes for frames.

::

    from fpsiam.api import Detector

    det = Detector.load("runs/kvasir/last.safetensors")   # or an .onnx / .torchscript.pt from `fpsiam export`
    out = det.predict(["frame1.jpg", pil_image, rgb_array, tensor])
    out[0]["boxes"], out[0]["scores"], out[0]["labels"]   # numpy: (N, 4) xyxy in the frame's pixels, (N,), (N,)

A frame is a file path, a PIL image, an ``H x W x 3`` uint8 RGB numpy array or a ``[3, H, W]`` tensor (uint8
0..255, or float 0..1). ``predict`` returns one dict per frame (a list, also for a single frame) with the
detections whose score is at least the threshold: the ``threshold`` argument, else the one given to
:meth:`Detector.load`, else the model file's ``score_threshold`` metadata, else 0.5.

Backends, chosen by the file: a ``.safetensors`` detector runs in PyTorch (``device`` "auto": CUDA when
available); an ``.onnx`` export runs in ONNX Runtime; a ``.torchscript.pt`` export in TorchScript
(:mod:`fpsiam.detect.export`). All three take the frame at its own size and resize it as the model was trained.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fpsiam.errors import FpsiamError

BACKENDS = ("auto", "torch", "onnxruntime", "torchscript")
FALLBACK_THRESHOLD = 0.5


class TorchRunner:
    """Runs a detector ``nn.Module`` in eval mode on a list of ``[3, H, W]`` float 0..1 tensors."""

    backend = "torch"

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    @torch.inference_mode()
    def __call__(self, images: list[Tensor]) -> list[dict[str, np.ndarray]]:
        outputs = self.model([im.to(self.device, non_blocking=True) for im in images])
        return [{k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in o.items()}
                for o in outputs]  # fmt: skip


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU; a CUDA device asked for must exist (FpsiamError)."""
    from fpsiam.train.distributed import check_device, wants_cuda

    name = str(device)
    check_device(name)
    return torch.device(name if name != "auto" else ("cuda" if wants_cuda() else "cpu"))


def to_tensor(frame: Any, where: str = "frame") -> Tensor:
    """One frame (path, PIL image, HxWx3 uint8 array, [3, H, W] tensor) -> float32 ``[3, H, W]`` 0..1 on the CPU."""
    if isinstance(frame, (str, os.PathLike)):
        from fpsiam.data.images import decode_rgb

        return decode_rgb(frame).float().div_(255)
    try:
        from PIL import Image

        if isinstance(frame, Image.Image):
            frame = np.array(frame.convert("RGB"))
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise FpsiamError(f"{where}: expected an H x W x 3 uint8 RGB array, got {frame.dtype} {frame.shape}")
        if not frame.flags.writeable:  # torch.from_numpy warns about read-only arrays
            frame = frame.copy()
        return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255)
    if isinstance(frame, Tensor):
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise FpsiamError(f"{where}: expected a [3, H, W] tensor, got shape {tuple(frame.shape)}")
        if frame.dtype == torch.uint8:
            return frame.cpu().float().div_(255)
        if not frame.is_floating_point():
            raise FpsiamError(f"{where}: expected a uint8 or float tensor, got {frame.dtype}")
        frame = frame.detach().cpu().float()
        if frame.numel() and (float(frame.min()) < 0.0 or float(frame.max()) > 1.0 + 1e-6):
            raise FpsiamError(f"{where}: a float tensor must hold 0..1 values (divide 0..255 images by 255)")
        return frame
    raise FpsiamError(
        f"{where}: got {type(frame).__name__}; pass a file path, a PIL image, an H x W x 3 uint8 array or a "
        "[3, H, W] tensor"
    )


def _check_threshold(value: Any, where: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise FpsiamError(f"{where}={value!r}: expected a score in [0, 1]")
    return float(value)


class Detector:
    """A loaded polyp detector: :meth:`predict` frames -> boxes, scores, labels (see the module docstring)."""

    def __init__(self, runner: Any, meta: dict[str, Any], *, threshold: float | None = None, source: str = "",
                 device: torch.device | None = None) -> None:  # fmt: skip
        self.runner, self.meta, self.source = runner, meta, source
        self.device = device or torch.device("cpu")
        default = meta.get("score_threshold", FALLBACK_THRESHOLD)
        self.threshold = _check_threshold(threshold if threshold is not None else default)

    @property
    def backend(self) -> str:
        return self.runner.backend

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        threshold: float | None = None,
        backend: str = "auto",
    ) -> Detector:
        """Load a detector file: ``.safetensors`` (PyTorch), ``.onnx`` (ONNX Runtime), TorchScript export.

        ``backend`` "auto" picks by the file; "torch", "onnxruntime", "torchscript" insist on one (a file of
        another kind is an FpsiamError saying what it is and what to pass).
        """
        path = Path(path)
        if backend not in BACKENDS:
            raise FpsiamError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        kind = _file_kind(path)
        if backend != "auto" and backend != kind:
            hint = "export it with 'fpsiam export'" if kind == "torch" else f"use backend {kind} (or auto)"
            raise FpsiamError(f"{path}: a {kind} model file, but backend {backend} was asked for; {hint}")
        dev = resolve_device(device)
        if kind == "onnxruntime":
            from fpsiam.detect.export import OnnxRunner, load_onnx

            session, meta = load_onnx(path, device=dev.type)
            return cls(OnnxRunner(session, meta), meta, threshold=threshold, source=str(path), device=dev)
        if kind == "torchscript":
            from fpsiam.detect.export import TorchScriptRunner, load_torchscript

            module, meta = load_torchscript(path, device=str(dev))
            return cls(TorchScriptRunner(module, dev), meta, threshold=threshold, source=str(path), device=dev)
        from fpsiam.detect.models import inference_meta, load_detector

        model, info = load_detector(path, device=dev)
        meta = {**info, **inference_meta(info)}
        return cls(TorchRunner(model, dev), meta, threshold=threshold, source=str(path), device=dev)

    @classmethod
    def from_model(cls, model: nn.Module, *, device: str | torch.device = "cpu", threshold: float | None = None,
                   meta: dict[str, Any] | None = None) -> Detector:  # fmt: skip
        """Wrap a detector built by :func:`fpsiam.detect.models.build_detector` (e.g. during training)."""
        dev = resolve_device(device)
        return cls(TorchRunner(model, dev), dict(meta or {}), threshold=threshold, source="(in memory)", device=dev)

    def infer(self, images: list[Tensor]) -> list[dict[str, np.ndarray]]:
        """Every detection the model keeps for float 0..1 ``[3, H, W]`` CPU tensors (no threshold, label 0 kept)."""
        return self.runner(images)

    def select(self, out: dict[str, np.ndarray], threshold: float | None = None) -> dict[str, np.ndarray]:
        """The detections of one :meth:`infer` output at or above ``threshold`` (default: the detector's)."""
        t = self.threshold if threshold is None else _check_threshold(threshold)
        keep = (out["scores"] >= t) & (out["labels"] != 0)  # label 0: RetinaNet's unused background channel
        return {
            "boxes": out["boxes"][keep].astype(np.float32).reshape(-1, 4),
            "scores": out["scores"][keep].astype(np.float32),
            "labels": out["labels"][keep].astype(np.int64),
        }

    def predict(self, frames: Any, *, threshold: float | None = None, batch_size: int = 4) -> list[dict[str, Any]]:
        """Detections for one frame or a list of frames: one dict (``boxes``, ``scores``, ``labels``) per frame."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FpsiamError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if threshold is not None:
            _check_threshold(threshold)
        items = list(frames) if isinstance(frames, (list, tuple)) else [frames]
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):  # decode a batch at a time: memory does not grow with the list
            batch = [to_tensor(f, f"frames[{start + i}]") for i, f in enumerate(items[start : start + batch_size])]
            results += [self.select(o, threshold) for o in self.infer(batch)]
        return results

    def __repr__(self) -> str:
        return (
            f"Detector({self.meta.get('kind')} {self.meta.get('arch')}, backend={self.backend}, "
            f"device={self.device}, threshold={self.threshold})"
        )


def _file_kind(path: Path) -> str:
    """Which backend a file is for: by its name (.onnx, a TorchScript export), else by its first bytes (a TorchScript
    file is a zip archive), else a PyTorch detector file (safetensors)."""
    name = path.name.lower()
    if name.endswith(".onnx"):
        return "onnxruntime"
    if name.endswith((".torchscript.pt", ".torchscript", ".ts", ".jit.pt")):
        return "torchscript"
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                return "torchscript"
    except OSError:
        pass
    return "torch"


__all__ = ["Detector", "resolve_device", "to_tensor"]
