"""Projector / predictor layer lists and the loss D(p, z)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fpsiam.ssl.heads import Predictor, Projector
from fpsiam.ssl.losses import negative_cosine


def test_projector_layers_and_shape():
    proj = Projector(16, hidden_dim=32, out_dim=24)
    kinds = [type(m) for m in proj]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert all(m.bias is None for m in proj if isinstance(m, nn.Linear))
    assert proj[-1].affine is False and proj[1].affine is True
    assert proj(torch.randn(4, 16)).shape == (4, 24)


def test_predictor_layers_and_shape():
    pred = Predictor(24, hidden_dim=8)
    assert [type(m) for m in pred] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert pred[0].bias is None and pred[3].bias is not None
    assert pred(torch.randn(4, 24)).shape == (4, 24)


def test_negative_cosine_hand_computed():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    # cosines: 1 and 1/sqrt(2) -> D = -(1 + 0.70710678) / 2
    assert negative_cosine(p, z).item() == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2, abs=1e-6)
    assert negative_cosine(z, -z).item() == pytest.approx(1.0)


def test_negative_cosine_stops_gradient_to_target():
    p = torch.randn(3, 5, requires_grad=True)
    z = torch.randn(3, 5, requires_grad=True)
    negative_cosine(p, z).backward()
    assert z.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_grouped_forward_equals_separate_calls():
    torch.manual_seed(0)
    separate = Projector(6, hidden_dim=10, out_dim=8).double()
    grouped = Projector(6, hidden_dim=10, out_dim=8).double()
    grouped.load_state_dict(separate.state_dict())
    batches = [torch.randn(4, 6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    ref = torch.cat([separate(b) for b in batches])
    out = grouped(torch.cat(batches), groups=3)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), [*batches, *separate.parameters()])
    g_out = torch.autograd.grad((out * w).sum(), [*batches, *grouped.parameters()])
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(grouped.buffers(), separate.buffers(), strict=True):
        torch.testing.assert_close(a, b)  # running statistics updated once per batch, in order
    pooled_stats = Projector(6, hidden_dim=10, out_dim=8).double()
    pooled_stats.load_state_dict(separate.state_dict())
    assert not torch.allclose(pooled_stats(torch.cat(batches)), ref)  # one BN batch would differ
