"""Kvasir-SEG's boxes -> COCO (``--format kvasir``).

SRC is the Kvasir-SEG root (``kavsir_bboxes.json`` + ``images/``) or the json itself:
``{id: {height, width, bbox: [{label, xmin, ymin, xmax, ymax}]}}`` with exclusive ``xmax``/``ymax``. Stills:
no video ids. ``--images`` replaces the ``images/`` folder.

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
    _Counts,
    _Frame,
    _index_images,
    _load_json,
)
from fpsiam.data.images import image_size
from fpsiam.errors import FpsiamError


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
