"""The detection training step: gradient-norm logging and the optional clip (a toy model, exact numbers)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fpsiam.detect.engine import train_one_epoch


class Toy(nn.Module):
    """Returns a loss dict like torchvision's detectors: loss = w . x, so the gradient is x."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, images, targets):
        return {"loss_a": (self.w * images[0].flatten()[:2]).sum()}


def one_step(clip):
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = ([torch.tensor([[3.0, 4.0]])], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    logged = []
    train_one_epoch(model, opt, [batch], torch.device("cpu"), lambda i: 1.0, 0, 1,
                    on_step=lambda i, v: logged.append(v), clip_grad_norm=clip)  # fmt: skip
    return model.w.detach(), logged[0]


def test_grad_norm_is_logged_and_nothing_clipped_by_default():
    w, logged = one_step(None)
    assert logged["grad_norm"] == pytest.approx(5.0)  # |(3, 4)|
    assert w.tolist() == pytest.approx([-3.0, -4.0])


def test_clip_grad_norm_scales_the_step():
    w, logged = one_step(1.0)
    assert logged["grad_norm"] == pytest.approx(5.0)  # the norm before clipping
    assert math.hypot(*w.tolist()) == pytest.approx(1.0, rel=1e-4)
    assert w.tolist() == pytest.approx([-0.6, -0.8], rel=1e-4)
