"""Procedural colonoscopy-like videos with polyp boxes: the built-in data of ``fpsiam demo`` and the tests.

``fpsiam data synth OUT_DIR`` writes::

    OUT_DIR/frames/<video>/<idx:05d>.jpg    JPEG frames (quality 90)
    OUT_DIR/videos/<video>.mp4             the same frames as H.264 (or MPEG-4 part 2) yuv420p video
    OUT_DIR/annotations.json               COCO json (fpsiam.data.cocojson conventions): video_id,
                                           frame_index on every image, track_id on every box

:func:`synth_split` also writes ``train.json`` / ``test.json`` (split by video) beside it; the
``frames/`` folder doubles as the unlabeled frame source for pretraining.

The frames are not meant to fool a clinician, only to exercise the whole pipeline with the statistics
that matter to it: reddish mucosa (mean R > G > B) with low-frequency texture and dark branching
vessels, a dark lumen, wet specular highlights, the black border outside the endoscope's circular field
of view, and 0-2 polyps per video drawn as shaded ellipsoid bumps in a slightly different hue. The
camera drifts smoothly (a sinusoidal pan over a larger "world" texture) and polyps are fixed to that
world, so consecutive frames are similar, as the temporal-pair option of pretraining assumes.

Everything is a pure function of the seed: ``numpy.random.default_rng([seed, video])`` per video, and
``[seed, video, frame]`` for the per-frame sensor noise, so two runs write identical JSON and JPEG bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from fpsiam.data.cocojson import load_coco, new_coco, save_coco
from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_path

# Videos cycle through these polyp counts: every 4 consecutive videos include a negative one (frames
# without polyps), and the alternate train/test split of :func:`synth_split` has polyps on both sides.
POLYPS_PER_VIDEO = (1, 2, 1, 0)
JPEG_QUALITY = 90
MIN_VISIBLE_PIXELS = 9  # a polyp with fewer visible pixels (under the black border) gets no box
MUCOSA_RGB = (0.80, 0.43, 0.35)  # base mucosa colour in 0..1; jittered per video


@dataclass
class SynthOptions:
    """What ``fpsiam data synth`` generates; the defaults make a small demo set (48 frames, ~1 s)."""

    videos: int = 4
    frames: int = 12  # per video
    seed: int = 0
    width: int = 256
    height: int = 224
    mp4: bool = True  # also write videos/<video>.mp4
    fps: int = 25

    def validate(self) -> None:
        checks = [
            (self.videos >= 1, f"videos must be >= 1, got {self.videos}"),
            (self.frames >= 1, f"frames must be >= 1, got {self.frames}"),
            (self.width >= 32, f"width must be >= 32 pixels, got {self.width}"),
            (self.height >= 32, f"height must be >= 32 pixels, got {self.height}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.fps >= 1, f"fps must be >= 1, got {self.fps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise FpsiamError(f"synthetic data: {message}")


@dataclass
class SynthSummary:
    """What :func:`generate` wrote."""

    out_dir: Path
    annotations: Path
    frames_dir: Path
    mp4s: list[Path]
    videos: int
    images: int
    positive_images: int
    boxes: int

    def lines(self) -> list[str]:
        lines = [
            f"synthetic set: {self.videos} videos, {self.images} frames "
            f"({self.positive_images} with polyps, {self.images - self.positive_images} without), "
            f"{self.boxes} boxes",
            f"annotations: {self.annotations}",
            f"frames: {self.frames_dir}",
        ]
        if self.mp4s:
            lines.append(f"videos: {self.mp4s[0].parent} ({len(self.mp4s)} mp4)")
        return lines


# ---------------------------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class Polyp:
    """A polyp fixed to the world texture; its on-screen size breathes as the camera moves in and out."""

    track_id: int
    x: float  # centre in world pixels
    y: float
    radius: float  # mean semi-axis in pixels
    aspect: float  # semi-axis ratio ry / rx
    angle: float  # orientation in radians
    tint: tuple[float, float, float]  # multiplies the mucosa colour: the polyp's slightly different hue
    zoom_amp: float  # relative radius change along the video
    zoom_period: float  # frames
    zoom_phase: float


@dataclass(frozen=True)
class PolypView:
    """A polyp as it appears in one frame (screen pixels)."""

    track_id: int
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    tint: tuple[float, float, float]


@dataclass
class VideoScene:
    """Everything that is fixed for one video; :func:`render_frame` turns it into frames."""

    width: int
    height: int
    world: np.ndarray  # (Hw, Ww, 3) float32 mucosa colour with vessels, larger than a frame
    gloss: np.ndarray  # (Hw, Ww) float32 0..1 specular highlights (wet mucosa), fixed to the world
    grain: np.ndarray  # (Hw, Ww) float32 zero-mean fine texture, reused on polyp surfaces
    pan_amp: tuple[float, float]  # camera pan amplitude (y, x) in pixels
    pan_period: tuple[float, float]  # frames
    pan_phase: tuple[float, float]
    lumen_centre: tuple[float, float]  # (y, x) screen pixels at t = 0
    lumen_radius: float
    lumen_wobble: float  # pixels
    lumen_phase: float
    light: tuple[float, float, float]  # unit light direction (x, y, z), z towards the camera
    polyps: list[Polyp]
    noise_seed: tuple[int, ...]  # per-frame noise generator seed prefix
    noise_std: float = 1.5 / 255


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (low-frequency texture)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _vessel_map(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Branching vessels as smoothed random walks; returns their darkness 0..1 per pixel.

    Each vessel is a walk whose heading itself random-walks (smooth curves); a few branches leave it
    at random points at an angle and are thinner. Points are stamped at half-pixel steps and blurred
    into lines of the walk's width.
    """
    h, w = shape
    layers = {1.1 * scale: np.zeros(shape), 0.6 * scale: np.zeros(shape)}  # sigma -> stamp canvas
    n_trunks = max(3, round(8 * h * w / (300 * 300)))

    def walk(y: float, x: float, heading: float, length: float, canvas: np.ndarray) -> np.ndarray:
        steps = max(2, int(length * 2))
        turn = np.cumsum(rng.normal(0.0, 0.06, steps))
        angles = heading + turn
        ys = y + np.cumsum(0.5 * np.sin(angles))
        xs = x + np.cumsum(0.5 * np.cos(angles))
        inside = (ys >= 0) & (ys < h - 1) & (xs >= 0) & (xs < w - 1)
        np.add.at(canvas, (ys[inside].round().astype(int), xs[inside].round().astype(int)), rng.uniform(0.35, 1.0))
        return np.stack([ys, xs, angles], axis=1)

    thick, thin = layers.values()
    for _ in range(n_trunks):
        path = walk(
            rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0) * max(h, w), thick
        )
        for _ in range(rng.integers(1, 4)):
            y, x, a = path[rng.integers(0, len(path))]
            branch = walk(
                y, x, a + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1), rng.uniform(0.1, 0.35) * max(h, w), thin
            )
            for _ in range(rng.integers(0, 3)):
                y, x, a = branch[rng.integers(0, len(branch))]
                walk(y, x, a + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1), rng.uniform(0.05, 0.15) * max(h, w), thin)

    darkness = np.zeros(shape, dtype=np.float64)
    for sigma, canvas in layers.items():
        line = ndimage.gaussian_filter(canvas, sigma=sigma)
        line *= math.sqrt(2 * math.pi) * sigma / 2.0  # ~2 stamps/px along a walk -> its weight on the axis
        darkness = np.maximum(darkness, 1.0 - np.exp(-2.0 * line))
    return darkness.astype(np.float32)


