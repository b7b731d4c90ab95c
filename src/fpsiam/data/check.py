"""Validate a COCO json (``fpsiam data check``) and split it without leakage (``fpsiam data split``).

The check reports every problem it finds instead of stopping at the first one, so one run lists all that
needs fixing; only a json whose structure is broken (not JSON, no ``images``/``annotations`` list) raises
:class:`FpsiamError` (through :func:`fpsiam.data.cocojson.load_coco`).

The split keeps groups whole: with ``by="video"`` no video lands in two splits, so frames of one polyp
never sit in both train and test (neighbouring frames are near-duplicates: splitting them would leak).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fpsiam.data.cocojson import anchor_file_names, image_root, load_coco, locate_image, save_coco
from fpsiam.data.images import image_size, reason
from fpsiam.errors import FpsiamError

SPLIT_NAMES = ("train", "val", "test")
# COCO's object-size ranges (pycocotools areaRng): small < 32², medium < 96², large above.
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2
# Boxes may overhang the image by float round-off only (1/1000 pixel, the precision converters write).
EDGE_TOLERANCE = 1e-3


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class CheckReport:
    """What ``fpsiam data check`` found: summary numbers and the list of problems."""

    ann: Path
    images: int = 0
    boxes: int = 0
    boxes_per_image_max: int = 0
    negative_frames: int = 0
    videos: int = 0
    images_without_video: int = 0
    image_sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    box_sizes: Counter = field(default_factory=Counter)  # "small"/"medium"/"large" -> boxes
    problems: list[str] = field(default_factory=list)
    images_dir: str | None = None  # --images DIR
    found_by: Counter = field(default_factory=Counter)  # how each image file was found (locate_image's rules)
    images_root: Path | None = None  # where file_name values are read from (image_root's rules)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self, max_problems: int = 20) -> list[str]:
        mean = self.boxes / self.images if self.images else 0.0
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.image_sizes.most_common(5))
        others = len(self.image_sizes) - 5
        if others > 0:
            sizes += f", and {others} other size(s)"
        lines = [
            f"annotations: {self.ann}" + (f" (images root: {self.images_root})" if self.images_root else ""),
            f"images: {self.images} (negative frames: {self.negative_frames})",
            f"boxes: {self.boxes} (per image: mean {mean:.2f}, max {self.boxes_per_image_max})",
            f"videos: {self.videos} (images without video_id: {self.images_without_video})",
            f"image sizes: {sizes or '-'}",
            "box sizes (COCO): " + ", ".join(f"{k} {self.box_sizes[k]}" for k in ("small", "medium", "large")),
        ]
        if self.images_dir is not None and (self.found_by["json"] or self.found_by["name"]):
            rules = {"images": f"{self.images_dir}/<file_name>", "json": "<the json's images root>/<file_name>",
                     "name": f"{self.images_dir}/<the file's name>"}  # fmt: skip
            used = ", ".join(f"{n} at {rules[r]}" for r, n in self.found_by.most_common() if n)
            lines.append(f"image files found: {used}")
        if self.ok:
            lines.append("OK: no problems found")
            return lines
        lines.append(f"problems: {len(self.problems)}")
        lines += [f"  - {p}" for p in self.problems[:max_problems]]
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return lines


def _image_size(path: Path, decode: bool) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) of an image file, or an error text; ``decode`` reads every pixel."""
    try:
        size = image_size(path)  # header only, and the pixel limit
        if decode:
            with Image.open(path) as im:
                im.load()
        return size, None
    except FpsiamError as e:
        return None, str(e).removeprefix(f"{path}: ")
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"{type(e).__name__}: {reason(e)}"


