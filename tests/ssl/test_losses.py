"""Every loss and head of the peers equals an independent implementation on the same inputs (to 1e-5):
lightly 1.6's heads and losses where it has them, the paper's formula written out here where it has not (DenseCL)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fpsiam.ssl import heads as H
from fpsiam.ssl import losses as L

lightly = pytest.importorskip("lightly", reason="lightly (the dev extra) is the independent implementation")
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, SwaVLoss  # noqa: E402
from lightly.models.modules import heads as LH  # noqa: E402

ATOL = 1e-5


def same_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Copy ours into theirs, layer by layer in order (parameters and buffers of the same shapes)."""
    mine = list(ours.state_dict().values())
    target = theirs.state_dict()
    assert len(mine) == len(target), (list(ours.state_dict()), list(target))
    theirs.load_state_dict(dict(zip(target, mine, strict=True)))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: H.MoCoHead(32, 64, 16), lambda: LH.MoCoProjectionHead(32, 64, 16)),
        (lambda: H.SimCLRHead(32, 64, 16), lambda: LH.SimCLRProjectionHead(32, 64, 16)),
        (lambda: H.BYOLHead(32, 64, 16), lambda: LH.BYOLProjectionHead(32, 64, 16)),
        (lambda: H.BYOLHead(16, 64, 16), lambda: LH.BYOLPredictionHead(16, 64, 16)),
        (lambda: H.DenseHead(32, 64, 16), lambda: LH.DenseCLProjectionHead(32, 64, 16)),
        (lambda: H.SwAVHead(32, 64, 16), lambda: LH.SwaVProjectionHead(32, 64, 16)),
    ],
)
def test_heads_equal_lightlys(ours, theirs):
    torch.manual_seed(0)
    a, b = ours(), theirs()
    same_weights(a, b)
    x = torch.randn(8, a[0].in_features)
    assert torch.allclose(a(x), b(x), atol=ATOL)
    x2 = torch.randn(8, a[0].in_features)  # two batches in one pass: each its own BatchNorm batch
    assert torch.allclose(a(torch.cat([x, x2]), groups=2), torch.cat([b(x), b(x2)]), atol=ATOL)


def test_barlow_twins_head_and_loss_equal_lightlys():
    torch.manual_seed(4)
    ours, theirs = H.BarlowTwinsHead(32, 64, 48), LH.BarlowTwinsProjectionHead(32, 64, 48)
    target = theirs.state_dict()
    mine = dict(zip([k for k in target if not k.endswith("6.bias")], ours.state_dict().values(), strict=True))
    theirs.load_state_dict({**mine, "layers.6.bias": torch.zeros(48)})  # ours is bias-free, as Barlow Twins' code
    x1, x2 = torch.randn(8, 32), torch.randn(8, 32)
    z = ours(torch.cat([x1, x2]), groups=2)  # each view its own BatchNorm batch
    assert torch.allclose(z, torch.cat([theirs(x1), theirs(x2)]), atol=ATOL)
    a, b = z.detach().chunk(2)
    a.requires_grad_(True)
    mine_loss = L.barlow_twins(a, b, 5e-3)
    a2 = a.detach().clone().requires_grad_(True)
    their_loss = BarlowTwinsLoss(lambda_param=5e-3, gather_distributed=False)(a2, b)
    assert mine_loss.item() == pytest.approx(their_loss.item(), rel=1e-5)
    mine_loss.backward()
    their_loss.backward()
    assert torch.allclose(a.grad, a2.grad, atol=ATOL)
    # the formula itself: a perfectly decorrelated, identical pair of views costs nothing
    eye = torch.cat([torch.eye(4), -torch.eye(4)]) * 2.0
    assert L.barlow_twins(eye, eye, 5e-3).item() == pytest.approx(0.0, abs=1e-5)


def test_nt_xent_equals_lightlys():
    torch.manual_seed(1)
    a, b = torch.randn(6, 16, requires_grad=True), torch.randn(6, 16, requires_grad=True)
    ours = L.nt_xent(a, b, 0.1)
    theirs = NTXentLoss(temperature=0.1)(a, b)
    assert ours.item() == pytest.approx(theirs.item(), abs=ATOL)
    g1 = torch.autograd.grad(ours, a)[0]
    g2 = torch.autograd.grad(NTXentLoss(temperature=0.1)(a, b), a)[0]
    assert torch.allclose(g1, g2, atol=ATOL)


