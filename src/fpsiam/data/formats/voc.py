"""Pascal-VOC XML per frame (KUMC) -> COCO (``--format voc``).

SRC is a folder of Pascal-VOC XML files (any depth; KUMC). Every object is a polyp; its original ``<name>``
(KUMC: adenomatous / hyperplastic) is kept as the annotation's ``subclass``, a ``<trackid>``/``<track_id>``
as ``track_id``. Coordinates are taken as pixel edges (``w = xmax - xmin``). The image is looked up by
``<filename>`` or the XML's stem, beside the XML, in the folder that mirrors ``Annotations``/``Annotation``
as ``JPEGImages``/``Images``/``Image``/``images``, or under ``--images`` (mirroring the XML's sub-folder).
The folder of the XML below SRC (without an ``Annotation(s)`` component) is the video; the trailing number
of the file name the frame index.

The shared rules (``--video-pattern``, sorting and numbering, the box policies and their counts) are
described under "Common to every format" in :mod:`fpsiam.data.convert`; they live in
:mod:`fpsiam.data.formats._common`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NamedTuple

from fpsiam.data.formats._common import (
    IMAGE_SUFFIXES,
    Box,
    ConvertOptions,
    _assemble,
    _compile_pattern,
    _Counts,
    _Frame,
    _is_int,
    _read_bytes,
    _trailing_number,
    _video_frame,
)
from fpsiam.data.images import image_size
from fpsiam.errors import FpsiamError


class VocRecord(NamedTuple):
    """What one Pascal-VOC XML file says."""

    filename: str | None
    width: int | None
    height: int | None
    boxes: list[Box]


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
