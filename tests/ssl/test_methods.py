"""SimSiam / FPSiam modules: outputs, loss composition, shared heads, collapse monitor, builder."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchvision

from fpsiam.config import PretrainConfig, PretrainModel, load_config
from fpsiam.errors import FpsiamError
from fpsiam.ssl.methods import FPSiam, SimSiam, build_method, collapse_std

SMALL = dict(proj_dim=64, pred_dim=16)


@pytest.fixture(scope="module")
def views():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)


def test_simsiam_outputs(views):
    model = SimSiam("resnet18", **SMALL)
    out = model(*views)
    assert out["loss"].shape == () and -1.0 <= out["loss"].item() <= 1.0
    assert out["z"].shape == (3, 64) and not out["z"].requires_grad
    assert model.method == "simsiam" and model.arch == "resnet18"
    assert isinstance(model.backbone, torchvision.models.ResNet)
    assert model.projector[0].in_features == 512


def test_fpsiam_outputs_and_backward(views):
    model = FPSiam("resnet18", pyramid_channels=32, **SMALL)
    out = model(*views)
    assert set(out) == {"loss", "loss_local", "loss_global", "z_local", "z_global"}
    assert out["z_local"].shape == (3, 64) and out["z_global"].shape == (3, 64)
    assert model.projector[0].in_features == 32  # one projector on 256-d (here 32-d) pyramid vectors
    out["loss"].backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.encoder.pyramid.local_out.weight.grad.abs().sum() > 0
    assert model.encoder.pyramid.global_out.weight.grad.abs().sum() > 0
    assert model.predictor[0].weight.grad.abs().sum() > 0


def test_backbone_is_under_one_prefix():
    from fpsiam.weights import BACKBONE_PREFIX

    model = FPSiam("resnet18", pyramid_channels=32, **SMALL)
    keys = model.state_dict().keys()
    n_backbone = len(model.backbone.state_dict())
    assert sum(k.startswith(BACKBONE_PREFIX) for k in keys) == n_backbone
    assert sum(k.split(".", 2)[-1] == "conv1.weight" for k in keys) == 1  # no duplicate copy elsewhere


def test_lambda_extremes_and_loss_scale(views):
    torch.manual_seed(0)
    model = FPSiam("resnet18", pyramid_channels=32, **SMALL)

    def losses(lam: float, loss_scale: float) -> dict[str, torch.Tensor]:
        model.lam, model.loss_scale = lam, loss_scale  # train-mode BN: outputs depend on the batch only
        with torch.no_grad():
            return model(*views)

    half = losses(0.5, 1.0)
    local, global_ = half["loss_local"].item(), half["loss_global"].item()
    assert half["loss"].item() == pytest.approx(0.5 * local + 0.5 * global_, abs=1e-6)
    assert losses(1.0, 1.0)["loss"].item() == pytest.approx(local, abs=1e-6)
    assert losses(0.0, 1.0)["loss"].item() == pytest.approx(global_, abs=1e-6)
    assert losses(0.5, 3.0)["loss"].item() == pytest.approx(3 * half["loss"].item(), abs=1e-5)
    assert local != pytest.approx(global_)


def test_collapse_std():
    torch.manual_seed(0)
    assert collapse_std(torch.randn(512, 128)) == pytest.approx(1.0, abs=0.05)
    assert collapse_std(torch.ones(64, 128) * 3.0) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(collapse_std(torch.randn(1, 8)))  # undefined for a batch of one


def test_build_method():
    cfg = PretrainModel(
        method="fpsiam", backbone="resnet18", pyramid_channels=16, proj_dim=32, pred_dim=8, lam=0.3, loss_scale=3.0
    )
    model = build_method(cfg)
    assert isinstance(model, FPSiam) and model.lam == 0.3 and model.loss_scale == 3.0
    assert isinstance(build_method(dataclasses.replace(cfg, method="simsiam")), SimSiam)
    with pytest.raises(FpsiamError, match="model.lam"):
        load_config(PretrainConfig, None, ["model.lam=1.5"])
    with pytest.raises(FpsiamError, match="model.method: unknown method 'nope'; choose one of: fpsiam, simsiam"):
        build_method(dataclasses.replace(cfg, method="nope"))


def test_fpsiam_equals_a_plain_transcription_of_the_reference(views):
    """Maps -> GAP, one head call per (view, branch), the reference's loss: the same numbers as forward()."""
    from fpsiam.ssl.encoders import resnet_stages
    from fpsiam.ssl.losses import negative_cosine

    torch.manual_seed(0)
    model = FPSiam("resnet18", pyramid_channels=16, lam=0.3, loss_scale=3.0, **SMALL)
    x1, x2 = views

    def encode(x):
        local, global_ = model.encoder.pyramid(resnet_stages(model.backbone, x))
        return local.mean((2, 3)), global_.mean((2, 3))

    (l1, g1), (l2, g2) = encode(x1), encode(x2)
    z1_g, z1_l, z2_g, z2_l = (model.projector(v) for v in (g1, l1, g2, l2))
    local = 0.5 * (negative_cosine(model.predictor(z1_l), z2_l) + negative_cosine(model.predictor(z2_l), z1_l))
    global_ = 0.5 * (negative_cosine(model.predictor(z1_g), z2_g) + negative_cosine(model.predictor(z2_g), z1_g))
    out = model(x1, x2)
    close = dict(rtol=1e-4, atol=1e-5)  # float32 rounding: pooled sums vs maps, one matmul vs four
    torch.testing.assert_close(out["loss_local"], local.detach(), **close)
    torch.testing.assert_close(out["loss_global"], global_.detach(), **close)
    torch.testing.assert_close(out["loss"], 3.0 * (0.3 * local + 0.7 * global_), **close)
    torch.testing.assert_close(out["z_local"], z1_l.detach(), **close)
