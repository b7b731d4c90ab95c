"""The experiment's HTML report: one self-contained file built from ``results.json``.

The report answers the study's question — does self-supervised pretraining on unlabeled colonoscopy
frames beat ImageNet or random init for a detector? — with the comparison table in the layout of the
paper's Table 3 (rows = arms, column groups = detectors, mAP / AP50 / AP75 in %, mean ± std over seeds,
best per column in bold), then the clinical metrics, the pretraining and fine-tuning curves, PR curves,
sample predictions and Grad-CAM views. When the runs were fine-tuned on more than one fraction of the train
labels, the tables get a ``labels`` column (one row per arm and fraction) and a label-efficiency plot
follows the table; the per-epoch, PR and sample views then show the runs at the largest fraction.

Self-contained: inline CSS, every image a ``data:image/png;base64,...`` URI, no scripts, fonts or links
outside the file, so it opens in a browser from disk with no server. All text from ``results`` is
escaped. Optional parts of ``results`` that are missing leave their section out; a missing image file is
shown as a note. The ``results`` schema is the one the experiment runner writes (see
``fpsiam.experiment``); the keys used here:

- ``title``, ``created``, ``machine``, ``command``, ``config``;
- ``arms`` (rows, in order), ``detectors`` (column groups, in order);
- ``label_fractions``: the fractions of the train labels fine-tuned on, in (0, 1] (absent: [1.0]);
- ``runs``: ``{"arm", "detector", "seed", "labels" (fraction, absent: 1.0), "train_images", "status":
  "done"|"failed"|"skipped"|"pending", "reason", "metrics": {"mAP", "AP50", "AP75", ...} (COCO, 0..1, -1 = undefined),
  "metrics_source", "clinical", "history", "samples"}``;
- ``pretrain``: ``{arm: {"status", "reason", "seconds", "curve": [...]}}``; the curve's rows are steps
  (``global_step``, ``loss``, ``collapse``, ...) and probes (``{"kind": "probe", "epoch", "global_step",
  "probe_linear", "probe_knn", ...}``, accuracies 0..1);
- ``gradcam``: ``{arm: {"energy_in_box", "peak_in_box", "chance", "n", "images": [...]}}``;
- ``reference``: ``[{"arm", "detector", "mAP", "AP50", "AP75", "note"}]``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from fpsiam.fileio import atomic_open
from fpsiam.report import plots
from fpsiam.report.plots import (
    _mean_std,
    _metric,
    _order,
    curve_rows,
    label_fractions,
    number,
    percent,
    runs_by,
)
from fpsiam.report.schema import check_results

TABLE_METRICS = ("mAP", "AP50", "AP75")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
GRID_CELL = "320px"  # widest image in the sample / Grad-CAM grids (narrower when many share a row)
REASON_CHARS = 300  # a failure reason longer than this is cut in the table (the full text is its tooltip)
LABEL_EFFICIENCY_PNG = "label_efficiency.png"  # written beside the report when there are 2+ label fractions

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; }
.meta { color: #555; font-size: 0.92em; }
.meta code, pre { background: #f5f5f5; padding: 0.1em 0.3em; border-radius: 3px; }
pre { padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 0.9em; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.results td.num, table.results th.metric { text-align: center; }
td.best { background: #e8f4e8; }
td.failed { color: #a00; text-align: center; font-style: italic; }
td.arm, th.arm { text-align: left; font-weight: 600; }
.small { font-size: 0.85em; color: #555; }
.note { color: #a05a00; font-style: italic; }
figure { margin: 0.8em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
.grid { display: grid; gap: 0.5em; align-items: start; }
.grid img { width: 100%; height: auto; border: 1px solid #ddd; }
.grid .head { font-weight: 600; font-size: 0.9em; align-self: center; }
details summary { cursor: pointer; font-weight: 600; }
"""

# ------------------------------------------------------------------------------------ summary table


def _summary_row(arm: str, det: str, labels: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in runs if r.get("status") == "done"]
    row: dict[str, Any] = {
        "arm": arm,
        "detector": det,
        "labels": labels,
        "n": len(done),
        "seeds": [r.get("seed") for r in done],
        "failures": [
            {"seed": r.get("seed"), "status": str(r.get("status")), "reason": r.get("reason")}
            for r in runs
            if r.get("status") != "done"
        ],
    }
    sources = []
    for r in done:
        s = r.get("metrics_source")
        if s and str(s) not in sources:
            sources.append(str(s))
    row["metrics_source"] = "; ".join(sources) or None
    for key in TABLE_METRICS:
        values = [v for v in (_metric(r, key) for r in done) if v is not None]
        mean, std = _mean_std(values)
        row[key] = {"mean": mean, "std": std, "n": len(values), "best": False}
    return row


