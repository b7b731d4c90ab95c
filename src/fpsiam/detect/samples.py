"""Sample pictures of a detector on a labeled set: predicted boxes (red, with scores) over the true ones (green).

Drawn at a given score threshold -- the experiment uses each run's F1-best threshold, so the pictures show what the
detector reports at its best operating point (a fixed 0.5 can hide every box of a detector whose scores are
lower) -- and saved as PNGs, thumbnails of at most ``max_side`` pixels.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fpsiam.fileio import atomic_path

TRUE, PREDICTED = (0, 255, 0), (255, 40, 40)


def draw_sample(image: np.ndarray, true_boxes: list[list[float]], predictions: list[dict[str, Any]]) -> np.ndarray:
    """An H x W x 3 uint8 frame with its true boxes and its predictions (COCO results: bbox xywh, score) drawn."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box in true_boxes:
        draw.rectangle(box, outline=TRUE, width=2)
    for p in predictions:
        x, y, w, h = p["bbox"]
        draw.rectangle([x, y, x + w, y + h], outline=PREDICTED, width=2)
        draw.text((x + 2, y + 2), f"{p['score']:.2f}", fill=(255, 255, 0))
    return np.asarray(canvas)


def save_samples(dataset: Any, frames: list[int], predictions: list[dict[str, Any]], threshold: float, out_dir: Path,
                 max_side: int = 320) -> list[Path]:  # fmt: skip
    """Draw ``frames`` (indices into ``dataset``, a CocoDetection) with the ``predictions`` scoring at least
    ``threshold``; one PNG per frame in ``out_dir``, named by image id. Returns the paths."""
    from PIL import Image

    shown: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        if p["score"] >= threshold:
            shown[p["image_id"]].append(p)
    out = []
    for i in frames:
        image, target = dataset[i]
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        image_id = int(target["image_id"])
        picture = Image.fromarray(draw_sample(pixels, target["boxes"].tolist(), shown[image_id]))
        picture.thumbnail((max_side, max_side))
        path = Path(out_dir) / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        out.append(path)
    return out
