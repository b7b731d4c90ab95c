"""CocoDetection: item format, box conversion, transforms moving boxes, negatives, batching, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from fpsiam.data.coco import CocoDetection, coco_api, collate_fn, detection_transforms, resize_transform
from fpsiam.data.synthetic import SynthOptions, generate
from fpsiam.errors import FpsiamError

W, H = 40, 30


def _write_set(root: Path, images: list[dict], annotations: list[dict], name: str = "ann.json") -> Path:
    """A hand-made COCO json plus random JPEG images for every image record (unless told not to)."""
    rng = np.random.default_rng(0)
    for im in images:
        if im.pop("_skip_file", False):
            continue
        pixels = rng.integers(0, 256, size=(im["height"], im["width"], 3), dtype=np.uint8)
        (root / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / im["file_name"], format="PNG")
    path = root / name
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def _image(i: int, **extra) -> dict:
    return {"id": i, "file_name": f"img/{i}.png", "width": W, "height": H, **extra}


def _box(i: int, image_id: int, bbox: list[float]) -> dict:
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}


@pytest.fixture
def handmade(tmp_path) -> Path:
    """3 images: #1 with two boxes, #2 with none (negative), #3 with one box overhanging the right edge."""
    return _write_set(
        tmp_path,
        [_image(1), _image(2), _image(3)],
        [_box(10, 1, [5, 6, 10, 8]), _box(11, 1, [20.5, 0, 3.5, 30]), _box(12, 3, [30, 10, 15, 5])],
    )


@pytest.fixture(scope="module")
def synth_ann(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return generate(out, SynthOptions(videos=2, frames=3, width=96, height=80, mp4=False)).annotations


def test_item_format_on_synthetic_set(synth_ann):
    coco = json.loads(synth_ann.read_text())
    ds = CocoDetection(synth_ann)
    assert len(ds) == len({a["image_id"] for a in coco["annotations"]}) > 0
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.float32 and image.shape == (3, 80, 96)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.max()) > 0.5
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.dtype == torch.float32
    assert tuple(boxes.canvas_size) == (80, 96)
    assert target["labels"].dtype == torch.int64 and bool((target["labels"] == 1).all())
    assert len(target["labels"]) == len(boxes) == len(target["area"]) == len(target["iscrowd"])
    assert isinstance(target["image_id"], int) and target["image_id"] == ds.image_ids[0]
    expected = [a["bbox"] for a in coco["annotations"] if a["image_id"] == target["image_id"]]
    assert boxes.tolist() == [[x, y, x + w, y + h] for x, y, w, h in expected]


def test_xywh_to_xyxy_exact_and_overhang_clipped(handmade):
    ds = CocoDetection(handmade)
    assert ds.image_ids == [1, 3]
    _, target = ds[0]
    assert target["boxes"].tolist() == [[5.0, 6.0, 15.0, 14.0], [20.5, 0.0, 24.0, 30.0]]
    assert target["area"].tolist() == [80.0, 105.0]
    _, target = ds[1]
    assert target["boxes"].tolist() == [[30.0, 10.0, 40.0, 15.0]]  # 30 + 15 clipped to the width


def test_horizontal_flip_moves_boxes(handmade):
    plain = CocoDetection(handmade)
    flipped = CocoDetection(handmade, transforms=v2.RandomHorizontalFlip(p=1.0))
    image, target = plain[0]
    image_f, target_f = flipped[0]
    x0, y0, x1, y1 = target["boxes"].unbind(1)
    assert torch.equal(target_f["boxes"], torch.stack([W - x1, y0, W - x0, y1], dim=1))
    assert torch.equal(image_f, image.flip(-1))
    assert image_f.dtype == torch.float32  # converted to 0..1 even without ToDtype in the transforms


def test_train_transforms_flip_half_the_time(handmade):
    torch.manual_seed(0)
    ds = CocoDetection(handmade, transforms=detection_transforms(train=True))
    firsts = {tuple(ds[0][1]["boxes"][0].tolist()) for _ in range(40)}
    assert firsts == {(5.0, 6.0, 15.0, 14.0), (W - 15.0, 6.0, W - 5.0, 14.0)}
    eval_ds = CocoDetection(handmade, transforms=detection_transforms(train=False))
    assert {tuple(eval_ds[0][1]["boxes"][0].tolist()) for _ in range(5)} == {(5.0, 6.0, 15.0, 14.0)}
    assert eval_ds[0][0].dtype == torch.float32


def test_resize_scales_boxes(handmade):
    ds = CocoDetection(handmade, transforms=v2.Compose([resize_transform(20), detection_transforms(train=False)]))
    image, target = ds[0]
    assert image.shape == (3, 15, 20)
    assert tuple(target["boxes"].canvas_size) == (15, 20)
    assert torch.allclose(target["boxes"], torch.tensor([[2.5, 3.0, 7.5, 7.0], [10.25, 0.0, 12.0, 15.0]]))


def test_resize_drops_boxes_that_become_degenerate(tmp_path):
    ann = _write_set(tmp_path, [_image(1)], [_box(1, 1, [2, 2, 1, 1]), _box(2, 1, [10, 10, 20, 12])])
    _, target = CocoDetection(ann, transforms=resize_transform(10))[0]
    assert len(target["boxes"]) == len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == 1


