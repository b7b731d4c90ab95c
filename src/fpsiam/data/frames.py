"""Unlabeled frame sources for self-supervised pretraining, behind one small interface.

:func:`open_frames` turns any of these into a :class:`FrameSource`:

- a folder tree of images, at any depth (``.jpg .jpeg .png .bmp .tif .tiff``, any case). Every folder that
  holds images is one *video*, named by its path relative to the root; a frame's index is the trailing
  integer of its file name (``000123.jpg`` -> 123), or its natural-sort position in the folder when not
  every name in that folder carries a distinct one. This covers the LDPolypVideo pretraining layout
  (docs/data.md): pass ``PreTrain/`` and the videos are ``VideosWithPolyps/Images/<video>`` and
  ``VideosWithoutPolyps/Images/<video>``;
- video files (``.mp4 .avi .mkv .mov``; one file, or a folder holding them at any depth), decoded with
  PyAV straight from the file: no frames are dumped to disk;
- a COCO json: the images of a labeled set used as unlabeled frames (e.g. Kvasir-SEG's train split),
  resolved like every COCO json of the project (:func:`fpsiam.data.cocojson.image_root`);
- a list of any of these (:class:`ConcatFrames`), e.g. VideosWithPolyps plus VideosWithoutPolyps.

Why the index is a handful of numpy arrays: LDPolypVideo's pretraining set is 861,400 frames. A Python
list of one ``str``/``dict`` per frame costs ~100-200 bytes a frame and, worse, every DataLoader worker
forked from the main process slowly copies those pages as it touches their reference counts
("copy-on-read"). Here a source holds per-frame ``int32`` video and frame numbers plus, for image files,
every file name in one byte blob with ``int64`` offsets; the memory of all of them together is
:func:`frame_index_nbytes`. Video files are opened lazily, once per process, so a source pickles to
DataLoader workers without open handles and reopens its containers after a fork.

Within a video the frames of a source are contiguous and in frame order, so a temporal neighbour
(docs/method.md, "Temporal pairs") is a nearby index: :meth:`FrameSource.neighbour`.
"""

from __future__ import annotations

import abc
import bisect
import collections
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from fpsiam.data.cocojson import image_root, load_coco
from fpsiam.data.images import check_pixels, decode_rgb
from fpsiam.errors import FpsiamError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
_IMAGE_EXT_BYTES = tuple(e.encode() for e in IMAGE_EXTENSIONS)
_VIDEO_EXT_BYTES = tuple(e.encode() for e in VIDEO_EXTENSIONS)
_TRAILING_INT = re.compile(rb"(\d+)$")
_DIGITS = re.compile(rb"(\d+)")
_REENCODE_HINT = "re-download it or re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`"
# At most this many video containers stay open per process (LRU), so folders of thousands of clips
# do not run out of file handles.
_MAX_OPEN_VIDEOS = 16
# Containers a forked process inherited from its parent: kept referenced, never touched (see VideoFrames).
_INHERITED_HANDLES: list[Any] = []


# ---------------------------------------------------------------------------------------------- interface


