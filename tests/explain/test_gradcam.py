"""CAMs of backbones and detectors, the in-box energy metric, overlays and ``fpsiam gradcam`` (tiny models)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fpsiam.data.cocojson import new_coco, save_coco
from fpsiam.detect.models import build_detector, save_detector
from fpsiam.errors import FpsiamError
from fpsiam.explain import gradcam as G
from fpsiam.ssl.encoders import build_resnet

H, W = 64, 80


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core CPU: one intra-op thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fast(model):
    """Fewer RPN proposals so that a CPU forward/backward takes a fraction of a second."""
    if hasattr(model, "rpn"):
        model.rpn._pre_nms_top_n = {"training": 200, "testing": 100}
        model.rpn._post_nms_top_n = {"training": 64, "testing": 32}
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two frames with boxes and one without, their COCO json, and ResNet-18 weights files."""
    root = tmp_path_factory.mktemp("gradcam")
    rng = np.random.default_rng(0)
    (root / "frames").mkdir()
    sizes = [(H, W), (48, 56), (H, W)]
    images, annotations = [], []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "frames" / f"f{i}.png")
        images.append({"id": i + 1, "file_name": f"frames/f{i}.png", "width": w, "height": h})
    annotations.append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 25]})
    annotations.append({"id": 2, "image_id": 2, "category_id": 1, "bbox": [30, 8, 20, 30]})
    save_coco(root / "ann.json", new_coco(images, annotations))  # image 3 has no box

    seeded = G.load_backbone_net("random", "resnet18")[0].state_dict()
    save_file(seeded, str(root / "same_as_random.safetensors"))
    torch.manual_seed(1)
    save_file(build_resnet("resnet18").state_dict(), str(root / "r18.safetensors"))
    save_file({"head.weight": torch.zeros(2, 2)}, str(root / "unrelated.safetensors"))
    return root


@pytest.fixture(scope="module")
def frcnn():
    torch.manual_seed(0)
    return fast(build_detector("faster_rcnn", "resnet18", min_size=64, max_size=64))


@pytest.fixture(scope="module")
def retina():
    torch.manual_seed(0)
    return build_detector("retinanet", "resnet18", min_size=64, max_size=64)


def frames(files):
    return [files / "frames" / "f0.png", files / "frames" / "f1.png"]


# ------------------------------------------------------------------------------------------ the metric


def test_energy_of_a_cam_on_the_box():
    cam = np.zeros((40, 60))
    cam[20:, 30:] = 1.0  # bottom-right quarter
    result = G.cam_box_energy(cam, [[30, 20, 60, 40]])
    assert result == {"energy_in_box": 1.0, "peak_in_box": True, "box_area_fraction": 0.25}
    off = G.cam_box_energy(cam, torch.tensor([[0.0, 0.0, 30.0, 20.0]]))
    assert off["energy_in_box"] == 0.0 and off["peak_in_box"] is False


def test_uniform_cam_scores_the_chance_level():
    cam = np.full((40, 60), 0.3)
    boxes = [[30, 20, 60, 40], [30, 20, 60, 40], [0, 0, 6, 4]]  # duplicates count once (union)
    result = G.cam_box_energy(cam, boxes)
    assert result["box_area_fraction"] == pytest.approx((600 + 24) / 2400)
    assert result["energy_in_box"] == pytest.approx(result["box_area_fraction"])


def test_energy_edge_cases():
    zero = G.cam_box_energy(np.zeros((10, 10)), [[0, 0, 5, 5]])
    assert zero == {"energy_in_box": 0.0, "peak_in_box": False, "box_area_fraction": 0.25}
    no_boxes = G.cam_box_energy(np.ones((10, 10)), np.zeros((0, 4)))
    assert no_boxes == {"energy_in_box": 0.0, "peak_in_box": False, "box_area_fraction": 0.0}
    # pixel centres decide: a box from 0.6 to 1.4 holds no pixel centre (0.5 or 1.5)
    assert G.box_mask((3, 3), [[0.6, 0.6, 1.4, 1.4]]).sum() == 0
    with pytest.raises(ValueError):
        G.cam_box_energy(-np.ones((4, 4)), [[0, 0, 2, 2]])
    summary = G.summarise_energy(
        [
            {"energy_in_box": 0.5, "peak_in_box": True, "box_area_fraction": 0.25},
            {"energy_in_box": 0.1, "peak_in_box": False, "box_area_fraction": 0.25},
        ]
    )
    assert summary["mean_energy_in_box"] == pytest.approx(0.3)
    assert summary["peak_in_box_rate"] == 0.5 and summary["n_frames"] == 2
    assert summary["energy_over_chance"] == pytest.approx(1.2)
    assert G.summarise_energy([])["n_frames"] == 0


