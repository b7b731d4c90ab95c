"""Every public polyp format -> COCO json (docs/data.md), the project's one internal format.

Each ``from_<format>(src, out, options, images=None)`` reads one source format and returns the COCO dict
(conventions in :mod:`fpsiam.data.cocojson`); :func:`convert_dataset` dispatches on the format name,
writes the json atomically and returns a :class:`ConvertReport`. Sources and the choices made for each:

``ldpolypvideo``
    SRC is the dataset root (holding ``TrainValid/`` and/or ``Test/``), a split folder (holding
    ``Images/`` and ``Annotations/``) or an ``Annotations/`` folder. One txt per frame,
    ``Annotations/<video>/<idx>.txt``: the first line is the number of boxes N, then N lines
    ``xmin ymin xmax ymax`` (integers). N = 0 frames are kept as negative frames; images without a txt
    are skipped (and counted). ``video_id`` = ``<split>/<video>`` from the root, ``<video>`` from a split
    folder; ``frame_index`` = ``int(idx)``. ``--images`` replaces the ``Images/`` folder of a split.
``kvasir``
    SRC is the Kvasir-SEG root (``kavsir_bboxes.json`` + ``images/``) or the json itself:
    ``{id: {height, width, bbox: [{label, xmin, ymin, xmax, ymax}]}}`` with exclusive ``xmax``/``ymax``.
``masks``
    SRC holds an images folder (``images``, ``Images`` or ``Original``) and a masks folder (``masks``,
    ``Masks``, ``Ground Truth`` or ``GroundTruth``); or SRC is the masks folder and ``--images`` the
    images folder. Masks pair with images by relative path without extension (a mask may be named
    ``<stem>_mask``; its extension may differ). Boxes are the 8-connected components of ``mask >= 128``;
    components under ``min_area`` pixels are dropped (counted). Sub-folders are videos (SUN-SEG's
    ``GT/<case>/``). CVC-ClinicDB's 29 sequences: ``--video-pattern`` or a ``sequences.csv`` in SRC
    (or ``ConvertOptions.sequences``) with columns ``image`` (file name or stem), ``video`` and optionally
    ``frame``.
``voc``
    SRC is a folder of Pascal-VOC XML files (any depth; KUMC). Every object is a polyp; its original
    ``<name>`` (KUMC: adenomatous / hyperplastic) is kept as the annotation's ``subclass``, an
    ``<trackid>``/``<track_id>`` as ``track_id``. Coordinates are taken as pixel edges (``w = xmax -
    xmin``). The image is looked up by ``<filename>`` or the XML's stem, beside the XML, in the folder
    that mirrors ``Annotations``/``Annotation`` as ``JPEGImages``/``Images``/``Image``/``images``, or
    under ``--images`` (mirroring the XML's sub-folder). The folder of the XML below SRC (without an
    ``Annotation(s)`` component) is the video; the trailing number of the file name the frame index.
``yolo``
    SRC holds ``images/`` and ``labels/`` (at any depth), or is a ``labels/`` folder (``--images`` for
    the images). One ``class cx cy w h`` line per box, normalised to 0-1; every class is polyp; an image
    without a label file is a negative frame (the YOLO convention). Sub-folders are splits by YOLO
    convention, not videos: video ids come only from ``--video-pattern``. Pixel coordinates are rounded
    to 1/1000 pixel, which absorbs float round-off in label writers.
``coco``
    SRC is a COCO json (CVC-VideoClinicDB, SUN-SEG) to validate and normalise: every category becomes
    polyp (id 1; a non-"polyp" category name is kept as ``subclass``), boxes are checked and ``area``
    recomputed, video/frame aliases become ``video_id`` (str) / ``frame_index`` (int), track aliases
    become ``track_id``. Ids are kept; duplicate ids are an error. ``file_name`` is rewritten relative to
    the output json; an image that is not found keeps the json's width/height (counted in the report).

Common to every format: ``--video-pattern`` (a regex with named groups ``video`` and optionally
``frame``) is searched in the file stem, then in the path without extension, and overrides the folder
structure; a file it does not match is an error. ``frame_index`` is only written together with a
``video_id``. Image sizes come from the image header (PIL opens lazily; nothing is decoded). Images are
sorted by (video, frame, file name) and numbered from 1. A box outside its image is an error unless
``clip_boxes`` (clipped, counted); a zero/negative-area box is an error unless ``drop_degenerate``
(dropped, counted). The counts are stored in ``info["conversion"]`` of the output.
"""

