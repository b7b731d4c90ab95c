"""``fpsiam predict``: run a detector over images, a video file or a live stream, and write what it found.

:func:`predict_source` takes a model (a file or a :class:`fpsiam.api.Detector`) and a source:

- an image file, a folder of images (any depth, natural order), or a COCO json (its images; boxes are not
  needed; ``file_name`` resolved as everywhere, :func:`fpsiam.data.cocojson.image_root`);
- a video file (``.mp4 .avi .mkv .mov``, or anything else FFmpeg reads);
- a stream PyAV opens: a URL (``rtsp://``, ``http(s)://``, ...; opening and each read time out after
  :data:`OPEN_TIMEOUT_S` / :data:`READ_TIMEOUT_S`), a capture device (``/dev/video0``, read with v4l2), a named
  pipe (fifo), or ``-`` for standard input (e.g. ``ffmpeg ... -f mpegts - | fpsiam predict MODEL - OUT``).

It writes into ``OUT`` (created if missing; its parent must exist):

- ``frames.jsonl``: one line per frame: ``frame`` (index in the source), ``image_id``, ``time`` (seconds; video),
  ``file`` (images), ``boxes`` (xyxy pixels), ``scores``, ``labels`` and, when smoothing, ``track_ids``, ``held``;
- ``predictions.json``: the same boxes as COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
  ``image_id`` is the frame index for video, the json's id for a COCO json, the position for images;
- ``annotated.mp4`` (video and streams, ``write_video``): the frames with boxes, scores and track ids drawn;
- ``summary.json``: frame counts, model FPS (frames / seconds inside the model) and end-to-end FPS (frames /
  wall seconds), dropped frames, source, backend, threshold, smoothing, and how the source ended.

Video is streamed: a reader thread decodes and converts frames, the calling thread batches them through the
model, a writer thread tracks, writes the jsonl line, draws and encodes; bounded queues between them keep
at most ``2 x batch_size`` frames in flight each, so memory does not grow with the video (predictions.json
is built from the finished jsonl). A file is read whole (the reader waits for the model); a live source (URL,
device) is not slowed down: a frame arriving while the queue is full is dropped and counted.

A source that breaks off (a truncated file, a pipe whose writer stops, a network error) ends the run cleanly:
the outputs hold the frames processed and the summary says ``ended_early`` and why; so does Ctrl-C
(``interrupted``). Errors before the first frame (a file that cannot be decoded at all, a URL that does not
open, a wrong model file, a missing output parent) are one FpsiamError naming the file, and no output file is
left: every output is written to a temporary name and renamed when complete (:mod:`fpsiam.fileio`).
"""

from __future__ import annotations

import contextlib
import fractions
import itertools
import json
import os
import queue
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpsiam.data.frames import IMAGE_EXTENSIONS
from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_open, atomic_path, write_json

OPEN_TIMEOUT_S = 10.0  # a URL that does not answer within this is an error
READ_TIMEOUT_S = 10.0  # a stream (URL, pipe, device) silent this long has ended
QUEUE_BATCHES = 2  # each queue holds at most this many batches of frames
DEFAULT_FPS = 25
OUTPUTS = {"predictions": "predictions.json", "frames": "frames.jsonl", "video": "annotated.mp4",
           "summary": "summary.json"}  # fmt: skip
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_END = object()  # end of the frames (after the last item)


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class Frame:
    """One decoded frame on its way through the pipeline."""

    index: int  # position in the source (video: decode order, dropped frames included)
    image: torch.Tensor  # uint8 [3, H, W] RGB
    image_id: Any  # what predictions.json calls it
    time: float | None = None  # seconds (video)
    file: str | None = None  # image sources: the file, relative to the source
    video: str | None = None  # the tracker starts afresh when this changes


