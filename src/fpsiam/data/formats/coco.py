"""An existing COCO json -> the project's COCO conventions (``--format coco``).

SRC is a COCO json (CVC-VideoClinicDB, SUN-SEG) to validate and normalise: every category becomes polyp
(id 1; a non-"polyp" category name is kept as ``subclass``), boxes are checked and ``area`` recomputed,
video/frame aliases (:data:`VIDEO_KEYS`, :data:`FRAME_KEYS`) become ``video_id`` (str) / ``frame_index``
(int), track aliases (:data:`TRACK_KEYS`) become ``track_id``. Ids are kept; duplicate ids are an error.
The images are looked up relative to ``--images`` if given, else to the json's images root; ``file_name`` is
rewritten inside the output's ``info.images_root``; an image that is not found keeps the json's width/height (counted in
the report).

The shared rules (``--video-pattern``, sorting and numbering, the box policies and their counts) are
described under "Common to every format" in :mod:`fpsiam.data.convert`; they live in
:mod:`fpsiam.data.formats._common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fpsiam.data.cocojson import image_root, load_coco
from fpsiam.data.formats._common import (
    Box,
    ConvertOptions,
    _assemble,
    _compile_pattern,
    _Counts,
    _Frame,
    _is_int,
    _video_frame,
)
from fpsiam.data.images import image_size
from fpsiam.errors import FpsiamError

VIDEO_KEYS = ("video_id", "video", "video_name", "sequence", "sequence_id", "seq_id")
FRAME_KEYS = ("frame_index", "frame_id", "frame", "frame_number", "frame_no")
TRACK_KEYS = ("track_id", "instance_id", "polyp_id")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def from_coco(src: Path, out: Path, options: ConvertOptions | None = None, images: str | None = None) -> dict[str, Any]:
    """Validate and normalise an existing COCO json (CVC-VideoClinicDB, SUN-SEG) to the project's conventions."""
    src, options, counts = Path(src), options or ConvertOptions(), _Counts()
    data = load_coco(src)
    root = image_root(src, images, data)
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