class FrameSource(abc.ABC):
    """An indexable set of unlabeled RGB frames grouped into videos.

    Frames of one video occupy a contiguous range of indices, in frame order. A source is also a
    map-style ``torch.utils.data.Dataset`` (``source[i] == source.read(i)``), and pickles cheaply.

    Subclasses fill ``_video`` (int32 video number per frame), ``_frame`` (int32 frame number within its
    video, as in the file name or the video stream) and ``_starts`` (int64, the first index of every
    video plus the total length), and implement :meth:`read` and :meth:`path_of`.
    """

    video_names: list[str]
    _video: np.ndarray
    _frame: np.ndarray
    _starts: np.ndarray

    def __len__(self) -> int:
        return int(self._video.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.read(i)

    @abc.abstractmethod
    def read(self, i: int) -> torch.Tensor:
        """Frame ``i`` as a uint8 RGB tensor ``[3, H, W]``; a frame that cannot be decoded is an FpsiamError."""

    @abc.abstractmethod
    def path_of(self, i: int) -> str:
        """Where frame ``i`` comes from, for messages: an image path or ``"video.mp4#frame 17"``."""

    def video_index(self, i: int) -> int:
        """The number of frame ``i``'s video: an index into :attr:`video_names`."""
        return int(self._video[self._check(i)])

    def frame_index(self, i: int) -> int:
        """Frame ``i``'s number within its video (from the file name or the stream; strides keep it)."""
        return int(self._frame[self._check(i)])

    def neighbour(self, i: int, k: int, generator: torch.Generator | None = None) -> int:
        """A uniformly random *other* frame of ``i``'s video at most ``k`` indices away.

        ``k`` counts frames of this source (after ``stride``); the window is clamped at the ends of
        the video. A one-frame video (or ``k == 0``) returns ``i`` itself.
        """
        i = self._check(i)
        if k < 0:
            raise ValueError(f"neighbour: k must be >= 0, got {k}")
        v = int(self._video[i])
        lo = max(int(self._starts[v]), i - k)
        hi = min(int(self._starts[v + 1]) - 1, i + k)
        if hi <= lo:
            return i
        j = lo + int(torch.randint(hi - lo, (1,), generator=generator).item())  # hi - lo choices besides i
        return j + 1 if j >= i else j

    def index_nbytes(self) -> int:
        """Bytes held by the per-frame index arrays (see :func:`frame_index_nbytes`)."""
        return int(self._video.nbytes + self._frame.nbytes + self._starts.nbytes)

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range for a source of {len(self)} frames")
        return i

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} frames, {len(self.video_names)} videos)"


def frame_index_nbytes(source: FrameSource) -> int:
    """Bytes held by ``source``'s index arrays (per-frame numbers, file-name blob and offsets)."""
    return source.index_nbytes()


# ---------------------------------------------------------------------------------------------- helpers


class _Names:
    """Many strings in one byte blob plus int64 offsets: two objects, whatever the count."""

    def __init__(self, chunks: Sequence[bytes], lengths: Sequence[np.ndarray]) -> None:
        self.blob = b"".join(chunks)
        lens = np.concatenate(lengths) if len(lengths) else np.zeros(0, np.int64)
        self.offsets = np.zeros(lens.shape[0] + 1, np.int64)
        np.cumsum(lens, out=self.offsets[1:])

    @classmethod
    def of(cls, names: Sequence[bytes]) -> _Names:
        return cls([b"".join(names)], [np.fromiter(map(len, names), np.int64, len(names))])

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self.blob[self.offsets[i] : self.offsets[i + 1]])

    @property
    def nbytes(self) -> int:
        return len(self.blob) + int(self.offsets.nbytes)


def _natural_key(name: bytes) -> tuple:
    """``frame2.jpg`` before ``frame10.jpg``: digit runs compare as numbers."""
    parts = _DIGITS.split(name)
    parts[1::2] = [int(p) for p in parts[1::2]]
    return tuple(parts)


def _order_frames(names: list[bytes]) -> tuple[list[bytes], list[int]]:
    """Sort one folder's file names into frame order and give each its frame number.

    The frame number is the trailing integer of the name without extension when every name has a
    distinct one (``00017.jpg`` -> 17); otherwise it is the name's position in natural sort order.
    """
    numbers = []
    for name in names:
        m = _TRAILING_INT.search(name.rsplit(b".", 1)[0])
        if m is None:
            break
        numbers.append(int(m.group(1)))
    if len(numbers) == len(names) and len(set(numbers)) == len(numbers):
        order = sorted(range(len(names)), key=lambda j: numbers[j])
        return [names[j] for j in order], [numbers[j] for j in order]
    ordered = sorted(names, key=_natural_key)
    return ordered, list(range(len(ordered)))


