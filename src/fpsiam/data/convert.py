"""Every public polyp format -> COCO json (docs/data.md), the project's one internal format.

Each format is one module of :mod:`fpsiam.data.formats` whose docstring says the layout it reads and the
choices made: ``ldpolypvideo``, ``kvasir``, ``masks``, ``voc``, ``yolo``, ``coco``. Each exports its reader
``from_<format>(src, out, options, images=None)``, which reads one source and returns the COCO dict
(conventions in :mod:`fpsiam.data.cocojson`), and its parsers (``parse_ldpolyp_txt``, ``mask_boxes``,
``read_sequences``, ``parse_voc_xml``, ``parse_yolo_txt``). :data:`FORMATS` maps each format name to its
reader; :func:`convert_dataset` dispatches on it, writes the json atomically and returns a
:class:`ConvertReport`.

What every format shares lives in :mod:`fpsiam.data.formats._common`: :class:`ConvertOptions`, :class:`Box`,
the box policy (:func:`apply_box_policy`), the counts, the assembly of the output json (``_assemble``) and the
helpers for reading annotation files (:func:`decode_text`, ``_read_bytes``, ``_load_json``,
``_index_images``) and naming videos and frames (``_compile_pattern``, ``_video_frame``,
``_trailing_number``). This module re-exports it, and every reader and parser, so that
``from fpsiam.data.convert import ...`` is the one import for users; format modules import from ``_common``
(this module imports them for its table, so they must not import it).

Common to every format: ``--video-pattern`` (a regex with named groups ``video`` and optionally
``frame``) is searched in the file stem, then in the path without extension, and overrides the folder
structure; a file it does not match is an error. ``frame_index`` is only written together with a
``video_id``. Image sizes come from the image header (PIL opens lazily; nothing is decoded). Images are
sorted by (video, frame, file name) and numbered from 1. A box outside its image is an error unless
``clip_boxes`` (clipped, counted); a zero/negative-area box is an error unless ``drop_degenerate``
(dropped, counted). The counts are stored in ``info["conversion"]`` of the output.

Adding a format: one module ``src/fpsiam/data/formats/<name>.py`` (docstring: the layout it reads) with a
reader ``from_<name>`` that builds ``_Frame`` records and ends in ``_assemble``; one line in
:data:`FORMATS` (and the name in the ``--format`` choices of ``fpsiam data convert`` in
:mod:`fpsiam.cli`); its tests in ``tests/data/test_convert.py`` (a text parser also in
``tests/data/test_convert_fuzz.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fpsiam.data.cocojson import save_coco
from fpsiam.data.formats._common import (
    IMAGE_SUFFIXES,
    Box,
    ConvertOptions,
    _assemble,
    _compile_pattern,
    _Counts,
    _fmt_box,
    _Frame,
    _index_images,
    _is_int,
    _load_json,
    _num,
    _read_bytes,
    _trailing_number,
    _video_frame,
    apply_box_policy,
    decode_text,
)
from fpsiam.data.formats.coco import FRAME_KEYS, TRACK_KEYS, VIDEO_KEYS, from_coco
from fpsiam.data.formats.kvasir import from_kvasir
from fpsiam.data.formats.ldpolypvideo import from_ldpolypvideo, parse_ldpolyp_txt
from fpsiam.data.formats.masks import from_masks, mask_boxes, read_sequences
from fpsiam.data.formats.voc import VocRecord, from_voc, parse_voc_xml
from fpsiam.data.formats.yolo import from_yolo, parse_yolo_txt
from fpsiam.errors import FpsiamError

__all__ = [
    # shared (fpsiam.data.formats._common)
    "IMAGE_SUFFIXES",
    "Box",
    "ConvertOptions",
    "_Counts",
    "_Frame",
    "_assemble",
    "_compile_pattern",
    "_fmt_box",
    "_index_images",
    "_is_int",
    "_load_json",
    "_num",
    "_read_bytes",
    "_trailing_number",
    "_video_frame",
    "apply_box_policy",
    "decode_text",
    # the formats (fpsiam.data.formats.<name>)
    "FRAME_KEYS",
    "TRACK_KEYS",
    "VIDEO_KEYS",
    "VocRecord",
    "from_coco",
    "from_kvasir",
    "from_ldpolypvideo",
    "from_masks",
    "from_voc",
    "from_yolo",
    "mask_boxes",
    "parse_ldpolyp_txt",
    "parse_voc_xml",
    "parse_yolo_txt",
    "read_sequences",
    # this module
    "CONVERTERS",
    "FORMATS",
    "ConvertReport",
    "convert_dataset",
]


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


# ---------------------------------------------------------------------------------------------- dispatch

FORMATS: dict[str, Callable[..., dict[str, Any]]] = {
    "ldpolypvideo": from_ldpolypvideo,
    "kvasir": from_kvasir,
    "masks": from_masks,
    "voc": from_voc,
    "yolo": from_yolo,
    "coco": from_coco,
}
CONVERTERS = FORMATS  # the table's former name (FORMATS was the tuple of its names)


def convert_dataset(
    fmt: str, src: Path, out: Path, images: str | None = None, options: ConvertOptions | None = None
) -> ConvertReport:
    """Convert ``src`` (format ``fmt``) to the COCO json ``out``, written atomically; returns the summary."""
    if fmt not in FORMATS:
        raise FpsiamError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FpsiamError(f"{src}: not found; pass the dataset folder or annotation file")
    if images is not None and not Path(images).is_dir():
        raise FpsiamError(f"--images {images}: not a folder")
    if out.is_dir():
        raise FpsiamError(f"{out}: is a folder; -o takes the path of the json file to write")
    coco = FORMATS[fmt](src, out, options or ConvertOptions(), images=images)
    save_coco(out, coco)
    return ConvertReport.from_coco(coco, fmt, out)