def test_info_nce_equals_lightlys_memory_bank():
    torch.manual_seed(2)
    q, k = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16)
    queue = F.normalize(torch.randn(32, 16), dim=1)
    theirs = NTXentLoss(temperature=0.2, memory_bank_size=(32, 16))
    theirs.memory_bank.bank.copy_(queue)
    assert L.info_nce(q, k, queue, 0.2).item() == pytest.approx(theirs(q, k).item(), abs=ATOL)


def test_byol_loss_is_normalised_mse_and_lightlys_cosine():
    torch.manual_seed(3)
    p, z = torch.randn(5, 8), torch.randn(5, 8)
    mse = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).square().sum(dim=1).mean()
    assert L.byol_loss(p, z).item() == pytest.approx(mse.item(), abs=ATOL)
    assert L.byol_loss(p, z).item() == pytest.approx(2 + 2 * NegativeCosineSimilarity()(p, z).item(), abs=ATOL)
    assert L.negative_cosine(p, z).item() == pytest.approx(NegativeCosineSimilarity()(p, z).item(), abs=ATOL)


def test_sinkhorn_and_swav_loss_equal_lightlys():
    from lightly.loss.swav_loss import sinkhorn as their_sinkhorn

    torch.manual_seed(4)
    scores = torch.randn(8, 12)
    assert torch.allclose(L.sinkhorn(scores, 0.05, 3), their_sinkhorn(scores, 3, 0.05), atol=ATOL)
    rows = L.sinkhorn(scores * 0.05, 0.05, 50)  # iterated to convergence: the equipartition constraints hold
    assert torch.allclose(rows.sum(1), torch.ones(8), atol=1e-5)  # a distribution per sample
    assert torch.allclose(rows.sum(0), torch.full((12,), 8 / 12), atol=1e-3)  # equal mass per prototype
    high = [torch.randn(8, 12, requires_grad=True) for _ in range(2)]
    low = [torch.randn(8, 12, requires_grad=True) for _ in range(3)]
    codes = [L.sinkhorn(h.detach()) for h in high]
    ours = L.swav_loss([*high, *low], codes, 0.1)
    theirs = SwaVLoss(temperature=0.1)(high, low)
    assert ours.item() == pytest.approx(theirs.item(), abs=ATOL)
    queue = [torch.randn(16, 12) for _ in range(2)]  # with a queue in the Sinkhorn batch
    codes_q = [L.sinkhorn(torch.cat([qu, h.detach()]))[-8:] for qu, h in zip(queue, high, strict=True)]
    assert L.swav_loss([*high, *low], codes_q, 0.1).item() == pytest.approx(
        SwaVLoss(temperature=0.1)(high, low, queue).item(), abs=ATOL
    )


def test_dense_contrastive_equals_the_papers_algorithm():
    """DenseCL's dense loss, written out as its reference code computes it (Wang et al. 2021, Algorithm 1)."""
    torch.manual_seed(5)
    n, c, d, s, k = 3, 8, 10, 4, 20
    q_grid, k_grid = torch.randn(n, c, s, requires_grad=True), torch.randn(n, c, s)
    q_b, k_b = torch.randn(n, d, s), torch.randn(n, d, s)
    queue = F.normalize(torch.randn(k, c), dim=1)
    # the reference: normalise, match by backbone similarity, gather, positives + queue negatives, CE at label 0
    qg, kg = F.normalize(q_grid, dim=1), F.normalize(k_grid, dim=1)
    qb, kb = F.normalize(q_b, dim=1), F.normalize(k_b, dim=1)
    ind = torch.matmul(qb.permute(0, 2, 1), kb).max(dim=2)[1]
    indexed = torch.gather(kg, 2, ind.unsqueeze(1).expand(-1, c, -1))
    l_pos = (qg * indexed).sum(1).view(-1).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", qg.permute(0, 2, 1).reshape(-1, c), queue.T)
    logits = torch.cat([l_pos, l_neg], dim=1) / 0.2
    reference = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    ours = L.dense_contrastive(q_grid, k_grid, q_b, k_b, queue, 0.2)
    assert ours.item() == pytest.approx(reference.item(), abs=ATOL)
    assert torch.allclose(torch.autograd.grad(ours, q_grid)[0], torch.autograd.grad(reference, q_grid)[0], atol=ATOL)


def test_prototypes_are_renormalised():
    p = H.Prototypes(8, 5)
    p.weight.data.mul_(3)
    p.normalize_()
    assert torch.allclose(p.weight.norm(dim=1), torch.ones(5), atol=1e-6)
