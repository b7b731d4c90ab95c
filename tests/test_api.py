"""fpsiam.api.Detector: the five-line API over a tiny saved detector; model-file inference metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fpsiam.api import Detector
from fpsiam.detect.models import (
    DEFAULT_SCORE_THRESHOLD,
    IMAGE_MEAN,
    IMAGE_STD,
    build_detector,
    inference_meta,
    read_detector_meta,
    save_detector,
)
from fpsiam.errors import FpsiamError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny untrained RetinaNet with its classifier bias at 0, so it reports boxes (scores ~0.5)."""
    torch.manual_seed(0)
    model = build_detector("retinanet", "resnet18", min_size=64, max_size=64)
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 0.0)
    return save_detector(model, tmp_path_factory.mktemp("api") / "last.safetensors", {"score_threshold": 0.45})


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)


def test_five_lines(model_file, frame, tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(frame).save(path)
    det = Detector.load(model_file, device="cpu")
    out = det.predict([str(path), path, Image.fromarray(frame), frame, torch.from_numpy(frame).permute(2, 0, 1),
                       torch.from_numpy(frame).permute(2, 0, 1).float() / 255])  # fmt: skip
    assert len(out) == 6
    first = out[0]
    assert first["boxes"].dtype == np.float32 and first["boxes"].shape == (len(first["scores"]), 4)
    assert len(first["scores"]) > 0 and (first["scores"] >= 0.45).all() and (first["labels"] == 1).all()
    assert (first["boxes"][:, 2] <= 90).all() and (first["boxes"][:, 3] <= 70).all()  # the frame's own pixels
    for other in out[1:]:  # every input type is the same frame
        np.testing.assert_allclose(other["boxes"], first["boxes"], atol=1e-4)
        np.testing.assert_allclose(other["scores"], first["scores"], atol=1e-6)
    single = det.predict(frame)
    assert isinstance(single, list) and len(single) == 1
    np.testing.assert_allclose(single[0]["boxes"], first["boxes"], atol=1e-4)
    assert "retinanet resnet18" in repr(det) and det.backend == "torch"


def test_threshold_default_argument_and_older_files(model_file, frame, tmp_path):
    from safetensors.torch import load_file, save_file

    det = Detector.load(model_file, device="cpu")
    assert det.threshold == 0.45  # the model file's metadata
    counts = [len(det.predict(frame, threshold=t)[0]["scores"]) for t in (None, 0.5, 0.99)]
    assert counts[0] > counts[1] > counts[2] == 0  # the untrained model's scores are all close to 0.5
    assert Detector.load(model_file, device="cpu", threshold=0.2).threshold == 0.2

    # a file written before the inference keys existed: the defaults, and it still loads
    meta = read_detector_meta(model_file)
    for key in ("score_threshold", "image_mean", "image_std", "size_divisible"):
        meta.pop(key)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(model_file)), str(old), metadata={"fpsiam_detector": json.dumps(meta)})
    assert Detector.load(old, device="cpu").threshold == DEFAULT_SCORE_THRESHOLD == 0.5
    info = inference_meta(read_detector_meta(old))
    assert info["image_mean"] == pytest.approx(IMAGE_MEAN) and info["size_divisible"] == 32


def test_save_detector_records_what_inference_needs(model_file, tmp_path):
    meta = read_detector_meta(model_file)
    assert (meta["kind"], meta["arch"], meta["num_classes"], meta["min_size"], meta["max_size"]) == (
        "retinanet", "resnet18", 2, 64, 64)  # fmt: skip
    assert meta["image_mean"] == pytest.approx(IMAGE_MEAN) and meta["image_std"] == pytest.approx(IMAGE_STD)
    assert meta["score_threshold"] == 0.45 and meta["size_divisible"] == 32
    model = build_detector("faster_rcnn", "resnet18", min_size=64, max_size=64)
    assert read_detector_meta(save_detector(model, tmp_path / "d.safetensors"))["score_threshold"] == 0.5
    with pytest.raises(ValueError, match="score_threshold"):
        save_detector(model, tmp_path / "bad.safetensors", {"score_threshold": 2})
    with pytest.raises(ValueError, match="image_std"):
        save_detector(model, tmp_path / "bad.safetensors", {"image_std": [1, 1, 1]})


def test_onnx_file_runs_in_onnxruntime(model_file, frame):
    from fpsiam.detect.export import export_model

    onnx = export_model(model_file, "onnx")
    det = Detector.load(onnx)
    assert det.backend == "onnxruntime" and det.threshold == 0.45
    got, want = det.predict(frame)[0], Detector.load(model_file, device="cpu").predict(frame)[0]
    assert len(got["scores"]) == len(want["scores"]) > 0
    order_got, order_want = np.lexsort(got["boxes"].T), np.lexsort(want["boxes"].T)  # equal scores may swap
    np.testing.assert_allclose(got["boxes"][order_got], want["boxes"][order_want], atol=1e-3)


def test_bad_frames_and_arguments(model_file, frame):
    det = Detector.load(model_file, device="cpu")
    bad = [
        (frame.astype(np.float32), "uint8 RGB array"),
        (frame[..., :2], "H x W x 3"),
        (torch.rand(1, 3, 8, 8), r"\[3, H, W\] tensor"),
        (torch.rand(3, 8, 8) * 255, "0..1"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8 or float"),
        (42, "got int; pass a file path"),
        ("missing.jpg", "missing.jpg: image not found"),
    ]
    for value, message in bad:
        with pytest.raises(FpsiamError, match=message):
            det.predict([frame, value])
    with pytest.raises(FpsiamError, match="threshold=1.5"):
        det.predict(frame, threshold=1.5)
    with pytest.raises(FpsiamError, match="batch_size"):
        det.predict(frame, batch_size=0)
    with pytest.raises(FpsiamError, match="backend 'tensorrt'"):
        Detector.load(model_file, backend="tensorrt")
    with pytest.raises(FpsiamError, match="export it"):
        Detector.load(model_file, backend="onnxruntime")
    with pytest.raises(FpsiamError, match="not found"):
        Detector.load(model_file.with_name("nope.safetensors"))