def _gloss_map(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Small bright ellipses (specular reflections on wet mucosa), soft-edged, 0..1."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gloss = np.zeros(shape, dtype=np.float32)
    for _ in range(max(4, round(14 * h * w / (400 * 400)))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.8, 3.5, size=2) * scale
        a = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / rx
        v = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / ry
        gloss = np.maximum(gloss, np.clip(1.6 * (1.0 - (u * u + v * v)), 0.0, 1.0) * rng.uniform(0.7, 1.0))
    return gloss


def make_scene(rng: np.random.Generator, width: int, height: int, n_polyps: int, frames: int) -> VideoScene:
    """Draw one video's world texture, camera path, lumen, light and polyps from ``rng``."""
    scale = min(width, height) / 224  # sizes below are tuned at 224 px and scale with the frame
    pan_amp = (0.18 * height, 0.22 * width)
    margin = (math.ceil(pan_amp[0]) + 2, math.ceil(pan_amp[1]) + 2)
    shape = (height + 2 * margin[0], width + 2 * margin[1])

    # Mucosa: a per-video base colour, brightness and hue modulated by two scales of smooth noise.
    base = np.array(MUCOSA_RGB, dtype=np.float32) * rng.uniform(0.92, 1.05, size=3).astype(np.float32)
    coarse = _smooth_noise(rng, shape, 18 * scale)
    fine = _smooth_noise(rng, shape, 4 * scale)
    hue = _smooth_noise(rng, shape, 25 * scale)
    world = base * (1.0 + 0.10 * coarse + 0.04 * fine)[..., None]
    world[..., 1] *= 1.0 + 0.05 * hue
    world[..., 2] *= 1.0 + 0.04 * hue
    vessels = _vessel_map(rng, shape, scale)
    world *= 1.0 - vessels[..., None] * np.array([0.25, 0.45, 0.40], dtype=np.float32)  # dark red

    pan_period = tuple(float(p) for p in rng.uniform(28, 60, size=2))
    pan_phase = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=2))

    # Lumen: a soft dark blob off the centre, drifting slowly.
    lumen_angle = rng.uniform(0, 2 * np.pi)
    lumen_dist = rng.uniform(0.15, 0.3) * min(width, height)
    lumen_centre = (height / 2 + lumen_dist * math.sin(lumen_angle), width / 2 + lumen_dist * math.cos(lumen_angle))

    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.6, -0.1), 1.0])  # from above, like a scope
    light /= np.linalg.norm(light)

    # Polyps: each is on screen near the centre at some frame t0 (so every polyp video has positives).
    cam = _pan(pan_amp, pan_period, pan_phase)
    polyps = []
    for track in range(1, n_polyps + 1):
        radius = float(rng.uniform(0.07, 0.16) * min(width, height))
        for _ in range(50):  # polyps of one video do not overlap: resample the place (world coordinates)
            t0 = rng.uniform(0, max(frames - 1, 0))
            oy, ox = cam(t0)
            y = height / 2 + rng.uniform(-0.22, 0.22) * height + margin[0] + oy
            x = width / 2 + rng.uniform(-0.22, 0.22) * width + margin[1] + ox
            if all(math.hypot(x - p.x, y - p.y) > 1.5 * (radius + p.radius) for p in polyps):
                break
        pale = rng.uniform(-1.0, 1.0)  # > 0: paler/pinker than the mucosa, < 0: redder
        tint = (1.04 + 0.03 * abs(pale), 1.0 + 0.12 * pale, 1.0 + 0.12 * pale)
        polyps.append(
            Polyp(
                track_id=track,
                x=float(x),
                y=float(y),
                radius=radius,
                aspect=float(rng.uniform(0.7, 1.0)),
                angle=float(rng.uniform(0, np.pi)),
                tint=tuple(float(c) for c in tint),
                zoom_amp=float(rng.uniform(0.05, 0.2)),
                zoom_period=float(rng.uniform(30, 70)),
                zoom_phase=float(rng.uniform(0, 2 * np.pi)),
            )
        )

    return VideoScene(
        width=width,
        height=height,
        world=world.astype(np.float32),
        gloss=_gloss_map(rng, shape, scale),
        grain=fine,
        pan_amp=pan_amp,
        pan_period=pan_period,
        pan_phase=pan_phase,
        lumen_centre=lumen_centre,
        lumen_radius=float(rng.uniform(0.10, 0.18) * min(width, height)),
        lumen_wobble=float(0.05 * min(width, height)),
        lumen_phase=float(rng.uniform(0, 2 * np.pi)),
        light=tuple(float(c) for c in light),
        polyps=polyps,
        noise_seed=tuple(int(s) for s in rng.integers(0, 2**31, size=2)),
    )


