"""COCO json: the project's one internal annotation format.

Conventions every converter writes and every reader relies on:

- one category, ``{"id": 1, "name": "polyp"}`` (label 1 in torchvision; 0 is background);
- ``images[i]``: ``id`` (int), ``file_name``, ``width``, ``height`` and, when the source has them,
  ``video_id`` (str, the video/sequence name) and ``frame_index`` (int);
- ``annotations[j]``: ``id``, ``image_id``, ``category_id`` = 1, ``bbox`` = [x, y, w, h] in pixels with
  exclusive right/bottom edges (``w = xmax - xmin``), ``area`` = w * h, ``iscrowd`` = 0 and, when the
  source has one, ``track_id`` (the polyp's id within its video);
- the image folder (the *images root*) is ``--images DIR`` when given, else ``info.images_root`` (a path
  relative to the json's folder, written by the converters and ``fpsiam data split``), else the json's folder;
- every ``file_name`` lies inside the images root: absolute names and names climbing out with ``..`` are
  refused (a json handed to you cannot make fpsiam read files elsewhere on the machine) unless
  ``--allow-outside-root`` / ``FPSIAM_ALLOW_OUTSIDE_ROOT=1`` says the file is trusted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fpsiam.errors import FpsiamError
from fpsiam.fileio import read_json, write_json

POLYP_CATEGORY = {"id": 1, "name": "polyp", "supercategory": "lesion"}
CATEGORIES = [POLYP_CATEGORY]
ALLOW_OUTSIDE_ROOT_ENV = "FPSIAM_ALLOW_OUTSIDE_ROOT"


def outside_root_allowed() -> bool:
    """Whether ``file_name`` values may leave the images root (``--allow-outside-root`` sets the variable)."""
    return os.environ.get(ALLOW_OUTSIDE_ROOT_ENV, "").strip() not in ("", "0")


def escapes_root(file_name: str) -> str | None:
    """Why ``file_name`` would leave its images root ("is absolute", "climbs out with '..'"), or None."""
    if file_name.startswith(("/", "\\")) or PurePosixPath(file_name).is_absolute():
        return "is absolute"
    if PureWindowsPath(file_name).is_absolute():
        return "is absolute"
    if PureWindowsPath(file_name).drive:
        return "names a drive"
    if ".." in re.split(r"[\\/]", file_name):
        return "climbs out with '..'"
    return None


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
    info = data.get("info")
    if (
        isinstance(info, dict)
        and "images_root" in info
        and not (isinstance(info["images_root"], str) and info["images_root"])
    ):
        raise FpsiamError(f"{path}: info.images_root must be a folder path (a non-empty string); fix or remove it")
    if not outside_root_allowed():
        for n, image in enumerate(data["images"]):
            name = image.get("file_name") if isinstance(image, dict) else None
            why = escapes_root(name) if isinstance(name, str) else None
            if why:
                raise FpsiamError(
                    f"{path}: images[{n}].file_name {name!r} {why}; file names must lie inside the images folder "
                    f"({image_root(path, None, data)}): regenerate the json with fpsiam data convert / split, pass "
                    "--images DIR with names relative to DIR, or pass --allow-outside-root if you trust this file"
                )
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


def image_root(
    ann_path: str | os.PathLike, images: str | os.PathLike | None, data: dict[str, Any] | None = None
) -> Path:
    """The images root ``file_name`` entries are relative to: ``--images`` if given, else the json's
    ``info.images_root`` (relative to the json's folder), else the json's folder.

    Pass the loaded json as ``data`` so its ``info.images_root`` is seen (without it: the json's folder).
    """
    if images is not None:
        return Path(images)
    json_dir = Path(ann_path).resolve().parent
    info = data.get("info") if isinstance(data, dict) else None
    root = info.get("images_root") if isinstance(info, dict) else None
    return Path(os.path.normpath(json_dir / root)) if isinstance(root, str) and root else json_dir


def locate_image(
    ann_path: str | os.PathLike, images: str | os.PathLike | None, file_name: str, data: dict[str, Any] | None = None
) -> tuple[Path, str]:
    """Where an image of the json is, and by which rule: ``(path, rule)``.

    Without ``--images DIR``: the json's own images root / file_name ("json", see :func:`image_root`). With it:
    DIR / file_name ("images") when that exists, else the json's own root / file_name ("json"), else DIR / the
    file's bare name ("name": DIR is the dataset's own flat images folder). When nothing exists, the path of the
    first rule is returned (for the error message).
    """
    own = image_root(ann_path, None, data)
    if images is None:
        return own / file_name, "json"
    candidates = [(Path(images) / file_name, "images"), (own / file_name, "json"),
                  (Path(images) / Path(file_name).name, "name")]  # fmt: skip
    for path, rule in candidates:
        if path.is_file():
            return path, rule
    return candidates[0]


def anchor_file_names(image_paths: list, out_json: str | os.PathLike) -> tuple[str, list[str]]:
    """``(images_root, file_names)`` for a json written at ``out_json``: the images' common folder (relative
    to the json's folder, for ``info.images_root``) and each image's name inside it (never absolute, no ``..``)."""
    paths = [os.path.abspath(p) for p in image_paths]
    if not paths:
        return ".", []
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    names = [Path(os.path.relpath(p, root)).as_posix() for p in paths]
    rel_root = Path(os.path.relpath(root, os.path.dirname(os.path.abspath(out_json)))).as_posix()
    return rel_root, names