def check_annotations(ann: Path, images: str | None = None, decode: bool = True) -> CheckReport:
    """Validate a COCO json and its images; every problem names the image file or annotation id.

    Checks: image files exist and decode (``decode=False``: only their header is read), width/height
    match the file, image and annotation ids are unique integers, every annotation's image_id and
    category_id exist, boxes are finite, have positive area and lie inside their image.
    """
    ann = Path(ann)
    data = load_coco(ann)
    report = CheckReport(ann=ann, images_dir=images, images_root=image_root(ann, images, data))
    problems = report.problems

    categories = {c.get("id") for c in data["categories"] if isinstance(c, dict) and _is_id(c.get("id"))}
    by_id: dict[int, dict] = {}
    videos = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            problems.append(f"images[{i}]: not an object")
            continue
        image_id, name = im.get("id"), im.get("file_name")
        label = f"image {image_id!r} ({name})"
        if not _is_id(image_id):
            problems.append(f"images[{i}] ({name}): 'id' must be an integer, got {image_id!r}")
            continue
        if image_id in by_id:
            problems.append(f"{label}: duplicate image id (also used by {by_id[image_id].get('file_name')})")
            continue
        by_id[image_id] = im
        report.images += 1
        if im.get("video_id") is not None:
            videos.add(str(im["video_id"]))
        else:
            report.images_without_video += 1
        width, height = im.get("width"), im.get("height")
        if not (_is_id(width) and _is_id(height) and width > 0 and height > 0):
            problems.append(f"{label}: width/height must be positive integers, got {width!r}x{height!r}")
        else:
            report.image_sizes[(width, height)] += 1
        if not isinstance(name, str) or not name:
            problems.append(f"image {image_id}: 'file_name' missing or empty")
            continue
        path, rule = locate_image(ann, images, name, data)
        report.found_by[rule] += 1
        if not path.is_file():
            problems.append(f"{label}: file not found at {path}; pass --images DIR or fix file_name")
            continue
        size, error = _image_size(path, decode)
        if error:
            problems.append(f"{label}: cannot {'decode' if decode else 'read'} {path} ({error})")
        elif size != (width, height):
            problems.append(f"{label}: json says {width}x{height} but {path} is {size[0]}x{size[1]}")
    report.videos = len(videos)

    ann_ids: set[int] = set()
    per_image: Counter = Counter()
    for j, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            problems.append(f"annotations[{j}]: not an object")
            continue
        ann_id = a.get("id")
        label = f"annotation {ann_id!r}"
        if not _is_id(ann_id):
            problems.append(f"annotations[{j}]: 'id' must be an integer, got {ann_id!r}")
        elif ann_id in ann_ids:
            problems.append(f"{label}: duplicate annotation id")
        else:
            ann_ids.add(ann_id)
        image_id = a.get("image_id")
        image = by_id.get(image_id) if _is_id(image_id) else None
        if image is None:
            problems.append(f"{label}: image_id {image_id!r} is not in 'images'")
            continue
        label += f" (image {image.get('file_name')})"
        category = a.get("category_id")
        if not _is_id(category) or category not in categories:
            problems.append(f"{label}: category_id {category!r} is not in 'categories'")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            problems.append(f"{label}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
            continue
        if not all(math.isfinite(v) for v in bbox):
            problems.append(f"{label}: bbox {bbox} has a NaN or infinite value")
            continue
        x, y, w, h = bbox
        report.boxes += 1
        per_image[image_id] += 1
        if w <= 0 or h <= 0:
            problems.append(f"{label}: bbox {bbox} has zero or negative area")
            continue
        area = w * h
        report.box_sizes["small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"] += 1
        width, height = image.get("width"), image.get("height")
        if _is_id(width) and _is_id(height):
            tol = EDGE_TOLERANCE
            if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
                problems.append(f"{label}: bbox {bbox} lies outside the {width}x{height} image")
        if not _is_number(a.get("area")) or not math.isfinite(a["area"]):
            problems.append(f"{label}: 'area' missing or not a number (fpsiam data convert --format coco sets it)")
    report.boxes_per_image_max = max(per_image.values(), default=0)
    report.negative_frames = sum(1 for image_id in by_id if per_image[image_id] == 0)
    return report


# ---------------------------------------------------------------------------------------------- split


def _group_split(groups: dict[str, list[int]], fractions: tuple[float, ...], seed: int) -> list[list[str]]:
    """Assign whole groups to splits so each split's image count approaches its fraction.

    Groups are sorted, then shuffled with ``seed`` (deterministic); every split with a positive fraction
    first gets one group, then each further group goes to the split furthest below its target.
    """
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    active = [i for i, f in enumerate(fractions) if f > 0]
    total = sum(len(v) for v in groups.values())
    targets = [f * total for f in fractions]
    assigned: list[list[str]] = [[] for _ in fractions]
    counts = [0] * len(fractions)
    seeding = sorted(active, key=lambda k: fractions[k])  # smallest first: a small test split is never empty
    for n, name in enumerate(names):
        if n < len(seeding):
            i = seeding[n]
        else:
            i = max(active, key=lambda k: (targets[k] - counts[k], -k))
        assigned[i].append(name)
        counts[i] += len(groups[name])
    return assigned


def _read_list(spec: str) -> tuple[str, Path, list[tuple[int, str]]]:
    """``NAME=FILE`` -> (name, file, [(line number, stem)])."""
    if "=" not in spec:
        raise FpsiamError(f"--list {spec!r}: expected NAME=FILE, e.g. train=train.txt")
    name, file = spec.split("=", 1)
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise FpsiamError(f"--list {spec!r}: the split name must be letters, digits, '_', '-' or '.'")
    path = Path(file)
    if not path.is_file():
        raise FpsiamError(f"{path}: list file not found (from --list {spec})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FpsiamError(f"{path}: not a UTF-8 text file; a list holds one image id per line") from None
    entries = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((n, Path(line).stem if Path(line).suffix else line))
    return name, path, entries


def split_annotations(
    ann: Path,
    out_dir: Path,
    by: str = "video",
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15),
    seed: int = 0,
    lists: list[str] | None = None,
    images: str | None = None,
) -> dict[str, Path]:
    """Split a COCO json into ``train.json`` / ``val.json`` / ``test.json`` in ``out_dir``.

    ``by="video"``: whole videos per split (images without ``video_id`` are an error: use ``by="image"``);
    ``by="image"``: each image is its own group; fractions count images and are met approximately, the
    assignment is deterministic for a ``seed``; a split with fraction 0 is not written.
    ``by="list"``: ``lists`` like ``["train=train.txt", "test=test.txt"]``, each file listing image file
    stems (Kvasir-SEG's ids), one per line; writes ``<name>.json`` per list. Images in no list are left out.
    ``file_name`` entries are rewritten relative to ``out_dir``. Returns ``{split name: written file}``.
    """
    ann, out_dir = Path(ann), Path(out_dir)
    data = load_coco(ann)
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise FpsiamError(f"{ann}: images[{i}] needs an integer 'id' and a 'file_name'; run fpsiam data check")
    ids = [im["id"] for im in data["images"]]
    if len(set(ids)) != len(ids):
        dup = next(k for k, n in Counter(ids).items() if n > 1)
        raise FpsiamError(f"{ann}: duplicate image id {dup}; run fpsiam data check")
    if lists and by != "list":
        raise FpsiamError("--list needs --by list")

    if by == "list":
        splits = _split_by_lists(data, ann, lists or [])
    elif by in ("video", "image"):
        if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions):
            raise FpsiamError(f"--fractions {fractions}: three non-negative numbers (train val test)")
        if abs(sum(fractions) - 1) > 1e-6:
            raise FpsiamError(f"--fractions {' '.join(f'{f:g}' for f in fractions)}: must sum to 1")
        groups = _groups(data, ann, by)
        active = sum(f > 0 for f in fractions)
        if len(groups) < active:
            unit = "videos" if by == "video" else "images"
            raise FpsiamError(
                f"{ann}: {len(groups)} {unit} for {active} non-empty splits; add data or set a fraction to 0"
            )
        assigned = _group_split(groups, tuple(fractions), seed)
        splits = {
            name: {i for g in names for i in groups[g]}
            for name, names, f in zip(SPLIT_NAMES, assigned, fractions, strict=True)
            if f > 0
        }
    else:
        raise FpsiamError(f"--by {by!r}: choose video, image or list")

    written = {}
    for name, image_ids in splits.items():
        out = out_dir / f"{name}.json"
        written[name] = out
        save_coco(out, _subset(data, image_ids, ann, images, out, name))
    return written