def _pan(amp: tuple[float, float], period: tuple[float, float], phase: tuple[float, float]) -> Callable:
    """Camera offset (y, x) in pixels at (fractional) frame t: a smooth sinusoidal pan around 0."""

    def offset(t: float) -> tuple[float, float]:
        return tuple(a * math.sin(2 * math.pi * t / p + f) for a, p, f in zip(amp, period, phase, strict=True))

    return offset


def camera_offset(scene: VideoScene, t: int) -> tuple[int, int]:
    """Top-left corner (y, x) of frame ``t``'s window into the world texture (integer pixels)."""
    oy, ox = _pan(scene.pan_amp, scene.pan_period, scene.pan_phase)(t)
    margin_y = (scene.world.shape[0] - scene.height) // 2
    margin_x = (scene.world.shape[1] - scene.width) // 2
    return margin_y + round(oy), margin_x + round(ox)


def polyp_views(scene: VideoScene, t: int) -> list[PolypView]:
    """Where each polyp of the scene is on screen at frame ``t`` (possibly off screen)."""
    oy, ox = camera_offset(scene, t)
    views = []
    for p in scene.polyps:
        zoom = 1.0 + p.zoom_amp * math.sin(2 * math.pi * t / p.zoom_period + p.zoom_phase)
        r = p.radius * zoom
        views.append(
            PolypView(p.track_id, p.x - ox, p.y - oy, r / math.sqrt(p.aspect), r * math.sqrt(p.aspect), p.angle, p.tint)
        )
    return views