def test_eigencam_sign_follows_the_activations(monkeypatch):
    """Whatever sign the SVD returns, the map is high where the features fire."""
    act = np.full((1, 4, 6, 6), 0.1, dtype=np.float32)
    act[0, :, 1:3, 3:5] = 2.0  # a hot blob
    original = G.get_2d_projection
    for flip in (1.0, -1.0):
        monkeypatch.setattr(G, "get_2d_projection", lambda a, flip=flip: flip * original(a))
        cam = G.SignedEigenCAM.get_cam_image(None, None, None, None, act.copy(), None, False)
        assert np.unravel_index(np.argmax(cam[0]), (6, 6)) in {(r, c) for r in (1, 2) for c in (3, 4)}


# ------------------------------------------------------------------------------------------ backbones


def test_backbone_cams_random_and_from_a_file(files):
    images = frames(files) + [(torch.rand(3, 50, 70) * 255).byte()]
    cams = G.backbone_cams("random", images, arch="resnet18")
    assert [c.shape for c in cams] == [(H, W), (48, 56), (50, 70)]
    for cam in cams:
        assert cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0.5
    # the weights file is really loaded: the seeded random net's weights give its CAMs, others do not
    same = G.backbone_cams(files / "same_as_random.safetensors", images[:1], arch="resnet18")
    other = G.backbone_cams(str(files / "r18.safetensors"), images[:1], arch="resnet18", size=64)
    np.testing.assert_allclose(same[0], cams[0], atol=1e-6)
    assert other[0].shape == (H, W) and np.abs(other[0] - cams[0]).max() > 0.05
    grad = G.backbone_cams("random", images[:1], arch="resnet18", method="gradcam")
    assert grad[0].shape == (H, W) and grad[0].min() >= 0 and grad[0].max() <= 1


def test_backbone_weights_that_do_not_fit_fail_loudly(files):
    with pytest.raises(FpsiamError, match=r"r18\.safetensors.*resnet18.*arch is resnet50"):
        G.backbone_cams(files / "r18.safetensors", frames(files)[:1], arch="resnet50")
    with pytest.raises(FpsiamError, match=r"unrelated\.safetensors.*match"):
        G.backbone_cams(files / "unrelated.safetensors", frames(files)[:1], arch="resnet18")
    with pytest.raises(FpsiamError, match="nowhere.pth"):
        G.backbone_cams(files / "nowhere.pth", frames(files)[:1], arch="resnet18")


def test_bad_images_are_named(files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(FpsiamError, match="broken.png"):
        G.backbone_cams("random", [broken], arch="resnet18")
    with pytest.raises(FpsiamError, match="missing.jpg"):
        G.backbone_cams("random", [tmp_path / "missing.jpg"], arch="resnet18")


# ------------------------------------------------------------------------------------------ detectors


def test_faster_rcnn_gradcam_explains_its_detections(files, frcnn):
    results = G.detector_cams(frcnn, frames(files), score_threshold=0.0)
    for (cam, pred), shape in zip(results, [(H, W), (48, 56)], strict=True):
        assert cam.shape == shape and cam.min() >= 0 and cam.max() == pytest.approx(1, abs=1e-5)
        assert pred["method"] == "gradcam" and pred["note"] == ""
        assert pred["boxes"].shape == (len(pred["scores"]), 4) and len(pred["scores"]) > 0
        assert (pred["boxes"][:, 2] <= shape[1] + 1e-3).all() and (pred["boxes"][:, 3] <= shape[0] + 1e-3).all()
    assert frcnn.roi_heads.score_thresh == 0.05  # the lowered test threshold is restored


def test_no_detections_give_a_zero_cam_and_a_note(files, frcnn):
    [(cam, pred)] = G.detector_cams(frcnn, frames(files)[:1], score_threshold=1.01)
    assert cam.shape == (H, W) and not cam.any()
    assert len(pred["boxes"]) == 0 and "no detections" in pred["note"]


def test_retinanet_eigencam_and_gradcam(files, retina):
    # untrained RetinaNet scores ~0.01: nothing above 0.3, yet EigenCAM still explains the features
    [(cam, pred)] = G.detector_cams(retina, frames(files)[:1])
    assert pred["method"] == "eigencam" and len(pred["boxes"]) == 0 and cam.max() > 0.5
    [(cam, pred)] = G.detector_cams(retina, frames(files)[1:], score_threshold=0.0, mode="gradcam")
    assert pred["method"] == "gradcam" and len(pred["boxes"]) > 0 and cam.shape == (48, 56)
    assert retina.score_thresh == 0.05


def test_padding_is_cropped_from_the_feature_map(frcnn):
    # 64 x 40 frame: not resized (fits 64 x 64), padded to 64 x 64 -> keep ceil(8 * 40 / 64) = 5 of 8 columns
    crop = G._crop_padding(frcnn, torch.rand(3, 64, 40))
    assert crop(torch.zeros(1, 2, 12, 8)).shape == (1, 2, 12, 5)


# ------------------------------------------------------------------------------------------ drawing


def test_overlay_draws_true_and_predicted_boxes(tmp_path):
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    cam = np.zeros((40, 60), dtype=np.float32)
    drawn = G.overlay(image, cam, pred_boxes=[[30, 5, 50, 25]], true_boxes=[[2, 10, 20, 30]], scores=[0.9])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert tuple(drawn[20, 2]) == G.TRUE_COLOUR and tuple(drawn[15, 30]) == G.PRED_COLOUR
    path = G.save_png(tmp_path / "o.png", drawn)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), drawn)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temp file left behind
    with pytest.raises(ValueError):
        G.overlay(image, np.zeros((10, 10)))


