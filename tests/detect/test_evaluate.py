"""COCO AP through pycocotools, clinical per-frame / per-polyp metrics, result conversion."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
import torch

from fpsiam.detect.evaluate import (
    COCO_STATS,
    clinical_metrics,
    coco_metrics,
    predictions_to_coco,
    write_results,
)
from fpsiam.errors import FpsiamError

CATS = [{"id": 1, "name": "polyp"}]


def coco(images, annotations):
    anns = []
    for k, a in enumerate(annotations):
        a = {"id": k + 1, "category_id": 1, "iscrowd": 0, **a}
        a["area"] = a["bbox"][2] * a["bbox"][3]
        anns.append(a)
    return {"images": images, "annotations": anns, "categories": CATS}


def img(i, **kw):
    return {"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480, **kw}


def pred(image_id, bbox, score):
    return {"image_id": image_id, "category_id": 1, "bbox": list(bbox), "score": score}


# ---------------------------------------------------------------------------------------------- COCO


@pytest.fixture
def coco_case():
    # Boxes of all three COCO sizes (small < 32^2 <= medium < 96^2 <= large).
    gt = coco(
        [img(1), img(2), img(3)],
        [
            {"image_id": 1, "bbox": [10, 10, 20, 20]},
            {"image_id": 1, "bbox": [100, 100, 60, 50]},
            {"image_id": 2, "bbox": [200, 150, 150, 120]},
            {"image_id": 3, "bbox": [5, 5, 25, 25]},
        ],
    )
    preds = [
        pred(1, [11, 11, 20, 19], 0.95),
        pred(1, [105, 98, 60, 55], 0.6),
        pred(1, [300, 300, 40, 40], 0.7),
        pred(2, [210, 160, 150, 110], 0.8),
        pred(2, [0, 0, 50, 50], 0.2),
        pred(3, [30, 30, 25, 25], 0.9),
    ]
    return gt, preds


def test_coco_metrics_equals_cocoeval_run_directly(coco_case):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, preds = coco_case
    ours = coco_metrics(gt, preds)
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(preds))
        ev = COCOeval(cg, cd, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert list(ours) == list(COCO_STATS)
    assert [ours[k] for k in COCO_STATS] == pytest.approx([float(v) for v in ev.stats], abs=1e-12)
    assert 0.0 < ours["mAP"] < 1.0  # a non-trivial case
    assert preds[0] == pred(1, [11, 11, 20, 19], 0.95)  # inputs left untouched (loadRes mutates its input)


def test_coco_metrics_is_quiet_unless_verbose(coco_case, capsys):
    gt, preds = coco_case
    coco_metrics(gt, preds)
    assert capsys.readouterr().out == ""
    coco_metrics(gt, preds, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_coco_metrics_perfect_and_empty(coco_case):
    gt, _ = coco_case
    perfect = [pred(a["image_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    m = coco_metrics(gt, perfect)
    assert m["mAP"] == pytest.approx(1.0)
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    assert m["AR100"] == pytest.approx(1.0)

    empty = coco_metrics(gt, [])
    assert empty["mAP"] == 0.0 and empty["AP50"] == 0.0 and empty["AR100"] == 0.0


def test_coco_metrics_undefined_is_minus_one():
    gt = coco([img(1)], [{"image_id": 1, "bbox": [0, 0, 200, 200]}])  # only a large box
    m = coco_metrics(gt, [pred(1, [0, 0, 200, 200], 0.9)])
    assert m["APl"] == pytest.approx(1.0)
    assert m["APs"] == -1.0 and m["APm"] == -1.0


def test_coco_metrics_bad_inputs(coco_case):
    gt, preds = coco_case
    with pytest.raises(FpsiamError, match="image id 99"):
        coco_metrics(gt, [*preds, pred(99, [0, 0, 5, 5], 0.5)])
    with pytest.raises(FpsiamError, match="empty test set"):
        coco_metrics({"images": [], "annotations": []}, [])
    with pytest.raises(FpsiamError, match="bbox"):
        coco_metrics(gt, [{"image_id": 1, "bbox": [0, 0, 5], "score": 0.5}])
    with pytest.raises(FpsiamError, match="score"):
        coco_metrics(gt, [{"image_id": 1, "bbox": [0, 0, 5, 5]}])


def test_predictions_to_coco_and_write_results(tmp_path):
    outputs = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
            "scores": torch.tensor([0.9, 0.3]),
            "labels": torch.tensor([1, 0]),  # label 0: background / unused sigmoid channel -> dropped
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    results = predictions_to_coco(outputs, [7, 8])
    assert results == [{"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 30.0, 40.0], "score": pytest.approx(0.9)}]
    path = tmp_path / "out" / "results.json"
    write_results(path, results)
    assert json.loads(path.read_text()) == results
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left behind
    with pytest.raises(ValueError):
        predictions_to_coco(outputs, [7])


# ------------------------------------------------------------------------------------------ clinical


@pytest.fixture
def frames_case():
    """4 frames, 3 GT boxes, frame 3 negative; 5 predictions (worked out by hand below)."""
    gt = coco(
        [img(1), img(2), img(3), img(4)],
        [
            {"image_id": 1, "bbox": [10, 10, 20, 20]},  # g1
            {"image_id": 2, "bbox": [50, 50, 20, 20]},  # g2
            {"image_id": 4, "bbox": [100, 100, 20, 20]},  # g3
        ],
    )
    preds = [
        pred(1, [10, 10, 20, 20], 0.9),  # TP (g1, IoU 1)
        pred(1, [12, 10, 20, 20], 0.8),  # FP: overlaps g1 (IoU 0.82) but g1 is already taken
        pred(2, [200, 200, 20, 20], 0.7),  # FP: misses g2
        pred(3, [5, 5, 30, 30], 0.6),  # FP on the negative frame
        pred(4, [105, 100, 20, 20], 0.4),  # TP (g3, IoU 300/500 = 0.6)
    ]
    return gt, preds


def test_clinical_counts_at_fixed_threshold(frames_case):
    gt, preds = frames_case
    m = clinical_metrics(gt, preds, iou=0.5, fixed_threshold=0.5)
    assert (m["frames"], m["negative_frames"], m["gt_boxes"], m["predictions"]) == (4, 1, 3, 5)
    f = m["at_fixed"]
    assert (f["tp"], f["fp"], f["fn"]) == (1, 3, 2)
    assert f["precision"] == pytest.approx(1 / 4)
    assert f["recall"] == pytest.approx(1 / 3)
    assert f["f1"] == pytest.approx(2 / 7)  # 2PR/(P+R) = 2*(1/4)(1/3)/(7/12)
    assert f["fp_per_frame"] == pytest.approx(3 / 4)
    assert f["per_polyp"] is None  # no video/track ids here
    assert "video_id" in m["per_polyp_note"]


def test_clinical_best_f1_and_pr_curve(frames_case):
    gt, preds = frames_case
    m = clinical_metrics(gt, preds)
    curve = m["pr_curve"]
    assert curve["thresholds"] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.4])
    assert curve["precision"] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    assert curve["recall"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert curve["f1"] == pytest.approx([1 / 2, 2 / 5, 1 / 3, 2 / 7, 1 / 2])
    best = m["at_best_f1"]
    # F1 0.5 at both 0.9 and 0.4: ties go to the highest threshold.
    assert best["threshold"] == pytest.approx(0.9)
    assert (best["tp"], best["fp"], best["fn"], best["f1"]) == (1, 0, 2, pytest.approx(0.5))
    low = clinical_metrics(gt, preds, fixed_threshold=0.4)["at_fixed"]
    assert (low["tp"], low["fp"], low["fn"]) == (2, 3, 1)
    assert low["fp_per_frame"] == pytest.approx(3 / 4)
    assert len(clinical_metrics(gt, preds, curve_points=2)["pr_curve"]["thresholds"]) == 2


def test_clinical_iou_threshold_and_greedy_best_iou():
    gt = coco([img(1)], [{"image_id": 1, "bbox": [10, 0, 10, 10]}, {"image_id": 1, "bbox": [12, 0, 10, 10]}])
    # The first prediction overlaps both boxes (IoU 0.74 and 0.90) and takes the better one, the second box;
    # the second prediction only fits the first box (IoU 0.54; 0.33 with the second), so both are TPs.
    preds = [pred(1, [11.5, 0, 10, 10], 0.9), pred(1, [7, 0, 10, 10], 0.8)]
    f = clinical_metrics(gt, preds, fixed_threshold=0.0)["at_fixed"]
    assert (f["tp"], f["fp"], f["fn"]) == (2, 0, 0)
    strict = clinical_metrics(gt, preds, iou=0.95, fixed_threshold=0.0)["at_fixed"]
    assert (strict["tp"], strict["fp"], strict["fn"]) == (0, 2, 2)


def test_clinical_no_gt_boxes_and_no_predictions(frames_case):
    gt, preds = frames_case
    negatives = {**gt, "annotations": []}
    m = clinical_metrics(negatives, preds, fixed_threshold=0.5)
    f = m["at_fixed"]
    assert f["recall"] is None
    assert (f["tp"], f["fp"], f["fn"]) == (0, 4, 0)
    assert f["fp_per_frame"] == pytest.approx(1.0)
    assert m["negative_frames"] == 4

    empty = clinical_metrics(gt, [])
    assert empty["at_best_f1"] is None
    e = empty["at_fixed"]
    assert (e["tp"], e["fp"], e["fn"], e["precision"], e["recall"], e["f1"]) == (0, 0, 3, None, 0.0, 0.0)
    assert empty["pr_curve"]["thresholds"] == []


def test_clinical_bad_inputs(frames_case):
    gt, preds = frames_case
    with pytest.raises(FpsiamError, match="empty test set"):
        clinical_metrics({"images": [], "annotations": []}, [])
    with pytest.raises(FpsiamError, match="image id 42"):
        clinical_metrics(gt, [*preds, pred(42, [0, 0, 1, 1], 0.5)], source="test.json")
    with pytest.raises(FpsiamError, match="test.json"):
        clinical_metrics(gt, [pred(42, [0, 0, 1, 1], 0.5)], source="test.json")
    with pytest.raises(FpsiamError, match="annotations"):
        clinical_metrics({"images": [img(1)]}, [])


@pytest.fixture
def videos_case():
    """Two videos. A: frames 0,5,10,15,20 (subsampled), polyp 1 in frames 5..20.
    B: frames 0..3, polyp 1 in all four frames, polyp 2 in frames 2 and 3. Image ids are not in frame order."""
    images, anns = [], []
    a_frames = [0, 5, 10, 15, 20]
    for k, f in enumerate(a_frames):
        iid = 100 - k  # descending ids
        images.append(img(iid, video_id="A", frame_index=f))
        if f >= 5:
            anns.append({"image_id": iid, "bbox": [10, 10, 40, 40], "track_id": 1})
    for f in range(4):
        iid = 200 + f
        images.append(img(iid, video_id="B", frame_index=f))
        anns.append({"image_id": iid, "bbox": [100, 100, 30, 30], "track_id": 1})
        if f >= 2:
            anns.append({"image_id": iid, "bbox": [300, 200, 50, 40], "track_id": 2})
    images.reverse()
    gt = coco(images, anns)
    preds = [
        pred(99, [10, 10, 40, 40], 0.3),  # A frame 5: low score
        pred(97, [12, 10, 40, 40], 0.9),  # A frame 15: first confident hit, 2 evaluated frames after frame 5
        pred(96, [10, 12, 40, 40], 0.8),  # A frame 20
        pred(200, [100, 100, 30, 30], 0.8),  # B polyp 1 at its first frame
        pred(203, [300, 10, 50, 40], 0.9),  # B frame 3: misses polyp 2
    ]
    return gt, preds


def test_per_polyp_detection_fraction_and_delay(videos_case):
    gt, preds = videos_case
    pp = clinical_metrics(gt, preds, fixed_threshold=0.5)["at_fixed"]["per_polyp"]
    assert pp["polyps"] == 3 and pp["detected"] == 2
    assert pp["detected_fraction"] == pytest.approx(2 / 3)
    by_id = {(r["video_id"], r["track_id"]): r for r in pp["per_polyp"]}
    assert by_id[("A", 1)]["frames_to_detection"] == 2  # frames 5 -> 15 = two evaluated frames (5, 10)
    assert by_id[("A", 1)]["first_frame"] == 5 and by_id[("A", 1)]["first_detection"] == 15
    assert by_id[("A", 1)]["detected_frames"] == 2
    assert by_id[("B", 1)]["frames_to_detection"] == 0
    assert by_id[("B", 2)]["frames_to_detection"] is None and by_id[("B", 2)]["detected_frames"] == 0
    assert pp["median_frames_to_detection"] == pytest.approx(1.0)  # median of [2, 0]

    low = clinical_metrics(gt, preds, fixed_threshold=0.2)["at_fixed"]["per_polyp"]
    assert low["median_frames_to_detection"] == pytest.approx(0.0)  # A is now hit at its first frame

    none = clinical_metrics(gt, [], fixed_threshold=0.5)["at_fixed"]["per_polyp"]
    assert none["detected"] == 0 and none["detected_fraction"] == 0.0 and none["median_frames_to_detection"] is None


def test_per_polyp_needs_track_ids(videos_case):
    gt, preds = videos_case
    gt = copy.deepcopy(gt)
    del gt["annotations"][0]["track_id"]
    m = clinical_metrics(gt, preds)
    assert m["at_fixed"]["per_polyp"] is None
    assert "track_id" in m["per_polyp_note"]
