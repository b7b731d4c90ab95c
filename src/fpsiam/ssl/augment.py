"""Frames -> two independently augmented views (the paper's augmentations, docs/method.md), with transforms.v2.

The pipeline is the reference's (and the paper's) in the same order: RandomResizedCrop(224, scale
(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale p=0.2, Gaussian blur
sigma ~ U(0.1, 2) with p=0.5, horizontal flip p=0.5, then to float and normalise. The reference ran
it on PIL images (8 bits per channel between steps); here every step up to the flip runs on uint8
tensors [3, H, W] (also 8 bits between steps, as PIL), and the crop comes first so the colour
operations only touch size x size pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fpsiam.config import LDPOLYPVIDEO_MEAN, LDPOLYPVIDEO_STD


def blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10% of the view size (23 for 224), as SimCLR / BYOL / lightly use.

    The reference blurred PIL images with ``ImageFilter.GaussianBlur(radius=sigma)``, whose support grows
    with sigma (about +-3 sigma, so at most 13 px for sigma <= 2). torchvision needs a fixed kernel: at
    224 px, 23 taps cover +-5.5 sigma even for sigma = 2, i.e. the same blur. At small CPU sizes (32-64 px)
    the kernel is 3-7 taps and truncates large sigmas: a weaker blur there.
    """
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def view_transform(
    size: int = 224,
    min_scale: float = 0.2,
    mean: Sequence[float] = LDPOLYPVIDEO_MEAN,
    std: Sequence[float] = LDPOLYPVIDEO_STD,
    color_jitter: float = 0.4,
    grayscale: float = 0.2,
    blur: float = 0.5,
    max_scale: float = 1.0,
) -> v2.Compose:
    """One view: uint8 [3, H, W] -> normalised float32 [3, size, size] (the paper's augmentations).

    The defaults are the paper's. ``color_jitter`` is the strength s of ColorJitter(s, s, s, s/4) (applied with
    p=0.8; 0 drops it), ``grayscale`` and ``blur`` the probabilities of RandomGrayscale and of the Gaussian blur:
    the knobs a small-data recipe may turn down (colour is much of what tells a polyp from mucosa).
    """
    steps: list = [
        v2.RandomResizedCrop(
            size, scale=(min_scale, max_scale), interpolation=v2.InterpolationMode.BILINEAR, antialias=True
        )
    ]
    if color_jitter > 0:
        s = color_jitter
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=s / 4)], p=0.8))
    if grayscale > 0:
        steps.append(v2.RandomGrayscale(p=grayscale))
    if blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=blur_kernel_size(size), sigma=(0.1, 2.0))], p=blur))
    steps += [
        v2.RandomHorizontalFlip(p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]
    return v2.Compose(steps)


class FrameSourceLike(Protocol):
    """What :class:`TwoViewDataset` needs from a frame source (``fpsiam.data.frames``)."""

    def __len__(self) -> int: ...

    def read(self, i: int) -> Tensor: ...

    def neighbour(self, i: int, k: int, generator: torch.Generator | None) -> int: ...


class TwoViewDataset(Dataset):
    """``dataset[i] -> (view1, view2)``: two augmentations of frame ``i`` (plus ``local=(transform, n)``: n small
    crops of it, SwAV's multi-crop).

    With ``temporal_k > 0`` (our extension, not in the published runs) the second view comes from a frame
    within +-k of ``i`` in the same video (``source.neighbour``). All randomness is drawn from torch's
    global RNG, which the DataLoader seeds per worker from its generator: a run is reproducible given
    that generator (or a ``torch.manual_seed`` in a single process).
    """

    def __init__(
        self, source: FrameSourceLike, transform: v2.Transform, temporal_k: int = 0,
        local: tuple[v2.Transform, int] | None = None,
    ):  # fmt: skip
        if temporal_k < 0:
            raise ValueError(f"temporal_k must be >= 0, got {temporal_k}")
        self.source = source
        self.transform = transform
        self.temporal_k = temporal_k
        self.local = local

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        frame = self.source.read(i)
        other = frame
        if self.temporal_k > 0:
            j = self.source.neighbour(i, self.temporal_k, None)
            if j != i:
                other = self.source.read(j)
        views = (self.transform(frame), self.transform(other))
        if self.local is None:
            return views
        transform, n = self.local
        return (*views, *(transform(frame) for _ in range(n)))
