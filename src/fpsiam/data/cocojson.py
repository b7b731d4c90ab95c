"""COCO json: the project's one internal annotation format.

Conventions every converter writes and every reader relies on:

- one category, ``{"id": 1, "name": "polyp"}`` (label 1 in torchvision; 0 is background);
- ``images[i]``: ``id`` (int), ``file_name``, ``width``, ``height`` and, when the source has them,
  ``video_id`` (str, the video/sequence name) and ``frame_index`` (int);
- ``annotations[j]``: ``id``, ``image_id``, ``category_id`` = 1, ``bbox`` = [x, y, w, h] in pixels with
  exclusive right/bottom edges (``w = xmax - xmin``), ``area`` = w * h, ``iscrowd`` = 0 and, when the
  source has one, ``track_id`` (the polyp's id within its video);
- ``file_name`` is resolved against ``--images DIR`` when given, else against the json file's folder
  (converters write it relative to the output file, so the json works without ``--images``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fpsiam.errors import FpsiamError
from fpsiam.fileio import read_json, write_json

POLYP_CATEGORY = {"id": 1, "name": "polyp", "supercategory": "lesion"}
CATEGORIES = [POLYP_CATEGORY]


def load_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO json and check its top-level structure; errors name the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FpsiamError(f"{path}: annotation file not found; pass the path of a COCO json")
    data = read_json(path, "a COCO json")
    if not isinstance(data, dict):
        raise FpsiamError(f"{path}: a COCO json is an object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if key not in data:
            raise FpsiamError(f"{path}: missing the '{key}' list; is this a COCO json?")
        if not isinstance(data[key], list):
            raise FpsiamError(f"{path}: '{key}' must be a list")
    if not isinstance(data.setdefault("categories", list(CATEGORIES)), list):
        raise FpsiamError(f"{path}: 'categories' must be a list of objects like {POLYP_CATEGORY}")
    return data


def save_coco(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write a COCO json atomically (no partial file on error)."""
    write_json(path, data, indent=None)


def new_coco(images: list[dict], annotations: list[dict], info: dict | None = None) -> dict[str, Any]:
    """Assemble a COCO dict with the polyp category."""
    return {
        "info": info or {"description": "converted by fpsiam"},
        "images": images,
        "annotations": annotations,
        "categories": list(CATEGORIES),
    }


def image_root(ann_path: str | os.PathLike, images: str | os.PathLike | None) -> Path:
    """The folder ``file_name`` entries are relative to: ``--images`` if given, else the json's folder."""
    return Path(images) if images is not None else Path(ann_path).resolve().parent


def locate_image(ann_path: str | os.PathLike, images: str | os.PathLike | None, file_name: str) -> tuple[Path, str]:
    """Where an image of the json is, and by which rule: ``(path, rule)``.

    Without ``--images DIR``: the json's folder / file_name ("json"). With it: DIR / file_name ("images") when that
    exists, else the json's folder / file_name ("json": the json's names were relative to itself), else
    DIR / the file's bare name ("name": DIR is the dataset's own flat images folder). When nothing exists, the path
    of the first rule is returned (for the error message).
    """
    json_dir = Path(ann_path).resolve().parent
    if images is None:
        return json_dir / file_name, "json"
    candidates = [(Path(images) / file_name, "images"), (json_dir / file_name, "json"),
                  (Path(images) / Path(file_name).name, "name")]  # fmt: skip
    for path, rule in candidates:
        if path.is_file():
            return path, rule
    return candidates[0]


def relative_file_name(image_path: str | os.PathLike, out_json: str | os.PathLike) -> str:
    """``file_name`` for an image as written by converters: relative to the output json's folder."""
    rel = os.path.relpath(Path(image_path).resolve(), Path(out_json).resolve().parent)
    return Path(rel).as_posix()
