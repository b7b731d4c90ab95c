"""ONNX and TorchScript exports of both detectors give PyTorch eager's boxes (fpsiam.detect.export)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from fpsiam.api import Detector
from fpsiam.data.synthetic import SynthOptions, generate
from fpsiam.detect.export import compare_backends, compare_outputs, export_model, load_onnx, load_torchscript
from fpsiam.detect.models import build_detector, save_detector
from fpsiam.errors import FpsiamError

KINDS = ("retinanet", "faster_rcnn")


def tiny(kind: str, **kw) -> torch.nn.Module:
    """Untrained, min/max size 64; RetinaNet's classifier bias at 0 so that it reports boxes (scores ~0.5)."""
    torch.manual_seed(0)
    model = build_detector(kind, "resnet18", min_size=64, max_size=64, **kw)
    if kind == "retinanet":
        torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 0.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per kind: (model file, .onnx, .torchscript.pt)."""
    root = tmp_path_factory.mktemp("export")
    files = {}
    for kind in KINDS:
        path = save_detector(tiny(kind), root / f"{kind}.safetensors", {"score_threshold": 0.4})
        files[kind] = (path, export_model(path, "onnx"), export_model(path, "torchscript"))
    return files


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic colonoscopy frames of three sizes, resized by non-round factors. 98 x 50 is a size where a
    float32 scale gives another resized width than eager's double one (64 instead of 63)."""
    root = tmp_path_factory.mktemp("frames")
    paths = []
    for k, (w, h) in enumerate(((96, 80), (70, 100), (98, 50))):
        summary = generate(root / str(k), SynthOptions(videos=1, frames=3, width=w, height=h, mp4=False))
        paths += sorted((summary.frames_dir / "synth_000").glob("*.jpg"))
    return paths


@pytest.mark.slow  # ~10 s with the exports on a 2-core CPU; the equivalence check the exports rest on
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_and_torchscript_give_the_eager_boxes(kind, exported, images):
    model, onnx, ts = exported[kind]
    for threshold in (0.3, 0.5):
        report = compare_backends(model, images, onnx, ts, threshold)
        print(kind, threshold, json.dumps(report))  # the numbers, for the record (pytest -s)
        eager = report["backends"]["torch"]["detections"]
        assert eager > 0
        for name in ("onnxruntime", "torchscript"):
            r = report["backends"][name]
            assert r["ok"], (name, r)
            assert r["min_iou"] >= 0.99 and r["max_score_diff"] <= 1e-3 and r["unmatched"] == 0
            if threshold == 0.3:  # no score near this threshold: the counts are equal image by image
                assert r["count_mismatch_images"] == 0 and r["detections"] == eager


def dets(boxes, scores) -> dict[str, np.ndarray]:
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": np.asarray(scores, np.float64),
            "labels": np.ones(len(scores), np.int64)}  # fmt: skip


def test_compare_outputs_tells_tie_swaps_from_moved_boxes():
    a, b = [0, 0, 40, 40], [100, 100, 140, 140]
    shifted = [4, 0, 44, 40]  # IoU 36/44 = 0.82 with a: above NMS's 0.5, so NMS keeps one of a and shifted
    far = [20, 0, 60, 40]  # IoU 1/3 with a: NMS keeps both, so a backend that returns it instead moved a box
    same = compare_outputs(dets([a, b], [0.8, 0.6]), dets([a, b], [0.8, 0.6]), 0.5)
    assert same["min_iou"] == 1.0 and same["tie_swaps"] == same["unmatched"] == same["boundary"] == 0
    tie = compare_outputs(dets([a, b], [0.8, 0.6]), dets([shifted, b], [0.8, 0.6]), 0.5)
    assert tie["tie_swaps"] == 1 and tie["min_iou"] == 1.0 and tie["max_score_diff"] == 0.0
    moved = compare_outputs(dets([a, b], [0.8, 0.6]), dets([shifted, b], [0.7, 0.6]), 0.5)  # not a tie
    assert moved["tie_swaps"] == 0 and moved["min_iou"] == pytest.approx(36 / 44)
    apart = compare_outputs(dets([a, b], [0.8, 0.6]), dets([far, b], [0.8, 0.6]), 0.5)
    assert apart["tie_swaps"] == 0 and apart["min_iou"] == pytest.approx(1 / 3)
    # a lone box on the threshold is a boundary box; one clear of it is unmatched
    lone = compare_outputs(dets([a, b], [0.8, 0.5003]), dets([a], [0.8]), 0.5, tol=1e-3)
    assert lone["boundary"] == 1 and lone["unmatched"] == 0
    lone = compare_outputs(dets([a, b], [0.8, 0.6]), dets([a], [0.8]), 0.5, tol=1e-3)
    assert lone["boundary"] == 0 and lone["unmatched"] == 1 and lone["count_ref"] == 2


