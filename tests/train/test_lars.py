"""LARS: the paper's update rule (You et al. 2017, Eq. 6, with momentum), BN/bias excluded, and lightly's LARS."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fpsiam.train.lars import LARS, lars_groups


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def run(opt_for, steps: int = 3) -> list[torch.Tensor]:
    net = model()
    opt = opt_for(net)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=g)
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def test_matches_the_papers_rule_written_out():
    lr, m, wd, eta = 0.5, 0.9, 1e-2, 0.02
    ours = run(lambda net: LARS(lars_groups(net), lr=lr, momentum=m, weight_decay=wd, trust_coefficient=eta))
    net = model()
    bufs: dict[int, torch.Tensor] = {}
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 6, generator=g)
        net.zero_grad()
        net(x).square().mean().backward()
        with torch.no_grad():
            for p in net.parameters():
                d = p.grad.clone()
                if p.ndim > 1:  # adapted: local lr = eta ||w|| / (||g|| + wd ||w||), weight decay inside
                    local = eta * p.norm() / (p.grad.norm() + wd * p.norm() + 1e-8)
                    d = (d + wd * p) * local
                bufs[id(p)] = d if id(p) not in bufs else m * bufs[id(p)] + d
                p -= lr * bufs[id(p)]
    for a, b in zip(ours, net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_bn_and_biases_are_neither_adapted_nor_decayed():
    net = model()
    groups = lars_groups(net)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert groups[1]["lars_exclude"] and len(groups[0]["params"]) + len(groups[1]["params"]) == 6


def test_equals_lightlys_lars():
    lightly = pytest.importorskip("lightly.utils.lars", reason="lightly (dev extra) is the independent implementation")
    kw = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-3, "trust_coefficient": 0.001}
    ours = run(lambda net: LARS(lars_groups(net), **kw))

    def theirs(net):  # lightly excludes by weight_decay 0 in a group
        adapted = [p for p in net.parameters() if p.ndim > 1]
        rest = [p for p in net.parameters() if p.ndim <= 1]
        return lightly.LARS([{"params": adapted}, {"params": rest, "weight_decay": 0.0}], **kw)

    for a, b in zip(ours, run(theirs), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
