"""Every format -> COCO: round trips on hand-made fixtures, every bad input, the policies, the CLI, real data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpsiam.cli import main
from fpsiam.data.cocojson import escapes_root, image_root
from fpsiam.data.convert import (
    ConvertOptions,
    convert_dataset,
    from_coco,
    from_kvasir,
    from_ldpolypvideo,
    from_masks,
    from_voc,
    from_yolo,
    mask_boxes,
)
from fpsiam.errors import FpsiamError

# ---------------------------------------------------------------------------------------------- fixtures


def write_image(path: Path, width: int = 40, height: int = 30, color=(180, 90, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ldpolyp_root(root: Path) -> Path:
    """TrainValid/ video 'a' (frame 1: one box, frame 2: negative) and Test/ video 'b' (frame 7: two boxes)."""
    write_image(root / "TrainValid/Images/a/1.jpg")
    write_text(root / "TrainValid/Annotations/a/1.txt", "1\n2 3 12 13\n")
    write_image(root / "TrainValid/Images/a/2.jpg")
    write_text(root / "TrainValid/Annotations/a/2.txt", "0\n")
    write_image(root / "Test/Images/b/7.jpg")
    write_text(root / "Test/Annotations/b/7.txt", "2\n0 0 5 6\n10 10 40 30\n")
    return root


def boxes_by_file(coco: dict) -> dict[str, list[list]]:
    names = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
    out: dict[str, list[list]] = {name: [] for name in names.values()}
    for a in coco["annotations"]:
        out[names[a["image_id"]]].append(a["bbox"])
    return out


def images_by_name(coco: dict) -> dict[str, dict]:
    return {Path(im["file_name"]).name: im for im in coco["images"]}


def assert_no_output(folder: Path) -> None:
    """Nothing written: neither the json nor a temp file."""
    assert not folder.exists() or list(folder.iterdir()) == []


def assert_files_resolve(coco: dict, out: Path) -> None:
    """Every file_name lies inside the json's images root (no '..', not absolute) and names an existing file."""
    root = image_root(out, None, coco)
    for im in coco["images"]:
        assert escapes_root(im["file_name"]) is None, im["file_name"]
        assert (root / im["file_name"]).is_file(), im["file_name"]


# ---------------------------------------------------------------------------------------------- round trips


