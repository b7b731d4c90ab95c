"""Momentum (target / key) encoders: a frozen copy of the online network, moved towards it after every step.

MoCo (He et al. 2020) keeps its key encoder at ``m = 0.999``; BYOL (Grill et al. 2020) raises its target's ``m``
from 0.996 (0.99 in the paper's comparison runs) to 1 along a cosine over training. The copy holds no gradients and
is no parameter of the optimizer; it sits in the method's ``state_dict``, so a checkpoint carries it and a resumed
run continues the same average.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` that takes no gradients (the momentum encoder's starting point)."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """``target = m * target + (1 - m) * online``, parameter by parameter (buffers such as BatchNorm statistics
    are the target's own: it runs its own forward passes)."""
    targets, onlines = list(target.parameters()), [o.detach() for o in online.parameters()]
    if len(targets) != len(onlines):
        raise ValueError("ema_update: the target and the online network differ")
    torch._foreach_mul_(targets, m)  # one fused op per list, as lightly's update_momentum
    torch._foreach_add_(targets, onlines, alpha=1.0 - m)


def cosine_momentum(base: float, end: float, progress: float) -> float:
    """BYOL's schedule: ``end - (end - base) * (cos(pi * progress) + 1) / 2`` for progress in [0, 1]."""
    return end - (end - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0