def redact(src: str) -> str:
    """A URL without its credentials (``rtsp://user:pass@host`` -> ``rtsp://***@host``), for messages and logs."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]*@", r"\1***@", src)


class ImageSource:
    """Image files, read one at a time with :func:`fpsiam.data.images.decode_rgb` (the pixel limit applies)."""

    live = False
    fps = None

    def __init__(self, description: str, entries: list[tuple[Path, Any, str, str | None]], kind: str) -> None:
        self.description, self.entries, self.kind = description, entries, kind  # (path, image_id, file, video)
        self.declared_frames = len(entries)
        self.end_reason, self.ended_early = "end of the images", False

    def frames(self) -> Iterator[Frame]:
        from fpsiam.data.images import decode_rgb

        for index, (path, image_id, file, video) in enumerate(self.entries):
            yield Frame(index, decode_rgb(path), image_id, file=file, video=video)

    def close(self) -> None:
        pass


class VideoSource:
    """A video file or stream decoded with PyAV; the first frame is decoded on opening (errors come early)."""

    def __init__(self, src: str, kind: str) -> None:
        import av

        from fpsiam.data.images import check_pixels

        self.src, self.kind, self.description = src, kind, redact(src)
        self.live = kind in ("url", "device")
        try:
            self.container = av.open(src, **_open_kwargs(src, kind))
        except (av.FFmpegError, OSError) as e:
            raise FpsiamError(f"{self.description}: cannot open ({_reason(e)}); {_hint(kind)}") from None
        try:
            if not self.container.streams.video:
                raise FpsiamError(f"{self.description}: no video stream in it; pass a video")
            self.stream = self.container.streams.video[0]
            check_pixels(self.description, self.stream.codec_context.width, self.stream.codec_context.height)
            # Slice threads only: frame threading would add a frame of latency per thread to live streams, and
            # at a cut-off (truncated file, closed pipe) it loses the frames in flight depending on timing.
            self.stream.thread_type = "SLICE"
            self.corrupt_packets = 0
            self._decoded = self._decode()
            self._first = next(self._decoded)
            check_pixels(self.description, self._first.width, self._first.height)
        except (av.FFmpegError, OSError, StopIteration) as e:
            self.close()
            why = _reason(e) if not isinstance(e, StopIteration) else "no frame could be decoded"
            raise FpsiamError(
                f"{self.description}: cannot decode this video ({why}); it may be truncated or corrupt; "
                "re-download it or re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`"
            ) from None
        except BaseException:
            self.close()
            raise
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.declared_frames = int(self.stream.frames) if self.stream.frames and kind == "video" else None
        self.end_reason, self.ended_early = "end of the stream", False

    def _decode(self) -> Iterator[Any]:
        """Decoded frames; a packet that does not decode is skipped (counted), a demuxing error ends the stream
        after the frames still inside the (frame-threaded) decoder are flushed out, then is raised."""
        import av

        broke: BaseException | None = None
        try:
            for packet in self.container.demux(self.stream):
                try:
                    yield from packet.decode()
                except av.InvalidDataError:  # a damaged packet (a truncated file's last one, a network glitch)
                    self.corrupt_packets += 1
        except (av.FFmpegError, OSError) as e:
            broke = e
        with contextlib.suppress(av.FFmpegError):
            yield from self.stream.codec_context.decode(None)
        if broke is not None:
            raise broke

    def frames(self) -> Iterator[Frame]:
        import av

        index = 0
        try:
            for frame in itertools.chain([self._first], self._decoded):
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield Frame(index, image, index, time=frame.time)
                index += 1
        except (av.FFmpegError, OSError) as e:  # a truncated file, a broken pipe, a network error: stop here
            self.end_reason, self.ended_early = f"the source broke off after {index} frames ({_reason(e)})", True
            return
        if self.declared_frames is not None and index < self.declared_frames:
            self.ended_early = True
            self.end_reason = f"the file ends after {index} of the {self.declared_frames} frames its header declares"

    def close(self) -> None:
        container = getattr(self, "container", None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()


def _open_kwargs(src: str, kind: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if kind in ("url", "pipe", "device"):
        kwargs["timeout"] = (OPEN_TIMEOUT_S, READ_TIMEOUT_S)  # PyAV's interrupt callback: any protocol
    if kind == "url" and src.lower().startswith("rtsp"):
        kwargs["options"] = {"rtsp_transport": "tcp"}  # no lost UDP packets (smeared frames)
    if kind == "device" and sys.platform.startswith("linux"):
        kwargs["format"] = "v4l2"
    return kwargs


def _reason(e: BaseException) -> str:
    """The first line of a decoder error, without credentials of URLs it quotes."""
    from fpsiam.data.images import reason

    return redact(reason(e))


def _hint(kind: str) -> str:
    return {
        "url": "check the address, that the server is up and reachable from here",
        "device": "check the device exists and is not in use by another program",
        "pipe": "check the program writing into the pipe",
    }.get(kind, "check the file")


def open_source(src: str | os.PathLike, images: str | os.PathLike | None = None) -> ImageSource | VideoSource:
    """Open ``src`` (see the module docstring) far enough to know it is readable: FpsiamError otherwise."""
    text = os.fspath(src)
    if text == "-":
        return VideoSource("pipe:0", "pipe")
    if _URL.match(text):
        return VideoSource(text, "url")
    path = Path(text)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FpsiamError(f"{path}: no such file, folder or device; pass an image, a folder, a COCO json, "
                          "a video or a stream URL") from None  # fmt: skip
    except OSError as e:
        raise FpsiamError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISFIFO(mode):
        return VideoSource(text, "pipe")
    if stat.S_ISCHR(mode):
        return VideoSource(text, "device")
    if path.is_dir():
        return _folder_source(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _coco_source(path, images)
    if suffix in IMAGE_EXTENSIONS:
        return ImageSource(str(path), [(path, 0, path.name, None)], "image")
    return VideoSource(text, "video")


def _folder_source(path: Path) -> ImageSource:
    from fpsiam.data.frames import ImageFolderFrames

    tree = ImageFolderFrames._scan_only(path, 1)
    if not len(tree):
        what = "only video files; pass one video at a time" if tree.video_files else "no images"
        raise FpsiamError(f"{path}: {what} ({', '.join(IMAGE_EXTENSIONS)}, at any depth)")
    entries = []
    for i in range(len(tree)):
        file = Path(tree.path_of(i))
        entries.append((file, i, file.relative_to(path).as_posix(), tree.video_names[tree.video_index(i)]))
    return ImageSource(str(path), entries, "folder")


def _coco_source(path: Path, images: str | os.PathLike | None) -> ImageSource:
    from fpsiam.data.cocojson import image_root, load_coco

    data = load_coco(path)
    root = image_root(path, images, data)
    records = []
    for n, rec in enumerate(data["images"]):
        if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str) or "id" not in rec:
            raise FpsiamError(f"{path}: images[{n}] needs an 'id' and a 'file_name'; fix or regenerate the json")
        records.append((n, rec))
    if not records:
        raise FpsiamError(f"{path}: the 'images' list is empty; nothing to predict")
    if any(rec.get("video_id") is not None for _, rec in records):  # video frames: in order, video by video
        records.sort(key=lambda r: (str(r[1].get("video_id") or ""), _frame_key(r[1].get("frame_index")), r[0]))
    entries = [
        (root / rec["file_name"], rec["id"], rec["file_name"],
         str(rec["video_id"]) if rec.get("video_id") is not None else f"still:{rec['id']}")
        for _, rec in records
    ]  # fmt: skip
    return ImageSource(str(path), entries, "coco")


def _frame_key(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# ---------------------------------------------------------------------------------------------- drawing


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, track_ids: np.ndarray | None = None,
                    held: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The frame (H x W x 3 uint8) with its boxes drawn: green, yellow when held by the tracker; score and id."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        carried = held is not None and bool(held[i])
        colour = (255, 220, 0) if carried else (0, 255, 80)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        label = f"{scores[i]:.2f}" if track_ids is None else f"#{int(track_ids[i])} {scores[i]:.2f}"
        draw.text((x0 + 3, max(0.0, y0 - 11)), label, fill=colour)
    return np.asarray(canvas)


class _VideoWriter:
    """annotated.mp4 with PyAV: H.264 (libx264) when available, else MPEG-4 part 2; yuv420p, even size."""

    def __init__(self, path: Path, width: int, height: int, fps: float | None) -> None:
        import av

        self.width, self.height = width - width % 2, height - height % 2
        self.container = av.open(str(path), mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codec.codecs_available else "mpeg4"
        rate = fractions.Fraction(fps or DEFAULT_FPS).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "23", "preset": "veryfast"}
        else:
            self.stream.bit_rate = 4_000_000

    def write(self, rgb: np.ndarray) -> None:
        import av

        if rgb.shape[0] < self.height or rgb.shape[1] < self.width:  # the stream changed resolution
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize((self.width, self.height)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: self.height, : self.width]), format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def finish(self) -> None:
        self.container.mux(self.stream.encode(None))

    def close(self) -> None:
        self.container.close()


# ---------------------------------------------------------------------------------------------- pipeline


@dataclass
class _Counters:
    read: int = 0  # frames taken from the source
    dropped: int = 0  # live sources: frames dropped because the model was behind
    written: int = 0
    detections: int = 0
    frames_with_detections: int = 0
    model_seconds: float = 0.0
    interrupted: bool = False
    stopped_at_max: bool = False


class _Stop(Exception):
    """The writer was told to give up (an error elsewhere): its temporary files are removed."""


def _put(q: queue.Queue, item: Any, *stop: threading.Event) -> bool:
    """Put, waiting while the queue is full, unless one of ``stop`` is set (then False)."""
    while not any(e.is_set() for e in stop):
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, abort: threading.Event) -> Any:
    while not abort.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    raise _Stop


def _read(source: Any, q: queue.Queue, c: _Counters, max_frames: int | None, stop_reading: threading.Event,
          abort: threading.Event, errors: list[BaseException]) -> None:  # fmt: skip
    """Reader thread: decode, convert to float 0..1, queue; live sources drop a frame rather than wait."""
    try:
        for frame in source.frames():
            if stop_reading.is_set() or abort.is_set():
                break
            if max_frames is not None and c.read >= max_frames:
                c.stopped_at_max = True
                break
            item = (frame, frame.image.float().div_(255))
            c.read += 1
            if source.live:
                try:
                    q.put_nowait(item)
                except queue.Full:
                    c.dropped += 1
            elif not _put(q, item, abort, stop_reading):
                break
    except BaseException as e:  # an unreadable image (FpsiamError naming it) or a bug: the run fails
        errors.append(e)
        abort.set()
    finally:
        _put(q, _END, abort, stop_reading)  # after Ctrl-C nobody waits for it


def _infer(detector: Any, q_in: queue.Queue, q_out: queue.Queue, c: _Counters, batch_size: int, threshold: float,
           stop_reading: threading.Event, abort: threading.Event) -> None:  # fmt: skip
    """Calling thread: take what the reader has queued (up to batch_size), run the model, pass results on."""
    done = False
    try:
        while not done:
            batch = [_get(q_in, abort)]
            if batch[0] is _END:
                break
            while len(batch) < batch_size:
                try:
                    item = q_in.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    done = True
                    break
                batch.append(item)
            start = time.perf_counter()
            outputs = detector.infer([tensor for _, tensor in batch])
            c.model_seconds += time.perf_counter() - start
            for (frame, _), out in zip(batch, outputs, strict=True):
                _put(q_out, (frame, detector.select(out, threshold)), abort)
    except KeyboardInterrupt:  # Ctrl-C ends a stream like its end would: keep what was processed
        c.interrupted = True
        stop_reading.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock the reader
                q_in.get_nowait()
    except _Stop:
        return
    _put(q_out, _END, abort)


def _write(out: Path, source: Any, q: queue.Queue, c: _Counters, tracker: Any, write_video: bool,
           abort: threading.Event, errors: list[BaseException]) -> None:  # fmt: skip
    """Writer thread: track, write frames.jsonl, draw and encode; then predictions.json from the jsonl."""
    try:
        with contextlib.ExitStack() as stack:
            jsonl_path = stack.enter_context(atomic_path(out / OUTPUTS["frames"]))
            jsonl = stack.enter_context(open(jsonl_path, "w", encoding="utf-8"))
            video: _VideoWriter | None = None
            last_video: Any = object()
            while (item := _get(q, abort)) is not _END:
                frame, det = item
                line = _frame_line(frame, det)
                if tracker is not None:
                    if frame.video != last_video:
                        tracker.reset()
                        last_video = frame.video
                    tracked = tracker.update(det["boxes"], det["scores"], det["labels"])
                    line = _frame_line(frame, vars(tracked))
                jsonl.write(json.dumps(line) + "\n")
                c.written += 1
                c.detections += len(line["scores"])
                c.frames_with_detections += bool(line["scores"])
                if write_video and isinstance(source, VideoSource):
                    if video is None:
                        video_path = stack.enter_context(atomic_path(out / OUTPUTS["video"]))
                        video = _VideoWriter(video_path, frame.image.shape[2], frame.image.shape[1], source.fps)
                        stack.callback(video.close)
                    rgb = frame.image.permute(1, 2, 0).numpy()
                    video.write(draw_detections(rgb, *_drawn(line)))
            if video is not None:
                video.finish()
            jsonl.close()
            with atomic_open(out / OUTPUTS["predictions"], "w", encoding="utf-8") as f:
                _predictions_from_jsonl(jsonl_path, f)
    except _Stop:
        return
    except BaseException as e:
        errors.append(e)
        abort.set()


def _frame_line(frame: Frame, det: dict[str, Any]) -> dict[str, Any]:
    line: dict[str, Any] = {"frame": frame.index, "image_id": frame.image_id}
    if frame.time is not None:
        line["time"] = round(float(frame.time), 6)
    if frame.file is not None:
        line["file"] = frame.file
    line["boxes"] = [[round(float(v), 2) for v in box] for box in np.asarray(det["boxes"]).reshape(-1, 4)]
    line["scores"] = [round(float(s), 5) for s in det["scores"]]
    line["labels"] = [int(v) for v in det["labels"]]
    if "track_ids" in det:
        line["track_ids"] = [int(v) for v in det["track_ids"]]
        line["held"] = [bool(v) for v in det["held"]]
    return line


def _drawn(line: dict[str, Any]) -> tuple[np.ndarray, ...]:
    boxes = np.asarray(line["boxes"], np.float64).reshape(-1, 4)
    ids = np.asarray(line["track_ids"]) if "track_ids" in line else None
    held = np.asarray(line["held"]) if "held" in line else None
    return boxes, np.asarray(line["scores"]), ids, held


def _predictions_from_jsonl(jsonl: Path, f: Any) -> None:
    """Stream the jsonl's boxes into a COCO results list (a line at a time: memory stays flat)."""
    f.write("[")
    first = True
    with open(jsonl, encoding="utf-8") as lines:
        for raw in lines:
            line = json.loads(raw)
            for (x0, y0, x1, y1), score, label in zip(line["boxes"], line["scores"], line["labels"], strict=True):
                result = {"image_id": line["image_id"], "category_id": label,
                          "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "score": score}  # fmt: skip
                f.write(("" if first else ",\n") + json.dumps(result))
                first = False
    f.write("]\n")


# ---------------------------------------------------------------------------------------------- entry


def _check_out_dir(out_dir: str | os.PathLike) -> tuple[Path, bool]:
    """OUT may exist (a folder) or not; its parent must exist. Returns (path, whether OUT must be created)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FpsiamError(f"{out}: exists and is not a folder; pass a folder for the outputs")
    if not out.exists() and not out.parent.is_dir():
        raise FpsiamError(f"{out}: its parent folder {out.parent} does not exist; create it or pass another folder")
    return out, not out.exists()


def _positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FpsiamError(f"{name}={value!r}: expected an integer >= 1")


def predict_source(
    model: str | os.PathLike | Any,
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    score_threshold: float | None = None,
    batch_size: int = 4,
    device: str = "auto",
    smooth: Any = None,
    backend: str = "auto",
    write_video: bool = True,
    max_frames: int | None = None,
    images: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``src`` and write OUT's files (module docstring); returns the summary.

    ``model``: a detector file (``.safetensors``; ``.onnx`` runs in ONNX Runtime, a TorchScript export in
    TorchScript; ``backend`` insists on one) or a :class:`fpsiam.api.Detector`. ``score_threshold``: default the
    model file's. ``smooth``: a :class:`fpsiam.detect.track.TrackConfig` (or True for the defaults) to track and
    smooth boxes over frames. ``max_frames``: stop after this many frames. ``images``: the images root of a
    COCO json (default: the json's info.images_root, else its folder).
    """
    from fpsiam.api import Detector, _check_threshold
    from fpsiam.detect.track import TrackConfig, Tracker, config_dict

    _positive_int(batch_size, "batch_size")
    _positive_int(max_frames, "max_frames", allow_none=True)
    config = TrackConfig() if smooth is True else (smooth or None)
    tracker = Tracker(config) if config is not None else None
    out, create = _check_out_dir(out_dir)
    detector = model if isinstance(model, Detector) else Detector.load(model, device=device, backend=backend)
    threshold = detector.threshold if score_threshold is None else _check_threshold(score_threshold, "score_threshold")
    source = open_source(src, images)
    try:
        if create:
            out.mkdir()
        try:
            c, wall = _run(detector, source, out, tracker, threshold, batch_size, write_video, max_frames)
        except BaseException:
            if create:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only when empty: nothing of ours is left in it
            raise
    finally:
        source.close()
    summary = _summary(detector, source, c, wall, threshold, config_dict(config) if config else None, write_video)
    write_json(out / OUTPUTS["summary"], summary)
    return summary


def _run(detector: Any, source: Any, out: Path, tracker: Any, threshold: float, batch_size: int, write_video: bool,
         max_frames: int | None) -> tuple[_Counters, float]:  # fmt: skip
    c = _Counters()
    q_in: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * batch_size)
    q_out: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * batch_size)
    stop_reading, abort = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    reader = threading.Thread(target=_read, args=(source, q_in, c, max_frames, stop_reading, abort, errors),
                              name="fpsiam-read", daemon=True)  # fmt: skip
    writer = threading.Thread(target=_write, args=(out, source, q_out, c, tracker, write_video, abort, errors),
                              name="fpsiam-write", daemon=True)  # fmt: skip
    start = time.perf_counter()
    reader.start()
    writer.start()
    try:
        _infer(detector, q_in, q_out, c, batch_size, threshold, stop_reading, abort)
    except BaseException as e:
        errors.insert(0, e)
        abort.set()
    finally:
        writer.join()
        stop_reading.set()
        reader.join()
    if errors:
        raise errors[0]
    return c, time.perf_counter() - start