def test_ldpolypvideo_root_round_trip(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    out = tmp_path / "out" / "ld.json"
    report = convert_dataset("ldpolypvideo", root, out, None, ConvertOptions())
    coco = json.loads(out.read_text())
    assert_files_resolve(coco, out)
    assert [c["name"] for c in coco["categories"]] == ["polyp"]
    ims = {(im["video_id"], im["frame_index"]): im for im in coco["images"]}
    assert set(ims) == {("TrainValid/a", 1), ("TrainValid/a", 2), ("Test/b", 7)}
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
        assert a["category_id"] == 1 and a["area"] == a["bbox"][2] * a["bbox"][3]
    assert by_image[ims[("TrainValid/a", 1)]["id"]] == [[2, 3, 10, 10]]
    assert ims[("TrainValid/a", 2)]["id"] not in by_image  # the N=0 frame is kept as a negative
    assert by_image[ims[("Test/b", 7)]["id"]] == [[0, 0, 5, 6], [10, 10, 30, 20]]
    assert all((im["width"], im["height"]) == (40, 30) for im in coco["images"])
    text = "\n".join(report.lines())
    assert "images: 3" in text and "boxes: 3" in text and "negative frames (no box): 1" in text
    assert "videos: 2" in text


def test_ldpolypvideo_split_folder_and_unannotated_images(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    write_image(root / "TrainValid/Images/a/3.jpg")  # a frame without a txt: skipped and counted
    out = tmp_path / "split.json"
    report = convert_dataset("ldpolypvideo", root / "TrainValid", out, None, ConvertOptions())
    coco = json.loads(out.read_text())
    assert {im["video_id"] for im in coco["images"]} == {"a"}
    assert len(coco["images"]) == 2 and report.unannotated_images == 1
    assert any("without an annotation file" in line for line in report.lines())


def test_kvasir_round_trip(tmp_path):
    root = tmp_path / "kv"
    write_image(root / "images/abc.jpg", 50, 40)
    write_image(root / "images/def.jpg", 30, 20)
    official = {
        "abc": {
            "height": 40,
            "width": 50,
            "bbox": [
                {"label": "polyp", "xmin": 0, "ymin": 1, "xmax": 50, "ymax": 40},
                {"label": "polyp", "xmin": 5, "ymin": 5, "xmax": 9, "ymax": 8},
            ],
        },
        "def": {"height": 20, "width": 30, "bbox": [{"label": "polyp", "xmin": 3, "ymin": 4, "xmax": 13, "ymax": 14}]},
    }
    write_text(root / "kavsir_bboxes.json", json.dumps(official))
    out = tmp_path / "kv.json"
    coco = from_kvasir(root, out, ConvertOptions())
    assert boxes_by_file(coco) == {"abc.jpg": [[0, 1, 50, 39], [5, 5, 4, 3]], "def.jpg": [[3, 4, 10, 10]]}
    assert all("video_id" not in im for im in coco["images"])
    assert all("subclass" not in a and "track_id" not in a for a in coco["annotations"])
    # the json itself is accepted as SRC too
    assert from_kvasir(root / "kavsir_bboxes.json", out, ConvertOptions())["annotations"] == coco["annotations"]


def draw_mask(path: Path, width: int, height: int, rects: list[tuple[int, int, int, int]]) -> Path:
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def test_masks_components_min_area_and_mask_suffix(tmp_path):
    root = tmp_path / "seg"
    write_image(root / "images/p1.jpg", 60, 40)
    draw_mask(root / "masks/p1.png", 60, 40, [(2, 3, 20, 25), (30, 10, 50, 30), (55, 0, 57, 2)])  # last: 4 px
    write_image(root / "images/p2.jpg", 60, 40)
    draw_mask(root / "masks/p2_mask.tif", 60, 40, [])  # PolypGen-style name, other extension, empty
    out = tmp_path / "m.json"
    report = convert_dataset("masks", root, out, None, ConvertOptions(min_area=10))
    coco = json.loads(out.read_text())
    assert boxes_by_file(coco) == {"p1.jpg": [[2, 3, 18, 22], [30, 10, 20, 20]], "p2.jpg": []}
    assert report.dropped_components == 1 and report.negative_frames == 1
    assert "mask components dropped under --min-area: 1" in report.lines()
    assert_files_resolve(coco, out)


def test_masks_eight_connectivity():
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2] = mask[3, 3] = 255  # diagonal neighbours: one component
    assert mask_boxes(mask, 0) == ([(2, 2, 4, 4)], 0)


def test_masks_video_pattern_sequence_table_and_folders(tmp_path):
    root = tmp_path / "cvc"
    for n in (1, 2, 30):
        write_image(root / f"Original/{n}.png", 40, 30)
        draw_mask(root / f"Ground Truth/{n}.png", 40, 30, [(5, 5, 15, 15)])
    out = tmp_path / "cvc.json"
    # masks folder as SRC with --images
    coco = from_masks(root / "Ground Truth", out, ConvertOptions(), images=str(root / "Original"))
    assert len(coco["images"]) == 3 and all("video_id" not in im for im in coco["images"])
    # a sequence table in SRC
    write_text(root / "sequences.csv", "image,video,frame\n1.png,seq1,0\n2,seq1,1\n30.png,seq2,0\n")
    coco = from_masks(root, out, ConvertOptions())
    got = {Path(im["file_name"]).name: (im["video_id"], im["frame_index"]) for im in coco["images"]}
    assert got == {"1.png": ("seq1", 0), "2.png": ("seq1", 1), "30.png": ("seq2", 0)}
    # a regex beats the table
    coco = from_masks(root, out, ConvertOptions(video_pattern=r"^(?P<video>\d)(?P<frame>\d*)$"))
    got = {Path(im["file_name"]).name: im["video_id"] for im in coco["images"]}
    assert got == {"1.png": "1", "2.png": "2", "30.png": "3"}
    # SUN-SEG style: one sub-folder per video
    sun = tmp_path / "sun"
    write_image(sun / "images/case1/image_0003.jpg", 40, 30)
    draw_mask(sun / "masks/case1/image_0003.png", 40, 30, [(1, 1, 20, 20)])
    coco = from_masks(sun, out, ConvertOptions())
    assert (coco["images"][0]["video_id"], coco["images"][0]["frame_index"]) == ("case1", 3)


def voc_xml(filename: str | None, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    parts = ["<annotation>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for obj in objects:
        name, (x0, y0, x1, y1), *track = obj
        tid = f"<trackid>{track[0]}</trackid>" if track else ""
        parts.append(
            f"<object><name>{name}</name>{tid}<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    return "".join(parts + ["</annotation>"])


def test_voc_kumc_layout_round_trip(tmp_path):
    root = tmp_path / "kumc"
    write_image(root / "Image/12/5.jpg", 50, 40)
    write_text(root / "Annotation/12/5.xml", voc_xml("5.jpg", (50, 40), [("adenomatous", (1, 2, 21, 32), 3)]))
    write_image(root / "Image/12/6.jpg", 50, 40)
    write_text(root / "Annotation/12/6.xml", voc_xml(None, None, []))  # no size: read from the image
    write_image(root / "Image/14/1.jpg", 50, 40)
    write_text(
        root / "Annotation/14/1.xml",
        voc_xml("1.jpg", (50, 40), [("hyperplastic", (0.5, 1, 10.5, 9)), ("polyp", (20, 20, 50, 40))]),
    )
    out = tmp_path / "voc.json"
    coco = from_voc(root / "Annotation", out, ConvertOptions())
    assert_files_resolve(coco, out)
    ims = {(im["video_id"], im["frame_index"]): im["id"] for im in coco["images"]}
    assert set(ims) == {("12", 5), ("12", 6), ("14", 1)}
    anns = {a["image_id"]: [] for a in coco["annotations"]}
    for a in coco["annotations"]:
        anns[a["image_id"]].append((a["bbox"], a.get("subclass"), a.get("track_id")))
    assert anns[ims[("12", 5)]] == [([1, 2, 20, 30], "adenomatous", 3)]
    assert ims[("12", 6)] not in anns
    assert anns[ims[("14", 1)]] == [([0.5, 1, 10, 8], "hyperplastic", None), ([20, 20, 30, 20], None, None)]
    # the dataset root works too (the Annotation component is not part of the video id)
    coco = from_voc(root, out, ConvertOptions())
    assert {im["video_id"] for im in coco["images"]} == {"12", "14"}
    # images elsewhere: --images mirrors the XML's sub-folders
    shutil.move(root / "Image", tmp_path / "frames")
    with pytest.raises(FpsiamError, match="--images"):
        from_voc(root, out, ConvertOptions())
    coco = from_voc(root, out, ConvertOptions(), images=str(tmp_path / "frames"))
    assert_files_resolve(coco, out)
    assert {Path(im["file_name"]).parent.name for im in coco["images"]} == {"12", "14"}


def test_yolo_round_trip_with_negative_image(tmp_path):
    root = tmp_path / "yolo"
    write_image(root / "images/train/a.jpg", 100, 50)
    write_text(root / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.2 0.2\n")
    write_image(root / "images/train/b.png", 100, 50)  # no label file: a negative
    write_text(root / "labels/classes.txt", "polyp\n")
    out = tmp_path / "y.json"
    report = convert_dataset("yolo", root, out, None, ConvertOptions())
    coco = json.loads(out.read_text())
    assert boxes_by_file(coco) == {"a.jpg": [[40, 15, 20, 20], [0, 0, 20, 10]], "b.png": []}
    assert report.negative_frames == 1 and all("video_id" not in im for im in coco["images"])
    coco = from_yolo(root, out, ConvertOptions(video_pattern=r"(?P<video>[ab])"))
    assert {im["video_id"] for im in coco["images"]} == {"a", "b"}


def test_coco_normalises_aliases_categories_and_paths(tmp_path):
    src_dir = tmp_path / "sun"
    write_image(src_dir / "Frame/case1_1/image_0001.jpg", 40, 30)
    write_image(src_dir / "Frame/case1_1/image_0002.jpg", 40, 30)
    src = {
        "images": [
            {
                "id": 10,
                "file_name": "Frame/case1_1/image_0001.jpg",
                "width": 40,
                "height": 30,
                "video": "case1_1",
                "frame_id": "1",
                "extra_field": "kept",
            },
            {"id": 11, "file_name": "Frame/case1_1/image_0002.jpg", "sequence": 7, "frame": 2},
            {"id": 12, "file_name": "Frame/gone/image_0009.jpg", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 5, "image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 12], "area": 999, "instance_id": 4},
            {"id": 6, "image_id": 11, "category_id": 8, "bbox": [0, 0, 40, 30], "polyp_id": 4, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "adenoma"}, {"id": 8, "name": "polyp"}],
    }
    write_text(src_dir / "ann.json", json.dumps(src))
    out = tmp_path / "out" / "coco.json"
    report = convert_dataset("coco", src_dir / "ann.json", out, None, ConvertOptions())
    coco = json.loads(out.read_text())
    ims = {im["id"]: im for im in coco["images"]}
    assert (ims[10]["video_id"], ims[10]["frame_index"], ims[10]["extra_field"]) == ("case1_1", 1, "kept")
    assert (ims[11]["video_id"], ims[11]["frame_index"], ims[11]["width"]) == ("7", 2, 40)
    root = image_root(out, None, coco)
    assert (root / ims[10]["file_name"]).resolve() == (src_dir / src["images"][0]["file_name"]).resolve()
    anns = {a["id"]: a for a in coco["annotations"]}
    assert anns[5]["category_id"] == anns[6]["category_id"] == 1
    assert anns[5]["area"] == 120 and anns[5]["track_id"] == 4 and anns[5]["subclass"] == "adenoma"
    assert anns[6]["track_id"] == 4 and "subclass" not in anns[6]
    assert report.images_not_found == 1
    assert any("images not found" in line for line in report.lines())
    # SUN-SEG names via --video-pattern (searched in the path when the stem does not match)
    pattern = r"^Frame/(?P<video>[^/]+)/image_(?P<frame>\d+)$"
    coco = from_coco(src_dir / "ann.json", out, ConvertOptions(video_pattern=pattern))
    assert {(im["video_id"], im["frame_index"]) for im in coco["images"]} == {
        ("case1_1", 1),
        ("case1_1", 2),
        ("gone", 9),
    }


# ---------------------------------------------------------------------------------------------- policies


def test_box_outside_fails_then_clip_counts(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    txt = write_text(root / "TrainValid/Annotations/a/1.txt", "2\n-3 2 12 13\n30 20 45 30\n")
    out_dir = tmp_path / "out"
    with pytest.raises(FpsiamError) as e:
        convert_dataset("ldpolypvideo", root, out_dir / "x.json", None, ConvertOptions())
    assert f"{txt}:2" in str(e.value) and "--clip-boxes" in str(e.value)
    assert_no_output(out_dir)
    report = convert_dataset("ldpolypvideo", root, out_dir / "x.json", None, ConvertOptions(clip_boxes=True))
    coco = json.loads((out_dir / "x.json").read_text())
    assert boxes_by_file(coco)["1.jpg"] == [[0, 2, 12, 11], [30, 20, 10, 10]]
    assert report.clipped_boxes == 2
    assert "boxes clipped to the image (--clip-boxes): 2" in report.lines()


def test_degenerate_box_fails_then_drop_counts(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    txt = write_text(root / "Test/Annotations/b/7.txt", "2\n0 0 5 6\n10 10 10 30\n")
    out_dir = tmp_path / "out"
    with pytest.raises(FpsiamError) as e:
        convert_dataset("ldpolypvideo", root, out_dir / "x.json", None, ConvertOptions())
    assert f"{txt}:3" in str(e.value) and "--drop-degenerate" in str(e.value)
    assert_no_output(out_dir)
    report = convert_dataset("ldpolypvideo", root, out_dir / "x.json", None, ConvertOptions(drop_degenerate=True))
    assert report.dropped_degenerate == 1 and report.boxes == 2
    assert "degenerate boxes dropped (--drop-degenerate): 1" in report.lines()


def test_box_entirely_outside_is_dropped_only_with_drop_degenerate(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    write_text(root / "Test/Annotations/b/7.txt", "1\n50 40 60 50\n")
    with pytest.raises(FpsiamError, match="entirely outside"):
        from_ldpolypvideo(root, tmp_path / "x.json", ConvertOptions(clip_boxes=True))
    coco = from_ldpolypvideo(root, tmp_path / "x.json", ConvertOptions(clip_boxes=True, drop_degenerate=True))
    assert coco["info"]["conversion"]["dropped_degenerate"] == 1


# ---------------------------------------------------------------------------------------------- bad input


def expect_error(tmp_path, fmt, src, *fragments, images=None, options=None):
    out_dir = tmp_path / "out"
    with pytest.raises(FpsiamError) as e:
        convert_dataset(fmt, src, out_dir / "out.json", images, options or ConvertOptions())
    for fragment in fragments:
        assert str(fragment) in str(e.value), (fragment, str(e.value))
    assert_no_output(out_dir)
    return str(e.value)


def test_missing_image(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    (root / "Test/Images/b/7.jpg").unlink()
    expect_error(tmp_path, "ldpolypvideo", root, root / "Test/Annotations/b/7.txt", "no image")


def test_corrupt_image(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    bad = root / "TrainValid/Images/a/2.jpg"
    bad.write_bytes(b"not a jpeg at all")
    expect_error(tmp_path, "ldpolypvideo", root, bad, "cannot decode the image")


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("1\n2 3 x 13\n", 2, "expected 4 integers"),
        ("1\n2 3 12\n", 2, "expected 4 integers"),
        ("1\n2.5 3 12 13\n", 2, "expected 4 integers"),
        ("1\n2 3 12 13\n4 5 6 7\n", 3, "says 1 box(es) but 2"),
        ("two\n", 1, "number of boxes"),
    ],
)
def test_malformed_txt(tmp_path, text, line, what):
    root = ldpolyp_root(tmp_path / "ld")
    txt = write_text(root / "TrainValid/Annotations/a/1.txt", text)
    expect_error(tmp_path, "ldpolypvideo", root, f"{txt}:{line}", what)


def test_count_line_promising_more_boxes_than_given(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    txt = write_text(root / "TrainValid/Annotations/a/1.txt", "3\n2 3 12 13\n")
    expect_error(tmp_path, "ldpolypvideo", root, txt, "says 3 box(es) but 1")


def test_voc_without_size_and_without_image(tmp_path):
    xml = write_text(tmp_path / "voc/Annotations/v1/3.xml", voc_xml("3.jpg", None, [("polyp", (1, 1, 5, 5))]))
    expect_error(tmp_path, "voc", tmp_path / "voc", xml, "no <size>", "--images")


def test_voc_size_disagreeing_with_the_image(tmp_path):
    write_image(tmp_path / "voc/JPEGImages/3.jpg", 40, 30)
    xml = write_text(tmp_path / "voc/Annotations/3.xml", voc_xml("3.jpg", (64, 48), []))
    expect_error(tmp_path, "voc", tmp_path / "voc", xml, "64x48", "40x30")


def test_voc_broken_xml_names_the_line(tmp_path):
    xml = write_text(tmp_path / "voc/a.xml", "<annotation>\n<object>\n</annotation>\n")
    expect_error(tmp_path, "voc", tmp_path / "voc", f"{xml}:3", "not valid XML")


def test_yolo_nan(tmp_path):
    root = tmp_path / "yolo"
    write_image(root / "images/a.jpg", 100, 50)
    txt = write_text(root / "labels/a.txt", "0 0.5 0.5 0.2 0.4\n0 nan 0.5 0.2 0.2\n")
    expect_error(tmp_path, "yolo", root, f"{txt}:2", "NaN")


def test_yolo_labels_without_image(tmp_path):
    root = tmp_path / "yolo"
    write_image(root / "images/a.jpg", 100, 50)
    txt = write_text(root / "labels/b.txt", "0 0.5 0.5 0.2 0.4\n")
    expect_error(tmp_path, "yolo", root, txt, "no image")


def test_coco_duplicate_image_ids(tmp_path):
    write_image(tmp_path / "c/a.jpg")
    write_image(tmp_path / "c/b.jpg")
    ann = write_text(
        tmp_path / "c/ann.json",
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": []}),
    )
    expect_error(tmp_path, "coco", ann, ann, "duplicate image id 1", "b.jpg")


def test_coco_dangling_image_id_and_bad_bbox(tmp_path):
    write_image(tmp_path / "c/a.jpg")
    images = [{"id": 1, "file_name": "a.jpg"}]
    ann = write_text(
        tmp_path / "c/ann.json",
        json.dumps(
            {"images": images, "annotations": [{"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}
        ),
    )
    expect_error(tmp_path, "coco", ann, ann, "annotation 3", "image_id 2")
    write_text(
        ann,
        json.dumps({"images": images, "annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}),
    )
    expect_error(tmp_path, "coco", ann, ann, "annotation 3", "'bbox'")


def test_mask_of_another_size(tmp_path):
    root = tmp_path / "seg"
    image = write_image(root / "images/p1.jpg", 60, 40)
    mask = draw_mask(root / "masks/p1.png", 30, 20, [(2, 2, 10, 10)])
    expect_error(tmp_path, "masks", root, mask, image, "30x20", "60x40")


@pytest.mark.parametrize("fmt", ["ldpolypvideo", "voc", "yolo", "masks", "kvasir"])
def test_empty_folder(tmp_path, fmt):
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path, fmt, tmp_path / "empty", tmp_path / "empty")


def test_folders_present_but_no_images(tmp_path):
    (tmp_path / "ld/TrainValid/Annotations").mkdir(parents=True)
    (tmp_path / "ld/TrainValid/Images").mkdir(parents=True)
    expect_error(tmp_path, "ldpolypvideo", tmp_path / "ld", "no annotated images found")
    (tmp_path / "yolo/images").mkdir(parents=True)
    (tmp_path / "yolo/labels").mkdir(parents=True)
    expect_error(tmp_path, "yolo", tmp_path / "yolo", "no annotated images found")


def test_bad_video_pattern(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    expect_error(tmp_path, "ldpolypvideo", root, "(?P<video>", options=ConvertOptions(video_pattern="(?P<video>"))
    expect_error(tmp_path, "ldpolypvideo", root, "named group", options=ConvertOptions(video_pattern=r"\d+"))
    expect_error(
        tmp_path, "ldpolypvideo", root, "does not match", options=ConvertOptions(video_pattern=r"(?P<video>x)")
    )


def test_failed_conversion_leaves_an_existing_output_untouched(tmp_path):
    root = ldpolyp_root(tmp_path / "ld")
    out = write_text(tmp_path / "out/ld.json", "previous")
    write_text(root / "TrainValid/Annotations/a/1.txt", "1\n1 2 3\n")
    with pytest.raises(FpsiamError):
        convert_dataset("ldpolypvideo", root, out, None, ConvertOptions())
    assert out.read_text() == "previous" and sorted(os.listdir(out.parent)) == ["ld.json"]


def test_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    root = ldpolyp_root(tmp_path / "ld")

    def broken_dump(obj, f, **kwargs):
        f.write('{"images": [')
        raise OSError("disk full")

    monkeypatch.setattr("fpsiam.fileio.json.dump", broken_dump)
    with pytest.raises(OSError):
        convert_dataset("ldpolypvideo", root, tmp_path / "out/ld.json", None, ConvertOptions())
    assert os.listdir(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_convert_ok_and_error(tmp_path, capsys):
    root = ldpolyp_root(tmp_path / "ld")
    out = tmp_path / "out/ld.json"
    assert main(["data", "convert", "--format", "ldpolypvideo", str(root), "-o", str(out)]) == 0
    assert "images: 3" in capsys.readouterr().out and out.is_file()
    txt = write_text(root / "TrainValid/Annotations/a/1.txt", "1\n1 2 x 4\n")
    bad_out = tmp_path / "bad/ld.json"
    assert main(["data", "convert", "--format", "ldpolypvideo", str(root), "-o", str(bad_out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{txt}:2" in err[0] and "Traceback" not in err[0]
    assert not bad_out.parent.exists()


def test_cli_policy_flags(tmp_path, capsys):
    root = ldpolyp_root(tmp_path / "ld")
    write_text(root / "TrainValid/Annotations/a/1.txt", "2\n-1 2 12 13\n5 5 5 9\n")
    args = ["data", "convert", "--format", "ldpolypvideo", str(root), "-o", str(tmp_path / "o.json")]
    assert main([*args, "--clip-boxes", "--drop-degenerate"]) == 0
    out = capsys.readouterr().out
    assert "boxes clipped to the image (--clip-boxes): 1" in out
    assert "degenerate boxes dropped (--drop-degenerate): 1" in out


# ---------------------------------------------------------------------------------------------- real data


def kvasir_root() -> Path:
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        pytest.skip("FPSIAM_KVASIR not set: point it at a Kvasir-SEG copy to run the real-data tests")
    return Path(root)


@pytest.mark.realdata
def test_real_kvasir_boxes(tmp_path):
    root = kvasir_root()
    out = tmp_path / "kvasir.json"
    report = convert_dataset("kvasir", root, out, None, ConvertOptions())
    coco = json.loads(out.read_text())
    assert (report.images, report.boxes) == (1000, 1071)
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height
    assert_files_resolve(coco, out)


def iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.realdata
def test_real_kvasir_masks_match_the_official_boxes(tmp_path):
    root = kvasir_root()
    official = json.loads((root / "kavsir_bboxes.json").read_text())
    ids = sorted(official)[:20]
    for i in ids:  # copies into tmp only (the data must never enter the repository)
        (tmp_path / "seg/images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "seg/masks").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "images" / f"{i}.jpg", tmp_path / "seg/images")
        shutil.copy(root / "masks" / f"{i}.jpg", tmp_path / "seg/masks")
    coco = from_masks(tmp_path / "seg", tmp_path / "m.json", ConvertOptions())
    found = boxes_by_file(coco)
    ious = []
    for i in ids:
        for b in official[i]["bbox"]:
            ref = [b["xmin"], b["ymin"], b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]]
            ious.append(max((iou(ref, c) for c in found[f"{i}.jpg"]), default=0.0))
    assert len(ious) >= 20
    assert np.mean(np.array(ious) > 0.8) >= 0.9, ious
