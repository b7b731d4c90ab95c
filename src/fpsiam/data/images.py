"""Every image file fpsiam reads goes through here: one decoder, one pixel limit, one kind of error message.

- :func:`decode_rgb`: a file -> uint8 RGB ``[3, H, W]`` (torchvision's libjpeg-turbo / libpng for JPEG and PNG,
  Pillow for the rest), 16-bit PNGs scaled to 8 bits.
- :func:`image_size`: (width, height) from the header alone.
- The pixel limit: an image whose header announces more than :func:`max_pixels` pixels (default 64 M, e.g.
  8000 x 8000) is refused before a byte of it is decoded: a 3 MB PNG can announce 30,000 x 30,000 pixels and
  take gigabytes to decode (a decompression bomb). Endoscopy frames are 1-8 M pixels. Set the environment
  variable ``FPSIAM_MAX_IMAGE_PIXELS`` to raise or lower it. The same limit guards video frames (see
  :func:`check_pixels`).
- Errors are one line naming the file; decoder internals (C++ source locations) are cut off.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fpsiam.errors import FpsiamError

MAX_PIXELS_ENV = "FPSIAM_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000
# torchvision decodes these itself (fast); the rest go through Pillow.
TORCHVISION_DECODES = (".jpg", ".jpeg", ".png")
_INTERNALS = re.compile(r"\s*(Exception raised from|\(most recent call|in file /|at /).*$", re.S)

Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check is replaced by check_pixels (one limit, one message)


def max_pixels() -> int:
    """The pixel limit: ``FPSIAM_MAX_IMAGE_PIXELS`` when set, else 64 M."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise FpsiamError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive number of pixels, e.g. 100000000")
    return value


def check_pixels(where: str | os.PathLike, width: int, height: int) -> None:
    """Refuse a frame larger than the pixel limit, naming the file and how to raise the limit."""
    limit = max_pixels()
    if width * height > limit:
        raise FpsiamError(
            f"{where}: {width} x {height} = {width * height:,} pixels, over the limit of {limit:,} (a decompression "
            f"bomb, or a huge scan?); if the file is trusted, raise it with {MAX_PIXELS_ENV}={width * height}"
        )


def reason(e: BaseException) -> str:
    """The first line of a decoder's error, without source paths or C++ stack locations."""
    text = _INTERNALS.sub("", str(e).strip()).splitlines()
    return (text[0].strip() if text and text[0].strip() else type(e).__name__)[:200]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the image header (nothing is decoded); checked against the pixel limit."""
    try:
        with Image.open(path) as im:
            size = im.size
    except FileNotFoundError:
        raise FpsiamError(f"{path}: image not found; restore it or remove its annotation") from None
    except UnidentifiedImageError:
        raise FpsiamError(
            f"{path}: cannot decode the image (not an image format Pillow knows); replace or remove it"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise FpsiamError(f"{path}: cannot decode the image ({reason(e)}); replace or remove it") from None
    check_pixels(path, *size)
    return size


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to uint8 RGB ``[3, H, W]``; one FpsiamError naming the file when it can't."""
    path = Path(path)
    if not path.is_file():
        raise FpsiamError(f"{path}: image not found; check the json's file_name or pass --images DIR")
    image_size(path)  # the header first: a bomb is refused before it is decoded
    try:
        if path.suffix.lower() in TORCHVISION_DECODES:
            from torchvision.io import ImageReadMode, decode_image, read_file
            from torchvision.transforms.v2 import functional as TF

            with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
            if image.dtype != torch.uint8:  # 16-bit PNG
                image = TF.to_dtype(image, torch.uint8, scale=True)
            return image
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (RuntimeError, OSError, ValueError, SyntaxError) as e:
        raise FpsiamError(f"{path}: cannot decode the image ({reason(e)}); replace or remove it") from None