def _walk(root: bytes) -> Iterator[tuple[bytes, list[bytes], list[bytes]]]:
    """Yield ``(relative folder, image names, video names)`` for every folder below ``root``.

    Depth-first with sorted names, so the order is deterministic. Hidden entries (``.*``, e.g. macOS
    ``._0001.jpg`` resource forks) are skipped; symlinked folders are followed once.
    """
    stack = [b""]
    seen: set[tuple[int, int]] = set()
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else root
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(path))
        except OSError as e:
            raise FpsiamError(
                f"{os.fsdecode(path)}: cannot list this folder ({e.strerror}); check permissions"
            ) from None
        images, videos, subdirs = [], [], []
        for entry in entries:
            name = entry.name
            if name.startswith(b"."):
                continue
            try:
                if entry.is_dir():
                    subdirs.append(name)
                    continue
            except OSError:
                continue
            low = name.lower()
            if not low.endswith(_IMAGE_EXT_BYTES + _VIDEO_EXT_BYTES):
                continue
            if entry.is_symlink() and not os.path.exists(entry.path):
                raise FpsiamError(
                    f"{os.fsdecode(entry.path)}: a symbolic link to a missing file; restore its target or delete "
                    "the link (found while indexing the frames, before any training)"
                )
            if low.endswith(_IMAGE_EXT_BYTES):
                images.append(name)
            else:
                videos.append(name)
        yield rel, images, sorted(videos, key=_natural_key)
        for name in sorted(subdirs, reverse=True):
            stack.append(os.path.join(rel, name) if rel else name)


