"""Streaming mean/std of a frame source, and ``fpsiam data stats``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpsiam.cli import main
from fpsiam.data.frames import open_frames
from fpsiam.data.stats import compute_stats, sample_indices
from fpsiam.errors import FpsiamError


def write_frames(root: Path, arrays: list[np.ndarray]) -> None:
    """Lossless PNG frames, so the decoded pixels are exactly ``arrays``."""
    for i, a in enumerate(arrays):
        path = root / f"video{i % 2}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path)


def numpy_stats(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every pixel of every frame stacked, 0-1 scale, population std."""
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_constant_colour_frames(tmp_path: Path) -> None:
    arrays = [np.full((6, 8, 3), c, np.uint8) for c in ((200, 100, 50), (100, 0, 250))]
    write_frames(tmp_path, arrays)
    stats = compute_stats(open_frames(tmp_path))
    assert stats.frames == 2
    np.testing.assert_allclose(stats.mean, [150 / 255, 50 / 255, 150 / 255], rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.std, [50 / 255, 50 / 255, 100 / 255], rtol=0, atol=1e-12)


def test_random_frames_of_different_sizes_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((6, 8), (5, 9), (7, 4), (6, 8))]
    arrays[1][..., 2] = 255  # a saturated channel
    write_frames(tmp_path, arrays)
    stats = compute_stats(open_frames(tmp_path))
    mean, std = numpy_stats(arrays)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(stats.std, std, rtol=1e-12, atol=0)


def test_no_cancellation_for_bright_low_variance_frames(tmp_path: Path) -> None:
    # E[x^2] - E[x]^2 in float32 would lose everything here: values 254/255 with a tiny spread.
    arrays = [np.full((16, 16, 3), 254, np.uint8) for _ in range(3)]
    arrays[0][0, 0] = 255
    write_frames(tmp_path, arrays)
    stats = compute_stats(open_frames(tmp_path))
    mean, std = numpy_stats(arrays)
    np.testing.assert_allclose(stats.std, std, rtol=1e-12)
    assert stats.std[0] > 0


def test_max_frames_subsample_is_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(12)]
    write_frames(tmp_path, arrays)
    source = open_frames(tmp_path)
    a = compute_stats(source, max_frames=5, seed=3)
    b = compute_stats(source, max_frames=5, seed=3)
    c = compute_stats(source, max_frames=5, seed=4)
    assert a == b and a.frames == 5
    assert a != c
    # the subset is the seeded sample, and its statistics are that subset's exactly
    picked = sample_indices(len(source), 5, 3)
    assert len(set(picked.tolist())) == 5 and list(picked) == sorted(picked)
    mean, std = numpy_stats([source.read(int(i)).permute(1, 2, 0).numpy() for i in picked])
    np.testing.assert_allclose(a.mean, mean, rtol=1e-12)
    assert compute_stats(source, max_frames=100).frames == 12  # more than there are: all of them


def test_workers_give_the_same_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(6)]
    write_frames(tmp_path, arrays)
    source = open_frames(tmp_path)
    assert compute_stats(source, workers=2) == compute_stats(source)


def test_unreadable_frame_is_named(tmp_path: Path) -> None:
    write_frames(tmp_path, [np.zeros((4, 4, 3), np.uint8)])
    (tmp_path / "video0" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(FpsiamError, match=r"0001\.png: cannot decode"):
        compute_stats(open_frames(tmp_path))
    with pytest.raises(FpsiamError, match=r"0001\.png: cannot decode"):
        compute_stats(open_frames(tmp_path), workers=1)  # not wrapped in a worker traceback


def test_cli_prints_mean_and_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_frames(tmp_path / "frames", [np.full((4, 4, 3), (255, 0, 51), np.uint8)] * 2)
    assert main(["data", "stats", str(tmp_path / "frames")]) == 0
    out = capsys.readouterr().out
    assert "frames: 2" in out
    assert "mean: 1.0000, 0.0000, 0.2000" in out
    assert "std:  0.0000, 0.0000, 0.0000" in out

    assert main(["data", "stats", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "no such file or folder" in err and "Traceback" not in err