# ------------------------------------------------------------------------------------------ the command


def test_gradcam_command_on_a_coco_json_with_a_backbone(files, tmp_path):
    summary = G.gradcam_command("random", str(files / "ann.json"), tmp_path / "out", arch="resnet18")
    assert summary["model_kind"] == "backbone" and summary["method"] == "eigencam"
    assert summary["images"] == 2  # the frame without boxes is left out
    assert [Path(p).name for p in summary["overlays"]] == ["f0.png", "f1.png"]
    assert np.asarray(Image.open(summary["overlays"][1])).shape == (48, 56, 3)
    energy = json.loads((tmp_path / "out" / "cam_energy.json").read_text())
    assert energy["energy"]["n_frames"] == 2 and len(energy["per_frame"]) == 2
    for record in energy["per_frame"]:
        assert 0 <= record["energy_in_box"] <= 1 and 0 < record["box_area_fraction"] < 1
    assert energy["per_frame"][0]["box_area_fraction"] == pytest.approx(30 * 25 / (H * W))
    # the runner's entry point measures the same thing on the same (first) frames
    result = G.evaluate_cams("random", files / "ann.json", arch="resnet18", max_images=1)
    assert result["n_frames"] == 1 and result["method"] == "eigencam"
    assert result["mean_energy_in_box"] == pytest.approx(energy["per_frame"][0]["energy_in_box"], abs=1e-6)


def test_gradcam_command_with_a_detector_file_on_a_folder(files, tmp_path, retina):
    model_file = save_detector(retina, tmp_path / "best.safetensors")
    summary = G.gradcam_command(
        str(model_file), str(files / "frames"), tmp_path / "out", ann=str(files / "ann.json"), max_images=2
    )
    assert summary["model_kind"] == "retinanet" and summary["method"] == "eigencam"
    assert [Path(p).name for p in summary["overlays"]] == ["f0.png", "f1.png"]
    assert summary["energy"]["n_frames"] == 2  # boxes matched from the json by path
    assert 0 <= summary["energy"]["mean_energy_in_box"] <= 1


def test_gradcam_command_rejects_bad_inputs(files, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FpsiamError, match="empty.*no images"):
        G.gradcam_command("random", str(empty), tmp_path / "out", arch="resnet18")
    with pytest.raises(FpsiamError, match=r"unrelated\.safetensors: not a detector file"):
        G.gradcam_command(str(files / "unrelated.safetensors"), str(files / "frames"), tmp_path / "out")
    with pytest.raises(FpsiamError, match="mode"):
        G.gradcam_command("random", str(files / "frames"), tmp_path / "out", mode="lime")
    missing = tmp_path / "missing.json"
    save_coco(
        missing,
        new_coco([{"id": 1, "file_name": "gone.png"}], [{"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5]}]),
    )
    with pytest.raises(FpsiamError, match="gone.png"):
        G.gradcam_command("random", str(missing), tmp_path / "out", arch="resnet18")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


# ------------------------------------------------------------------------------------------ real frames


def test_kvasir_frames(tmp_path):
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        pytest.skip("FPSIAM_KVASIR not set: point it at a Kvasir-SEG folder to run the real-data CAM check")
    root = Path(root)
    boxes = json.loads((root / "kavsir_bboxes.json").read_text())
    ids = (root / "test.txt").read_text().split()[:3]
    images, annotations = [], []
    for i, name in enumerate(ids, start=1):
        entry = boxes[name]
        images.append({"id": i, "file_name": f"{name}.jpg", "width": entry["width"], "height": entry["height"]})
        for b in entry["bbox"]:
            bbox = [b["xmin"], b["ymin"], b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "bbox": bbox})
    save_coco(tmp_path / "kvasir.json", new_coco(images, annotations))
    result = G.evaluate_cams("random", tmp_path / "kvasir.json", root / "images", arch="resnet18", size=160)
    assert result["n_frames"] == 3 and 0 <= result["mean_energy_in_box"] <= 1
    assert 0 < result["mean_box_area_fraction"] < 1 and 0 <= result["peak_in_box_rate"] <= 1
