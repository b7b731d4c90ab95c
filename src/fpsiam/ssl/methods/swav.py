"""SwAV (Caron et al. 2020): swapped prediction of equipartitioned cluster codes, with multi-crop.

Every crop (2 global at 224 px and, with ``data.local_crops``, 6 local at 96 px) goes through backbone -> GAP ->
2-layer head -> l2-normalise -> 3,000 prototypes (unit vectors, re-normalised before every step). The codes of the
two global crops come from the Sinkhorn-Knopp algorithm (3 iterations, epsilon 0.05, sums all-reduced over
processes); every other crop predicts them (cross-entropy at temperature 0.1). From ``queue_start_epoch`` on, a
queue of the last ``queue_size`` projections of each global crop joins the Sinkhorn batch (small batches need it);
the prototypes are not trained for the first ``freeze_prototypes_steps`` steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fpsiam.config import PretrainModel
from fpsiam.ssl.encoders import SimSiamEncoder
from fpsiam.ssl.heads import Prototypes, SwAVHead
from fpsiam.ssl.losses import sinkhorn, swav_loss

GLOBAL_CROPS = 2


class SwAV(nn.Module):
    method = "swav"

    def __init__(self, arch: str, hidden_dim: int = 2048, head_dim: int = 128, prototypes: int = 3000,
                 temperature: float = 0.1, queue_size: int = 3840, queue_start_epoch: int = 15,
                 freeze_prototypes_steps: int = 313, sinkhorn_iterations: int = 3,
                 sinkhorn_epsilon: float = 0.05):  # fmt: skip
        super().__init__()
        self.arch, self.t = arch, temperature
        self.queue_start_epoch, self.freeze_steps = queue_start_epoch, freeze_prototypes_steps
        self.iterations, self.epsilon = sinkhorn_iterations, sinkhorn_epsilon
        self.encoder = SimSiamEncoder(arch)
        self.projector = SwAVHead(self.encoder.out_dim, hidden_dim, head_dim)
        self.prototypes = Prototypes(head_dim, prototypes)
        self.register_buffer("queue", torch.zeros(GLOBAL_CROPS, queue_size, head_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # how many rows hold projections
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("use_queue", torch.zeros((), dtype=torch.bool))

    @property
    def backbone(self) -> torchvision.models.ResNet:
        return self.encoder.backbone

    def embed(self, crops: list[Tensor]) -> list[Tensor]:
        """Normalised projections of every crop; crops of one size go through the network together."""
        out: list[Tensor] = []
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            z = self.projector(self.encoder(torch.cat(crops[start:end])))
            out += list(F.normalize(z, dim=1).chunk(end - start))
            start = end
        return out

    def forward(self, *crops: Tensor) -> dict[str, Tensor]:
        self.prototypes.normalize_()
        z = self.embed(list(crops))
        frozen = int(self.steps) < self.freeze_steps
        weight = self.prototypes.weight.detach() if frozen else self.prototypes.weight
        scores = [zi @ weight.T for zi in z]
        codes = []
        for i in range(GLOBAL_CROPS):
            with torch.no_grad():
                s = scores[i].detach()
                if bool(self.use_queue) and int(self.queue_filled) >= len(self.queue[i]):
                    s = torch.cat([self.queue[i] @ weight.detach().T, s])
                codes.append(sinkhorn(s, self.epsilon, self.iterations)[-len(scores[i]) :])
        loss = swav_loss(scores, codes, self.t)
        if bool(self.use_queue) and self.queue.shape[1] > 0:
            self._enqueue([zi.detach() for zi in z[:GLOBAL_CROPS]])
        return {"loss": loss, "z": z[0].detach()}

    @torch.no_grad()
    def _enqueue(self, z: list[Tensor]) -> None:
        n = len(z[0])
        self.queue[:, n:] = self.queue[:, :-n].clone()
        for i, zi in enumerate(z):
            self.queue[i, :n] = zi
        self.queue_filled.add_(n)

    def on_step(self, step: int, epoch: int, progress: float) -> None:
        self.steps.fill_(step)
        self.use_queue.fill_(epoch >= self.queue_start_epoch and self.queue.shape[1] > 0)


def build(cfg: PretrainModel) -> SwAV:
    return SwAV(cfg.backbone, cfg.hidden_dim, cfg.head_dim, cfg.prototypes, cfg.temperature, cfg.queue_size,
                cfg.queue_start_epoch, cfg.freeze_prototypes_steps, cfg.sinkhorn_iterations,
                cfg.sinkhorn_epsilon)  # fmt: skip
