"""Precise BN re-estimates BatchNorm statistics and nothing else."""

from __future__ import annotations

import pytest
import torch

from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import build_resnet
from fpsiam.train.precise_bn import precise_bn


def test_statistics_change_weights_do_not():
    torch.manual_seed(0)
    net = build_resnet("resnet18")
    net.bn1.eval()  # a frozen-looking BN: re-estimated too, and its mode kept
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = [torch.rand(4, 3, 32, 32) * 3 + 1 for _ in range(3)]
    assert precise_bn(net, iter(data)) == 3
    after = net.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    params = [k for k, _ in net.named_parameters()]
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in params)
    assert net.training and not net.bn1.training
    # the exact average: the stem BN's mean is the mean over batches of each batch's channel mean
    with torch.no_grad():
        x = [net.conv1(b) for b in data]
    want = torch.stack([xi.mean((0, 2, 3)) for xi in x]).mean(0)
    assert torch.allclose(net.bn1.running_mean, want, atol=1e-5)


def test_no_batches_is_an_error():
    with pytest.raises(FpsiamError, match="no batches"):
        precise_bn(build_resnet("resnet18"), iter([]))
