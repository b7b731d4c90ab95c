"""Two-view augmentation: shapes, dtypes, randomness, determinism, temporal neighbours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from fpsiam.ssl.augment import TwoViewDataset, blur_kernel_size, view_transform


class FakeFrames:
    """A tiny FrameSource: frame i is a random uint8 image; neighbour(i, k) = i + k (clamped)."""

    def __init__(self, n: int = 5, h: int = 40, w: int = 48):
        g = torch.Generator().manual_seed(1)
        self.frames = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
        self.neighbour_calls: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, i: int) -> torch.Tensor:
        return self.frames[i]

    def neighbour(self, i: int, k: int, generator: torch.Generator | None) -> int:
        self.neighbour_calls.append((i, k))
        return min(i + k, len(self) - 1)


def test_view_transform_shape_dtype_and_normalisation():
    t = view_transform(size=32, min_scale=0.5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = t(FakeFrames().read(0))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -2.0 - 1e-6 and out.max() <= 2.0 + 1e-6  # (x - 0.5) / 0.25 for x in [0, 1]
    assert isinstance(t.transforms[0], v2.RandomResizedCrop)  # crop first, while still uint8
    crop = t.transforms[0]
    assert tuple(crop.scale) == (0.5, 1.0) and tuple(crop.size) == (32, 32)


def test_blur_kernel_is_odd_tenth_of_size():
    assert blur_kernel_size(224) == 23
    assert blur_kernel_size(128) == 13
    assert blur_kernel_size(32) == 3


def test_two_views_differ_and_are_deterministic_under_seed():
    ds = TwoViewDataset(FakeFrames(), view_transform(size=32))
    assert len(ds) == 5
    torch.manual_seed(0)
    a1, a2 = ds[2]
    torch.manual_seed(0)
    b1, b2 = ds[2]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    torch.manual_seed(1)
    c1, _ = ds[2]
    assert not torch.equal(a1, c1)


def test_same_frame_without_temporal_k():
    source = FakeFrames()
    ds = TwoViewDataset(source, v2.Identity())
    v1, v2_ = ds[1]
    assert torch.equal(v1, source.frames[1]) and torch.equal(v2_, source.frames[1])
    assert source.neighbour_calls == []


def test_temporal_neighbour_used_for_second_view():
    source = FakeFrames()
    ds = TwoViewDataset(source, v2.Identity(), temporal_k=2)
    v1, v2_ = ds[1]
    assert source.neighbour_calls == [(1, 2)]
    assert torch.equal(v1, source.frames[1]) and torch.equal(v2_, source.frames[3])


def test_real_kvasir_frame_two_views():
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        pytest.skip("FPSIAM_KVASIR not set: real Kvasir-SEG frames unavailable")
    with Image.open(sorted(Path(root, "images").glob("*.jpg"))[0]) as im:
        image = v2.functional.pil_to_tensor(im.convert("RGB"))

    class OneFrame:
        def __len__(self):
            return 1

        def read(self, i):
            return image

        def neighbour(self, i, k, generator):
            return i

    torch.manual_seed(0)
    v1, v2_ = TwoViewDataset(OneFrame(), view_transform())[0]
    assert v1.shape == v2_.shape == (3, 224, 224)
    assert not torch.equal(v1, v2_)
    assert torch.isfinite(v1).all()