from __future__ import annotations

import csv
import io
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from fpsiam.data.cocojson import POLYP_CATEGORY, image_root, load_coco, new_coco, relative_file_name, save_coco
from fpsiam.data.images import image_size
from fpsiam.errors import FpsiamError
from fpsiam.fileio import parse_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("ldpolypvideo", "kvasir", "masks", "voc", "yolo", "coco")

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


@dataclass
class ConvertReport:
    """Summary of one conversion; :meth:`lines` is what the CLI prints."""

    format: str
    output: Path
    images: int
    boxes: int
    negative_frames: int
    videos: int
    clipped_boxes: int = 0
    dropped_degenerate: int = 0
    dropped_components: int = 0
    unannotated_images: int = 0
    images_not_found: int = 0

    @classmethod
    def from_coco(cls, coco: dict[str, Any], fmt: str, output: Path) -> ConvertReport:
        with_boxes = {a["image_id"] for a in coco["annotations"]}
        videos = {im["video_id"] for im in coco["images"] if im.get("video_id") is not None}
        counts = coco.get("info", {}).get("conversion", {})
        return cls(
            format=fmt,
            output=Path(output),
            images=len(coco["images"]),
            boxes=len(coco["annotations"]),
            negative_frames=sum(im["id"] not in with_boxes for im in coco["images"]),
            videos=len(videos),
            **{k: int(counts.get(k, 0)) for k in asdict(_Counts())},
        )

    def lines(self) -> list[str]:
        lines = [
            f"wrote {self.output} (from {self.format})",
            f"images: {self.images}",
            f"boxes: {self.boxes}",
            f"negative frames (no box): {self.negative_frames}",
            f"videos: {self.videos}",
            f"boxes clipped to the image (--clip-boxes): {self.clipped_boxes}",
            f"degenerate boxes dropped (--drop-degenerate): {self.dropped_degenerate}",
            f"mask components dropped under --min-area: {self.dropped_components}",
        ]
        if self.unannotated_images:
            lines.append(f"images without an annotation file (skipped): {self.unannotated_images}")
        if self.images_not_found:
            lines.append(f"images not found (width/height taken from the json): {self.images_not_found}")
        return lines


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


class VocRecord(NamedTuple):
    """What one Pascal-VOC XML file says."""

    filename: str | None
    width: int | None
    height: int | None
    boxes: list[Box]


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
    named = [(relative_file_name(f.path, out), f) for f in frames]
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
        "conversion": {
            "format": fmt,
            **asdict(counts),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        },
    }
    return new_coco(images, annotations, info=info)


# ---------------------------------------------------------------------------------------------- ldpolypvideo


def parse_ldpolyp_txt(text: str, path: Path | str) -> list[Box]:
    """LDPolypVideo's per-frame txt: the number of boxes N, then N lines ``xmin ymin xmax ymax`` (integers).

    Blank lines are ignored; fields may be separated by spaces, tabs or commas.
    """
    lines = [(n, line.replace(",", " ").split()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, fields) for n, fields in lines if fields]
    if not lines:
        raise FpsiamError(f"{path}: empty; the first line must be the number of boxes (0 for no polyp)")
    n0, first = lines[0]
    if len(first) != 1 or not _is_int(first[0]) or int(first[0]) < 0:
        raise FpsiamError(
            f"{path}:{n0}: the first line must be the number of boxes (a non-negative integer), got {' '.join(first)!r}"
        )
    count = int(first[0])
    rows = lines[1:]
    if len(rows) != count:
        where = f"{path}:{rows[count][0]}" if len(rows) > count else f"{path}"
        raise FpsiamError(
            f"{where}: the first line says {count} box(es) but {len(rows)} box line(s) follow; "
            "fix the count or the lines"
        )
    boxes = []
    for n, fields in rows:
        if len(fields) != 4 or not all(_is_int(v) for v in fields):
            raise FpsiamError(f"{path}:{n}: expected 4 integers 'xmin ymin xmax ymax', got {' '.join(fields)!r}")
        x0, y0, x1, y1 = (int(v) for v in fields)
        boxes.append(Box(x0, y0, x1, y1, where=f"{path}:{n}"))
    return boxes


