"""``fpsiam data check``: a good file passes, every problem kind is reported by name, exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpsiam.cli import main
from fpsiam.data.check import check_annotations
from fpsiam.errors import FpsiamError


def make_dataset(root: Path) -> Path:
    """Three 40x30 frames of two videos (one negative) and a COCO json beside them."""
    (root / "img").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.png"):
        Image.new("RGB", (40, 30), (200, 100, 50)).save(root / "img" / name)
    coco = {
        "images": [
            {"id": 1, "file_name": "img/a.jpg", "width": 40, "height": 30, "video_id": "v1", "frame_index": 0},
            {"id": 2, "file_name": "img/b.jpg", "width": 40, "height": 30, "video_id": "v1", "frame_index": 1},
            {"id": 3, "file_name": "img/c.png", "width": 40, "height": 30, "video_id": "v2", "frame_index": 0},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5.5, 6, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "polyp"}],
    }
    path = root / "ann.json"
    path.write_text(json.dumps(coco))
    return path


def edit(path: Path, change) -> Path:
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))
    return path


def test_good_file_passes_with_summary(tmp_path):
    report = check_annotations(make_dataset(tmp_path), None)
    assert report.ok and report.problems == []
    text = "\n".join(report.lines())
    assert "images: 3 (negative frames: 1)" in text
    assert "boxes: 3 (per image: mean 1.00, max 2)" in text
    assert "videos: 2" in text and "40x30 (3)" in text
    assert "small 2, medium 1, large 0" in text and "OK: no problems found" in text


def test_images_folder_option(tmp_path):
    ann = make_dataset(tmp_path / "data")
    moved = tmp_path / "elsewhere" / "ann.json"
    moved.parent.mkdir()
    moved.write_text(ann.read_text())
    assert not check_annotations(moved, None).ok
    assert check_annotations(moved, str(tmp_path / "data")).ok


def problems_of(path: Path, decode: bool = True) -> str:
    report = check_annotations(path, None, decode=decode)
    assert not report.ok
    return "\n".join(report.problems)


def test_missing_file(tmp_path):
    ann = make_dataset(tmp_path)
    (tmp_path / "img/b.jpg").unlink()
    assert "image 2 (img/b.jpg): file not found" in problems_of(ann)


def test_corrupt_and_truncated_files(tmp_path):
    ann = make_dataset(tmp_path)
    (tmp_path / "img/c.png").write_bytes(b"garbage")
    text = problems_of(ann)
    assert "image 3 (img/c.png): cannot decode" in text
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "img/c.png")
    noise = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    data = buffer.getvalue()
    (tmp_path / "img/a.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels cut off
    assert "image 1 (img/a.jpg): cannot decode" in problems_of(ann)
    assert check_annotations(ann, None, decode=False).ok  # without decoding only the header is read


def test_size_mismatch(tmp_path):
    ann = edit(make_dataset(tmp_path), lambda c: c["images"][1].update(width=41))
    assert "image 2 (img/b.jpg): json says 41x30 but" in problems_of(ann, decode=False)


def test_box_outside_and_zero_area_and_nan(tmp_path):
    def change(c):
        c["annotations"][0]["bbox"] = [1, 0, 40, 30]
        c["annotations"][1]["bbox"] = [1, 2, 0, 4]
        c["annotations"][2]["bbox"] = [float("nan"), 0, 1, 1]

    text = problems_of(edit(make_dataset(tmp_path), change))
    assert "annotation 1 (image img/a.jpg): bbox [1, 0, 40, 30] lies outside the 40x30 image" in text
    assert "annotation 2 (image img/a.jpg): bbox [1, 2, 0, 4] has zero or negative area" in text
    assert "annotation 3 (image img/b.jpg): bbox" in text and "NaN" in text


def test_duplicate_ids_dangling_image_and_unknown_category(tmp_path):
    def change(c):
        c["images"].append({"id": 2, "file_name": "img/c.png", "width": 40, "height": 30})
        c["annotations"][1]["id"] = 1
        c["annotations"][2]["image_id"] = 99
        c["annotations"].append({"id": 4, "image_id": 3, "category_id": 5, "bbox": [0, 0, 2, 2], "area": 4})

    text = problems_of(edit(make_dataset(tmp_path), change))
    assert "image 2 (img/c.png): duplicate image id" in text
    assert "annotation 1: duplicate annotation id" in text
    assert "annotation 3: image_id 99 is not in 'images'" in text
    assert "annotation 4 (image img/c.png): category_id 5 is not in 'categories'" in text


def test_problem_list_is_capped(tmp_path):
    def change(c):
        c["annotations"] = [
            {"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 1], "area": 0} for i in range(30)
        ]

    report = check_annotations(edit(make_dataset(tmp_path), change), None)
    lines = report.lines()
    assert len(report.problems) == 30 and "problems: 30" in lines
    assert lines[-1] == "  ... and 10 more" and sum(line.startswith("  - ") for line in lines) == 20


def test_broken_structure_raises(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(FpsiamError, match="annotations"):
        check_annotations(bad, None)


def test_cli_exit_codes(tmp_path, capsys):
    ann = make_dataset(tmp_path)
    assert main(["data", "check", str(ann)]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    (tmp_path / "img/b.jpg").unlink()
    assert main(["data", "check", str(ann), "--no-decode"]) == 1
    assert "file not found" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "none.json")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_images_dir_falls_back_to_json_relative_and_bare_names(tmp_path, capsys):
    """`--images` pointing at the dataset's own folder, while the json's names are relative to its own root."""
    from PIL import Image

    from fpsiam.cli import main
    from fpsiam.data.check import check_annotations

    flat = tmp_path / "dataset" / "images"
    flat.mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(flat / "a.jpg")
    ann = tmp_path / "json" / "ann.json"
    ann.parent.mkdir()
    image = {"id": 1, "file_name": "images/a.jpg", "width": 20, "height": 10}
    ann.write_text(json.dumps({"info": {"images_root": "../dataset"}, "annotations": [], "images": [image]}))
    report = check_annotations(ann, str(flat))
    assert report.ok and report.found_by == {"json": 1}
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "somewhere/else/a.jpg", "width": 20, "height": 10}],
                               "annotations": []}))  # fmt: skip
    assert main(["data", "check", str(ann), "--images", str(flat)]) == 0
    assert f"image files found: 1 at {flat}/<the file's name>" in capsys.readouterr().out
    out = tmp_path / "split"
    assert main(["data", "split", str(ann), "--images", str(flat), "--by", "image", "--fractions", "1", "0", "0",
                 "-o", str(out)]) == 0  # fmt: skip
    written = json.loads((out / "train.json").read_text())
    found = out / written["info"]["images_root"] / written["images"][0]["file_name"]
    assert found.resolve() == (flat / "a.jpg").resolve()
