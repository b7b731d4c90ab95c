"""What every converter shares: options, counts, records, the box policy, the assembly of the COCO json,
and the helpers for reading annotation files and naming videos and frames.

Format modules (:mod:`fpsiam.data.formats`) import from here; :mod:`fpsiam.data.convert` imports both this
module and the format modules (for its table) and re-exports everything, so there is no import cycle. The
rules implemented here are described under "Common to every format" in :mod:`fpsiam.data.convert`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fpsiam.data.cocojson import POLYP_CATEGORY, anchor_file_names, new_coco
from fpsiam.errors import FpsiamError
from fpsiam.fileio import parse_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# ---------------------------------------------------------------------------------------------- options


@dataclass
class ConvertOptions:
    """Policies for imperfect sources (each change is counted in the report)."""

    clip_boxes: bool = False  # clip boxes that overhang the image instead of failing
    drop_degenerate: bool = False  # drop zero/negative-area boxes instead of failing
    min_area: int = 64  # masks: connected components smaller than this (pixels) are dropped
    video_pattern: str | None = None  # regex with (?P<video>...) and optionally (?P<frame>...)
    sequences: str | Path | None = None  # masks: csv image -> video (default: SRC/sequences.csv if present)


@dataclass
class _Counts:
    """What the policies changed; written to ``info["conversion"]``."""

    clipped_boxes: int = 0
    dropped_degenerate: int = 0
    dropped_components: int = 0
    unannotated_images: int = 0
    images_not_found: int = 0


# ---------------------------------------------------------------------------------------------- records


class Box(NamedTuple):
    """One box as read from a source, corners in pixels (exclusive right/bottom), before any policy."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    where: str = ""  # "file:line" or "file: object n", for error messages
    label: str | None = None  # the source's class name (kept as ``subclass`` unless it is "polyp")
    track_id: int | str | None = None
    ann_id: int | None = None  # kept by the coco converter
    extra: dict | None = None  # more annotation fields kept by the coco converter


@dataclass
class _Frame:
    path: Path  # the image file
    width: int
    height: int
    boxes: list[Box]
    video_id: str | None = None
    frame_index: int | None = None
    image_id: int | None = None  # kept by the coco converter
    extra: dict = field(default_factory=dict)  # more image fields kept by the coco converter


# ---------------------------------------------------------------------------------------------- helpers