def _is_int(s: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]{1,18}", s) is not None


def _ldpolyp_splits(src: Path, images: str | None) -> list[tuple[str | None, Path, Path]]:
    """(split name or None, Annotations folder, Images folder) for each split under SRC."""
    if src.name == "Annotations" and src.is_dir():
        return [(None, src, Path(images) if images else src.parent / "Images")]
    if (src / "Annotations").is_dir():
        return [(None, src / "Annotations", Path(images) if images else src / "Images")]
    splits = [d for d in sorted(src.iterdir()) if d.is_dir() and (d / "Annotations").is_dir()]
    if not splits:
        raise FpsiamError(
            f"{src}: no Annotations/ folder here or in a split folder (TrainValid/, Test/); pass the "
            "LDPolypVideo root or one split folder"
        )
    if images:
        raise FpsiamError(f"--images works with a split folder as SRC (e.g. {splits[0]}), not the dataset root")
    return [(d.name, d / "Annotations", d / "Images") for d in splits]


def from_ldpolypvideo(
    src: Path, out: Path, options: ConvertOptions | None = None, images: str | None = None
) -> dict[str, Any]:
    """LDPolypVideo labelled frames (``{TrainValid,Test}/{Images,Annotations}/<video>/<idx>``) -> COCO."""
    src, options, counts = Path(src), options or ConvertOptions(), _Counts()
    if not src.is_dir():
        raise FpsiamError(f"{src}: not a folder; pass the LDPolypVideo root or a split folder")
    rx = _compile_pattern(options.video_pattern)
    frames = []
    for split, ann_dir, img_dir in _ldpolyp_splits(src, images):
        index = _index_images(img_dir)
        used = set()
        for txt in sorted(ann_dir.rglob("*.txt")):
            key = txt.relative_to(ann_dir).with_suffix("").as_posix()
            if key not in index:
                raise FpsiamError(
                    f"{txt}: no image {img_dir / key}.* for this annotation; restore the image or remove the txt"
                )
            used.add(key)
            path = index[key]
            width, height = image_size(path)
            boxes = parse_ldpolyp_txt(decode_text(_read_bytes(txt), txt), txt)
            folder = key.rsplit("/", 1)[0] if "/" in key else None
            video = f"{split}/{folder}" if split and folder else folder
            video, frame = _video_frame(rx, key, (video, _trailing_number(path.stem)), path)
            frames.append(_Frame(path, width, height, boxes, video, frame))
        counts.unannotated_images += len(index.keys() - used)
    return _assemble(frames, src, out, options, counts, "ldpolypvideo")


# ---------------------------------------------------------------------------------------------- kvasir


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def from_kvasir(
    src: Path, out: Path, options: ConvertOptions | None = None, images: str | None = None
) -> dict[str, Any]:
    """Kvasir-SEG's official ``kavsir_bboxes.json`` -> COCO (stills: no video ids)."""
    src, options, counts = Path(src), options or ConvertOptions(), _Counts()
    json_path = src / "kavsir_bboxes.json" if src.is_dir() else src
    if not json_path.is_file():
        raise FpsiamError(f"{json_path}: not found; pass the Kvasir-SEG folder or its kavsir_bboxes.json")
    img_dir = Path(images) if images else json_path.parent / "images"
    data = _load_json(json_path)
    if not isinstance(data, dict):
        raise FpsiamError(f"{json_path}: expected an object {{id: {{height, width, bbox: [...]}}}}")
    index = _index_images(img_dir, recursive=False)
    frames = []
    for key in sorted(data):
        entry, where = data[key], f"{json_path}: '{key}'"
        if not isinstance(entry, dict) or not isinstance(entry.get("bbox"), list):
            raise FpsiamError(f"{where}: expected {{height, width, bbox: [{{xmin, ymin, xmax, ymax}}]}}")
        if key not in index:
            raise FpsiamError(f"{where}: no image {img_dir / key}.*; restore it or pass --images DIR")
        path = index[key]
        width, height = image_size(path)
        if (entry.get("width"), entry.get("height")) != (width, height):
            raise FpsiamError(
                f"{where}: says {entry.get('width')}x{entry.get('height')} but {path} is {width}x{height}; "
                "fix the json or the image"
            )
        boxes = []
        for i, b in enumerate(entry["bbox"], start=1):
            bwhere = f"{where} box {i}"
            if not isinstance(b, dict) or not all(_finite_number(b.get(k)) for k in ("xmin", "ymin", "xmax", "ymax")):
                raise FpsiamError(f"{bwhere}: needs numbers xmin, ymin, xmax, ymax; got {b!r}")
            label = b.get("label") if isinstance(b.get("label"), str) else None
            boxes.append(Box(b["xmin"], b["ymin"], b["xmax"], b["ymax"], where=bwhere, label=label))
        frames.append(_Frame(path, width, height, boxes))
    return _assemble(frames, json_path, out, options, counts, "kvasir")