def test_negatives_dropped_by_default_kept_on_request(handmade):
    assert len(CocoDetection(handmade)) == 2
    ds = CocoDetection(handmade, keep_negatives=True)
    assert ds.image_ids == [1, 2, 3]
    image, target = ds[1]
    assert image.shape == (3, H, W)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"] == 2


def test_dataloader_batches_with_collate_fn(synth_ann):
    ds = CocoDetection(synth_ann, transforms=detection_transforms(train=True), keep_negatives=True)
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list)
    assert len(images) == len(targets) == 4
    assert all(im.shape == (3, 80, 96) for im in images)
    assert [t["image_id"] for t in targets] == ds.image_ids[:4]


def test_coco_api_from_dataset_and_file(handmade):
    ds = CocoDetection(handmade)
    api = ds.coco_api()
    assert sorted(api.getImgIds()) == [1, 2, 3]  # every image, negatives included, for evaluation
    assert len(api.getAnnIds()) == 3 and api.loadCats(1)[0]["name"] == "polyp"
    raw = json.loads(handmade.read_text())
    for a in raw["annotations"]:
        del a["area"], a["iscrowd"], a["id"]
    handmade.write_text(json.dumps(raw))
    api = coco_api(handmade)
    assert sorted(api.getAnnIds()) == [1, 2, 3]
    assert api.loadAnns(1)[0]["area"] == 80 and api.loadAnns(1)[0]["iscrowd"] == 0
    api = coco_api(raw)
    assert api.loadAnns(1)[0]["area"] == 80
    assert "area" not in raw["annotations"][0]  # the caller's dict is left alone
    with pytest.raises(FpsiamError, match="'images' and 'annotations'"):
        coco_api({"images": 3, "annotations": []})


def test_unknown_image_id_is_an_error(tmp_path):
    ann = _write_set(tmp_path, [_image(1)], [_box(1, 1, [1, 1, 5, 5]), _box(2, 99, [1, 1, 5, 5])])
    with pytest.raises(FpsiamError, match=r"ann\.json.*image_id 99"):
        CocoDetection(ann)


def test_bad_bbox_is_an_error(tmp_path):
    ann = _write_set(tmp_path, [_image(1)], [_box(7, 1, [1, 1, 5, 5])])
    raw = json.loads(ann.read_text())
    raw["annotations"][0]["bbox"] = [1, 2, 3]
    ann.write_text(json.dumps(raw))
    with pytest.raises(FpsiamError, match=r"ann\.json.*annotation 7.*bbox"):
        CocoDetection(ann)


def test_missing_image_is_an_error_naming_it(tmp_path):
    ann = _write_set(tmp_path, [_image(1, _skip_file=True)], [_box(1, 1, [1, 1, 5, 5])])
    ds = CocoDetection(ann)
    with pytest.raises(FpsiamError, match=r"img/1\.png.*not found"):
        ds[0]


def test_corrupt_image_is_an_error_naming_it(tmp_path):
    ann = _write_set(tmp_path, [_image(1)], [_box(1, 1, [1, 1, 5, 5])])
    (tmp_path / "img/1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(FpsiamError, match=r"img/1\.png.*cannot decode"):
        CocoDetection(ann)[0]


def test_empty_set_is_an_error_suggesting_keep_negatives(tmp_path):
    ann = _write_set(tmp_path, [_image(1), _image(2)], [])
    with pytest.raises(FpsiamError, match=r"ann\.json.*keep_negatives"):
        CocoDetection(ann)
    assert len(CocoDetection(ann, keep_negatives=True)) == 2
    empty = _write_set(tmp_path, [], [], name="empty.json")
    with pytest.raises(FpsiamError, match=r"empty\.json.*no images"):
        CocoDetection(empty, keep_negatives=True)


def test_images_argument_overrides_json_folder(tmp_path):
    ann = _write_set(tmp_path, [_image(1)], [_box(1, 1, [1, 1, 5, 5])])
    (tmp_path / "root").mkdir()
    (tmp_path / "img").rename(tmp_path / "root" / "img")
    with pytest.raises(FpsiamError, match="not found"):
        CocoDetection(ann)[0]
    assert CocoDetection(ann, images=tmp_path / "root")[0][0].shape == (3, H, W)


@pytest.mark.realdata
def test_kvasir_batch(tmp_path):
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        pytest.skip("FPSIAM_KVASIR not set: point it at the Kvasir-SEG folder to run the real-data test")
    from fpsiam.data.convert import convert_dataset

    root = Path(root)
    ids = (root / "train.txt").read_text().split()[:8]
    official = json.loads((root / "kavsir_bboxes.json").read_text())
    subset = tmp_path / "kavsir_subset.json"
    subset.write_text(json.dumps({k: official[k] for k in ids}))
    out = tmp_path / "kvasir8.json"
    convert_dataset("kvasir", subset, out, images=str(root / "images"))

    ds = CocoDetection(out, transforms=detection_transforms(train=True))
    assert len(ds) == 8
    images, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_fn)))
    assert len(images) == 4
    for image, target in zip(images, targets, strict=True):
        h, w = image.shape[-2:]
        boxes = target["boxes"]
        assert len(boxes) >= 1 and bool((target["labels"] == 1).all())
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all())
        assert bool((boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())
        assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
