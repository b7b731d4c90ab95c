"""LARS (You, Gitman & Ginsburg 2017, "Large batch training of convolutional networks"), as SimCLR, BYOL and SwAV
train with it: SGD with momentum whose step for each layer is scaled by the layer's trust ratio.

For a parameter w with gradient g, weight decay beta and trust coefficient eta (Eq. 6 of the paper):

    local_lr = eta * ||w|| / (||g|| + beta * ||w||)
    v = m * v + local_lr * (g + beta * w)          (v = m * v + g when ||w|| or ||g|| is 0)
    w = w - lr * v

Parameter groups with ``lars_exclude: True`` (the presets put BatchNorm weights and all biases there, as SimCLR and
BYOL do) take a plain SGD step with momentum and no weight decay: neither the adaptation nor the decay touches them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):  # fmt: skip
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "eps": eps, "lars_exclude": False}  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            exclude = group["lars_exclude"]
            wd = 0.0 if exclude else group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not exclude:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    d = torch.where((w_norm > 0) & (g_norm > 0), (d + wd * p) * ratio, d)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def lars_groups(model: nn.Module, **group: object) -> list[dict]:
    """The trainable parameters in two groups: adapted (weights of convolutions and linear layers) and excluded
    (BatchNorm weights and every bias: 1-d tensors), each with the extra ``group`` keys."""
    adapted = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    excluded = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": adapted, **group}, {"params": excluded, "lars_exclude": True, **group}]
