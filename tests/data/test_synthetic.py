"""The synthetic colonoscopy generator: determinism, COCO content, motion, looks, mp4, errors, CLI."""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fpsiam.cli import main
from fpsiam.data import synthetic
from fpsiam.data.synthetic import (
    SynthOptions,
    fov_mask,
    generate,
    make_scene,
    mask_box,
    polyp_mask,
    polyp_views,
    render_frame,
    synth_split,
)
from fpsiam.errors import FpsiamError

SMALL = {"videos": 2, "frames": 4, "width": 96, "height": 80, "mp4": False}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> tuple[Path, dict, int, str]:
    """`fpsiam data synth OUT_DIR` with all defaults (4 videos x 12 frames, 256x224, mp4)."""
    out = tmp_path_factory.mktemp("synth_default")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["data", "synth", str(out)])
    coco = json.loads((out / "annotations.json").read_text()) if rc == 0 else {}
    return out, coco, rc, stdout.getvalue()


def _frame(out: Path, image: dict) -> np.ndarray:
    with Image.open(out / image["file_name"]) as jpg:
        return np.asarray(jpg.convert("RGB"))


def test_cli_defaults_succeed_and_report(default_set):
    out, coco, rc, printed = default_set
    assert rc == 0
    assert "48 frames" in printed and str(out / "annotations.json") in printed


def test_counts_and_video_fields(default_set):
    out, coco, _, _ = default_set
    options = SynthOptions()
    assert len(coco["images"]) == options.videos * options.frames
    assert {im["id"] for im in coco["images"]} == set(range(1, 49))
    per_video = defaultdict(list)
    for im in coco["images"]:
        assert (im["width"], im["height"]) == (options.width, options.height)
        assert (out / im["file_name"]).is_file()
        per_video[im["video_id"]].append(im["frame_index"])
    assert len(per_video) == options.videos
    assert all(sorted(idx) == list(range(options.frames)) for idx in per_video.values())
    assert coco["categories"][0]["name"] == "polyp"


def test_defaults_have_positive_and_negative_frames(default_set):
    _, coco, _, _ = default_set
    positive = {a["image_id"] for a in coco["annotations"]}
    assert 0 < len(positive) < len(coco["images"])


def test_boxes_inside_image_with_positive_area(default_set):
    _, coco, _, _ = default_set
    images = {im["id"]: im for im in coco["images"]}
    assert coco["annotations"]
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        im = images[a["image_id"]]
        assert w > 0 and h > 0 and a["area"] == w * h
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        assert a["category_id"] == 1 and a["iscrowd"] == 0 and a["track_id"] >= 1


def test_polyps_move_smoothly(default_set):
    _, coco, _, _ = default_set
    images = {im["id"]: im for im in coco["images"]}
    tracks = defaultdict(dict)
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        tracks[(im["video_id"], a["track_id"])][im["frame_index"]] = (x + w / 2, y + h / 2, w)
    steps = [
        np.hypot(b[0] - a[0], b[1] - a[1])
        for track in tracks.values()
        for t, a in track.items()
        if (b := track.get(t + 1)) is not None
    ]
    assert len(steps) > 10
    assert max(steps) < 0.08 * 256  # a few pixels per frame, not jumps across the image


def test_frames_look_like_colonoscopy(default_set):
    out, coco, _, _ = default_set
    frames = np.stack([_frame(out, im) for im in coco["images"][::3]]).astype(np.float64)
    inside = fov_mask(224, 256) > 0.99
    r, g, b = (frames[..., c][:, inside].mean() for c in range(3))
    assert r > g + 40 and g > b  # reddish-pink mucosa
    assert r > 100  # and lit
    corners = np.concatenate([frames[:, :6, :6], frames[:, :6, -6:], frames[:, -6:, :6], frames[:, -6:, -6:]], axis=1)
    assert corners.mean() < 4 and corners.max() < 40  # black outside the scope's field of view


def test_polyp_changes_exactly_its_box():
    """Rendering with and without polyps differs inside the polyp's box, not elsewhere."""
    rng = np.random.default_rng(3)
    scene = make_scene(rng, 128, 112, n_polyps=1, frames=8)
    t = next(t for t in range(8) if render_frame(scene, t).boxes)
    with_polyp, without = render_frame(scene, t), render_frame(scene, t, draw_polyps=False)
    _, (x0, y0, x1, y1) = with_polyp.boxes[0]
    diff = np.abs(with_polyp.image.astype(int) - without.image.astype(int)).sum(axis=2)
    inside = np.zeros(diff.shape, dtype=bool)
    inside[y0:y1, x0:x1] = True
    near = np.zeros(diff.shape, dtype=bool)  # the box grown by its size/2: contact shadow and blur
    gy, gx = (y1 - y0) // 2 + 2, (x1 - x0) // 2 + 2
    near[max(0, y0 - gy) : y1 + gy, max(0, x0 - gx) : x1 + gx] = True
    assert diff[inside].mean() > 15
    assert diff[~near].max() == 0
    # the box is the tight box of the visible polyp mask
    view = polyp_views(scene, t)[0]
    assert mask_box(polyp_mask(view, 112, 128) & (fov_mask(112, 128) >= 0.5)) == (x0, y0, x1, y1)


def test_render_is_deterministic():
    a = render_frame(make_scene(np.random.default_rng(5), 64, 48, 2, 4), 2)
    b = render_frame(make_scene(np.random.default_rng(5), 64, 48, 2, 4), 2)
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes


def test_generate_is_deterministic_per_seed(tmp_path):
    runs = [
        generate(tmp_path / name, SynthOptions(seed=seed, **SMALL)) for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    jsons = [r.annotations.read_bytes() for r in runs]
    assert jsons[0] == jsons[1] and jsons[0] != jsons[2]
    names = [im["file_name"] for im in json.loads(jsons[0])["images"]]
    assert len(names) == 8
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert any((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes() for n in names)


def test_mp4_decodes_to_the_frames(default_set):
    out, coco, _, _ = default_set
    first_frames = {im["video_id"]: im for im in coco["images"] if im["frame_index"] == 0}
    for v in range(SynthOptions().videos):
        path = out / "videos" / f"synth_{v:03d}.mp4"
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 12
        assert frames[0].shape == (224, 256, 3)
        jpg = _frame(out, first_frames[f"synth_{v:03d}"])
        assert np.abs(frames[0].astype(int) - jpg.astype(int)).mean() < 6  # same picture, both lossy


def test_odd_sizes_give_even_video(tmp_path):
    summary = generate(tmp_path, SynthOptions(videos=1, frames=2, width=65, height=47))
    with av.open(str(summary.mp4s[0])) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 2 and (frames[0].width, frames[0].height) == (64, 46)
    with Image.open(tmp_path / "frames/synth_000/00000.jpg") as jpg:
        assert jpg.size == (65, 47)


@pytest.mark.parametrize(
    "bad",
    [{"videos": 0}, {"frames": 0}, {"width": 31}, {"height": 8}, {"seed": -1}],
)
def test_bad_options_raise(tmp_path, bad):
    with pytest.raises(FpsiamError, match=next(iter(bad))):
        generate(tmp_path, SynthOptions(**{**SMALL, **bad}))
    assert not (tmp_path / "annotations.json").exists()


def test_cli_bad_option_exits_2(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path), "--frames", "0"]) == 2
    assert "frames must be >= 1" in capsys.readouterr().err


def test_interrupted_run_leaves_no_json(tmp_path, monkeypatch):
    real = synthetic.render_frame
    calls = []

    def failing(scene, t, draw_polyps=True):
        calls.append(t)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(scene, t, draw_polyps)

    monkeypatch.setattr(synthetic, "render_frame", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, SynthOptions(**{**SMALL, "mp4": True}))
    assert not (tmp_path / "annotations.json").exists()
    assert not list(tmp_path.rglob("*.tmp*"))  # no half-written frames or videos
    assert not (tmp_path / "videos" / "synth_001.mp4").exists()


def test_synth_split_by_video(tmp_path):
    paths = synth_split(tmp_path, SynthOptions(**SMALL))
    full, train, test = (json.loads(paths[k].read_text()) for k in ("annotations", "train", "test"))
    train_videos = {im["video_id"] for im in train["images"]}
    test_videos = {im["video_id"] for im in test["images"]}
    assert train_videos == {"synth_000"} and test_videos == {"synth_001"}
    assert len(train["images"]) + len(test["images"]) == len(full["images"])
    assert len(train["annotations"]) + len(test["annotations"]) == len(full["annotations"])
    assert train["annotations"] and test["annotations"]
    for split in (train, test):
        ids = {im["id"] for im in split["images"]}
        assert all(a["image_id"] in ids for a in split["annotations"])
        assert all((tmp_path / im["file_name"]).is_file() for im in split["images"])
    assert paths["frames"].is_dir()


def test_synth_split_needs_two_videos(tmp_path):
    with pytest.raises(FpsiamError, match="videos >= 2"):
        synth_split(tmp_path, SynthOptions(**{**SMALL, "videos": 1}))
