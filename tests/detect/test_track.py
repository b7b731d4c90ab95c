"""The IoU tracker with k-of-n hysteresis (fpsiam.detect.track) on hand-made detection sequences."""

from __future__ import annotations

import numpy as np
import pytest

from fpsiam.detect.evaluate import clinical_metrics
from fpsiam.detect.track import TrackConfig, Tracker, box_iou, match_boxes, smooth_results, track_sequence
from fpsiam.errors import FpsiamError

POLYP = [40.0, 40.0, 80.0, 90.0]
OTHER = [150.0, 30.0, 190.0, 70.0]


def moved(box, dx):
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def frames_of(*per_frame):
    """Each argument: a list of (box, score) for one frame -> (boxes, scores) arrays."""
    out = []
    for dets in per_frame:
        boxes = np.array([b for b, _ in dets], np.float64).reshape(-1, 4)
        out.append((boxes, np.array([s for _, s in dets], np.float64)))
    return out


def test_flicker_is_suppressed_and_a_steady_polyp_reported_after_k_frames():
    seq = [[(moved(POLYP, t), 0.9)] for t in range(10)]
    seq[2].append(([200.0, 150.0, 230.0, 180.0], 0.95))  # one-frame false positives
    seq[6].append(([10.0, 150.0, 40.0, 190.0], 0.8))
    seq[7].append(([12.0, 150.0, 42.0, 190.0], 0.8))  # two frames in a row: still < k = 3
    out = track_sequence(frames_of(*seq), TrackConfig(k=3, n=5, hold=2))
    counts = [len(f.boxes) for f in out]
    assert counts == [0, 0] + [1] * 8  # switched on at the 3rd match; every flicker dropped
    ids = {int(f.track_ids[0]) for f in out[2:]}
    assert len(ids) == 1
    np.testing.assert_allclose(out[9].boxes[0], moved(POLYP, 9))  # the track follows the polyp
    assert not any(f.held.any() for f in out)


def test_dropouts_are_bridged_for_hold_frames_with_the_last_box():
    present = [t for t in range(12) if t not in (6, 7)]
    seq = [[(moved(POLYP, t), 0.9)] if t in present else [] for t in range(12)]
    out = track_sequence(frames_of(*seq), TrackConfig(k=2, n=3, hold=2))
    assert [len(f.boxes) for f in out] == [0] + [1] * 11
    assert [bool(f.held[0]) for f in out[1:]] == [False] * 5 + [True, True] + [False] * 4
    np.testing.assert_allclose(out[6].boxes[0], moved(POLYP, 5))  # carried from the last match
    np.testing.assert_allclose(out[7].boxes[0], moved(POLYP, 5))
    assert len({int(f.track_ids[0]) for f in out[1:]}) == 1  # the same polyp throughout

    # a gap longer than hold ends the track: the polyp comes back as a new track, after k frames again
    short = track_sequence(frames_of(*seq), TrackConfig(k=2, n=3, hold=1))
    assert [len(f.boxes) for f in short] == [0] + [1] * 6 + [0, 0, 1, 1, 1]
    assert int(short[9].track_ids[0]) != int(short[5].track_ids[0])


def test_two_polyps_keep_their_own_tracks():
    near = [85.0, 40.0, 125.0, 90.0]  # beside POLYP, IoU 0
    seq = []
    for t in range(8):
        dets = [(moved(POLYP, t), 0.9), (moved(near, -t), 0.7)]
        seq.append(dets[::-1] if t % 2 else dets)  # detection order must not matter
    out = track_sequence(frames_of(*seq), TrackConfig(k=2, n=2, hold=0))
    assert len(out[0].boxes) == 0

    def by_id(f):
        return {int(i): b for i, b in zip(f.track_ids, f.boxes, strict=True)}

    ids = by_id(out[1])
    polyp_id = next(i for i, b in ids.items() if np.allclose(b, moved(POLYP, 1)))
    near_id = next(i for i, b in ids.items() if np.allclose(b, moved(near, -1)))
    assert polyp_id != near_id
    for t in range(1, 8):
        boxes = by_id(out[t])
        assert sorted(boxes) == sorted([polyp_id, near_id])
        np.testing.assert_allclose(boxes[polyp_id], moved(POLYP, t))
        np.testing.assert_allclose(boxes[near_id], moved(near, -t))


