"""The training step of the engine on a detection-shaped loss: gradient-norm logging, the optional clip, and a
step whose gradient is not finite (a toy model, exact numbers)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fpsiam.detect.train import DetectTask
from fpsiam.train.distributed import DistEnv
from fpsiam.train.loop import Engine, LoopSettings


class Toy(nn.Module):
    """Returns a loss dict like torchvision's detectors: loss = w . x, so the gradient is x."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, images, targets):
        x = images[0].flatten()[:2]
        if x.sum() < 0:  # a finite loss with an infinite gradient: d sqrt(w) / dw at w = 0
            return {"loss_a": self.w.sqrt().sum()}
        return {"loss_a": (self.w * x).sum()}


class ToyTask(DetectTask):
    def __init__(self):  # no data: only losses() and a constant lr are needed for a step
        pass

    def set_lr(self, optimizer, epoch, iteration):
        for g in optimizer.param_groups:
            g["lr"] = 1.0

    def after_step(self, engine):
        pass


def one_step(clip, x=(3.0, 4.0)):
    model = Toy()
    engine = Engine(ToyTask(), LoopSettings(epochs=1, batch_size=1, clip_grad_norm=clip), "unused", None, DistEnv())
    engine.attach(model, torch.optim.SGD(model.parameters(), lr=1.0))
    batch = ([torch.tensor([list(x)])], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    return model.w.detach(), engine.step(batch), engine


def test_grad_norm_is_logged_and_nothing_clipped_by_default():
    w, logged, _ = one_step(None)
    assert logged["grad_norm"] == pytest.approx(5.0)  # |(3, 4)|
    assert w.tolist() == pytest.approx([-3.0, -4.0])


def test_clip_grad_norm_scales_the_step():
    w, logged, _ = one_step(1.0)
    assert logged["grad_norm"] == pytest.approx(5.0)  # the norm before clipping
    assert math.hypot(*w.tolist()) == pytest.approx(1.0, rel=1e-4)
    assert w.tolist() == pytest.approx([-0.6, -0.8], rel=1e-4)


def test_an_infinite_gradient_is_not_applied():
    w, logged, engine = one_step(None, x=(-1.0, -1.0))
    assert logged["skipped"] == 1.0 and engine.skipped == [1]
    assert w.tolist() == [0.0, 0.0]
