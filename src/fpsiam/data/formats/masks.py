"""Binary masks (Kvasir-SEG, CVC-ClinicDB, PolypGen, SUN-SEG) -> COCO (``--format masks``).

SRC holds an images folder (``images``, ``Images`` or ``Original``) and a masks folder (``masks``, ``Masks``,
``Ground Truth`` or ``GroundTruth``); or SRC is the masks folder and ``--images`` the images folder. Masks
pair with images by relative path without extension (a mask may be named ``<stem>_mask``; its extension may
differ). Boxes are the 8-connected components of ``mask >= 128``; components under ``min_area`` pixels are
dropped (counted). Sub-folders are videos (SUN-SEG's ``GT/<case>/``). CVC-ClinicDB's 29 sequences:
``--video-pattern`` or a ``sequences.csv`` in SRC (or ``ConvertOptions.sequences``) with columns ``image``
(file name or stem), ``video`` and optionally ``frame``.

The shared rules (``--video-pattern``, sorting and numbering, the box policies and their counts) are
described under "Common to every format" in :mod:`fpsiam.data.convert`; they live in
:mod:`fpsiam.data.formats._common`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from fpsiam.data.formats._common import (
    IMAGE_SUFFIXES,
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