def decode_text(data: bytes, path: Path | str) -> str:
    """Decode an annotation file as UTF-8 (a BOM is allowed); errors name the file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FpsiamError(f"{path}: not a UTF-8 text file (byte {e.start}); is this an annotation file?") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise FpsiamError(f"{path}: cannot read ({e.strerror})") from None


def _load_json(path: Path) -> Any:
    return parse_json(decode_text(_read_bytes(path), path), path)


def _index_images(folder: Path, recursive: bool = True, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict:
    """``{relative path without extension (posix): file}`` for the image files in ``folder``."""
    if not folder.is_dir():
        raise FpsiamError(f"{folder}: images folder not found; pass the right folder (or --images DIR)")
    files = folder.rglob("*") if recursive else folder.iterdir()
    index: dict[str, Path] = {}
    for path in sorted(files):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in index:
            raise FpsiamError(f"{path}: same name as {index[key]} with another extension; remove one of them")
        index[key] = path
    return index


def _trailing_number(stem: str) -> int | None:
    m = re.search(r"([0-9]+)$", stem)
    return int(m.group(1)) if m else None


def _is_int(s: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]{1,18}", s) is not None


def _compile_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise FpsiamError(f"--video-pattern {pattern!r}: not a valid regular expression ({e})") from None
    if "video" not in rx.groupindex:
        raise FpsiamError(f"--video-pattern {pattern!r}: needs a named group (?P<video>...)")
    return rx


def _video_frame(
    rx: re.Pattern | None, path_key: str, default: tuple[str | None, int | None], where: Path | str
) -> tuple[str | None, int | None]:
    """Video id and frame index of one image: ``--video-pattern`` when given, else ``default``."""
    if rx is None:
        return default
    stem = path_key.rsplit("/", 1)[-1]
    for text in (stem, path_key):
        m = rx.search(text)
        if m and m.group("video"):
            break
    else:
        raise FpsiamError(f"{where}: file name does not match --video-pattern {rx.pattern!r}; fix the pattern")
    frame = _trailing_number(stem)
    if "frame" in rx.groupindex and m.group("frame"):
        try:
            frame = int(m.group("frame"))
        except ValueError:
            raise FpsiamError(
                f"{where}: --video-pattern group 'frame' matched {m.group('frame')!r}, not an integer"
            ) from None
    return m.group("video"), frame


def _fmt_box(b: Box) -> str:
    return f"(xmin {b.xmin:g}, ymin {b.ymin:g}, xmax {b.xmax:g}, ymax {b.ymax:g})"


def apply_box_policy(
    box: Box, width: int, height: int, options: ConvertOptions, counts: _Counts | None = None
) -> tuple[float, float, float, float] | None:
    """Check one box against its image: the box to keep, or None when dropped; errors name ``box.where``."""
    counts = counts if counts is not None else _Counts()
    x0, y0, x1, y1 = box.xmin, box.ymin, box.xmax, box.ymax
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise FpsiamError(f"{box.where}: box {_fmt_box(box)} has a NaN or infinite coordinate; fix it")
    if x1 <= x0 or y1 <= y0:
        if options.drop_degenerate:
            counts.dropped_degenerate += 1
            return None
        raise FpsiamError(
            f"{box.where}: box {_fmt_box(box)} has zero or negative area; fix it or pass --drop-degenerate"
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        if not options.clip_boxes:
            raise FpsiamError(
                f"{box.where}: box {_fmt_box(box)} lies outside the {width}x{height} image; fix it or pass "
                "--clip-boxes to clip boxes that overhang"
            )
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            if options.drop_degenerate:
                counts.dropped_degenerate += 1
                return None
            raise FpsiamError(
                f"{box.where}: box {_fmt_box(box)} lies entirely outside the {width}x{height} image; fix it "
                "or pass --drop-degenerate to drop it"
            )
        counts.clipped_boxes += 1
    return x0, y0, x1, y1


def _num(v: float) -> int | float:
    """Integral values as int (clean json), others as float."""
    return int(v) if float(v).is_integer() else float(v)


def _assemble(
    frames: list[_Frame], src: Path, out: Path, options: ConvertOptions, counts: _Counts, fmt: str
) -> dict[str, Any]:
    """Apply the box policies, sort, number and build the COCO dict (counts go to ``info``)."""
    if not frames:
        raise FpsiamError(f"{src}: no annotated images found; check SRC (and --images) for --format {fmt}")
    images_root, names = anchor_file_names([f.path for f in frames], out)
    named = list(zip(names, frames, strict=True))
    named.sort(key=lambda t: (t[1].video_id or "", -1 if t[1].frame_index is None else t[1].frame_index, t[0]))
    keep_ids = all(f.image_id is not None for f in frames)
    keep_ann_ids = all(b.ann_id is not None for f in frames for b in f.boxes)
    images, annotations = [], []
    for number, (file_name, f) in enumerate(named, start=1):
        image_id = f.image_id if keep_ids else number
        record: dict[str, Any] = {"id": image_id, "file_name": file_name, "width": f.width, "height": f.height}
        if f.video_id is not None:
            record["video_id"] = str(f.video_id)
        if f.frame_index is not None:
            record["frame_index"] = int(f.frame_index)
        record.update(f.extra)
        images.append(record)
        for box in f.boxes:
            kept = apply_box_policy(box, f.width, f.height, options, counts)
            if kept is None:
                continue
            x0, y0, x1, y1 = (_num(v) for v in kept)
            w, h = _num(round(x1 - x0, 6)), _num(round(y1 - y0, 6))  # no float noise like 17.755000000000003
            ann: dict[str, Any] = {
                "id": box.ann_id if keep_ann_ids else len(annotations) + 1,
                "image_id": image_id,
                "category_id": POLYP_CATEGORY["id"],
                "bbox": [x0, y0, w, h],
                "area": _num(round(w * h, 6)),
                "iscrowd": 0,
            }
            if box.track_id is not None:
                ann["track_id"] = box.track_id
            if box.label is not None and box.label.strip().lower() != "polyp":
                ann["subclass"] = box.label
            if box.extra:
                ann.update(box.extra)
            annotations.append(ann)
    info = {
        "description": f"converted by fpsiam from {fmt}",
        "source": str(src),
        "images_root": images_root,
        "conversion": {
            "format": fmt,
            **asdict(counts),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        },
    }
    return new_coco(images, annotations, info=info)