# ---------------------------------------------------------------------------------------------- drawing


def fov_mask(height: int, width: int) -> np.ndarray:
    """The endoscope's circular field of view, 1 inside, 0 in the black corners, with a soft edge.

    The circle's radius is 0.85 of the half-diagonal, so the four corners are always black whatever
    the aspect ratio while most of the frame is visible (like the octagon-ish mask of real scopes).
    """
    yy, xx = _grid(height, width)
    r = np.hypot(yy - (height - 1) / 2, xx - (width - 1) / 2)
    half_diag = 0.5 * math.hypot(height, width)
    outer, soft = 0.85 * half_diag, 0.04 * half_diag
    return np.clip((outer - r) / soft, 0.0, 1.0).astype(np.float32)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _ellipse_coords(view: PolypView, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets in the polyp's own frame, in units of its semi-axes (u, v): inside when u²+v² < 1."""
    c, s = math.cos(view.angle), math.sin(view.angle)
    dx, dy = xx - view.cx, yy - view.cy
    return (dx * c + dy * s) / view.rx, (-dx * s + dy * c) / view.ry


def polyp_mask(view: PolypView, height: int, width: int) -> np.ndarray:
    """The pixels a polyp covers (where its drawn opacity is at least 1/2), as a bool image."""
    u, v = _ellipse_coords(view, *_grid(height, width))
    return _opacity(u * u + v * v) >= 0.5


def _opacity(d2: np.ndarray) -> np.ndarray:
    return np.clip((1.0 - d2) / 0.12, 0.0, 1.0)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1) of a bool mask, right/bottom exclusive; None when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _draw_polyp(image: np.ndarray, grain: np.ndarray, view: PolypView, light: np.ndarray) -> np.ndarray:
    """Composite one shaded ellipsoid bump onto ``image`` (in place); returns its bool mask.

    The bump is a hemisphere squashed to the ellipse: normal (n_x, n_y, z) with z = sqrt(1 - u² - v²),
    Lambert shading from ``light`` plus a Blinn-Phong highlight towards the viewer, a slightly
    different hue (``tint``), half of the mucosa's texture showing through, and a faint contact
    shadow just outside its rim. Only the window around the polyp is computed.
    """
    h, w = image.shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    reach = 1.6 * max(view.rx, view.ry) + 2  # covers the colour-reference ring (u²+v² < 2.5)
    y0, y1 = max(0, math.floor(view.cy - reach)), min(h, math.ceil(view.cy + reach))
    x0, x1 = max(0, math.floor(view.cx - reach)), min(w, math.ceil(view.cx + reach))
    if y0 >= y1 or x0 >= x1:
        return mask
    patch = image[y0:y1, x0:x1]  # a view: drawing into it draws into the image
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, v = _ellipse_coords(view, yy, xx)
    d2 = u * u + v * v
    inside = d2 < 1.0
    if not inside.any():
        return mask

    c, s = math.cos(view.angle), math.sin(view.angle)
    nx, ny = u * c - v * s, u * s + v * c  # back to screen axes
    nz = np.sqrt(np.clip(1.0 - d2, 0.0, None)) * 1.8  # > 1: a bump flatter than a hemisphere
    norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-6
    lx, ly, lz = map(float, light)
    lambert = np.clip((nx * lx + ny * ly + nz * lz) / norm, 0.0, 1.0)
    hx, hy, hz = np.array([lx, ly, lz + 1.0]) / math.hypot(lx, ly, lz + 1.0)  # half vector (viewer: +z)
    spec = np.clip((nx * hx + ny * hy + nz * hz) / norm, 0.0, 1.0) ** 120

    around = (d2 < 2.5) & ~inside
    ref = patch[around].mean(axis=0) if around.any() else patch[inside].mean(axis=0)  # local mucosa
    colour = ref * np.array(view.tint, dtype=np.float32) * 1.05
    under = np.sqrt(np.clip(patch / np.maximum(ref, 1e-3), 0.05, None))  # half the mucosa's contrast
    shade = (0.6 + 0.5 * lambert) * (1.0 + 0.05 * grain[y0:y1, x0:x1])
    surface = colour * under * shade[..., None] + (0.6 * spec)[..., None]

    shadow = 1.0 - 0.22 * np.clip((1.35 - d2) / 0.35, 0.0, 1.0) * ~inside
    alpha = _opacity(d2)
    patch *= (shadow * (1.0 - alpha))[..., None]
    patch += alpha[..., None] * surface
    mask[y0:y1, x0:x1] = alpha >= 0.5
    return mask


