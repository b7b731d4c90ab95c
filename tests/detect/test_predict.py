"""fpsiam.detect.predict: images, COCO json, video files, truncated files, pipes and URLs -> OUT's files."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from fpsiam.api import Detector
from fpsiam.data.synthetic import SynthOptions, generate
from fpsiam.detect import predict as predict_mod
from fpsiam.detect.evaluate import clinical_metrics
from fpsiam.detect.export import compare_outputs
from fpsiam.detect.models import build_detector, save_detector
from fpsiam.detect.predict import Frame, predict_source
from fpsiam.detect.track import TrackConfig
from fpsiam.errors import FpsiamError

FRAMES = 16


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = generate(root, SynthOptions(videos=1, frames=FRAMES, width=96, height=80))
    return summary


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny RetinaNet whose classifier bias is 0: untrained, but it reports boxes (scores ~0.5)."""
    torch.manual_seed(0)
    model = build_detector("retinanet", "resnet18", min_size=64, max_size=64)
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 0.0)
    return save_detector(model, tmp_path_factory.mktemp("model") / "retina.safetensors", {"score_threshold": 0.3})


def remux(src: Path, dst: Path, movflags: str) -> Path:
    """Copy the packets of ``src`` into an mp4 with other ``movflags`` (faststart: index first; fragmented)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": movflags}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def arrays(line: dict) -> dict[str, np.ndarray]:
    """A frames.jsonl line as the arrays of a detector output."""
    return {
        "boxes": np.asarray(line["boxes"], np.float64).reshape(-1, 4),
        "scores": np.asarray(line["scores"], np.float64),
        "labels": np.asarray(line["labels"], np.int64),
    }


def decodable_frames(path: Path) -> int:
    """Frames decoded until the first error (predict skips a damaged packet and goes on: it gets at least these)."""
    n = 0
    with contextlib.suppress(av.FFmpegError), av.open(str(path)) as c:
        for _ in c.decode(video=0):
            n += 1
    return n


def check_outputs(out: Path, summary: dict, video: bool) -> list[dict]:
    """Every output is whole and consistent with the others; returns the jsonl lines."""
    lines = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == summary["frames"] == json.loads((out / "summary.json").read_text())["frames"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == sum(len(line["scores"]) for line in lines) == summary["detections"]
    for p in predictions:
        assert set(p) == {"image_id", "category_id", "bbox", "score"} and p["category_id"] == 1
    assert (out / "annotated.mp4").is_file() == video
    if video:
        assert decodable_frames(out / "annotated.mp4") == summary["frames"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    return lines


# ---------------------------------------------------------------------------------------------- video


def test_video_is_streamed_into_all_outputs(synth, model_file, tmp_path):
    out = tmp_path / "out"
    summary = predict_source(model_file, synth.mp4s[0], out, device="cpu", smooth=TrackConfig(k=2, n=3), batch_size=3)
    assert (summary["frames"], summary["frames_declared"], summary["dropped_frames"]) == (FRAMES, FRAMES, 0)
    assert summary["ended_early"] is False and summary["source_kind"] == "video"
    assert summary["backend"] == "torch" and summary["score_threshold"] == 0.3  # the model file's threshold
    assert summary["model_fps"] > 0 and summary["end_to_end_fps"] > 0 and summary["smoothing"]["k"] == 2
    lines = check_outputs(out, summary, video=True)
    assert [line["frame"] for line in lines] == list(range(FRAMES)) == [line["image_id"] for line in lines]
    assert lines[1]["time"] == pytest.approx(1 / 25)
    assert lines[0]["scores"] == [] and lines[1]["scores"]  # k=2: reported from the second frame on
    assert all(len(line["track_ids"]) == len(line["boxes"]) == len(line["held"]) for line in lines)


def test_video_boxes_are_the_api_boxes(synth, model_file, tmp_path):
    summary = predict_source(model_file, synth.mp4s[0], tmp_path / "out", device="cpu", write_video=False)
    lines = check_outputs(tmp_path / "out", summary, video=False)
    with av.open(str(synth.mp4s[0])) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    expected = Detector.load(model_file, device="cpu").predict(first)[0]
    np.testing.assert_allclose(lines[0]["boxes"], expected["boxes"], atol=0.01)
    np.testing.assert_allclose(lines[0]["scores"], expected["scores"], atol=1e-5)


def test_truncated_mp4_finishes_cleanly(synth, model_file, tmp_path):
    """Index first (faststart), second half missing: the frames that decode are processed and reported."""
    fast = remux(synth.mp4s[0], tmp_path / "fast.mp4", "faststart")
    half = tmp_path / "half.mp4"
    half.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    expected = decodable_frames(half)
    assert 0 < expected < FRAMES
    summary = predict_source(model_file, half, tmp_path / "out", device="cpu")
    assert expected <= summary["frames"] < FRAMES and summary["ended_early"] is True, summary
    assert "broke off" in summary["end_reason"] or "declares" in summary["end_reason"]
    check_outputs(tmp_path / "out", summary, video=True)


def test_pipe_whose_writer_stops_early(synth, model_file, tmp_path):
    """A fragmented mp4 fed through a fifo; the writer closes it half-way: the frames received are processed."""
    frag = remux(synth.mp4s[0], tmp_path / "frag.mp4", "empty_moov+frag_every_frame")
    data = frag.read_bytes()[: frag.stat().st_size // 2]
    (tmp_path / "half.mp4").write_bytes(data)
    expected = decodable_frames(tmp_path / "half.mp4")
    assert 0 < expected < FRAMES
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            for i in range(0, len(data), 1000):
                f.write(data[i : i + 1000])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    summary = predict_source(model_file, fifo, tmp_path / "out", device="cpu")
    writer.join(timeout=10)
    assert summary["source_kind"] == "pipe" and expected <= summary["frames"] < FRAMES, summary
    check_outputs(tmp_path / "out", summary, video=True)


# ---------------------------------------------------------------------------------------------- bad input


def test_undecodable_videos_leave_nothing(synth, model_file, tmp_path):
    half = tmp_path / "half.mp4"  # index at the end: nothing at all can be decoded
    half.write_bytes(synth.mp4s[0].read_bytes()[: synth.mp4s[0].stat().st_size // 2])
    junk = tmp_path / "junk.mkv"
    junk.write_bytes(b"\x00" * 5000)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for bad in (half, junk, empty):
        with pytest.raises(FpsiamError, match=bad.name) as info:
            predict_source(model_file, bad, tmp_path / "out", device="cpu")
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FpsiamError, match="no such file"):
        predict_source(model_file, tmp_path / "missing.mp4", tmp_path / "out", device="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_that_does_not_open(model_file, tmp_path):
    port = free_port()  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(FpsiamError, match=f"http://127.0.0.1:{port}/x.mp4: cannot open"):
        predict_source(model_file, f"http://127.0.0.1:{port}/x.mp4", tmp_path / "out", device="cpu")
    with pytest.raises(FpsiamError, match=r"rtsp://\*\*\*@127.0.0.1") as info:
        predict_source(model_file, f"rtsp://user:secret@127.0.0.1:{port}/live", tmp_path / "out", device="cpu")
    assert "secret" not in str(info.value)  # credentials never reach messages or summaries
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "out").exists()


def test_http_stream(synth, model_file, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(synth.mp4s[0].parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{synth.mp4s[0].name}"
        summary = predict_source(model_file, url, tmp_path / "out", device="cpu", max_frames=5)
    finally:
        server.shutdown()
        server.server_close()
    assert summary["source_kind"] == "url" and summary["frames"] == 5 and summary["ended_early"] is False
    assert "max_frames" in summary["end_reason"]
    check_outputs(tmp_path / "out", summary, video=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy ONNX exporter, for a foreign ONNX file
def test_wrong_model_files_and_output_folder(synth, model_file, tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    backbone = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18().state_dict().items()}, str(backbone))
    with pytest.raises(FpsiamError, match="backbone.safetensors.*backbone weights file"):
        predict_source(backbone, synth.mp4s[0], tmp_path / "out", device="cpu")

    other = tmp_path / "other.onnx"  # an ONNX model that is not an fpsiam export
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.rand(1, 3, 8, 8),), str(other), dynamo=False)
    with pytest.raises(FpsiamError, match="other.onnx: no fpsiam metadata"):
        predict_source(other, synth.mp4s[0], tmp_path / "out", device="cpu")
    with pytest.raises(FpsiamError, match="backend onnxruntime"):
        predict_source(model_file, synth.mp4s[0], tmp_path / "out", device="cpu", backend="onnxruntime")

    with pytest.raises(FpsiamError, match="parent folder .* does not exist"):
        predict_source(model_file, synth.mp4s[0], tmp_path / "no" / "such" / "out", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.safetensors", "other.onnx"]


# ---------------------------------------------------------------------------------------------- images


def test_images_folder_coco_json_and_one_image(synth, model_file, tmp_path):
    summary = predict_source(model_file, synth.annotations, tmp_path / "coco", device="cpu")
    assert summary["source_kind"] == "coco" and summary["frames"] == FRAMES
    lines = check_outputs(tmp_path / "coco", summary, video=False)
    coco = json.loads(synth.annotations.read_text())
    assert [line["image_id"] for line in lines] == [im["id"] for im in coco["images"]]
    assert lines[0]["file"] == coco["images"][0]["file_name"] and "time" not in lines[0]
    # predictions.json refers to the json's image ids: it evaluates against the json as it is
    predictions = json.loads((tmp_path / "coco" / "predictions.json").read_text())
    assert clinical_metrics(coco, predictions)["predictions"] == len(predictions)

    summary = predict_source(model_file, synth.frames_dir, tmp_path / "folder", device="cpu", batch_size=5)
    lines = check_outputs(tmp_path / "folder", summary, video=False)
    assert [line["file"] for line in lines][:2] == ["synth_000/00000.jpg", "synth_000/00001.jpg"]

    one = synth.frames_dir / "synth_000" / "00003.jpg"
    summary = predict_source(model_file, one, tmp_path / "one", device="cpu", score_threshold=0.9)
    assert summary["frames"] == 1 and summary["score_threshold"] == 0.9 and summary["source_kind"] == "image"
    check_outputs(tmp_path / "one", summary, video=False)


def test_onnx_backend_gives_the_torch_boxes(synth, model_file, tmp_path):
    from fpsiam.detect.export import export_model

    onnx = export_model(model_file, "onnx", tmp_path / "retina.onnx")
    ref = predict_source(model_file, synth.mp4s[0], tmp_path / "torch", device="cpu", write_video=False)
    got = predict_source(onnx, synth.mp4s[0], tmp_path / "ort", device="cpu", write_video=False)
    assert got["backend"] == "onnxruntime" and got["frames"] == ref["frames"] == FRAMES
    for a, b in zip(check_outputs(tmp_path / "torch", ref, False), check_outputs(tmp_path / "ort", got, False),
                    strict=True):  # fmt: skip
        a, b = arrays(a), arrays(b)
        # matched one-to-one; this untrained detector scores flat regions alike, so NMS may keep the other of
        # two equal-scored overlapping boxes (a tie swap, in about 1 run in 20): counted apart, and rare
        diff = compare_outputs(a, b, threshold=0.3, tol=1e-4, min_iou=0.999)
        assert diff["count_ref"] == diff["count_other"] > 0 and diff["unmatched"] == 0
        assert diff["min_iou"] >= 0.999 and diff["max_score_diff"] <= 1e-4
        assert diff["tie_swaps"] <= max(1, diff["count_ref"] // 20)


# ---------------------------------------------------------------------------------------------- pipeline


class FakeSource:
    """A long video of tiny frames, counting how many the pipeline took."""

    kind = "video"
    fps = 25.0
    declared_frames = None
    description = "fake"

    def __init__(self, n: int, live: bool = False) -> None:
        self.n, self.live, self.yielded = n, live, 0
        self.end_reason, self.ended_early = "end of the stream", False

    def frames(self):
        for i in range(self.n):
            self.yielded += 1
            yield Frame(i, torch.zeros(3, 8, 8, dtype=torch.uint8), i, time=i / 25)

    def close(self) -> None:
        pass


class FakeRunner:
    backend = "fake"

    def __init__(self, source: FakeSource, delay: float = 0.0, fail_at: int | None = None,
                 interrupt_at: int | None = None) -> None:  # fmt: skip
        self.source, self.delay, self.fail_at, self.interrupt_at = source, delay, fail_at, interrupt_at
        self.seen = self.calls = self.max_in_flight = 0

    def __call__(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("model failed")
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.seen += len(images)
        self.max_in_flight = max(self.max_in_flight, self.source.yielded - self.seen)
        time.sleep(self.delay)
        box = {"boxes": np.array([[1, 1, 5, 5]], np.float32), "scores": np.array([0.9], np.float32),
               "labels": np.array([1])}  # fmt: skip
        return [box for _ in images]


def run_fake(monkeypatch, tmp_path, source, runner, **kw):
    monkeypatch.setattr(predict_mod, "open_source", lambda src, images=None: source)
    return predict_source(Detector(runner, {"kind": "fake"}), "fake", tmp_path / "out", **kw)


def test_frames_in_flight_do_not_grow_with_the_video(monkeypatch, tmp_path):
    source = FakeSource(600)
    runner = FakeRunner(source)
    summary = run_fake(monkeypatch, tmp_path, source, runner, batch_size=4)
    assert summary["frames"] == 600 and summary["detections"] == 600
    # the reader is at most the input queue (2 batches) plus the frame in its hand ahead of the model
    assert runner.max_in_flight <= 2 * 4 + 1
    lines = (tmp_path / "out" / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 600 and len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 600


def test_live_source_drops_frames_instead_of_falling_behind(monkeypatch, tmp_path):
    source = FakeSource(200, live=True)
    summary = run_fake(monkeypatch, tmp_path, source, FakeRunner(source, delay=0.01), batch_size=2)
    assert summary["dropped_frames"] > 0
    assert summary["frames"] + summary["dropped_frames"] == summary["frames_read"] == 200
    frames = [json.loads(line)["frame"] for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    assert frames == sorted(frames) and frames[-1] <= 199  # frame numbers stay those of the source


def test_ctrl_c_keeps_what_was_processed(monkeypatch, tmp_path):
    source = FakeSource(100)
    runner = FakeRunner(source, interrupt_at=4)
    summary = run_fake(monkeypatch, tmp_path, source, runner, batch_size=2)
    assert summary["ended_early"] is True and "interrupted" in summary["end_reason"]
    assert summary["frames"] == runner.seen and 3 <= runner.seen <= 6  # the three batches before Ctrl-C
    check_outputs(tmp_path / "out", summary, video=False)


def test_a_model_error_leaves_no_output(monkeypatch, tmp_path):
    source = FakeSource(100)
    with pytest.raises(RuntimeError, match="model failed"):
        run_fake(monkeypatch, tmp_path, source, FakeRunner(source, fail_at=3))
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")  # an existing OUT keeps what it held, and gets nothing
    with pytest.raises(RuntimeError, match="model failed"):
        run_fake(monkeypatch, tmp_path, source, FakeRunner(FakeSource(100), fail_at=3))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
