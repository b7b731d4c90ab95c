"""The report's plots: small matplotlib figures rendered to PNG bytes (Agg), ready to embed in HTML.

Each function takes parts of the experiment's ``results.json`` (see :mod:`fpsiam.report.html`) and
returns the PNG as bytes, or ``None`` when there is nothing to draw (the report then omits the plot).
Figures are built with the object-oriented API (``Figure`` + ``FigureCanvasAgg``): no pyplot state, no
GUI backend, nothing shown. Every arm keeps one colour across all plots (its index in ``arms``).

The helpers that read runs out of ``results`` (``_runs``, ``_order``, ``_metric``, ``runs_by``,
``label_fractions``) live here too, so the tables (:mod:`fpsiam.report.html`, :mod:`fpsiam.report.markdown`)
and the plots group and filter the runs the same way.
"""

from __future__ import annotations

import functools
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fpsiam.errors import FpsiamError

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
# The frozen-backbone probe's two scores, drawn in the arm's colour: (key, label suffix, line style, width).
PROBE_STYLE = (("probe_linear", " linear", "-", 1.8), ("probe_knn", " kNN", "--", 1.2))


def number(x: Any) -> float | None:
    """``x`` as a finite float, or None for None / NaN / inf / a non-number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------ reading results


def _runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = results.get("runs")
    if runs is None:
        return []
    if not isinstance(runs, list):
        raise FpsiamError("results: 'runs' must be a list of run records")
    return [r for r in runs if isinstance(r, dict)]


def _order(results: dict[str, Any], key: str, run_key: str) -> list[str]:
    """``results[key]`` in its order, then any value only the runs mention (so nothing is dropped)."""
    given = results.get(key)
    order = [str(x) for x in given] if isinstance(given, list) else []
    for run in _runs(results):
        name = str(run.get(run_key))
        if name not in order:
            order.append(name)
    return order


def _metric(run: dict[str, Any], key: str) -> float | None:
    """A run's test metric, or None when missing, non-finite or undefined (COCO writes -1)."""
    metrics = run.get("metrics")
    x = number(metrics.get(key)) if isinstance(metrics, dict) else None
    return x if x is not None and x >= 0 else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std is None with fewer than two values."""
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) >= 2 else None)


def _fraction(x: Any, what: str) -> float:
    v = number(x)
    if v is None or not 0 < v <= 1:
        raise FpsiamError(f"results: {what} must be a fraction in (0, 1], got {x!r}")
    return v


def run_labels(run: dict[str, Any]) -> float:
    """The fraction of the train labels a run was fine-tuned on (its ``labels``; missing / null: 1.0)."""
    x = run.get("labels")
    return 1.0 if x is None else _fraction(x, "a run's 'labels'")


def label_fractions(results: dict[str, Any]) -> list[float]:
    """The label fractions, ascending: ``results["label_fractions"]`` and any a run mentions; [1.0] if none."""
    given = results.get("label_fractions")
    fractions = {_fraction(x, "'label_fractions'") for x in given} if isinstance(given, list) else set()
    fractions.update(run_labels(r) for r in _runs(results))
    return sorted(fractions) or [1.0]


def percent(fraction: float) -> str:
    """A label fraction as the tables and axes write it: 0.1 -> "10 %", 0.125 -> "12.5 %"."""
    return f"{100 * fraction:g} %"


def runs_by(results: dict[str, Any]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    """The runs grouped by (arm, detector, label fraction), each group in the order of ``results["runs"]``."""
    by: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for run in _runs(results):
        by[(str(run.get("arm")), str(run.get("detector")), run_labels(run))].append(run)
    return by


# ---------------------------------------------------------------------------------------------- plots


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


def curve_rows(curve: Any, probe: bool = False) -> list[dict[str, Any]]:
    """A pretraining curve's step rows, or (``probe``) its probe rows (``{"kind": "probe", ...}``)."""
    if not isinstance(curve, list):
        return []
    return [r for r in curve if isinstance(r, dict) and (r.get("kind") == "probe") == probe]


def _curve_points(curve: Any, key: str, probe: bool = False) -> tuple[list[float], list[float]]:
    """(global_step, value) pairs of ``key`` in a curve's step (or probe) rows, skipping missing / non-finite values."""
    xs, ys = [], []
    for k, rec in enumerate(curve_rows(curve, probe)):
        y = number(rec.get(key))
        if y is None:
            continue
        x = number(rec.get("global_step"))
        xs.append(k if x is None else x)
        ys.append(y)
    return xs, ys


def _arm_lines(
    pretrain: dict[str, Any], arms: Sequence[str], series: Sequence[tuple], probe: bool = False, scale: float = 1.0
) -> tuple[Figure, Any] | None:
    """One line per arm and ``(key, label suffix, line style, width)`` of ``series`` vs global step, or None.

    ``probe``: read the probe rows (and mark each point) instead of the step rows; values are × ``scale``.
    """
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
        for key, suffix, style, width in series:
            xs, ys = _curve_points(info.get("curve"), key, probe)
            if not xs:
                continue
            marks = {"marker": "o", "ms": 3} if probe else {}
            ax.plot(xs, [scale * y for y in ys], ls=style, color=colors[arm], lw=width, label=arm + suffix, **marks)
            drew = True
    if not drew:
        return None
    ax.set_xlabel("global step")
    return fig, ax