def _summary(detector: Any, source: Any, c: _Counters, wall: float, threshold: float, smoothing: Any,
             write_video: bool) -> dict[str, Any]:  # fmt: skip
    if c.interrupted:
        ended_early, reason = True, "interrupted (Ctrl-C)"
    elif c.stopped_at_max:
        ended_early, reason = False, f"stopped after max_frames={c.read}"
    else:
        ended_early, reason = source.ended_early, source.end_reason
    video = write_video and isinstance(source, VideoSource) and c.written > 0
    meta = detector.meta
    return {
        "source": source.description,
        "source_kind": source.kind,
        "model": {"file": detector.source, "kind": meta.get("kind"), "arch": meta.get("arch")},
        "backend": detector.backend,
        "device": str(detector.device),
        "score_threshold": threshold,
        "smoothing": smoothing,
        "frames": c.written,
        "frames_read": c.read,
        "frames_declared": source.declared_frames,
        "dropped_frames": c.dropped,
        "corrupt_packets": getattr(source, "corrupt_packets", 0),
        "detections": c.detections,
        "frames_with_detections": c.frames_with_detections,
        "model_seconds": round(c.model_seconds, 4),
        "wall_seconds": round(wall, 4),
        "model_fps": c.written / c.model_seconds if c.model_seconds > 0 else None,
        "end_to_end_fps": c.written / wall if wall > 0 else None,
        "source_fps": source.fps,
        "ended_early": ended_early,
        "end_reason": reason,
        "outputs": {k: v for k, v in OUTPUTS.items() if k != "video" or video},
    }


__all__ = ["Frame", "ImageSource", "VideoSource", "draw_detections", "open_source", "predict_source", "redact"]