# ---------------------------------------------------------------------------------------------- masks

_MASK_DIRS = ("masks", "Masks", "Ground Truth", "GroundTruth")
_IMAGE_DIRS = ("images", "Images", "Original")


def mask_boxes(mask: np.ndarray, min_area: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """Boxes (xmin, ymin, xmax, ymax; exclusive) of the 8-connected components of ``mask >= 128``.

    Returns the boxes and the number of components dropped for having fewer than ``min_area`` pixels.
    """
    labels, n = ndimage.label(mask >= 128, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return [], 0
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    boxes, dropped = [], 0
    for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        if areas[i] < min_area:
            dropped += 1
            continue
        boxes.append((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)))
    return boxes, dropped


def _read_mask(path: Path) -> np.ndarray:
    image_size(path)  # the pixel limit, before decoding
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FpsiamError(f"{path}: cannot decode the mask ({type(e).__name__}: {e}); replace or remove it") from None


def read_sequences(path: Path) -> dict[str, tuple[str, int | None]]:
    """A sequence table (csv with columns ``image``, ``video`` and optionally ``frame``): stem -> (video, frame)."""
    text = decode_text(_read_bytes(path), path)
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in reader.fieldnames or []]
    if "image" not in fields or "video" not in fields:
        raise FpsiamError(f"{path}:1: a sequence table needs the columns 'image' and 'video' (and optionally 'frame')")
    table: dict[str, tuple[str, int | None]] = {}
    for row in reader:
        row = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
        line = reader.line_num
        if not row.get("image") or not row.get("video"):
            raise FpsiamError(f"{path}:{line}: empty 'image' or 'video'")
        frame = row.get("frame") or None
        if frame is not None and not _is_int(frame):
            raise FpsiamError(f"{path}:{line}: 'frame' must be an integer, got {frame!r}")
        stem = Path(row["image"]).stem if Path(row["image"]).suffix.lower() in IMAGE_SUFFIXES else row["image"]
        if stem in table:
            raise FpsiamError(f"{path}:{line}: image {row['image']!r} listed twice")
        table[stem] = (row["video"], int(frame) if frame is not None else None)
    return table