def _term_plot(
    pretrain: dict[str, Any], arms: Sequence[str], prefix: str, ylabel: str, title: str
) -> tuple[Figure, Any] | None:
    """Lines of ``prefix``, ``prefix_local``, ``prefix_global`` vs global step, one colour per arm."""
    series = [
        (prefix + suffix, f" ({suffix[1:]})" if suffix else "", style, 1.2 if suffix else 1.8)
        for suffix, style in TERM_STYLE.items()
    ]
    made = _arm_lines(pretrain, arms, series)
    if made is not None:
        made[1].set_ylabel(ylabel)
        made[1].set_title(title)
    return made


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


@_styled
def probe_plot(pretrain: dict[str, Any], arms: Sequence[str] = ()) -> bytes | None:
    """Frozen-backbone probe accuracy (%) vs global step: linear probe solid, kNN dashed, one colour per arm.

    From the curves' probe rows (``{"kind": "probe", "global_step", "probe_linear", "probe_knn", ...}``,
    accuracies 0..1; the first at step 0 is the initial backbone). None when no arm has a probe row.
    """
    made = _arm_lines(pretrain, arms, PROBE_STYLE, probe=True, scale=100)
    if made is None:
        return None
    fig, ax = made
    ax.set_ylabel("probe accuracy (%)")
    ax.set_title("Frozen-backbone probe")
    ax.legend(loc="lower right")
    return _png(fig)


def top_fraction(results: dict[str, Any]) -> float:
    """The largest label fraction any run has (the largest listed when there are no runs)."""
    return max((run_labels(r) for r in _runs(results)), default=label_fractions(results)[-1])


def top_fraction_runs(results: dict[str, Any]) -> dict[tuple[str, str], list[dict]]:
    """The runs at :func:`top_fraction` by (arm, detector): the per-epoch, PR and sample views show those."""
    top = top_fraction(results)
    return {(arm, det): runs for (arm, det, labels), runs in runs_by(results).items() if labels == top}


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
    colors, by = arm_colors(arms), top_fraction_runs(results)
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


def _efficiency_points(results: dict[str, Any]) -> dict[tuple[str, str], dict[float, list[float]]]:
    """Test mAP (%) of the finished runs: {(arm, detector): {label fraction: [one value per seed]}}."""
    points: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (arm, det, labels), runs in runs_by(results).items():
        for run in runs:
            m = _metric(run, "mAP") if run.get("status") == "done" else None
            if m is not None:
                points[(arm, det)][labels].append(100 * m)
    return points


def _efficiency_line(ax: Any, per_fraction: dict[float, list[float]], color: Any, label: str) -> None:
    """Mean over seeds per fraction (markers) and a ± sample-std band where a fraction has ≥ 2 seeds."""
    xs = sorted(per_fraction)
    stats = [_mean_std(per_fraction[x]) for x in xs]
    means = [m for m, _ in stats]
    ax.plot(xs, means, "-o", color=color, lw=1.8, ms=4, label=label)
    if any(s is not None for _, s in stats):
        lo = [m - (s or 0.0) for m, s in stats]
        hi = [m + (s or 0.0) for m, s in stats]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)


@_styled
def label_efficiency_plot(results: dict[str, Any]) -> bytes | None:
    """Test mAP (%) vs the fraction of the train labels fine-tuned on: one subplot per detector, a line per arm.

    Markers are the mean over the finished seeds, the band ± one sample std (none at a fraction with one seed);
    the x axis is log-scaled and ticked at the fractions. None when fewer than two fractions have a finished
    run with a defined mAP.
    """
    points = _efficiency_points(results)
    fractions = sorted({f for per_fraction in points.values() for f in per_fraction})
    if len(fractions) < 2:
        return None
    arms = _order(results, "arms", "arm")
    detectors = [d for d in _order(results, "detectors", "detector") if any(k[1] == d for k in points)]
    colors = arm_colors(arms)
    fig = _figure(min(4.2 * len(detectors), 12), 3.4)
    axes = _detector_axes(fig, detectors, sharey=True)
    for ax, det in zip(axes, detectors, strict=True):
        for arm in arms:
            if (arm, det) in points:
                _efficiency_line(ax, points[(arm, det)], colors[arm], arm)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [percent(f) for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("train labels used")
        ax.legend(loc="lower right")
    axes[0].set_ylabel("test mAP (%)")
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
    colors, by = arm_colors(arms), top_fraction_runs(results)
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
    "curve_rows",
    "label_efficiency_plot",
    "label_fractions",
    "number",
    "percent",
    "pr_curve_plot",
    "pretrain_loss_plot",
    "probe_plot",
    "run_labels",
    "runs_by",
    "top_fraction",
    "top_fraction_runs",
    "val_map_plot",
]
