"""The self-supervised losses, each a plain function of tensors (the methods in :mod:`fpsiam.ssl.methods` call them).

- :func:`negative_cosine`: SimSiam / FPSiam's D(p, z) = -cos(p, stopgrad(z)).
- :func:`byol_loss`: BYOL's normalised MSE, 2 - 2 cos(p, stopgrad(z)).
- :func:`info_nce`: MoCo's InfoNCE, a query against its key and a queue of negatives.
- :func:`nt_xent`: SimCLR's NT-Xent over the 2N views of a batch, optionally over every process's views
  (all-gathered *with* gradient, as SimCLR's global negatives are).
- :func:`dense_contrastive`: DenseCL's dense term: each query location against the key location its backbone
  feature matches best, with a queue of dense negatives.
- :func:`barlow_twins`: Barlow Twins' cross-correlation of the two views' projections pushed to the identity, over
  the global batch (all-gathered with gradient).
- :func:`swav_loss` with :func:`sinkhorn`: SwAV's swapped prediction of equipartitioned codes (the Sinkhorn sums
  all-reduced over processes, as in SwAV).

Every input is a batch of vectors (rows); none of these functions keeps state: queues and prototypes live in the
methods, where checkpoints see them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Every process's ``x`` concatenated (gradients flow back to each process's own part), and this process's
    offset in it. Without a process group: ``(x, 0)``."""
    if not _distributed():
        return x, 0
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x)), dist.get_rank() * x.shape[0]


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """Every process's ``x`` concatenated, without gradient (keys for a queue)."""
    if not _distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch (SimSiam eq. 1).

    The stop-gradient is inside: no gradient ever reaches ``z``. Vectors are l2-normalised with ``F.normalize``
    (eps 1e-12), as the reference's LatentPredictHead does.
    """
    p = F.normalize(p, dim=1)
    z = F.normalize(z.detach(), dim=1)
    return -(p * z).sum(dim=1).mean()


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's ||normalise(p) - normalise(stopgrad(z))||^2 = 2 - 2 cos(p, z), averaged over the batch."""
    return 2.0 + 2.0 * negative_cosine(p, z)


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE: each query ``q`` [N, C] against its key ``k`` (the positive, no gradient) and the ``queue``
    [K, C] of negatives (keys of earlier batches, unit vectors: MoCo's queue holds normalised keys, so it is used as
    is, as in MoCo's code). Logits are cosine similarities / ``temperature``."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nt_xent(a: Tensor, b: Tensor, temperature: float, gather_distributed: bool = True) -> Tensor:
    """SimCLR's NT-Xent: views ``a`` [N, C] and ``b`` [N, C] of the same N images. Each of the 2N views has one
    positive (its other view) and 2N - 2 negatives (every other view; 2NW - 2 over W processes when gathered).
    The mean over the 2N views of -log softmax(positive / t)."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    if gather_distributed:
        a_all, offset = gather_with_grad(a)
        b_all, _ = gather_with_grad(b)
    else:
        a_all, b_all, offset = a, b, 0
    n = len(a)
    own = torch.arange(n, device=a.device) + offset
    rows = torch.arange(n, device=a.device)
    logits_a = torch.cat([a @ b_all.T, a @ a_all.T], dim=1) / temperature
    logits_b = torch.cat([b @ a_all.T, b @ b_all.T], dim=1) / temperature
    big = len(a_all)
    logits_a[rows, big + own] = float("-inf")  # a view is not its own negative
    logits_b[rows, big + own] = float("-inf")
    return 0.5 * (F.cross_entropy(logits_a, own) + F.cross_entropy(logits_b, own))


def dense_contrastive(
    q_dense: Tensor, k_dense: Tensor, q_feat: Tensor, k_feat: Tensor, queue: Tensor, temperature: float
) -> Tensor:
    """DenseCL's dense term. ``q_dense``/``k_dense`` [N, C, S]: the dense projections of the two views at S grid
    locations; ``q_feat``/``k_feat`` [N, D, S]: their backbone features there. Each query location's positive is
    the key location whose backbone feature is most similar (cosine); its negatives are the dense ``queue`` [K, C]
    (unit vectors, used as is).
    """
    q = F.normalize(q_dense, dim=1)
    k = F.normalize(k_dense.detach(), dim=1)
    sim = torch.einsum("nds,ndt->nst", F.normalize(q_feat.detach(), dim=1), F.normalize(k_feat.detach(), dim=1))
    match = sim.argmax(dim=2)  # [N, S]: the key location of each query location
    k_matched = torch.gather(k, 2, match.unsqueeze(1).expand(-1, k.shape[1], -1))
    positive = (q * k_matched).sum(dim=1).reshape(-1, 1)  # [N*S, 1]
    q_rows = q.permute(0, 2, 1).reshape(-1, q.shape[1])
    negative = q_rows @ queue.detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=q.device))


def barlow_twins(a: Tensor, b: Tensor, lambd: float = 5e-3, gather_distributed: bool = True) -> Tensor:
    """Barlow Twins' loss (Zbontar et al. 2021): the projections ``a``, ``b`` [N, D] of the two views are standardised
    along the batch as its code does (a BatchNorm without affine: mean 0, biased variance + 1e-5; the paper's
    pseudo-code writes the unbiased std, a factor (N-1)/N on C), their cross-correlation
    C = a_n^T b_n / N [D, D] is pushed to the identity: sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2. Under DDP
    the projections are all-gathered with gradient first, so C is the global batch's (each process computes the
    same loss; the gathered gradients make DDP's average the single-process gradient). Computed in float32."""
    if gather_distributed:
        a, b = gather_with_grad(a)[0], gather_with_grad(b)[0]
    a, b = a.float(), b.float()
    a = F.batch_norm(a, None, None, training=True)
    b = F.batch_norm(b, None, None, training=True)
    c = a.T @ b / a.shape[0]
    diagonal = torch.diagonal(c)
    on = (diagonal - 1).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambd * off


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, distributed: bool = True) -> Tensor:
    """SwAV's equipartitioned soft codes of ``scores`` [B, K] (prototype scores): the Sinkhorn-Knopp iterations on
    exp(scores / epsilon), with the row / column sums all-reduced over processes (the partition is over the global
    batch). Returns [B, K], each row a distribution."""
    all_reduce = distributed and _distributed()
    q = torch.exp(scores.float() / epsilon).T  # [K, B]
    batch = q.shape[1] * (dist.get_world_size() if all_reduce else 1)
    k = q.shape[0]

    def total(x: Tensor) -> Tensor:
        if all_reduce:
            dist.all_reduce(x)
        return x

    q /= total(q.sum())
    for _ in range(iterations):
        q /= total(q.sum(dim=1, keepdim=True))  # every prototype gets 1/K of the mass
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # every sample 1/B
        q /= batch
    return (q * batch).T


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float) -> Tensor:
    """SwAV's swapped prediction: ``scores`` of every crop [B, K] (the global crops first), ``codes`` [B, K] of the
    global crops (from :func:`sinkhorn`, no gradient). For each global crop i, every other crop predicts its code:
    -sum codes_i * log softmax(scores_v / t), averaged over the other crops, then over the global crops."""
    losses = []
    for i, code in enumerate(codes):
        terms = [
            -(code.detach() * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean()
            for v, s in enumerate(scores)
            if v != i
        ]
        losses.append(torch.stack(terms).mean())
    return torch.stack(losses).mean()