def from_masks(
    src: Path, out: Path, options: ConvertOptions | None = None, images: str | None = None
) -> dict[str, Any]:
    """Binary masks (Kvasir-SEG, CVC-ClinicDB, PolypGen, SUN-SEG) -> one box per connected component."""
    src, options, counts = Path(src), options or ConvertOptions(), _Counts()
    if not src.is_dir():
        raise FpsiamError(f"{src}: not a folder; pass a folder with images/ and masks/ (or the masks folder)")
    if options.min_area < 0:
        raise FpsiamError(f"--min-area must be >= 0, got {options.min_area}")
    rx = _compile_pattern(options.video_pattern)
    mask_dir = next((src / d for d in _MASK_DIRS if (src / d).is_dir()), None)
    if mask_dir is None:
        if not images:
            raise FpsiamError(
                f"{src}: no masks folder ({', '.join(_MASK_DIRS)}); pass the masks folder as SRC with --images DIR"
            )
        mask_dir = src
    if images:
        img_dir = Path(images)
    else:
        img_dir = next((src / d for d in _IMAGE_DIRS if (src / d).is_dir()), None)
        if img_dir is None:
            raise FpsiamError(f"{src}: no images folder ({', '.join(_IMAGE_DIRS)}); pass --images DIR")
    seq_path = Path(options.sequences) if options.sequences else src / "sequences.csv"
    if options.sequences and not seq_path.is_file():
        raise FpsiamError(f"{seq_path}: sequence table not found")
    table = read_sequences(seq_path) if seq_path.is_file() else None
    masks = _index_images(mask_dir)
    image_index = _index_images(img_dir)
    if not masks:
        raise FpsiamError(f"{mask_dir}: no mask images found")
    frames, used = [], set()
    for key, mask_path in masks.items():
        image_key = key if key in image_index else key.removesuffix("_mask")
        if image_key not in image_index:
            raise FpsiamError(
                f"{mask_path}: no image {img_dir / image_key}.* for this mask; restore it or pass --images"
            )
        used.add(image_key)
        path = image_index[image_key]
        width, height = image_size(path)
        mask = _read_mask(mask_path)
        if mask.shape != (height, width):
            raise FpsiamError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {path} is {width}x{height}; "
                "fix the pair"
            )
        found, dropped = mask_boxes(mask, options.min_area)
        counts.dropped_components += dropped
        boxes = [Box(*b, where=str(mask_path)) for b in found]
        if table is not None:
            if path.stem not in table:
                raise FpsiamError(f"{seq_path}: no row for image {path.name}; add it (columns image, video, frame)")
            video, frame = table[path.stem]
            default = (video, frame if frame is not None else _trailing_number(path.stem))
        else:
            folder = image_key.rsplit("/", 1)[0] if "/" in image_key else None
            default = (folder, _trailing_number(path.stem) if folder else None)
        video, frame = _video_frame(rx, image_key, default, path)
        frames.append(_Frame(path, width, height, boxes, video, frame))
    counts.unannotated_images += len(image_index.keys() - used)
    return _assemble(frames, src, out, options, counts, "masks")


# ---------------------------------------------------------------------------------------------- voc


def _voc_number(parent: ET.Element, tag: str, path: Path | str, what: str) -> float | None:
    text = parent.findtext(tag)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise FpsiamError(f"{path}: {what} <{tag}> is {text.strip()!r}, not a number") from None
    if not math.isfinite(value):
        raise FpsiamError(f"{path}: {what} <{tag}> is {text.strip()!r}; must be a finite number")
    return value


