"""Backbone stages, the FPSiam pyramid's wiring and the pooled shortcut."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import (
    RESNET_CHANNELS,
    FPSiamEncoder,
    Pyramid,
    SimSiamEncoder,
    build_resnet,
    resnet_stages,
)


def test_build_resnet_keys_equal_torchvision_minus_fc():
    model = build_resnet("resnet18")
    want = {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    assert set(model.state_dict()) == want


def test_build_resnet_unknown_arch_lists_choices():
    with pytest.raises(FpsiamError, match="resnet18, resnet34, resnet50"):
        build_resnet("resnet101x")


def test_resnet_stages_shapes_and_strides():
    model = build_resnet("resnet18").eval()
    feats = resnet_stages(model, torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(RESNET_CHANNELS["resnet18"])
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def _feats(size: int = 16, channels=(8, 12, 16, 20), batch: int = 2):
    return [torch.randn(batch, c, size // 2**i, size // 2**i) for i, c in enumerate(channels)]


def test_pyramid_shapes_and_init():
    pyramid = Pyramid((8, 12, 16, 20), out_channels=6)
    local, global_ = pyramid(_feats())
    assert local.shape == (2, 6, 16, 16)
    assert global_.shape == (2, 6, 2, 2)
    assert len(pyramid.lateral) == 4
    assert all(torch.all(m.bias == 0) for m in pyramid.modules() if isinstance(m, torch.nn.Conv2d))


def test_pyramid_local_depends_on_c5_global_not_on_c2():
    torch.manual_seed(0)
    pyramid = Pyramid((8, 12, 16, 20), out_channels=6)
    feats = _feats()
    local, global_ = pyramid(feats)
    more_c5 = feats[:3] + [feats[3] + torch.randn_like(feats[3])]
    local_c5, _ = pyramid(more_c5)
    assert not torch.allclose(local, local_c5)  # top-down path reaches P2
    more_c2 = [feats[0] + torch.randn_like(feats[0])] + feats[1:]
    local_c2, global_c2 = pyramid(more_c2)
    assert torch.equal(global_, global_c2)  # P5 is the C5 lateral alone
    assert not torch.allclose(local, local_c2)


def test_pyramid_global_ignores_c3_c4():
    pyramid = Pyramid((8, 12, 16, 20), out_channels=6)
    feats = _feats()
    _, g = pyramid(feats)
    _, g2 = pyramid([feats[0], torch.randn_like(feats[1]), torch.randn_like(feats[2]), feats[3]])
    assert torch.equal(g, g2)


def test_pyramid_odd_sizes():
    pyramid = Pyramid((4, 4, 4, 4), out_channels=3)
    feats = [torch.randn(1, 4, s, s) for s in (25, 13, 7, 4)]
    local, global_ = pyramid(feats)
    assert local.shape[-2:] == (25, 25) and global_.shape[-2:] == (4, 4)


@pytest.mark.parametrize("sizes", [(16, 8, 4, 2), (25, 13, 7, 4), (9, 5, 3, 2), (4, 2, 1, 1), (15, 8, 4, 2)])
def test_pooled_equals_gap_of_maps_values_and_gradients(sizes):
    torch.manual_seed(0)
    pyramid = Pyramid((8, 12, 16, 20), out_channels=6).double()
    for m in pyramid.modules():  # non-zero biases, so their terms are checked too
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.bias)
    feats = [
        torch.randn(2, c, s, s + 1, dtype=torch.float64, requires_grad=True)
        for c, s in zip((8, 12, 16, 20), sizes, strict=True)
    ]
    local, global_ = pyramid(feats)
    ref = torch.cat([local.mean((2, 3)), global_.mean((2, 3))], 1)
    fast = torch.cat(pyramid.pooled(feats), 1)
    torch.testing.assert_close(fast, ref)
    w = torch.randn_like(ref)
    wrt = [*feats, *pyramid.parameters()]
    g_ref = torch.autograd.grad((ref * w).sum(), wrt)
    g_fast = torch.autograd.grad((fast * w).sum(), wrt)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_encoders_output_vectors():
    x = torch.randn(2, 3, 64, 64)
    fp = FPSiamEncoder("resnet18", pyramid_channels=32)
    local, global_ = fp(x)
    assert local.shape == (2, 32) and global_.shape == (2, 32)
    assert isinstance(fp.backbone, torchvision.models.ResNet)
    ss = SimSiamEncoder("resnet18")
    assert ss(x).shape == (2, 512)
    assert isinstance(ss.backbone, torchvision.models.ResNet)