def test_exports_carry_the_inference_metadata(exported):
    model, onnx, ts = exported["faster_rcnn"]
    _, onnx_meta = load_onnx(onnx)
    _, ts_meta = load_torchscript(ts)
    for meta, fmt in ((onnx_meta, "fpsiam-detector-onnx/1"), (ts_meta, "fpsiam-detector-torchscript/1")):
        assert meta["format"] == fmt
        assert (meta["kind"], meta["arch"], meta["num_classes"]) == ("faster_rcnn", "resnet18", 2)
        assert (meta["min_size"], meta["max_size"], meta["score_threshold"]) == (64, 64, 0.4)
        assert len(meta["image_mean"]) == len(meta["image_std"]) == 3
        assert meta["source_model"] == model.name and len(meta["source_sha256"]) == 64
    assert onnx_meta["input"]["size"] is None  # dynamic height and width
    detector = Detector.load(onnx)
    assert detector.backend == "onnxruntime" and detector.threshold == 0.4
    assert Detector.load(ts).backend == "torchscript"


def test_fixed_size_onnx_letterboxes_other_frames(exported, images, tmp_path):
    model, _, _ = exported["retinanet"]
    onnx = export_model(model, "onnx", tmp_path / "fixed.onnx", size=64)
    fixed = Detector.load(onnx, threshold=0.3)
    assert fixed.meta["input"]["size"] == [64, 64]
    square = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    eager = Detector.load(model, device="cpu", threshold=0.3)
    np.testing.assert_allclose(fixed.predict(square)[0]["boxes"], eager.predict(square)[0]["boxes"], atol=1e-3)
    out = fixed.predict(str(images[0]))[0]  # 96 x 80: letterboxed into 64 x 64, boxes back in the frame's pixels
    assert len(out["boxes"]) > 0
    assert (out["boxes"] >= 0).all() and (out["boxes"][:, 2] <= 96).all() and (out["boxes"][:, 3] <= 80).all()


@pytest.mark.parametrize(
    ("kind", "box_loss", "head_norm"), [("faster_rcnn", "smooth_l1", "gn"), ("retinanet", "l1", "gn")]
)
def test_other_recipes_script_too(kind, box_loss, head_norm, tmp_path):
    path = save_detector(tiny(kind, box_loss=box_loss, head_norm=head_norm), tmp_path / "m.safetensors")
    ts = export_model(path, "torchscript")
    image = torch.rand(3, 80, 96, generator=torch.Generator().manual_seed(0))
    a = Detector.load(path, device="cpu").infer([image])[0]
    b = Detector.load(ts, device="cpu").infer([image])[0]
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)


def test_export_errors_are_one_line(exported, tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    model, onnx, _ = exported["retinanet"]
    with pytest.raises(FpsiamError, match="export format 'tflite'"):
        export_model(model, "tflite")
    with pytest.raises(FpsiamError, match="opset >= 16"):
        export_model(model, "onnx", tmp_path / "m.onnx", opset=9)
    with pytest.raises(FpsiamError, match="does not exist"):
        export_model(model, "onnx", tmp_path / "no" / "m.onnx")
    with pytest.raises(FpsiamError, match="only for ONNX"):
        export_model(model, "torchscript", tmp_path / "m.pt", size=64)
    backbone = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18().state_dict().items()}, str(backbone))
    with pytest.raises(FpsiamError, match="backbone weights file"):
        export_model(backbone, "onnx", tmp_path / "b.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.safetensors"]  # nothing half-written

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(FpsiamError, match="junk.onnx: not a loadable ONNX model"):
        Detector.load(junk)
    foreign = tmp_path / "foreign.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), str(foreign))
    with pytest.raises(FpsiamError, match="foreign.torchscript.pt: no fpsiam metadata"):
        Detector.load(foreign)

    # an export of another model is caught before comparing
    other = save_detector(tiny("retinanet", head_norm="gn"), tmp_path / "other.safetensors")
    with pytest.raises(FpsiamError, match="exported from another model file"):
        compare_backends(other, [torch.rand(3, 64, 64)], onnx, None, 0.5)
