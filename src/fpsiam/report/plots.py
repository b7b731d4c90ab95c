"""The report's plots: small matplotlib figures rendered to PNG bytes (Agg), ready to embed in HTML.

Each function takes parts of the experiment's ``results.json`` (see :mod:`fpsiam.report.html`) and
returns the PNG as bytes, or ``None`` when there is nothing to draw (the report then omits the plot).
Figures are built with the object-oriented API (``Figure`` + ``FigureCanvasAgg``): no pyplot state, no
GUI backend, nothing shown. Every arm keeps one colour across all plots (its index in ``arms``).
"""

from __future__ import annotations

import functools
import io
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Readable in a browser at 100 % zoom; small enough that a report with a dozen plots stays light.
DPI = 110
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
# FPSiam's two loss / collapse terms, drawn in the arm's colour with these line styles.
TERM_STYLE = {"": "-", "_local": "--", "_global": ":"}


def number(x: Any) -> float | None:
    """``x`` as a finite float, or None for None / NaN / inf / a non-number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def arm_colors(arms: Sequence[str]) -> dict[str, Any]:
    """One tab10 colour per arm, by its position in ``arms`` (the table's row order)."""
    cmap = matplotlib.colormaps["tab10"]
    return {arm: cmap(k % 10) for k, arm in enumerate(arms)}


def _styled(fn: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    """Run a plot function under the report's rcParams (fonts are fixed when artists are created)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> bytes | None:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _curve_points(curve: Any, key: str) -> tuple[list[float], list[float]]:
    """(global_step, value) pairs of ``key`` in a pretraining curve, skipping missing / non-finite values."""
    xs, ys = [], []
    if not isinstance(curve, list):
        return xs, ys
    for k, rec in enumerate(curve):
        if not isinstance(rec, dict):
            continue
        y = number(rec.get(key))
        if y is None:
            continue
        x = number(rec.get("global_step"))
        xs.append(k if x is None else x)
        ys.append(y)
    return xs, ys


def _term_plot(
    pretrain: dict[str, Any], arms: Sequence[str], prefix: str, ylabel: str, title: str
) -> tuple[Figure, Any] | None:
    """Lines of ``prefix``, ``prefix_local``, ``prefix_global`` vs global step, one colour per arm."""
    if not isinstance(pretrain, dict):
        return None
    order = [a for a in arms if a in pretrain] + [a for a in pretrain if a not in arms]
    colors = arm_colors([*arms, *(a for a in pretrain if a not in arms)])
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    drew = False
    for arm in order:
        info = pretrain[arm]
        if not isinstance(info, dict):
            continue
        for suffix, style in TERM_STYLE.items():
            xs, ys = _curve_points(info.get("curve"), prefix + suffix)
            if not xs:
                continue
            label = arm if not suffix else f"{arm} ({suffix[1:]})"
            ax.plot(xs, ys, style, color=colors[arm], lw=1.8 if not suffix else 1.2, label=label)
            drew = True
    if not drew:
        return None
    ax.set_xlabel("global step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig, ax


@_styled
def pretrain_loss_plot(pretrain: dict[str, Any], arms: Sequence[str] = ()) -> bytes | None:
    """Pretraining loss vs global step for every self-supervised arm in one plot.

    ``pretrain`` is results["pretrain"]: ``{arm: {"curve": [{"global_step", "loss", "loss_local",
    "loss_global", ...}]}}``. FPSiam's local / global terms are dashed / dotted in the arm's colour.
    The SimSiam-style loss is a negative cosine similarity: −1 is its minimum.
    """
    made = _term_plot(pretrain, arms, "loss", "loss (−cos similarity)", "Pretraining loss")
    if made is None:
        return None
    fig, ax = made
    ax.legend(loc="upper right")
    return _png(fig)


@_styled
def collapse_plot(pretrain: dict[str, Any], arms: Sequence[str] = ()) -> bytes | None:
    """The collapse monitor (SimSiam §4: per-dimension std of the l2-normalised projections × √d).

    About 1 for healthy outputs, → 0 when every frame maps to the same vector (collapse). A reference
    line marks 1.0. SimSiam logs ``collapse``; FPSiam ``collapse_local`` / ``collapse_global``.
    """
    made = _term_plot(pretrain, arms, "collapse", "output std × √d", "Collapse monitor")
    if made is None:
        return None
    fig, ax = made
    ax.axhline(1.0, color="0.4", lw=1, ls="-.", label="healthy ≈ 1")
    ax.set_ylim(bottom=0)
    ax.text(0.01, 0.03, "→ 0 means collapse", transform=ax.transAxes, fontsize=8, color="0.3", va="bottom")
    ax.legend(loc="lower right")
    return _png(fig)


def _runs_by(results: dict[str, Any]) -> dict[tuple[str, str], list[dict]]:
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in results.get("runs") or []:
        if isinstance(run, dict):
            by[(str(run.get("arm")), str(run.get("detector")))].append(run)
    return by


def _detector_axes(fig: Figure, detectors: Sequence[str], sharey: bool) -> list[Any]:
    axes = fig.subplots(1, len(detectors), sharey=sharey, squeeze=False)[0]
    for ax, det in zip(axes, detectors, strict=True):
        ax.set_title(det)
    return list(axes)


@_styled
def val_map_plot(results: dict[str, Any]) -> bytes | None:
    """Validation mAP (%) per epoch: one subplot per detector, one colour per arm.

    Only finished runs (status "done"; failed ones are listed with the table): each seed is a thin line,
    their mean at each epoch the thick line.
    """
    arms, detectors = list(results.get("arms") or []), list(results.get("detectors") or [])
    if not arms or not detectors:
        return None
    colors, by = arm_colors(arms), _runs_by(results)
    fig = _figure(min(4.2 * len(detectors), 12), 3.4)
    axes = _detector_axes(fig, detectors, sharey=True)
    drew = False
    for ax, det in zip(axes, detectors, strict=True):
        for arm in arms:
            per_epoch: dict[float, list[float]] = defaultdict(list)
            for run in by.get((arm, det), []):
                if run.get("status") != "done":
                    continue
                pts = []
                for rec in run.get("history") or []:
                    if not isinstance(rec, dict):
                        continue
                    e, m = number(rec.get("epoch")), number(rec.get("mAP"))
                    if e is not None and m is not None and m >= 0:
                        pts.append((e, 100 * m))
                if not pts:
                    continue
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[arm], lw=0.8, alpha=0.4)
                drew = True
                for e, m in pts:
                    per_epoch[e].append(m)
            if per_epoch:
                epochs = sorted(per_epoch)
                mean = [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
                ax.plot(epochs, mean, color=colors[arm], lw=2.2, label=arm, marker="o", ms=3)
        ax.set_xlabel("epoch")
    if not drew:
        return None
    axes[0].set_ylabel("val mAP (%)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
    return _png(fig)


def _pr_points(pr: Any) -> tuple[list[float], list[float]]:
    if not isinstance(pr, dict):
        return [], []
    pairs = [(number(r), number(p)) for r, p in zip(pr.get("recall") or [], pr.get("precision") or [], strict=False)]
    pairs = [(r, p) for r, p in pairs if r is not None and p is not None]
    return [r for r, _ in pairs], [p for _, p in pairs]


@_styled
def pr_curve_plot(results: dict[str, Any]) -> bytes | None:
    """Test-set precision-recall curves: one subplot per detector, every finished seed of every arm.

    Seeds share their arm's colour (labelled once); a dot marks each seed's F1-best operating point.
    """
    arms, detectors = list(results.get("arms") or []), list(results.get("detectors") or [])
    if not arms or not detectors:
        return None
    colors, by = arm_colors(arms), _runs_by(results)
    fig = _figure(min(4.2 * len(detectors), 12), 3.6)
    axes = _detector_axes(fig, detectors, sharey=True)
    drew = False
    for ax, det in zip(axes, detectors, strict=True):
        for arm in arms:
            labelled = False
            for run in by.get((arm, det), []):
                clinical = run.get("clinical") if run.get("status") == "done" else None
                if not isinstance(clinical, dict):
                    continue
                rs, ps = _pr_points(clinical.get("pr_curve"))
                if not rs:
                    continue
                ax.plot(rs, ps, color=colors[arm], lw=1.3, alpha=0.85, label=None if labelled else arm)
                labelled = drew = True
                best = clinical.get("at_best_f1")
                if isinstance(best, dict):
                    r, p = number(best.get("recall")), number(best.get("precision"))
                    if r is not None and p is not None:
                        ax.plot([r], [p], "o", color=colors[arm], ms=4)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
    if not drew:
        return None
    axes[0].set_ylabel("precision")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left")
    return _png(fig)


@_styled
def cam_energy_plot(gradcam: dict[str, Any], arms: Sequence[str] = ()) -> bytes | None:
    """Bar chart: fraction of Grad-CAM energy inside the true boxes, per arm, with the chance level.

    Chance = the fraction of the image area the boxes cover (a uniform CAM scores it); drawn as a black
    tick across each arm's bar.
    """
    if not isinstance(gradcam, dict):
        return None
    order = [a for a in arms if a in gradcam] + [a for a in gradcam if a not in arms]
    colors = arm_colors([*arms, *(a for a in gradcam if a not in arms)])
    bars = [
        (arm, number(gradcam[arm].get("energy_in_box")), number(gradcam[arm].get("chance")))
        for arm in order
        if isinstance(gradcam[arm], dict)
    ]
    bars = [b for b in bars if b[1] is not None]
    if not bars:
        return None
    fig = _figure(max(3.2, 0.9 * len(bars) + 1.6), 3.2)
    ax = fig.subplots()
    xs = range(len(bars))
    ax.bar(xs, [100 * e for _, e, _ in bars], color=[colors[a] for a, _, _ in bars], width=0.6)
    chance_labelled = False
    for x, (_, e, chance) in zip(xs, bars, strict=True):
        ax.text(x, 100 * e, f"{100 * e:.1f}", ha="center", va="bottom", fontsize=8)
        if chance is not None:
            ax.hlines(
                100 * chance,
                x - 0.4,
                x + 0.4,
                color="black",
                lw=1.5,
                ls="--",
                label=None if chance_labelled else "chance (box area)",
            )
            chance_labelled = True
    ax.set_xticks(list(xs), [a for a, _, _ in bars], rotation=20 if len(bars) > 4 else 0)
    ax.set_ylabel("CAM energy in box (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Grad-CAM energy inside the true boxes")
    ax.grid(axis="x", visible=False)
    if chance_labelled:
        ax.legend(loc="upper right")
    return _png(fig)


__all__ = [
    "arm_colors",
    "cam_energy_plot",
    "collapse_plot",
    "number",
    "pr_curve_plot",
    "pretrain_loss_plot",
    "val_map_plot",
]