def _groups(data: dict, ann: Path, by: str) -> dict[str, list[int]]:
    """Image ids per group: per video (``by="video"``; every image needs a ``video_id``) or per image."""
    groups: dict[str, list[int]] = {}
    for im in data["images"]:
        if by == "image":
            key = str(im["id"])
        elif im.get("video_id") is None:
            raise FpsiamError(
                f"{ann}: image {im['id']} ({im['file_name']}) has no video_id; use --by image, or convert "
                "with --video-pattern to give frames their video"
            )
        else:
            key = str(im["video_id"])
        groups.setdefault(key, []).append(im["id"])
    return groups


def labels_name(fraction: float) -> str:
    """File stem of a label subset: ``labels10`` for 0.1, ``labels2.5`` for 0.025, ``labels100`` for 1."""
    return f"labels{round(100 * fraction, 4):g}"


def label_subsets(
    ann: Path, out_dir: Path, fractions: list[float], seed: int = 0, by: str = "auto", images: str | None = None
) -> dict[float, Path]:
    """Nested subsets of a labeled set: ``out_dir/labels<pct>.json`` for each fraction (label-scarce studies).

    Whole groups (videos, or images when ``by="image"``; ``"auto"``: videos when every image has a ``video_id``)
    are shuffled once with ``seed``; the subset of fraction f is the shortest prefix of that order holding at
    least round(f x images) images. Prefixes of one order, so a smaller subset is always inside a larger one.
    Returns ``{fraction: written file}``; fractions must lie in (0, 1] and no subset may be empty.
    """
    ann, out_dir = Path(ann), Path(out_dir)
    for f in fractions:
        if not (isinstance(f, (int, float)) and math.isfinite(f) and 0 < f <= 1):
            raise FpsiamError(f"label fraction {f!r}: must be in (0, 1] (e.g. 0.1 for 10 % of the labels)")
    data = load_coco(ann)
    if by == "auto":
        by = "video" if data["images"] and all(im.get("video_id") is not None for im in data["images"]) else "image"
    groups = _groups(data, ann, by)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    total = len(data["images"])
    written: dict[float, Path] = {}
    for f in sorted(set(fractions)):
        want = round(f * total)
        if want < 1:
            raise FpsiamError(
                f"{ann}: label fraction {f:g} of {total} images is {f * total:.2f} images, an empty subset; "
                "use a larger fraction"
            )
        chosen: set[int] = set()
        for name in order:
            if len(chosen) >= want:
                break
            chosen.update(groups[name])
        out = out_dir / f"{labels_name(f)}.json"
        save_coco(out, _subset(data, chosen, ann, images, out, labels_name(f)))
        written[f] = out
    return written


