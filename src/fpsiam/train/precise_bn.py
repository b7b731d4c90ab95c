"""Precise BN: re-estimate a network's BatchNorm running statistics on data, leaving every weight alone.

A BatchNorm layer in eval mode normalises with its running mean/variance. Those are an exponential average
over the *training* batches of whatever the network was trained on (or, at random init, mean 0 / variance 1),
so a backbone moved to new data -- a self-supervised backbone fine-tuned on detection frames, or probed on
crops -- starts with statistics of other data. Precise BN (Wu & Johnson, "Rethinking Batch in BatchNorm",
2021; detectron2's ``PreciseBN`` hook) replaces them with the exact average over a pass of the new data:
only the ``running_mean`` / ``running_var`` buffers change, never a parameter.

It runs torch's own :func:`torch.optim.swa_utils.update_bn` (reset, cumulative average, momentum and
train/eval mode restored afterwards).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from fpsiam.errors import FpsiamError


def precise_bn(model: nn.Module, batches: Iterable[Tensor], device: torch.device | None = None) -> int:
    """Set every BatchNorm of ``model`` to the statistics of ``batches`` (inputs of ``model``); returns the count.

    Every BatchNorm is re-estimated, also ones in eval mode: call it on the plain network, not on a wrapper whose
    ``train()`` keeps frozen BNs in eval (their statistics would be reset and never re-estimated).
    """
    count = 0

    def counted():
        nonlocal count
        for batch in batches:
            count += 1
            yield batch

    was = {m: m.training for m in model.modules()}
    update_bn(counted(), model, device)
    for m, mode in was.items():  # update_bn restores the top module's mode only
        m.training = mode
    if count == 0:
        raise FpsiamError("precise BN: no batches to estimate the statistics from")
    return count