def summary_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison table's cells: one record per label fraction × arm × detector, in that order.

    Over the runs of that arm, detector and label fraction whose status is "done", for each of mAP / AP50 /
    AP75 (0..1): ``{"mean", "std", "n", "best"}`` — mean, sample std (ddof=1; None with one value), the
    number of seeds with a defined value, and whether it is the highest mean in its column (detector × metric,
    among the records of the same label fraction; ties are all marked; a column with no value marks nothing).
    A value that is missing, NaN or -1 (COCO's "undefined") is left out of its metric. Each record also has
    ``arm``, ``detector``, ``labels`` (the fraction; 1.0 for runs that do not say), ``n`` (runs done),
    ``seeds`` (their seeds), ``failures`` (``[{"seed", "status", "reason"}]`` for runs not done: failed or
    skipped) and ``metrics_source`` (the distinct sources of the done runs, joined by "; "; None if none says).
    """
    by = runs_by(results)
    rows = [
        _summary_row(arm, det, labels, by.get((arm, det, labels), []))
        for labels in label_fractions(results)
        for arm in _order(results, "arms", "arm")
        for det in _order(results, "detectors", "detector")
    ]
    for det, labels in {(r["detector"], r["labels"]) for r in rows}:
        for key in TABLE_METRICS:
            cells = [
                r[key] for r in rows if (r["detector"], r["labels"]) == (det, labels) and r[key]["mean"] is not None
            ]
            if cells:
                top = max(c["mean"] for c in cells)
                for c in cells:
                    c["best"] = math.isclose(c["mean"], top, rel_tol=1e-12, abs_tol=1e-15)
    return rows


def labels_note(results: dict[str, Any]) -> str:
    """The note under a table with a labels column: what the column means, and the train-set size per
    fraction when the runs say (their ``train_images``), e.g. "(10 % = 88, 100 % = 880 train images)".
    """
    sizes: dict[float, set[int]] = defaultdict(set)
    for (_, _, labels), runs in runs_by(results).items():
        sizes[labels].update(int(n) for n in (number(r.get("train_images")) for r in runs) if n is not None)
    parts = [f"{percent(f)} = {'/'.join(str(n) for n in sorted(sizes[f]))}" for f in sorted(sizes) if sizes[f]]
    note = "labels = the share of the train set's labels the detector was fine-tuned on"
    return note + (f" ({', '.join(parts)} train images)." if parts else ".")


# ------------------------------------------------------------------------------------------ helpers


def esc(x: Any) -> str:
    """Any value as escaped HTML text (quotes too, so it is safe in attributes)."""
    return html.escape("" if x is None else str(x), quote=True)


def _pct(mean: float | None, std: float | None = None) -> str:
    """0..1 → "24.3 ± 1.2" (percent, one decimal); "—" when undefined."""
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _fmt(x: Any, digits: int) -> str:
    v = number(x)
    return "—" if v is None else f"{v:.{digits}f}"


def _cut(text: Any, limit: int = REASON_CHARS) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    img = f'<img src="{data_uri(png)}" alt="{esc(alt)}">'
    if caption is None:
        return img
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


def _file_img(base_dir: Path, rel: Any, alt: str) -> str:
    """A PNG / JPEG file of the results (path relative to ``base_dir``) as an embedded image, or a note."""
    if not isinstance(rel, str) or not rel:
        return '<span class="note">no image path</span>'
    path = (base_dir / rel).resolve()
    if not path.is_relative_to(base_dir.resolve()):  # a results.json may name any file: embed only our own
        return f'<span class="note">image outside the report\'s folder, not embedded: {esc(rel)}</span>'
    try:
        data = path.read_bytes()
    except OSError:
        return f'<span class="note">missing image: {esc(rel)}</span>'
    if data.startswith(PNG_SIGNATURE):
        mime = "image/png"
    elif data.startswith(JPEG_SIGNATURE):
        mime = "image/jpeg"
    else:
        return f'<span class="note">not a PNG or JPEG image: {esc(rel)}</span>'
    uri = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}" alt="{esc(alt)}" title="{esc(rel)}">'


def _plot(make: Any, *args: Any, alt: str, caption: str) -> str:
    png = make(*args)
    return "" if png is None else _img(png, alt, caption)


# ----------------------------------------------------------------------------------------- sections


def _header(results: dict[str, Any]) -> str:
    title = results.get("title") or "fpsiam experiment"
    meta = []
    for key, label in (("created", "date"), ("machine", "machine")):
        if results.get(key):
            meta.append(f"<div><b>{label}:</b> {esc(results[key])}</div>")
    if results.get("command"):
        meta.append(f"<div><b>command:</b> <code>{esc(results['command'])}</code></div>")
    return f'<h1>{esc(title)}</h1>\n<div class="meta">{"".join(meta)}</div>'


def _failure_text(failures: list[dict[str, Any]]) -> tuple[str, str]:
    """("failed: reason" shortened, full text) for a cell whose runs all failed or were skipped."""
    status = failures[0]["status"] if len({f["status"] for f in failures}) == 1 else "failed"
    reasons = []
    for f in failures:
        r = str(f["reason"]) if f["reason"] else "no reason given"
        if r not in reasons:
            reasons.append(r)
    full = f"{status}: " + " | ".join(reasons)
    return _cut(full), full


def _results_table(results: dict[str, Any], rows: list[dict[str, Any]], efficiency: bytes | None = None) -> str:
    arms = _order(results, "arms", "arm")
    detectors = _order(results, "detectors", "detector")
    if not arms or not detectors:
        return '<p class="note">No runs in the results.</p>'
    fractions = label_fractions(results)
    multi = len(fractions) > 1
    cell = {(r["arm"], r["detector"], r["labels"]): r for r in rows}
    counts = [r["n"] for r in rows if r["n"]]
    common_n = max(set(counts), key=counts.count) if counts else 0
    head1 = (
        '<tr><th class="arm" rowspan="2">method</th>'
        + ('<th rowspan="2">labels</th>' if multi else "")
        + "".join(f'<th colspan="{len(TABLE_METRICS)}">{esc(d)}</th>' for d in detectors)
    )
    head2 = "<tr>" + "".join(f'<th class="metric">{m}</th>' for _ in detectors for m in TABLE_METRICS)
    body = []
    for labels in fractions:
        for arm in arms:
            tds = [f'<td class="arm">{esc(arm)}</td>'] + ([f'<td class="num">{percent(labels)}</td>'] if multi else [])
            tds += [td for det in detectors for td in _result_cells(cell[(arm, det, labels)], common_n)]
            body.append("<tr>" + "".join(tds) + "</tr>")
    table = f'<table class="results">\n<thead>{head1}</tr>\n{head2}</tr></thead>\n<tbody>\n'
    table += "\n".join(body) + "\n</tbody></table>"

    seeds = sorted({str(s) for r in rows for s in r["seeds"]})
    sources = sorted({s for r in rows if r["metrics_source"] for s in r["metrics_source"].split("; ")})
    notes = [
        f"COCO box AP on the test set, in %. Mean ± sample std over {common_n} seed(s) per cell"
        + (f" (seeds {esc(', '.join(seeds))})" if seeds else "")
        + "; a cell with another count says n=…; no ± with one seed. "
        + ("Best per column and label fraction in bold." if multi else "Best per column in bold."),
        "Numbers are the evaluation at: " + (esc("; ".join(sources)) if sources else "not recorded") + ".",
    ]
    if multi:
        notes.append(esc(labels_note(results)))
    out = [table, "".join(f'<p class="small">{n}</p>' for n in notes)]
    if efficiency is not None:
        out.append(
            _img(
                efficiency,
                "test mAP against the fraction of train labels",
                "Label efficiency: test mAP (%) against the share of the train labels fine-tuned on (log scale); "
                "markers = mean over the finished seeds, band = ± one sample std over seeds (none with one seed).",
            )
        )

    failed = [(r, f) for r in rows for f in r["failures"]]
    if failed:
        items = "".join(
            f"<li>{esc(r['arm'])} / {esc(r['detector'])}{', ' + percent(r['labels']) + ' labels' if multi else ''}"
            f", seed {esc(f['seed'])}: {esc(f['status'])}"
            f"{': ' + esc(_cut(f['reason'], 2000)) if f['reason'] else ''}</li>"
            for r, f in failed
        )
        out.append(f'<h3>Runs not finished (†)</h3><ul class="small">{items}</ul>')
    out.append(_reference_table(results.get("reference")))
    return "\n".join(out)


def _result_cells(row: dict[str, Any], common_n: int) -> list[str]:
    """One detector's cells of a results-table row: mAP / AP50 / AP75, or one cell saying why there are none."""
    if row["n"] == 0:
        if row["failures"]:
            short, full = _failure_text(row["failures"])
            return [f'<td class="failed" colspan="3" title="{esc(full)}">{esc(short)}</td>']
        return ['<td class="failed" colspan="3">not run</td>']
    tds = []
    for key in TABLE_METRICS:
        c = row[key]
        text = esc(_pct(c["mean"], c["std"]))
        if c["n"] and c["n"] != common_n:
            text += f' <span class="small">(n={c["n"]})</span>'
        if row["failures"] and key == TABLE_METRICS[-1]:
            text += ' <span class="small" title="see the failed runs below">†</span>'
        if c["best"]:
            tds.append(f'<td class="num best"><b>{text}</b></td>')
        else:
            tds.append(f'<td class="num">{text}</td>')
    return tds


def _ref_pct(x: Any) -> str:
    """A reference value as a percentage; one given above 1 is taken as already in percent."""
    v = number(x)
    if v is None or v < 0:
        return "—"
    return f"{v:.1f}" if v > 1 else f"{100 * v:.1f}"


def _reference_table(reference: Any) -> str:
    if not isinstance(reference, list):
        return ""
    refs = [r for r in reference if isinstance(r, dict)]
    if not refs:
        return ""
    rows = "".join(
        f'<tr><td class="arm">{esc(r.get("arm"))}</td><td>{esc(r.get("detector"))}</td>'
        + "".join(f'<td class="num">{_ref_pct(r.get(k))}</td>' for k in TABLE_METRICS)
        + f'<td class="small">{esc(r.get("note"))}</td></tr>'
        for r in refs
    )
    head = "<tr><th>method</th><th>detector</th>" + "".join(f"<th>{m}</th>" for m in TABLE_METRICS)
    return (
        "<h3>Reference points</h3>"
        '<p class="small">Measured outside this experiment (see each note); not part of the bold ranking.</p>'
        f"<table>{head}<th>note</th></tr>{rows}</table>"
    )


CLINICAL_COLUMNS = (
    ("threshold", "threshold", "fixed3"),
    ("precision", "precision (%)", "pct"),
    ("recall", "recall (%)", "pct"),
    ("f1", "F1 (%)", "pct"),
    ("fp_per_frame", "FP / frame", "fixed3"),
)
POLYP_COLUMNS = (
    ("detected_fraction", "polyps detected (%)", "pct"),
    ("median_frames_to_detection", "median frames to detection", "fixed1"),
)


def _agg_text(values: list[float], kind: str) -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return "—"
    if kind == "pct":
        return _pct(mean, std)
    digits = 3 if kind == "fixed3" else 1
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _best_f1_blocks(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``clinical.at_best_f1`` blocks of the finished runs that have one."""
    clinical = [r.get("clinical") for r in runs if r.get("status") == "done"]
    return [c["at_best_f1"] for c in clinical if isinstance(c, dict) and isinstance(c.get("at_best_f1"), dict)]


def _clinical_row(arm: str, det: str, labels: str | None, blocks: list[dict[str, Any]], columns: tuple) -> str:
    """One row of the clinical table: the blocks' mean ± std per column (``labels``: its cell, None: none)."""
    tds = [f'<td class="arm">{esc(arm)}</td><td>{esc(det)}</td>']
    tds += [] if labels is None else [f'<td class="num">{labels}</td>']
    tds.append(f'<td class="num">{len(blocks)}</td>')
    for column in columns:
        key, _, kind = column
        source = [b.get("per_polyp") if column in POLYP_COLUMNS else b for b in blocks]
        values = [number(s.get(key)) for s in source if isinstance(s, dict)]
        tds.append(f'<td class="num">{esc(_agg_text([v for v in values if v is not None], kind))}</td>')
    return "<tr>" + "".join(tds) + "</tr>"


def _clinical_table(results: dict[str, Any]) -> str:
    by = {key: blocks for key, runs in runs_by(results).items() if (blocks := _best_f1_blocks(runs))}
    if not by:
        return ""
    multi = len(label_fractions(results)) > 1
    with_polyps = any(isinstance(b.get("per_polyp"), dict) for blocks in by.values() for b in blocks)
    columns = CLINICAL_COLUMNS + (POLYP_COLUMNS if with_polyps else ())
    head = (
        "<tr><th>method</th><th>detector</th>"
        + ("<th>labels</th>" if multi else "")
        + "<th>seeds</th>"
        + "".join(f"<th>{esc(label)}</th>" for _, label, _ in columns)
    )
    body = [
        _clinical_row(arm, det, percent(labels) if multi else None, by[(arm, det, labels)], columns)
        for labels in label_fractions(results)
        for arm in _order(results, "arms", "arm")
        for det in _order(results, "detectors", "detector")
        if (arm, det, labels) in by
    ]
    note = (
        "Per frame at each run's F1-best score threshold (IoU ≥ 0.5), mean ± std over the finished seeds. "
        "FP / frame counts false boxes over all test frames, negatives included."
    )
    if with_polyps:
        note += (
            " A polyp is detected when at least one of its boxes is found; frames to detection count from "
            "its first annotated frame (0 = found at once)."
        )
    return f'<table>{head}</tr>{"".join(body)}</table><p class="small">{esc(note)}</p>'


PROBE_CAPTION = (
    "Frozen-backbone probe (polyp vs mucosa crops) during pretraining: it says whether the features became "
    "useful; the collapse monitor only says whether they are alive."
)


def _probe_cells(curve: Any) -> str:
    """The last probe row's linear / kNN accuracy (%, ± the probe seeds' std when above 0) as two cells."""
    probes = curve_rows(curve, probe=True)
    last = probes[-1] if probes else {}
    return "".join(
        f'<td class="num">{_pct(number(last.get(key)), number(last.get(key + "_std")) or None)}</td>'
        for key in ("probe_linear", "probe_knn")
    )


def _pretrain_row(arm: str, info: dict[str, Any], with_probe: bool) -> str:
    steps = curve_rows(info.get("curve"))
    last = steps[-1] if steps else {}
    collapse = [number(v) for k, v in last.items() if k.startswith("collapse")]
    collapse = [c for c in collapse if c is not None]
    seconds = number(info.get("seconds"))
    status = str(info.get("status") or "—")
    if info.get("reason"):
        status += ": " + _cut(info["reason"])
    return (
        f'<tr><td class="arm">{esc(arm)}</td><td>{esc(status)}</td>'
        f'<td class="num">{"—" if seconds is None else f"{seconds / 60:.1f}"}</td>'
        f'<td class="num">{esc(last.get("epoch", "—"))}</td>'
        f'<td class="num">{_fmt(last.get("loss"), 4)}</td>'
        f'<td class="num">{"—" if not collapse else f"{min(collapse):.3f}"}</td>'
        + (_probe_cells(info.get("curve")) if with_probe else "")
        + "</tr>"
    )


def _pretrain_section(results: dict[str, Any]) -> str:
    pretrain = results.get("pretrain")
    if not isinstance(pretrain, dict) or not pretrain:
        return ""
    arms = _order(results, "arms", "arm")
    infos = {a: pretrain[a] if isinstance(pretrain[a], dict) else {} for a in arms if a in pretrain}
    infos.update({a: info if isinstance(info, dict) else {} for a, info in pretrain.items() if a not in arms})
    with_probe = any(curve_rows(info.get("curve"), probe=True) for info in infos.values())
    rows = "".join(_pretrain_row(arm, info, with_probe) for arm, info in infos.items())
    table = (
        "<table><tr><th>method</th><th>status</th><th>minutes</th><th>last epoch</th><th>final loss</th>"
        "<th>final collapse monitor (min)</th>"
        + ("<th>final linear probe (%)</th><th>final kNN probe (%)</th>" if with_probe else "")
        + f"</tr>{rows}</table>"
    )
    figs = (
        _plot(
            plots.pretrain_loss_plot,
            pretrain,
            arms,
            alt="pretraining loss curves",
            caption="Pretraining loss vs global step (FPSiam's local / global terms dashed / dotted).",
        )
        + _plot(
            plots.collapse_plot,
            pretrain,
            arms,
            alt="collapse monitor curves",
            caption="Collapse monitor: std of the l2-normalised projections × √d; about 1 is healthy, "
            "→ 0 means the outputs collapsed to one vector.",
        )
        + _plot(
            plots.probe_plot,
            pretrain,
            arms,
            alt="frozen-backbone probe accuracy during pretraining",
            caption=PROBE_CAPTION + " Linear probe solid, kNN dashed, accuracy in %.",
        )
    )
    return table + figs


def _samples_section(results: dict[str, Any], base_dir: Path) -> str:
    """Per detector, a grid: rows = arms, columns = the sample images of the arm's first seed that has any.

    With several label fractions, the runs at the largest one.
    """
    by = plots.top_fraction_runs(results)
    out = []
    for det in _order(results, "detectors", "detector"):
        grid_rows = []
        width = 0
        for arm in _order(results, "arms", "arm"):
            runs = [r for r in by.get((arm, det), []) if isinstance(r.get("samples"), list) and r["samples"]]
            if not runs:
                continue
            run = runs[0]
            cells = []
            for k, sample in enumerate(run["samples"]):
                rel = sample.get("png") if isinstance(sample, dict) else sample
                caption = sample.get("caption") if isinstance(sample, dict) else None
                img = _file_img(base_dir, rel, f"{arm} / {det} sample {k}")
                cap = f'<div class="small">{esc(caption)}</div>' if caption else ""
                cells.append(f"<div>{img}{cap}</div>")
            width = max(width, len(cells))
            first = run["samples"][0] if isinstance(run["samples"][0], dict) else {}
            drawn = f", score ≥ {first['threshold']:.2f}" if number(first.get("threshold")) is not None else ""
            small = f'<span class="small">seed {esc(run.get("seed"))}{drawn}</span>'
            head = f'<div class="head">{esc(arm)}<br>{small}</div>'
            grid_rows.append((head, cells))
        if not grid_rows:
            continue
        html_rows = "".join(head + "".join(cells) + "<div></div>" * (width - len(cells)) for head, cells in grid_rows)
        style = f"grid-template-columns: 8em repeat({width}, minmax(0, {GRID_CELL}));"
        out.append(f'<h3>{esc(det)}</h3><div class="grid" style="{style}">{html_rows}</div>')
    if not out:
        return ""
    return (
        '<p class="small">Test frames: predicted boxes (red, with scores) over the true boxes (green), drawn at '
        "each run's F1-best score threshold (given under the arm).</p>" + "".join(out)
    )


def _gradcam_section(results: dict[str, Any], base_dir: Path) -> str:
    gradcam = results.get("gradcam")
    if not isinstance(gradcam, dict) or not gradcam:
        return ""
    arms = _order(results, "arms", "arm")
    order = [a for a in arms if a in gradcam and isinstance(gradcam[a], dict)]
    order += [a for a in gradcam if a not in arms and isinstance(gradcam[a], dict)]
    if not order:
        return ""
    rows = "".join(
        f'<tr><td class="arm">{esc(a)}</td>'
        f'<td class="num">{_pct(number(gradcam[a].get("energy_in_box")))}</td>'
        f'<td class="num">{_pct(number(gradcam[a].get("peak_in_box")))}</td>'
        f'<td class="num">{_pct(number(gradcam[a].get("chance")))}</td>'
        f'<td class="num">{esc(gradcam[a].get("n", "—"))}</td></tr>'
        for a in order
    )
    table = (
        "<table><tr><th>method</th><th>CAM energy in box (%)</th><th>peak in box (%)</th>"
        f"<th>chance (%)</th><th>frames</th></tr>{rows}</table>"
    )
    chart = _plot(
        plots.cam_energy_plot,
        gradcam,
        arms,
        alt="Grad-CAM in-box energy per arm",
        caption="Share of the CAM inside the true boxes; the dashed tick is chance (the boxes' share of the "
        "image area).",
    )
    images = {a: gradcam[a].get("images") if isinstance(gradcam[a].get("images"), list) else [] for a in order}
    depth = max((len(v) for v in images.values()), default=0)
    grid = ""
    if depth:
        heads = "".join(f'<div class="head">{esc(a)}</div>' for a in order)
        cells = "".join(
            _file_img(base_dir, images[a][k], f"Grad-CAM {a} frame {k}") if k < len(images[a]) else "<div></div>"
            for k in range(depth)
            for a in order
        )
        style = f"grid-template-columns: repeat({len(order)}, minmax(0, {GRID_CELL}));"
        grid = (
            '<p class="small">The same test frames, one column per method.</p>'
            f'<div class="grid" style="{style}">{heads}{cells}</div>'
        )
    return table + chart + grid


def _config_section(results: dict[str, Any]) -> str:
    config = results.get("config")
    if config is None:
        return ""
    try:
        text, kind = (
            yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False),
            "YAML",
        )
    except yaml.YAMLError:  # a value YAML cannot represent: JSON with str() for it
        text, kind = json.dumps(config, indent=2, default=str), "JSON"
    return f"<details><summary>experiment config ({kind})</summary><pre>{esc(text)}</pre></details>"


# ------------------------------------------------------------------------------------------- report


def _top_note(results: dict[str, Any]) -> str:
    """The caption's note for the views that show only the largest label fraction; "" with one fraction."""
    if len(label_fractions(results)) == 1:
        return ""
    return f" Runs fine-tuned on {percent(plots.top_fraction(results))} of the labels."


def _checked(results: Any, where: str = "results") -> dict[str, Any]:
    return check_results(results, where)


def _render(results: dict[str, Any], base_dir: Path, efficiency: bytes | None) -> str:
    """The report's HTML; ``efficiency`` is the label-efficiency plot (None: left out)."""
    rows = summary_table(results)
    sections: list[tuple[str, str, str]] = [("table", "Comparison", _results_table(results, rows, efficiency))]
    sections.append(("clinical", "Clinical metrics", _clinical_table(results)))
    sections.append(("pretraining", "Pretraining", _pretrain_section(results)))
    sections.append(
        (
            "val-map",
            "Validation mAP per epoch",
            _plot(
                plots.val_map_plot,
                results,
                alt="validation mAP per epoch",
                caption="Validation mAP per epoch: thin lines = seeds, thick = mean over the finished seeds."
                + _top_note(results),
            ),
        )
    )
    sections.append(
        (
            "pr",
            "Precision-recall curves",
            _plot(
                plots.pr_curve_plot,
                results,
                alt="precision-recall curves",
                caption="Test-set precision-recall curves of every finished seed (IoU ≥ 0.5); dots mark the "
                "F1-best thresholds." + _top_note(results),
            ),
        )
    )
    sections.append(("samples", "Sample predictions", _samples_section(results, base_dir)))
    sections.append(("gradcam", "Grad-CAM", _gradcam_section(results, base_dir)))
    sections.append(("config", "Configuration", _config_section(results)))
    sections = [s for s in sections if s[2]]

    nav = "<nav>" + "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections) + "</nav>"
    body = "\n".join(
        f'<section id="{sid}"><h2>{esc(title)}</h2>\n{content}</section>' for sid, title, content in sections
    )
    title = esc(results.get("title") or "fpsiam experiment")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{_header(results)}\n{nav}\n{body}\n"
        '<p class="small">Written by fpsiam.</p>\n</body>\n</html>\n'
    )


def render_report(results: dict[str, Any], base_dir: Path) -> str:
    """The whole report as one self-contained HTML string (images embedded, inline CSS, no scripts).

    ``base_dir`` is where the relative image paths in ``results`` (samples, Grad-CAM) are read from.
    """
    results = _checked(results)
    return _render(results, Path(base_dir), plots.label_efficiency_plot(results))


def write_report(results: dict[str, Any], out_html: Path, where: str = "results") -> Path:
    """Render the report and write it atomically to ``out_html``; images are read relative to its folder.

    With two or more label fractions the label-efficiency plot is also written beside it, atomically, as
    ``label_efficiency.png`` (for slides and papers; the report embeds its own copy).
    """
    results, out_html = _checked(results, where), Path(out_html)
    efficiency = plots.label_efficiency_plot(results)
    text = _render(results, out_html.parent, efficiency)
    if efficiency is not None:
        with atomic_open(out_html.with_name(LABEL_EFFICIENCY_PNG), "wb") as f:
            f.write(efficiency)
    with atomic_open(out_html, "w", encoding="utf-8") as f:
        f.write(text)
    return out_html


__all__ = ["render_report", "summary_table", "write_report"]
