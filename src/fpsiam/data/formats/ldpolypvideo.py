"""LDPolypVideo -> COCO (``--format ldpolypvideo``).

SRC is the dataset root (holding ``TrainValid/`` and/or ``Test/``), a split folder (holding ``Images/`` and
``Annotations/``) or an ``Annotations/`` folder. One txt per frame, ``Annotations/<video>/<idx>.txt``: the
first line is the number of boxes N, then N lines ``xmin ymin xmax ymax`` (integers). N = 0 frames are kept
as negative frames; images without a txt are skipped (and counted). ``video_id`` = ``<split>/<video>`` from
the root, ``<video>`` from a split folder; ``frame_index`` = ``int(idx)``. ``--images`` replaces the
``Images/`` folder of a split.

The shared rules (``--video-pattern``, sorting and numbering, the box policies and their counts) are
described under "Common to every format" in :mod:`fpsiam.data.convert`; they live in
:mod:`fpsiam.data.formats._common`.
"""

from __future__ import annotations

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
    _trailing_number,
    _video_frame,
    decode_text,
)
from fpsiam.data.images import image_size
from fpsiam.errors import FpsiamError


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
