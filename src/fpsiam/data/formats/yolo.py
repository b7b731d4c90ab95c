"""YOLO txt labels -> COCO (``--format yolo``).

SRC holds ``images/`` and ``labels/`` (at any depth), or is a ``labels/`` folder (``--images`` for the
images). One ``class cx cy w h`` line per box, normalised to 0-1; every class is polyp; an image without a
label file is a negative frame (the YOLO convention). Sub-folders are splits by YOLO convention, not videos:
video ids come only from ``--video-pattern``. Pixel coordinates are rounded to 1/1000 pixel, which absorbs
float round-off in label writers.

The shared rules (``--video-pattern``, sorting and numbering, the box policies and their counts) are
described under "Common to every format" in :mod:`fpsiam.data.convert`; they live in
:mod:`fpsiam.data.formats._common`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fpsiam.data.formats._common import (
    Box,
    ConvertOptions,
    _assemble,
    _compile_pattern,
    _Counts,
    _Frame,
    _index_images,
    _is_int,
    _read_bytes,
    _video_frame,
    decode_text,
)
from fpsiam.data.images import image_size
from fpsiam.errors import FpsiamError


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
