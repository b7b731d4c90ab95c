"""The self-supervised methods: one module each, and :data:`METHODS`, the table from name to builder.

Every method is one ``nn.Module`` built from the ``model.*`` keys of a pretraining config. ``forward(*views)``
returns a dict: ``"loss"`` to backpropagate, other 0-d tensors are logged terms, and ``"z*"`` entries are detached
projections of the first view for the collapse monitor (:func:`collapse_std`). Each exposes ``.backbone`` (the
torchvision ResNet, no fc; in ``state_dict()`` under exactly one prefix, ``encoder.backbone.``), ``.method`` and
``.arch``, and optionally:

- ``fixed_lr_modules``: sub-modules whose lr is not decayed (SimSiam's predictor);
- ``on_step(step, epoch, progress)``: called after every optimizer step with the steps done, the (0-based) epoch of
  the next step and the fraction of the run done (momentum encoders, queues, counters);
- ``check_batch(global_batch)``: refuse a global batch the method cannot use (a queue size not a multiple of it).

A new method is one module here, its presets and tests, and one line in :data:`METHODS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.errors import FpsiamError
from fpsiam.ssl.methods import barlowtwins, byol, densecl, fpsiam, mocov2, simclr, simsiam, swav
from fpsiam.ssl.methods.fpsiam import FPSiam
from fpsiam.ssl.methods.simsiam import SimSiam

METHODS: dict[str, Callable[[PretrainModel], nn.Module]] = {
    "fpsiam": fpsiam.build,
    "simsiam": simsiam.build,
    "mocov2": mocov2.build,
    "simclr": simclr.build,
    "byol": byol.build,
    "densecl": densecl.build,
    "swav": swav.build,
    "barlowtwins": barlowtwins.build,
}


def check_method(name: str, where: str = "model.method") -> None:
    """One line naming the key and the known methods when ``name`` is not in :data:`METHODS`."""
    if name not in METHODS:
        raise FpsiamError(f"{where}: unknown method '{name}'; choose one of: {', '.join(METHODS)}")


def build_method(cfg: PretrainModel) -> nn.Module:
    """The method module named by ``cfg.method``, built from the ``model.*`` keys of a pretraining config."""
    check_method(cfg.method)
    return METHODS[cfg.method](cfg)


@torch.no_grad()
def collapse_std(z: Tensor) -> float:
    """Collapse monitor of SimSiam §4: mean per-dimension std of l2-normalised ``z``, times sqrt(d).

    About 1 for healthy (roughly isotropic Gaussian) outputs, 0 when every sample maps to the same
    vector. NaN for a batch of one.
    """
    if z.shape[0] < 2:
        return float("nan")
    d = z.shape[1]
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean() * math.sqrt(d))


__all__ = ["METHODS", "FPSiam", "SimSiam", "build_method", "check_method", "collapse_std"]
