"""Per-channel mean and standard deviation of a frame source, for the ``normalise`` augmentation.

The paper normalises the pretraining views with the dataset's own statistics (LDPolypVideo pretraining
frames: mean (0.654, 0.424, 0.266), std (0.257, 0.182, 0.148), on 0-1 RGB); ``fpsiam data stats SRC``
measures them for any source.

The moments are exact: each frame contributes its pixel count and the integer sums of its uint8 values
and of their squares, accumulated as Python integers (unbounded), so there is no rounding and no
catastrophic cancellation in ``E[x^2] - E[x]^2`` however many frames are summed; only the final division
rounds. Memory is one frame at a time. Every pixel weighs the same (frames of different sizes count by
their area) and the std is the population std (numpy's default, ``ddof=0``).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fpsiam.data.frames import FrameSource
from fpsiam.errors import FpsiamError


@dataclasses.dataclass(frozen=True)
class Stats:
    """Per-channel RGB statistics on the 0-1 scale, measured over ``frames`` frames."""

    frames: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class _FrameMoments(Dataset):
    """Frame ``i`` reduced to (pixels, per-channel sum, per-channel sum of squares, error message or "").

    Reducing in the worker keeps what crosses process boundaries to seven numbers a frame. A frame
    that cannot be read comes back as its message, so the main process raises one clean FpsiamError
    (a DataLoader worker's exception would arrive wrapped in a traceback).
    """

    def __init__(self, source: FrameSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, list[int], list[int], str]:
        try:
            frame = self.source.read(i)
        except FpsiamError as e:
            return 0, [], [], str(e)
        except Exception as e:  # a decoder error the source did not anticipate: still name the frame
            return 0, [], [], f"{self.source.path_of(i)}: cannot read this frame ({e})"
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[0] != 3:
            return (
                0,
                [],
                [],
                f"{self.source.path_of(i)}: expected uint8 [3, H, W], got {frame.dtype} {tuple(frame.shape)}",
            )
        values = frame.reshape(3, -1).to(torch.int32)
        total = values.sum(dim=1, dtype=torch.int64)
        squares = (values * values).sum(dim=1, dtype=torch.int64)  # 255^2 * pixels: fits int64 easily
        return int(values.shape[1]), total.tolist(), squares.tolist(), ""


def sample_indices(n: int, max_frames: int | None, seed: int) -> np.ndarray:
    """All of ``range(n)``, or ``max_frames`` of them drawn without replacement with ``seed``, sorted.

    Sorted so that frames of one video are read in order (sequential decoding is the cheap kind).
    """
    if max_frames is not None and max_frames < 1:
        raise FpsiamError(f"max_frames must be >= 1, got {max_frames}")
    if max_frames is None or max_frames >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_frames, replace=False))


def compute_stats(source: FrameSource, max_frames: int | None = None, seed: int = 0, workers: int = 0) -> Stats:
    """Mean and std per RGB channel (0-1 scale) of ``source``, streaming.

    ``max_frames`` reads a random subset of that many frames (drawn with ``seed``, so reruns agree);
    ``workers`` > 0 decodes in that many DataLoader processes. Progress goes to stderr.
    """
    if len(source) == 0:
        raise FpsiamError("the frame source is empty; nothing to measure")
    indices = sample_indices(len(source), max_frames, seed)
    loader = DataLoader(
        _FrameMoments(source),
        batch_size=None,
        sampler=indices.tolist(),
        num_workers=workers,
    )
    pixels = 0
    total = [0, 0, 0]
    squares = [0, 0, 0]
    for n, s, q, error in tqdm(loader, total=len(indices), desc="stats", unit="frame", file=sys.stderr, disable=None):
        if error:
            raise FpsiamError(error)
        pixels += int(n)
        total = [a + int(b) for a, b in zip(total, s, strict=True)]
        squares = [a + int(b) for a, b in zip(squares, q, strict=True)]
    # mean = S / (N * 255); var = (N * Q - S^2) / (N * 255)^2, the numerator an exact integer.
    scale = pixels * 255
    mean = tuple(s / scale for s in total)
    std = tuple(float(np.sqrt((pixels * q - s * s) / (scale * scale))) for s, q in zip(total, squares, strict=True))
    return Stats(frames=len(indices), mean=mean, std=std)  # type: ignore[arg-type]