def parse_voc_xml(text: str | bytes, path: Path | str) -> VocRecord:
    """One Pascal-VOC annotation: ``<filename>``, ``<size>`` (None when absent or 0) and the objects' boxes."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        line = e.position[0] if e.position else "?"
        raise FpsiamError(f"{path}:{line}: not valid XML ({e}); fix or regenerate the file") from None
    except (ValueError, LookupError) as e:
        raise FpsiamError(f"{path}: not valid XML ({e}); fix or regenerate the file") from None
    if root.tag != "annotation":
        raise FpsiamError(f"{path}: root element is <{root.tag}>, not <annotation>; is this a Pascal-VOC file?")
    width = height = None
    size = root.find("size")
    if size is not None:
        w = _voc_number(size, "width", path, "<size>")
        h = _voc_number(size, "height", path, "<size>")
        if w and h:  # absent or 0 (written by some tools) means unknown
            if w < 0 or h < 0 or not w.is_integer() or not h.is_integer() or max(w, h) > 1e6:
                raise FpsiamError(f"{path}: <size> {w:g}x{h:g} is not a valid image size")
            width, height = int(w), int(h)
    boxes = []
    for i, obj in enumerate(root.findall("object"), start=1):
        what = f"object {i}"
        bnd = obj.find("bndbox")
        if bnd is None:
            raise FpsiamError(f"{path}: {what} has no <bndbox>; fix or remove it")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            value = _voc_number(bnd, tag, path, f"{what} <bndbox>")
            if value is None:
                raise FpsiamError(f"{path}: {what} <bndbox> has no <{tag}>")
            coords.append(value)
        name = (obj.findtext("name") or "").strip() or None
        tracks = [(obj.findtext(t) or "").strip() for t in ("trackid", "track_id", "instance_id")]
        track = next((t for t in tracks if t), None)
        track_id = int(track) if track is not None and _is_int(track) else track
        boxes.append(Box(*coords, where=f"{path}: {what}", label=name, track_id=track_id))
    filename = (root.findtext("filename") or "").strip() or None
    return VocRecord(filename, width, height, boxes)


_ANN_DIR_NAMES = ("annotations", "annotation")
_VOC_IMAGE_DIRS = ("JPEGImages", "Images", "Image", "images", "image")


def _voc_image(xml: Path, src: Path, filename: str | None, images: str | None) -> tuple[Path | None, list[Path]]:
    """Find the image of one XML; returns it (or None) and the folders searched."""
    rel_dir = xml.parent.relative_to(src)
    if images:
        mirrored = Path(*[p for p in rel_dir.parts if p.lower() not in _ANN_DIR_NAMES])
        roots = list(dict.fromkeys([Path(images) / mirrored, Path(images) / rel_dir, Path(images)]))
    else:
        roots = [xml.parent]
        parts = xml.parent.parts
        for i, part in enumerate(parts):
            if part.lower() in _ANN_DIR_NAMES:
                roots += [Path(*parts[:i], name, *parts[i + 1 :]) for name in _VOC_IMAGE_DIRS]
    stems = dict.fromkeys(([Path(filename).stem] if filename else []) + [xml.stem])
    names = ([Path(filename).name] if filename else []) + [
        s + ext for s in stems for ext in IMAGE_SUFFIXES + tuple(e.upper() for e in IMAGE_SUFFIXES)
    ]
    for root in roots:
        if root.is_dir():
            for name in names:
                if (root / name).is_file():
                    return root / name, roots
    return None, roots


def from_voc(src: Path, out: Path, options: ConvertOptions | None = None, images: str | None = None) -> dict[str, Any]:
    """Pascal-VOC XML per frame (KUMC) -> COCO; folders are videos, object names kept as ``subclass``."""
    src, options, counts = Path(src), options or ConvertOptions(), _Counts()
    if not src.is_dir():
        raise FpsiamError(f"{src}: not a folder; pass the folder holding the .xml annotations")
    rx = _compile_pattern(options.video_pattern)
    xmls = sorted(
        p for p in src.rglob("*") if p.suffix.lower() == ".xml" and p.is_file() and not p.name.startswith(".")
    )
    if not xmls:
        raise FpsiamError(f"{src}: no .xml files found; pass the folder holding the Pascal-VOC annotations")
    frames = []
    for xml in xmls:
        record = parse_voc_xml(_read_bytes(xml), xml)
        path, searched = _voc_image(xml, src, record.filename, images)
        if path is None:
            looked = ", ".join(str(r) for r in searched[:4])
            what = "no <size> in the XML and no image" if record.width is None else "image not found"
            raise FpsiamError(
                f"{xml}: {what} ({record.filename or xml.stem + '.*'} looked for in {looked}); pass --images DIR"
            )
        width, height = image_size(path)
        if record.width is not None and (record.width, record.height) != (width, height):
            raise FpsiamError(
                f"{xml}: <size> says {record.width}x{record.height} but {path} is {width}x{height}; fix the XML"
            )
        rel_parts = [p for p in xml.parent.relative_to(src).parts if p.lower() not in _ANN_DIR_NAMES]
        folder = "/".join(rel_parts) or None
        key = "/".join([*rel_parts, xml.stem])
        video, frame = _video_frame(rx, key, (folder, _trailing_number(xml.stem) if folder else None), xml)
        frames.append(_Frame(path, width, height, record.boxes, video, frame))
    return _assemble(frames, src, out, options, counts, "voc")


# ---------------------------------------------------------------------------------------------- yolo


def parse_yolo_txt(text: str, path: Path | str, width: int, height: int) -> list[Box]:
    """YOLO labels: one ``class cx cy w h`` line per box, normalised to 0-1; corners in pixels.

    Pixel coordinates are rounded to 1/1000 pixel. Blank lines are ignored; an empty file is a negative.
    """
    boxes = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise FpsiamError(f"{path}:{n}: expected 5 fields 'class cx cy w h' (normalised 0-1), got {len(fields)}")
        if not _is_int(fields[0]) or int(fields[0]) < 0:
            raise FpsiamError(f"{path}:{n}: class {fields[0]!r} is not a non-negative integer")
        try:
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise FpsiamError(f"{path}:{n}: 'cx cy w h' must be numbers, got {' '.join(fields[1:])!r}") from None
        corners = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        if not all(math.isfinite(v) for v in (cx, cy, w, h, *corners)):
            raise FpsiamError(f"{path}:{n}: NaN, infinite or huge value in {' '.join(fields[1:])!r}; fix the line")
        boxes.append(Box(*(round(v, 3) for v in corners), where=f"{path}:{n}"))
    return boxes


def _yolo_pairs(src: Path, images: str | None) -> list[tuple[Path, Path]]:
    """(labels folder, images folder) pairs under SRC."""
    if images:
        return [(src, Path(images))]
    if (src / "labels").is_dir():
        return [(src / "labels", src / "images")]
    if src.name == "labels":
        return [(src, src.parent / "images")]
    pairs = [(d, d.parent / "images") for d in sorted(src.rglob("labels")) if d.is_dir()]
    pairs = [(lab, img) for lab, img in pairs if img.is_dir()]
    if not pairs:
        raise FpsiamError(f"{src}: no images/ + labels/ folders found; pass the YOLO dataset folder (or --images)")
    return pairs


def from_yolo(src: Path, out: Path, options: ConvertOptions | None = None, images: str | None = None) -> dict[str, Any]:
    """YOLO txt labels (``images/`` + ``labels/`` siblings) -> COCO; images without labels are negatives."""
    src, options, counts = Path(src), options or ConvertOptions(), _Counts()
    if not src.is_dir():
        raise FpsiamError(f"{src}: not a folder; pass the YOLO dataset folder (images/ + labels/)")
    rx = _compile_pattern(options.video_pattern)
    frames = []
    for label_dir, img_dir in _yolo_pairs(src, images):
        index = _index_images(img_dir)
        labels = _index_images(label_dir, suffixes=(".txt",))
        labels.pop("classes", None)  # the class-name list some tools write beside the labels
        for key in sorted(labels.keys() - index.keys()):
            raise FpsiamError(
                f"{labels[key]}: no image {img_dir / key}.* for these labels; restore it or remove the txt"
            )
        for key, path in index.items():
            width, height = image_size(path)
            label = labels.get(key)
            boxes = (
                [] if label is None else parse_yolo_txt(decode_text(_read_bytes(label), label), label, width, height)
            )
            video, frame = _video_frame(rx, key, (None, None), path)
            frames.append(_Frame(path, width, height, boxes, video, frame))
    return _assemble(frames, src, out, options, counts, "yolo")


# ---------------------------------------------------------------------------------------------- coco

VIDEO_KEYS = ("video_id", "video", "video_name", "sequence", "sequence_id", "seq_id")
FRAME_KEYS = ("frame_index", "frame_id", "frame", "frame_number", "frame_no")
TRACK_KEYS = ("track_id", "instance_id", "polyp_id")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def from_coco(src: Path, out: Path, options: ConvertOptions | None = None, images: str | None = None) -> dict[str, Any]:
    """Validate and normalise an existing COCO json (CVC-VideoClinicDB, SUN-SEG) to the project's conventions."""
    src, options, counts = Path(src), options or ConvertOptions(), _Counts()
    data = load_coco(src)
    root = image_root(src, images)
    rx = _compile_pattern(options.video_pattern)
    categories = {}
    for c in data.get("categories") or []:
        if not isinstance(c, dict) or not _is_id(c.get("id")):
            raise FpsiamError(f"{src}: category {c!r} needs an integer 'id'")
        categories[c["id"]] = str(c.get("name", ""))
    frames: dict[int, _Frame] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise FpsiamError(f"{src}: image {str(im)[:80]} needs an integer 'id' and a 'file_name'")
        where = f"{src}: image {im['id']} ({im['file_name']})"
        if im["id"] in frames:
            raise FpsiamError(f"{where}: duplicate image id {im['id']}; image ids must be unique")
        path = root / im["file_name"]
        if path.is_file():
            width, height = image_size(path)
            if "width" in im and (im.get("width"), im.get("height")) != (width, height):
                raise FpsiamError(
                    f"{where}: says {im.get('width')}x{im.get('height')} but the file is {width}x{height}; fix it"
                )
        elif _is_id(im.get("width")) and _is_id(im.get("height")) and im["width"] > 0 and im["height"] > 0:
            width, height = im["width"], im["height"]
            counts.images_not_found += 1
        else:
            raise FpsiamError(f"{where}: image not found at {path} and no width/height in the json; pass --images DIR")
        video = next((im[k] for k in VIDEO_KEYS if im.get(k) is not None), None)
        frame = next((im[k] for k in FRAME_KEYS if im.get(k) is not None), None)
        if frame is not None:
            if isinstance(frame, bool) or not (_is_id(frame) or (isinstance(frame, str) and _is_int(frame))):
                raise FpsiamError(f"{where}: frame index {frame!r} is not an integer")
            frame = int(frame)
        key = Path(im["file_name"]).with_suffix("").as_posix()
        video, frame = _video_frame(rx, key, (None if video is None else str(video), frame), where)
        skip = {"id", "file_name", "width", "height", *VIDEO_KEYS, *FRAME_KEYS}
        extra = {k: v for k, v in im.items() if k not in skip}
        frames[im["id"]] = _Frame(path, width, height, [], video, frame, image_id=im["id"], extra=extra)
    ann_ids = set()
    for a in data["annotations"]:
        if not isinstance(a, dict) or not _is_id(a.get("id")):
            raise FpsiamError(f"{src}: annotation {str(a)[:80]} needs an integer 'id'")
        where = f"{src}: annotation {a['id']}"
        if a["id"] in ann_ids:
            raise FpsiamError(f"{where}: duplicate annotation id; annotation ids must be unique")
        ann_ids.add(a["id"])
        if not _is_id(a.get("image_id")) or a["image_id"] not in frames:
            raise FpsiamError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if not _is_id(a.get("category_id")) or a["category_id"] not in categories:
            raise FpsiamError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        bbox = a.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        ):
            raise FpsiamError(f"{where}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
        x, y, w, h = bbox
        track = next((a[k] for k in TRACK_KEYS if a.get(k) is not None), None)
        skip = {"id", "image_id", "category_id", "bbox", "area", *TRACK_KEYS}
        extra = {k: v for k, v in a.items() if k not in skip}
        name = categories[a["category_id"]]
        label = None if "subclass" in extra else name
        frame = frames[a["image_id"]]
        frame.boxes.append(
            Box(
                x,
                y,
                x + w,
                y + h,
                where=f"{where} (image {frame.path})",
                label=label,
                track_id=track,
                ann_id=a["id"],
                extra=extra,
            )
        )
    return _assemble(list(frames.values()), src, out, options, counts, "coco")


# ---------------------------------------------------------------------------------------------- dispatch

CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "ldpolypvideo": from_ldpolypvideo,
    "kvasir": from_kvasir,
    "masks": from_masks,
    "voc": from_voc,
    "yolo": from_yolo,
    "coco": from_coco,
}


def convert_dataset(
    fmt: str, src: Path, out: Path, images: str | None = None, options: ConvertOptions | None = None
) -> ConvertReport:
    """Convert ``src`` (format ``fmt``) to the COCO json ``out``, written atomically; returns the summary."""
    if fmt not in CONVERTERS:
        raise FpsiamError(f"unknown format {fmt!r}; choose one of {', '.join(CONVERTERS)}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FpsiamError(f"{src}: not found; pass the dataset folder or annotation file")
    if images is not None and not Path(images).is_dir():
        raise FpsiamError(f"--images {images}: not a folder")
    if out.is_dir():
        raise FpsiamError(f"{out}: is a folder; -o takes the path of the json file to write")
    coco = CONVERTERS[fmt](src, out, options or ConvertOptions(), images=images)
    save_coco(out, coco)
    return ConvertReport.from_coco(coco, fmt, out)
