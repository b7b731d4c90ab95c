"""Atomic checkpoints, keep-last-K pruning and exact resume (model, optimizer, counters, RNG states).

Checkpoints hold only tensors, numbers, strings, lists and dicts, so they load with
``torch.load(..., weights_only=True)``: RNG states are stored as tensors and lists, never as pickled objects.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_path

CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, in weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: str | Path, global_step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt_{global_step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by global step)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return [prefix] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in nonfinite_tensors(v, f"{prefix}[{i}]")]
    return []


def save_checkpoint(obj: dict[str, Any], path: str | Path, keep_last: int | None = None) -> Path:
    """``torch.save`` to a temp file and rename; then delete all but the newest ``keep_last``.

    A checkpoint whose model or optimizer state holds NaN/inf is never written (it would poison every resume):
    that is an FpsiamError naming the newest good checkpoint instead.
    """
    path = Path(path)
    bad = nonfinite_tensors({"model": obj.get("model"), "optimizer": obj.get("optimizer")})
    if bad:
        good = latest_checkpoint(path.parent.parent)
        raise FpsiamError(
            f"step {obj.get('global_step', '?')}: {len(bad)} tensors of the model / optimizer state are not finite "
            f"(e.g. {bad[0]}): the run diverged, {path.name} was not written. Last good checkpoint: {good or 'none'}. "
            "Lower optim.lr, set optim.clip_grad_norm or use train.amp=none"
        )
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    if keep_last is not None and keep_last > 0:
        for old in list_checkpoints(path.parent.parent)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True); a foreign or corrupt file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FpsiamError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # the reason first: what the file would have run
            why = f"it holds pickled Python objects ({found.group(1)}), which fpsiam never unpickles"
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            why = f"{first[:160]}; it may be truncated or damaged"
        raise FpsiamError(f"{path}: cannot be read as a safe checkpoint: {why}") from None
    if not isinstance(obj, dict):
        raise FpsiamError(f"{path}: not an fpsiam checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj
