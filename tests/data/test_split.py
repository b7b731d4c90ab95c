"""``fpsiam data split``: whole videos per split, deterministic, nothing lost, Kvasir-style id lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fpsiam.cli import main
from fpsiam.data.check import split_annotations
from fpsiam.data.cocojson import image_root
from fpsiam.errors import FpsiamError


def make_ann(folder: Path, videos: dict[str, int] | None = None, stems: list[str] | None = None) -> Path:
    """A COCO json (no image files needed) with ``videos`` {name: frames}, or stills named ``stems``."""
    images, annotations = [], []
    if videos is not None:
        entries = [(f"frames/{v}/{i:04d}.jpg", v, i) for v, n in videos.items() for i in range(n)]
    else:
        entries = [(f"images/{s}.jpg", None, None) for s in stems or []]
    for k, (name, video, frame) in enumerate(entries, start=1):
        image = {"id": k, "file_name": name, "width": 64, "height": 48}
        if video is not None:
            image.update(video_id=video, frame_index=frame)
        images.append(image)
        if k % 3:  # two of three frames hold a box
            annotations.append({"id": k, "image_id": k, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    return path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


VIDEOS = {f"v{i:02d}": 3 + (i * 7) % 11 for i in range(20)}  # 20 videos of 3..13 frames


def test_no_video_in_two_splits_and_nothing_lost(tmp_path):
    ann = make_ann(tmp_path / "src", VIDEOS)
    paths = split_annotations(ann, tmp_path / "out", by="video", fractions=(0.7, 0.15, 0.15), seed=0)
    assert list(paths) == ["train", "val", "test"]
    splits = {name: load(p) for name, p in paths.items()}
    videos = {name: {im["video_id"] for im in d["images"]} for name, d in splits.items()}
    assert not (videos["train"] & videos["val"] or videos["train"] & videos["test"] or videos["val"] & videos["test"])
    all_ids = sorted(im["id"] for d in splits.values() for im in d["images"])
    assert all_ids == list(range(1, sum(VIDEOS.values()) + 1))
    source = load(ann)
    for d in splits.values():  # annotations follow their images
        ids = {im["id"] for im in d["images"]}
        assert [a for a in source["annotations"] if a["image_id"] in ids] == d["annotations"]
    total = sum(VIDEOS.values())
    train = len(splits["train"]["images"])
    assert abs(train - 0.7 * total) <= max(VIDEOS.values())  # approximate, by whole videos
    assert all(len(d["images"]) > 0 for d in splits.values())


def test_deterministic_for_a_seed(tmp_path):
    ann = make_ann(tmp_path / "src", VIDEOS)

    def assignment(seed, out):
        paths = split_annotations(ann, tmp_path / out, seed=seed)
        return {name: sorted(im["id"] for im in load(p)["images"]) for name, p in paths.items()}

    first = assignment(0, "a")
    assert assignment(0, "b") == first
    assert any(assignment(seed, f"s{seed}") != first for seed in (1, 2, 3))


def test_file_names_stay_valid_relative_to_the_new_location(tmp_path):
    ann = make_ann(tmp_path / "src", {"v1": 2, "v2": 2, "v3": 2})
    paths = split_annotations(ann, tmp_path / "deep/out", fractions=(0.5, 0.0, 0.5))
    assert set(paths) == {"train", "test"} and not (tmp_path / "deep/out/val.json").exists()
    source = {im["id"]: (tmp_path / "src" / im["file_name"]).resolve() for im in load(ann)["images"]}
    for p in paths.values():
        for im in load(p)["images"]:
            assert (image_root(p, None, load(p)) / im["file_name"]).resolve() == source[im["id"]]
    # with --images the names are resolved against that folder instead
    paths = split_annotations(ann, tmp_path / "o2", fractions=(0.5, 0.0, 0.5), images=str(tmp_path / "imgs"))
    train = load(paths["train"])
    im = train["images"][0]
    found = image_root(paths["train"], None, train) / im["file_name"]
    assert found.resolve().is_relative_to((tmp_path / "imgs").resolve())


def test_images_without_video_need_by_image(tmp_path):
    ann = make_ann(tmp_path / "src", stems=[f"s{i}" for i in range(10)])
    with pytest.raises(FpsiamError, match="--by image"):
        split_annotations(ann, tmp_path / "out")
    paths = split_annotations(ann, tmp_path / "out", by="image", fractions=(0.6, 0.2, 0.2))
    assert [len(load(p)["images"]) for p in paths.values()] == [6, 2, 2]


def test_too_few_videos_and_bad_fractions(tmp_path):
    ann = make_ann(tmp_path / "src", {"v1": 3, "v2": 3})
    with pytest.raises(FpsiamError, match="2 videos for 3 non-empty splits"):
        split_annotations(ann, tmp_path / "out")
    with pytest.raises(FpsiamError, match="sum to 1"):
        split_annotations(ann, tmp_path / "out", fractions=(0.5, 0.5, 0.5))
    assert not (tmp_path / "out").exists()


KVASIR_IDS = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0qx73cjw570799j4n5cjze", "cju0roawvk"]


def write_list(path: Path, ids: list[str]) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


def test_by_list_kvasir_style(tmp_path):
    ann = make_ann(tmp_path / "src", stems=KVASIR_IDS)
    train = write_list(tmp_path / "train.txt", KVASIR_IDS[1:3])
    test = write_list(tmp_path / "test.txt", [KVASIR_IDS[0], ""])  # blank lines are ignored
    paths = split_annotations(ann, tmp_path / "out", by="list", lists=[f"train={train}", f"test={test}"])
    assert list(paths) == ["train", "test"]
    stems = {n: [Path(im["file_name"]).stem for im in load(p)["images"]] for n, p in paths.items()}
    assert stems == {"train": KVASIR_IDS[1:3], "test": KVASIR_IDS[:1]}  # the unlisted image is left out


def test_by_list_errors(tmp_path):
    ann = make_ann(tmp_path / "src", stems=KVASIR_IDS)
    train = write_list(tmp_path / "train.txt", KVASIR_IDS[:2] + ["nosuchid"])
    test = write_list(tmp_path / "test.txt", KVASIR_IDS[2:])
    with pytest.raises(FpsiamError) as e:
        split_annotations(ann, tmp_path / "out", by="list", lists=[f"train={train}", f"test={test}"])
    assert f"{train}:3" in str(e.value) and "nosuchid" in str(e.value)
    write_list(train, KVASIR_IDS[:3])
    with pytest.raises(FpsiamError) as e:
        split_annotations(ann, tmp_path / "out", by="list", lists=[f"train={train}", f"test={test}"])
    assert f"{test}:1" in str(e.value) and f"{train}:3" in str(e.value) and "overlap" in str(e.value)
    with pytest.raises(FpsiamError, match="NAME=FILE"):
        split_annotations(ann, tmp_path / "out", by="list", lists=[str(train)])
    with pytest.raises(FpsiamError, match="--by list"):
        split_annotations(ann, tmp_path / "out", by="video", lists=[f"train={train}"])
    assert not (tmp_path / "out").exists()


def test_cli_split(tmp_path, capsys):
    ann = make_ann(tmp_path / "src", VIDEOS)
    assert main(["data", "split", str(ann), "--by", "video", "-o", str(tmp_path / "out"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: {tmp_path / 'out' / name}.json" in out for name in ("train", "val", "test"))
    assert main(["data", "split", str(ann), "--by", "list", "-o", str(tmp_path / "o2")]) == 2
    assert "--list" in capsys.readouterr().err