@dataclass
class RenderedFrame:
    """One frame: RGB uint8 pixels and the visible polyps' boxes as (track_id, (x0, y0, x1, y1))."""

    image: np.ndarray
    boxes: list[tuple[int, tuple[int, int, int, int]]]


def render_frame(scene: VideoScene, t: int, draw_polyps: bool = True) -> RenderedFrame:
    """Render frame ``t`` of a scene (deterministic: the noise is seeded by the scene and ``t``).

    Order: world window (mucosa + vessels) -> lumen darkening -> polyps -> light fall-off ->
    highlights -> field-of-view border -> slight blur -> sensor noise. A polyp's box is the tight box
    of its mask inside the field of view; polyps hidden under the black border get no box.
    """
    h, w = scene.height, scene.width
    oy, ox = camera_offset(scene, t)
    image = scene.world[oy : oy + h, ox : ox + w].copy()
    grain = scene.grain[oy : oy + h, ox : ox + w]
    yy, xx = _grid(h, w)

    ly = scene.lumen_centre[0] + scene.lumen_wobble * math.sin(2 * math.pi * t / 40 + scene.lumen_phase)
    lx = scene.lumen_centre[1] + scene.lumen_wobble * math.cos(2 * math.pi * t / 50 + scene.lumen_phase)
    lumen = np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * scene.lumen_radius**2))
    image *= (1.0 - 0.9 * lumen)[..., None]

    fov = fov_mask(h, w)
    boxes = []
    if draw_polyps:
        for view in polyp_views(scene, t):
            visible = _draw_polyp(image, grain, view, np.array(scene.light)) & (fov >= 0.5)
            box = mask_box(visible)
            if box is not None and visible.sum() >= MIN_VISIBLE_PIXELS:
                boxes.append((view.track_id, box))

    r2 = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (0.25 * (h * h + w * w))
    image *= (1.12 - 0.5 * r2)[..., None]  # the scope's light falls off towards the border
    gloss = scene.gloss[oy : oy + h, ox : ox + w][..., None]
    image = image * (1.0 - gloss) + gloss * np.float32(0.97)
    image *= fov[..., None]
    sigma = 0.6 * min(h, w) / 224
    image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    noise_rng = np.random.default_rng([*scene.noise_seed, t])
    image += noise_rng.normal(0.0, scene.noise_std, size=image.shape).astype(np.float32) * fov[..., None]
    return RenderedFrame(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), boxes)


# ---------------------------------------------------------------------------------------------- writing


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=JPEG_QUALITY)