def _split_by_lists(data: dict, ann: Path, lists: list[str]) -> dict[str, set[int]]:
    if not lists:
        raise FpsiamError("--by list needs at least one --list NAME=FILE (e.g. --list train=train.txt)")
    by_stem: dict[str, dict] = {}
    for im in data["images"]:
        stem = Path(im["file_name"]).stem
        if stem in by_stem:
            raise FpsiamError(
                f"{ann}: two images have the stem {stem!r} ({by_stem[stem]['file_name']}, {im['file_name']}); "
                "list ids must name one image"
            )
        by_stem[stem] = im
    splits: dict[str, set[int]] = {}
    seen: dict[str, str] = {}  # stem -> "file:line" that listed it
    for spec in lists:
        name, path, entries = _read_list(spec)
        if name in splits:
            raise FpsiamError(f"--list {spec}: split {name!r} given twice")
        splits[name] = set()
        for n, stem in entries:
            if stem not in by_stem:
                raise FpsiamError(f"{path}:{n}: id {stem!r} is not an image of {ann}")
            if stem in seen:
                raise FpsiamError(
                    f"{path}:{n}: image {stem!r} is already listed at {seen[stem]}; lists must not overlap"
                )
            seen[stem] = f"{path}:{n}"
            splits[name].add(by_stem[stem]["id"])
    return splits


def _subset(data: dict, image_ids: set[int], ann: Path, images_dir: str | None, out: Path, name: str) -> dict[str, Any]:
    """The images in ``image_ids`` and their annotations; ``info.images_root`` and the file names re-anchored
    for ``out`` (each image found by :func:`fpsiam.data.cocojson.locate_image`)."""
    chosen = [im for im in data["images"] if im["id"] in image_ids]
    paths = [locate_image(ann, images_dir, im["file_name"], data)[0] for im in chosen]
    images_root, names = anchor_file_names(paths, out)
    images = [{**im, "file_name": name} for im, name in zip(chosen, names, strict=True)]
    annotations = [
        a
        for a in data["annotations"]
        if isinstance(a, dict) and _is_id(a.get("image_id")) and a["image_id"] in image_ids
    ]
    info = dict(data.get("info") or {}) if isinstance(data.get("info"), dict) else {}
    info["split"] = name
    info["images_root"] = images_root
    return {"info": info, "images": images, "annotations": annotations, "categories": data["categories"]}