def _to_tensor_rgb(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise FpsiamError(f"stride must be an integer >= 1 (every n-th frame), got {stride!r}")
    return int(stride)


def _starts_from_counts(counts: Sequence[int]) -> np.ndarray:
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(np.asarray(counts, np.int64), out=starts[1:])
    return starts


# ---------------------------------------------------------------------------------------------- images


class ImageFolderFrames(FrameSource):
    """A folder tree of image files; each folder that holds images is one video.

    Index: per frame an int32 video number, an int32 frame number and the file name (one byte blob with
    int64 offsets); per video its folder relative to ``root``. Built folder by folder, so the peak
    memory while scanning is one folder's names, not the whole tree's.
    """

    def __init__(self, root: str | os.PathLike, stride: int = 1) -> None:
        self.root = os.fspath(root)
        self._scan(_check_stride(stride))
        if not self._dirs:
            raise FpsiamError(
                f"{self.root}: no images found ({', '.join(IMAGE_EXTENSIONS)}, at any depth); "
                "pass a folder of frames, a video file or folder, or a COCO json"
            )

    def _scan(self, stride: int) -> None:
        """Walk the tree once: index its images, and list its video files in ``self.video_files``."""
        dirs: list[bytes] = []
        chunks: list[bytes] = []
        lengths: list[np.ndarray] = []
        frames: list[np.ndarray] = []
        counts: list[int] = []
        self.video_files: list[str] = []
        for rel, images, videos in _walk(os.fsencode(self.root)):
            self.video_files += [os.fsdecode(os.path.join(rel, v)) for v in videos]
            if not images:
                continue
            names, numbers = _order_frames(images)
            names, numbers = names[::stride], numbers[::stride]
            dirs.append(rel)
            chunks.append(b"".join(names))
            lengths.append(np.fromiter(map(len, names), np.int64, len(names)))
            frames.append(np.asarray(numbers, np.int64))
            counts.append(len(names))
        self._dirs = [os.fsdecode(d) for d in dirs]
        self.video_names = [d if d else "." for d in self._dirs]
        self._names = _Names(chunks, lengths)
        frame = np.concatenate(frames) if frames else np.zeros(0, np.int64)
        if frame.size and frame.max() > np.iinfo(np.int32).max:
            raise FpsiamError(f"{self.root}: a frame number in a file name exceeds 2**31; rename the files")
        self._frame = frame.astype(np.int32)
        self._starts = _starts_from_counts(counts)
        self._video = np.repeat(np.arange(len(counts), dtype=np.int32), counts)

    @classmethod
    def _scan_only(cls, root: str | os.PathLike, stride: int) -> ImageFolderFrames:
        """The scanned tree even when it holds no images (``open_frames`` then looks at its videos)."""
        self = cls.__new__(cls)
        self.root = os.fspath(root)
        self._scan(stride)
        return self

    def path_of(self, i: int) -> str:
        i = self._check(i)
        return os.path.join(self.root, self._dirs[int(self._video[i])], self._names[i])

    def read(self, i: int) -> torch.Tensor:
        return decode_rgb(self.path_of(i))

    def index_nbytes(self) -> int:
        return super().index_nbytes() + self._names.nbytes


class CocoFrames(FrameSource):
    """The images of a COCO json used as unlabeled frames.

    Images with a ``video_id`` are grouped by it and ordered by ``frame_index`` (or natural file-name
    order when a record has none); ``stride`` keeps every n-th frame of each video. Images without a
    ``video_id`` (stills such as Kvasir-SEG) are each their own one-frame video named by ``file_name``,
    and ``stride`` keeps every n-th of them in file-name order.
    """

    def __init__(self, ann: str | os.PathLike, images: str | os.PathLike | None = None, stride: int = 1) -> None:
        stride = _check_stride(stride)
        self.ann = os.fspath(ann)
        data = load_coco(self.ann)
        self.root = os.fspath(image_root(self.ann, images, data))
        groups: dict[str, list[tuple[Any, bytes]]] = collections.defaultdict(list)
        stills: list[bytes] = []
        for n, rec in enumerate(data["images"]):
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str) or not rec["file_name"]:
                raise FpsiamError(f"{self.ann}: images[{n}] has no 'file_name' string; fix or regenerate the json")
            name = os.fsencode(rec["file_name"])
            if rec.get("video_id") is None:
                stills.append(name)
                continue
            frame = rec.get("frame_index")
            if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
                raise FpsiamError(f"{self.ann}: images[{n}].frame_index must be an integer, got {frame!r}")
            groups[str(rec["video_id"])].append((frame, name))
        if not groups and not stills:
            raise FpsiamError(f"{self.ann}: the 'images' list is empty; nothing to read frames from")

        video_names: list[str] = []
        names: list[bytes] = []
        numbers: list[int] = []
        counts: list[int] = []
        for vid in sorted(groups, key=lambda s: _natural_key(os.fsencode(s))):
            records = groups[vid]
            if all(frame is not None for frame, _ in records):
                records = sorted(records, key=lambda r: (r[0], _natural_key(r[1])))
                v_names, v_numbers = [r[1] for r in records], [r[0] for r in records]
            else:
                v_names, v_numbers = _order_frames([r[1] for r in records])
            v_names, v_numbers = v_names[::stride], v_numbers[::stride]
            video_names.append(vid)
            names += v_names
            numbers += v_numbers
            counts.append(len(v_names))
        for name in sorted(stills, key=_natural_key)[::stride]:
            video_names.append(os.fsdecode(name))
            names.append(name)
            numbers.append(0)
            counts.append(1)
        self.video_names = video_names
        self._names = _Names.of(names)
        self._frame = np.asarray(numbers, np.int64).astype(np.int32)
        self._starts = _starts_from_counts(counts)
        self._video = np.repeat(np.arange(len(counts), dtype=np.int32), counts)

    def path_of(self, i: int) -> str:
        return os.path.join(self.root, self._names[self._check(i)])

    def read(self, i: int) -> torch.Tensor:
        return decode_rgb(self.path_of(i))

    def index_nbytes(self) -> int:
        return super().index_nbytes() + self._names.nbytes


# ---------------------------------------------------------------------------------------------- videos


