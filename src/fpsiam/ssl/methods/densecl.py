"""DenseCL (Wang, Zhang, Shen, Kong & Li 2021): MoCo v2 plus a dense contrastive term on the C5 feature map.

The query encoder has two heads: the global one (GAP -> 2-layer MLP, as MoCo v2) and a dense one (the same kind of
MLP at every location of the C5 map, pooled to a ``grid`` x ``grid`` grid, 7 x 7). The key encoder is a momentum
copy (m 0.999). Each query location's positive is the key location whose *backbone* feature is most similar
(cosine); the negatives of the global term are a queue of global keys, those of the dense term a second queue of
each key image's averaged dense projection. loss = (1 - w) global + w dense, w = 0.5; temperature 0.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fpsiam.backbones import build_resnet
from fpsiam.config import PretrainModel
from fpsiam.ssl.encoders import RESNET_CHANNELS, resnet_stages
from fpsiam.ssl.heads import DenseHead
from fpsiam.ssl.losses import dense_contrastive, gather, info_nce
from fpsiam.ssl.methods.mocov2 import MoCoV2, Queue, shuffled_forward
from fpsiam.ssl.momentum import ema_update, frozen_copy


class DenseEncoder(nn.Module):
    """Backbone -> C5 map -> (global projection [N, C], dense projections [N, C, S], backbone features [N, D, S])."""

    def __init__(self, arch: str, hidden_dim: int, head_dim: int, grid: int):
        super().__init__()
        self.backbone = build_resnet(arch)
        dim = RESNET_CHANNELS[arch][-1]
        self.global_head = DenseHead(dim, hidden_dim, head_dim)
        self.dense_head = DenseHead(dim, hidden_dim, head_dim)
        self.grid = grid
        self.pool = nn.AdaptiveAvgPool2d(grid)  # only for maps larger than the grid (224 px: C5 is 7 x 7 already)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c5 = resnet_stages(self.backbone, x)[-1]
        feat = (self.pool(c5) if c5.shape[-1] > self.grid else c5).flatten(2)  # [N, D, S]: at most grid x grid
        n, d, s = feat.shape
        dense = self.dense_head(feat.transpose(1, 2).reshape(n * s, d)).reshape(n, s, -1).transpose(1, 2)
        return self.global_head(c5.mean(dim=(2, 3))), dense, feat


class _Flat(nn.Module):
    """The key encoder's outputs as one tensor (for the shuffled forward): [global | dense | features]."""

    def __init__(self, encoder: DenseEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> Tensor:
        g, dense, feat = self.encoder(x)
        return torch.cat([g.unsqueeze(2).expand(-1, -1, dense.shape[2]), dense, feat], dim=1)


class DenseCL(nn.Module):
    method = "densecl"
    check_batch = MoCoV2.check_batch

    def __init__(self, arch: str, hidden_dim: int = 2048, head_dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2, dense_weight: float = 0.5, grid: int = 7,
                 shuffle_bn: bool = True):  # fmt: skip
        super().__init__()
        self.arch, self.m, self.t, self.w, self.shuffle_bn = arch, momentum, temperature, dense_weight, shuffle_bn
        self.head_dim = head_dim
        self.encoder = DenseEncoder(arch, hidden_dim, head_dim, grid)
        self.key = _Flat(frozen_copy(self.encoder))
        self.queue = Queue(queue_size, head_dim)
        self.dense_queue = Queue(queue_size, head_dim)

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        q, q_dense, q_feat = self.encoder(x1)
        with torch.no_grad():
            flat = shuffled_forward(self.key, x2) if self.shuffle_bn else self.key(x2)
            c = self.head_dim
            k, k_dense, k_feat = flat[:, :c, 0], flat[:, c : 2 * c], flat[:, 2 * c :]
        loss_global = info_nce(q, k, self.queue.items.clone(), self.t)  # a copy: backward needs it, push changes it
        loss_dense = dense_contrastive(q_dense, k_dense, q_feat, k_feat, self.dense_queue.items.clone(), self.t)
        self.queue.push(gather(k))
        self.dense_queue.push(gather(F.normalize(k_dense, dim=1).mean(dim=2)))
        loss = (1 - self.w) * loss_global + self.w * loss_dense
        return {"loss": loss, "loss_global": loss_global.detach(), "loss_dense": loss_dense.detach(),
                "z": q.detach()}  # fmt: skip

    def on_step(self, step: int, epoch: int, progress: float) -> None:
        ema_update(self.key.encoder, self.encoder, self.m)


def build(cfg: PretrainModel) -> DenseCL:
    return DenseCL(cfg.backbone, cfg.hidden_dim, cfg.head_dim, cfg.queue_size, cfg.momentum, cfg.temperature,
                   cfg.dense_weight, cfg.grid, cfg.shuffle_bn)  # fmt: skip