def test_passthrough_and_score_ema():
    seq = frames_of([(POLYP, 0.8), (OTHER, 0.6)], [(POLYP, 0.4)], [])
    out = track_sequence(seq, TrackConfig(k=1, n=1, hold=0, smoothing=0.0))
    assert [len(f.boxes) for f in out] == [2, 1, 0]
    np.testing.assert_allclose(sorted(out[0].scores), [0.6, 0.8])
    assert out[1].scores[0] == pytest.approx(0.4)

    ema = track_sequence(
        frames_of([(POLYP, 1.0)], [(POLYP, 0.0)], [(POLYP, 0.0)]), TrackConfig(k=1, n=1, smoothing=0.5)
    )
    assert [float(f.scores[0]) for f in ema] == pytest.approx([1.0, 0.5, 0.25])


def test_score_threshold_and_labels():
    tracker = Tracker(TrackConfig(k=1, n=1, hold=0, score_threshold=0.5))
    assert len(tracker.update([POLYP, OTHER], [0.9, 0.3]).boxes) == 1
    # a detection of another class never continues a track
    tracker = Tracker(TrackConfig(k=1, n=1, hold=1))
    a = tracker.update([POLYP], [0.9], [1])
    b = tracker.update([POLYP], [0.9], [2])
    assert int(a.track_ids[0]) not in b.track_ids[~b.held].tolist()


def test_hungarian_maximises_total_iou_where_greedy_does_not():
    iou = np.array([[0.9, 0.8], [0.7, 0.0]])
    assert sorted(match_boxes(iou, 0.3, "hungarian")) == [(0, 1), (1, 0)]
    assert match_boxes(iou, 0.3, "greedy") == [(0, 0)]
    assert match_boxes(np.zeros((0, 3)), 0.3) == []
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])).tolist() == [
        [pytest.approx(1 / 3), 0.0]
    ]


def test_bad_settings_are_one_line_errors():
    for bad in (dict(k=4, n=3), dict(iou=0.0), dict(hold=-1), dict(smoothing=1.0), dict(matcher="x")):
        with pytest.raises(FpsiamError, match="tracking: "):
            TrackConfig(**bad).check()


def test_smooth_results_offline_feeds_the_per_polyp_metrics():
    """COCO results of two videos (plus a still) smoothed offline: flicker FPs go, polyps stay detected."""
    images, anns, results = [], [], []
    for v in ("a", "b"):
        for t in range(10):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{v}/{t}.jpg", "video_id": v, "frame_index": t})
            box = [40.0 + t, 40.0, 40.0, 50.0]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "bbox": box, "track_id": 1})
            if t != 5:  # a one-frame dropout of the detector
                results.append({"image_id": image_id, "category_id": 1, "bbox": box, "score": 0.9})
            if t == 3:  # a one-frame false positive
                results.append({"image_id": image_id, "category_id": 1, "bbox": [150, 150, 20, 20], "score": 0.9})
    gt = {"images": images, "annotations": anns}
    still = {"image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.7}

    config = TrackConfig(k=2, n=3, hold=2)
    assert smooth_results([*images, {"id": 99, "file_name": "still.jpg"}], [still], config) == [still]  # passes
    smoothed = smooth_results(list(reversed(images)), results, config)
    assert {r["image_id"] for r in smoothed if r["held"]} == {6, 16}  # frame 5 of each video, bridged
    raw = clinical_metrics(gt, results)["at_fixed"]
    after = clinical_metrics(gt, smoothed)["at_fixed"]
    assert (raw["fp"], after["fp"]) == (2, 0)  # the one-frame false positives are gone
    assert raw["fn"] == 2 and after["fn"] == 2  # frame 5 bridged, but frame 0 is reported from the k-th frame ...
    assert after["per_polyp"]["detected"] == 2
    assert [p["frames_to_detection"] for p in after["per_polyp"]["per_polyp"]] == [1, 1]  # ... one frame late

    with pytest.raises(FpsiamError, match="frame_index"):
        smooth_results([{"id": 1, "video_id": "a"}], [])