class _OpenVideo:
    """One open container in this process, and where its decoder stands."""

    def __init__(self, path: str) -> None:
        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        # One decoding thread: DataLoader workers are the parallelism, and threads do not survive a fork.
        self.stream.codec_context.thread_count = 1
        self.frames: Iterator[av.VideoFrame] | None = None
        self.last_pts: int | None = None  # pts of the last frame returned by ``frames``

    def seek(self, pts: int) -> None:
        # backward=True, any_frame=False: land on the keyframe at or before ``pts``; PyAV flushes the decoder.
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        self.last_pts = None

    def seek_start(self) -> None:
        self.container.seek(0)
        self.frames = self.container.decode(self.stream)
        self.last_pts = None

    def close(self) -> None:
        self.frames = None
        self.container.close()


def _decode_until(handle: _OpenVideo, target: int) -> tuple[av.VideoFrame | None, bool]:
    """Decode forward to pts ``target``: (the frame or None, whether the very first frame was already past it)."""
    first = True
    for frame in handle.frames:
        if frame.pts is None:
            continue
        handle.last_pts = frame.pts
        if frame.pts == target:
            return frame, False
        if frame.pts > target:
            return None, first
        first = False
    return None, first


def _index_video(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Presentation timestamps of every frame (sorted) and of the keyframes, by demuxing without decoding.

    The demux is the frame count: a container's own count is missing (mkv) or describes the intact file
    even when it is truncated (avi, mp4 with the index first); a shortfall against it is reported here.
    The first frame is decoded, so a file whose codec cannot be decoded fails now, not mid-epoch.
    """
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise FpsiamError(f"{path}: no video stream in this file; pass a video")
            stream = container.streams.video[0]
            check_pixels(path, stream.codec_context.width, stream.codec_context.height)
            declared = int(stream.frames or 0)
            pts: list[int] = []
            keys: list[int] = []
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None:
                    raise FpsiamError(f"{path}: frames without timestamps cannot be indexed; {_REENCODE_HINT}")
                pts.append(t)
                if packet.is_keyframe:
                    keys.append(t)
            if not pts:
                raise FpsiamError(f"{path}: the video stream has no frames; {_REENCODE_HINT}")
            if declared and len(pts) < declared:
                raise FpsiamError(
                    f"{path}: the header declares {declared} frames but only {len(pts)} are in the file: "
                    f"it is truncated or corrupt; {_REENCODE_HINT}"
                )
            container.seek(min(pts), stream=stream, backward=True, any_frame=False)
            next(container.decode(stream))
    except (av.FFmpegError, StopIteration) as e:
        raise FpsiamError(
            f"{path}: cannot read this video ({e}); it may be truncated or corrupt; {_REENCODE_HINT}"
        ) from None
    except OSError as e:
        raise FpsiamError(f"{path}: cannot open this video ({e.strerror or e}); check the file") from None
    return np.unique(np.asarray(pts, np.int64)), np.unique(np.asarray(keys or [min(pts)], np.int64))


class VideoFrames(FrameSource):
    """Frames decoded with PyAV straight from video files, with random access by frame index.

    Opening demuxes every file once (packets only, no decoding) to list each frame's presentation
    timestamp and the keyframes. :meth:`read` seeks to the keyframe at or before the wanted frame and
    decodes forward to it, or just decodes forward when the wanted frame lies ahead of the last one
    returned without a keyframe in between (sequential reads cost one decode each).
    Frame ``n`` of a video is its n-th frame in presentation order; ``stride`` keeps frames 0, n, 2n, ...
    """

    def __init__(self, paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None, stride: int = 1) -> None:
        stride = _check_stride(stride)
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise FpsiamError("no video files given")
        self.video_names = list(names) if names is not None else [Path(p).name for p in self.paths]
        pts_all, frame_all, key_all, counts = [], [], [], []
        for path in self.paths:
            pts, keys = _index_video(path)
            pts_all.append(pts[::stride])
            frame_all.append(np.arange(0, len(pts), stride, dtype=np.int32))
            key_all.append(keys)
            counts.append(len(pts_all[-1]))
        self._pts = np.concatenate(pts_all)
        self._frame = np.concatenate(frame_all)
        self._starts = _starts_from_counts(counts)
        self._video = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        self._keys = np.concatenate(key_all)
        self._key_starts = _starts_from_counts([len(k) for k in key_all])
        self._open: collections.OrderedDict[int, _OpenVideo] = collections.OrderedDict()
        self._pid: int | None = os.getpid()

    # Open containers belong to one process: never pickled, dropped (not closed) after a fork.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = collections.OrderedDict()
        state["_pid"] = None
        return state

    def _video_handle(self, v: int) -> _OpenVideo:
        if self._pid != os.getpid():
            # The parent's handles: never use them (shared file offsets) and never free them here either,
            # since closing a decoder joins threads that do not exist in a forked child (it hangs).
            _INHERITED_HANDLES.append(self._open)
            self._open = collections.OrderedDict()
            self._pid = os.getpid()
        handle = self._open.get(v)
        if handle is None:
            try:
                handle = _OpenVideo(self.paths[v])
            except (av.FFmpegError, OSError) as e:
                raise FpsiamError(f"{self.paths[v]}: cannot open this video any more ({e}); check the file") from None
            self._open[v] = handle
            while len(self._open) > _MAX_OPEN_VIDEOS:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(v)
        return handle

    def _close(self, v: int) -> None:
        handle = self._open.pop(v, None)
        if handle is not None:
            handle.close()

    def path_of(self, i: int) -> str:
        i = self._check(i)
        return f"{self.paths[int(self._video[i])]}#frame {int(self._frame[i])}"

    def read(self, i: int) -> torch.Tensor:
        i = self._check(i)
        v = int(self._video[i])
        target = int(self._pts[i])
        keys = self._keys[self._key_starts[v] : self._key_starts[v + 1]]
        key = int(keys[max(0, int(np.searchsorted(keys, target, side="right")) - 1)])
        handle = self._video_handle(v)
        try:
            frame = self._decode_to(handle, target, key)
        except av.FFmpegError as e:
            self._close(v)
            raise FpsiamError(f"{self.path_of(i)}: cannot decode this frame ({e}); {_REENCODE_HINT}") from None
        if frame is None:
            self._close(v)
            raise FpsiamError(
                f"{self.path_of(i)}: this frame is listed in the file but could not be decoded "
                f"(truncated or corrupt video?); {_REENCODE_HINT}"
            )
        return _to_tensor_rgb(frame.to_ndarray(format="rgb24"))

    @staticmethod
    def _decode_to(handle: _OpenVideo, target: int, key: int) -> av.VideoFrame | None:
        """Decode up to the frame with pts ``target``; None when the stream never yields it."""
        last = handle.last_pts
        if handle.frames is not None and last is not None and key <= last < target:
            return _decode_until(handle, target)[0]  # no keyframe in between: decode forward
        handle.seek(target)
        frame, landed_late = _decode_until(handle, target)
        if landed_late:  # the container's seek overshot (rare index quirks): decode from the start
            handle.seek_start()
            frame, _ = _decode_until(handle, target)
        return frame

    def index_nbytes(self) -> int:
        return super().index_nbytes() + int(self._pts.nbytes + self._keys.nbytes + self._key_starts.nbytes)


# ---------------------------------------------------------------------------------------------- lists


class ConcatFrames(FrameSource):
    """Several sources read as one; video numbers are offset so each video keeps its own number.

    Video names keep their source's name, prefixed with the source's root when two sources use the
    same name (e.g. ``Images/001`` under both VideosWithPolyps and VideosWithoutPolyps).
    """

    def __init__(self, sources: Sequence[FrameSource]) -> None:
        if not sources:
            raise FpsiamError("an empty list of frame sources; pass at least one folder, video or json")
        self.sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self.sources]).astype(np.int64)
        self._ends_list = self._ends.tolist()
        self._video_offsets = np.cumsum([0] + [len(s.video_names) for s in self.sources]).astype(np.int64)
        names = [n for s in self.sources for n in s.video_names]
        if len(set(names)) != len(names):
            names = [
                f"{getattr(s, 'root', None) or getattr(s, 'ann', None) or f'source{k}'}/{n}"
                for k, s in enumerate(self.sources)
                for n in s.video_names
            ]
        self.video_names = names

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _locate(self, i: int) -> tuple[FrameSource, int, int]:
        i = self._check(i)
        k = bisect.bisect_right(self._ends_list, i)
        start = self._ends_list[k - 1] if k else 0
        return self.sources[k], k, i - start

    def read(self, i: int) -> torch.Tensor:
        source, _, j = self._locate(i)
        return source.read(j)

    def path_of(self, i: int) -> str:
        source, _, j = self._locate(i)
        return source.path_of(j)

    def video_index(self, i: int) -> int:
        source, k, j = self._locate(i)
        return int(self._video_offsets[k]) + source.video_index(j)

    def frame_index(self, i: int) -> int:
        source, _, j = self._locate(i)
        return source.frame_index(j)

    def neighbour(self, i: int, k: int, generator: torch.Generator | None = None) -> int:
        source, s, j = self._locate(i)
        return (self._ends_list[s - 1] if s else 0) + source.neighbour(j, k, generator)

    def index_nbytes(self) -> int:
        return sum(s.index_nbytes() for s in self.sources) + int(self._ends.nbytes + self._video_offsets.nbytes)

    def __repr__(self) -> str:
        return f"ConcatFrames({', '.join(map(repr, self.sources))})"


# ---------------------------------------------------------------------------------------------- entry


def open_frames(
    src: str | os.PathLike | Sequence[str | os.PathLike], stride: int = 1, images: str | None = None
) -> FrameSource:
    """Open a frame source: an image folder tree, a video file or folder, a COCO json, or a list of them.

    ``stride`` keeps every n-th frame of each video (or of the stills of a COCO json); ``images`` is the
    images root for a COCO json (default: the json's info.images_root, else its folder).
    """
    stride = _check_stride(stride)
    if isinstance(src, (list, tuple)):
        sources = [open_frames(s, stride=stride, images=images) for s in src]
        return sources[0] if len(sources) == 1 else ConcatFrames(sources)
    path = Path(src)
    if not path.exists():
        raise FpsiamError(f"{path}: no such file or folder; pass a folder of frames, a video or a COCO json")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return CocoFrames(path, images=images, stride=stride)
        if suffix in VIDEO_EXTENSIONS:
            return VideoFrames([path], stride=stride)
        raise FpsiamError(
            f"{path}: not a frame source; pass a folder of images, a video ({', '.join(VIDEO_EXTENSIONS)}) "
            "or a COCO json"
        )
    if not path.is_dir():
        raise FpsiamError(f"{path}: neither a file nor a folder")
    tree = ImageFolderFrames._scan_only(path, stride)  # one walk finds both images and videos
    if tree.video_files and len(tree):
        raise FpsiamError(
            f"{path}: holds both image files and video files; pass the frames folder and the videos "
            "folder separately (a list of sources), so no frame is counted twice"
        )
    if len(tree):
        return tree
    if not tree.video_files:
        raise FpsiamError(
            f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) or videos ({', '.join(VIDEO_EXTENSIONS)}) "
            "found at any depth; pass a folder of frames, a video file or folder, or a COCO json"
        )
    return VideoFrames(
        [os.path.join(path, v) for v in tree.video_files],
        names=[Path(v).as_posix() for v in tree.video_files],
        stride=stride,
    )