def _video_codec() -> str:
    """libx264 when this PyAV build has the encoder, else MPEG-4 part 2 (always built in)."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # any failure means "not available in this build"
        return "mpeg4"


@contextlib.contextmanager
def mp4_writer(path: Path, width: int, height: int, fps: int) -> Iterator[Callable[[np.ndarray], None]]:
    """Open an mp4 for writing (atomically) and yield ``write(rgb_uint8_frame)``.

    yuv420p needs even dimensions: an odd last row/column is cropped.
    """
    import av

    even_w, even_h = width - width % 2, height - height % 2
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            codec = _video_codec()
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18", "preset": "veryfast"}
            else:
                stream.bit_rate = 4_000_000

            def write(rgb: np.ndarray) -> None:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:even_h, :even_w]), format="rgb24")
                container.mux(stream.encode(frame))

            yield write
            container.mux(stream.encode(None))
        finally:
            container.close()


def video_name(index: int) -> str:
    return f"synth_{index:03d}"


def generate(out_dir: Path, options: SynthOptions) -> SynthSummary:
    """Write the synthetic set under ``out_dir`` (see the module docstring); the json comes last.

    Frames and mp4s are each written atomically and the json only after all of them, so an interrupted
    run never leaves an ``annotations.json`` that points at missing frames.
    """
    options.validate()
    out_dir = Path(out_dir)
    ann_path = out_dir / "annotations.json"
    images: list[dict] = []
    annotations: list[dict] = []
    mp4s: list[Path] = []
    for v in range(options.videos):
        name = video_name(v)
        rng = np.random.default_rng([options.seed, v])
        scene = make_scene(
            rng, options.width, options.height, POLYPS_PER_VIDEO[v % len(POLYPS_PER_VIDEO)], options.frames
        )
        with contextlib.ExitStack() as stack:
            write_video = None
            if options.mp4:
                mp4 = out_dir / "videos" / f"{name}.mp4"
                write_video = stack.enter_context(mp4_writer(mp4, options.width, options.height, options.fps))
                mp4s.append(mp4)
            for t in range(options.frames):
                frame = render_frame(scene, t)
                rel = f"frames/{name}/{t:05d}.jpg"
                _save_jpeg(frame.image, out_dir / rel)
                if write_video is not None:
                    write_video(frame.image)
                image_id = len(images) + 1
                images.append(
                    {
                        "id": image_id,
                        "file_name": rel,
                        "width": options.width,
                        "height": options.height,
                        "video_id": name,
                        "frame_index": t,
                    }
                )
                for track_id, (x0, y0, x1, y1) in frame.boxes:
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": image_id,
                            "category_id": 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": (x1 - x0) * (y1 - y0),
                            "iscrowd": 0,
                            "track_id": track_id,
                        }
                    )
    info = {"description": "fpsiam synthetic colonoscopy frames", **dataclasses.asdict(options)}
    save_coco(ann_path, new_coco(images, annotations, info=info))
    return SynthSummary(
        out_dir=out_dir,
        annotations=ann_path,
        frames_dir=out_dir / "frames",
        mp4s=mp4s,
        videos=options.videos,
        images=len(images),
        positive_images=len({a["image_id"] for a in annotations}),
        boxes=len(annotations),
    )


def synth_split(out_dir: Path, options: SynthOptions | None = None) -> dict[str, Path]:
    """Generate a set and split it by video into ``train.json`` / ``test.json`` beside ``annotations.json``.

    Videos alternate: even indices train, odd indices test (no video in both). With
    :data:`POLYPS_PER_VIDEO` both sides have polyps and the test side holds the negative video.
    Returns the paths: ``annotations``, ``train``, ``test`` and ``frames`` (the unlabeled frame folder).
    """
    options = options or SynthOptions()
    if options.videos < 2:
        raise FpsiamError(f"synthetic data: a train/test split needs videos >= 2, got {options.videos}")
    summary = generate(out_dir, options)
    data = load_coco(summary.annotations)
    paths = {"annotations": summary.annotations, "frames": summary.frames_dir}
    for split, parity in (("train", 0), ("test", 1)):
        keep = {video_name(v) for v in range(options.videos) if v % 2 == parity}
        split_images = [im for im in data["images"] if im["video_id"] in keep]
        ids = {im["id"] for im in split_images}
        split_anns = [a for a in data["annotations"] if a["image_id"] in ids]
        info = {**data.get("info", {}), "split": split}
        path = Path(out_dir) / f"{split}.json"
        save_coco(path, new_coco(split_images, split_anns, info=info))
        paths[split] = path
    return paths
