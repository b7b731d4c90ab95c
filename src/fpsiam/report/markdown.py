"""The comparison table as Markdown, for a README, a paper draft or an issue: ``OUT/table.md``.

Two tables from the same ``results.json`` the HTML report reads (see ``fpsiam.report.html``):

1. the paper's Table 3 layout: rows = arms, per detector mAP / AP50 / AP75 in %, mean ± sample std over
   seeds, the best mean per column in bold (the same cells as the HTML, from ``summary_table``);
2. every seed's value, so the seed-to-seed spread can be read next to the gaps between arms, with each
   arm's gap to a baseline arm (``random`` when present) as mean ± std of the per-seed differences
   (same fine-tuning seed = same detector init and data order, so the difference pairs them).

With more than one fraction of the train labels (``results["label_fractions"]``), both tables get a
``labels`` column: one row per arm and fraction (best per column within a fraction), and each gap pairs a
run with the baseline's run of the same detector, label fraction and seed.
"""

from __future__ import annotations

import html
import statistics
from typing import Any

from fpsiam.report.html import TABLE_METRICS, _pct, labels_note, summary_table
from fpsiam.report.plots import _metric, _order, _runs, label_fractions, percent, run_labels


def _comment(text: Any) -> str:
    """Text safe inside an HTML comment: no ``--`` (which ends it in some readers) and no ``>``."""
    return str(text).replace("--", "- -").replace(">", "&gt;").replace("\n", " ")


def md(text: Any) -> str:
    """A name (arm, detector) as a Markdown table cell: HTML escaped, no cell separators or line breaks."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _cell(c: dict[str, Any]) -> str:
    text = _pct(c["mean"], c["std"])
    return f"**{text}**" if c["best"] else text


def main_table(results: dict[str, Any]) -> str:
    rows = summary_table(results)
    detectors = _order(results, "detectors", "detector")
    fractions = label_fractions(results)
    multi = len(fractions) > 1
    head = (
        "| method | "
        + ("labels | " if multi else "")
        + " | ".join(f"{md(d)} {m}" for d in detectors for m in TABLE_METRICS)
        + " | seeds |"
    )
    sep = "|---|" + ("---:|" if multi else "") + "---:|" * (len(detectors) * len(TABLE_METRICS)) + "---|"
    cell = {(r["arm"], r["detector"], r["labels"]): r for r in rows}
    lines = [head, sep]
    for labels in fractions:
        for arm in _order(results, "arms", "arm"):
            cells, seeds = [percent(labels)] if multi else [], set()
            for det in detectors:
                row = cell[(arm, det, labels)]
                seeds.update(str(s) for s in row["seeds"])
                if row["n"] == 0:
                    why = row["failures"][0]["status"] if row["failures"] else "not run"
                    cells += [why] + ["—"] * (len(TABLE_METRICS) - 1)
                else:
                    cells += [_cell(row[k]) for k in TABLE_METRICS]
            lines.append(f"| {md(arm)} | " + " | ".join(cells) + f" | {', '.join(sorted(seeds)) or '—'} |")
    return "\n".join(lines)


def _gap(value: dict[tuple, float | None], arm: str, baseline: str, key: tuple, seeds: list[Any]) -> str:
    """Mean ± std over seeds of ``arm`` − ``baseline`` at the same ``key`` (detector, labels) and seed."""
    pairs = ((value.get((arm, *key, s)), value.get((baseline, *key, s))) for s in seeds)
    diffs = [v - b for v, b in pairs if v is not None and b is not None]
    if arm == baseline or not diffs:
        return "—"
    sd = statistics.stdev(diffs) if len(diffs) > 1 else None
    sign = "+" if statistics.mean(diffs) >= 0 else ""
    return f"{sign}{_pct(statistics.mean(diffs), sd)}"


def seed_table(results: dict[str, Any], metric: str = "mAP", baseline: str | None = "random") -> str:
    """Per-seed ``metric`` (in %) per arm, detector and label fraction, and the paired gap to ``baseline``."""
    runs = [r for r in _runs(results) if r.get("status") == "done"]
    seeds = sorted({r.get("seed") for r in runs}, key=str)
    value = {(str(r["arm"]), str(r["detector"]), run_labels(r), r.get("seed")): _metric(r, metric) for r in runs}
    arms = _order(results, "arms", "arm")
    fractions = label_fractions(results)
    multi = len(fractions) > 1
    if baseline not in arms:
        baseline = None
    gap_head = f" | gap to {baseline} (paired)" if baseline else ""
    lines = [
        f"| method | detector | {'labels | ' if multi else ''}{' | '.join(f'seed {s}' for s in seeds)} "
        f"| mean ± std{gap_head} |",
        "|---|---|" + "---:|" * (len(seeds) + 1 + bool(baseline) + multi),
    ]
    for det in _order(results, "detectors", "detector"):
        for labels in fractions:
            for arm in arms:
                vals = [value.get((arm, det, labels, s)) for s in seeds]
                got = [v for v in vals if v is not None]
                if not got:
                    continue
                mean, std = statistics.mean(got), (statistics.stdev(got) if len(got) > 1 else None)
                line = f"| {md(arm)} | {md(det)} | " + (f"{percent(labels)} | " if multi else "")
                line += " | ".join(_pct(v) for v in vals) + f" | {_pct(mean, std)}"
                if baseline:
                    line += " | " + _gap(value, arm, baseline, (det, labels), seeds)
                lines.append(line + " |")
    return "\n".join(lines)


def markdown_report(results: dict[str, Any]) -> str:
    """Both tables with the notes a reader needs (units, what the numbers are, where they came from)."""
    sources = sorted({str(r["metrics_source"]) for r in _runs(results) if r.get("metrics_source")})
    multi = len(label_fractions(results)) > 1
    parts = [
        f"<!-- {_comment(results.get('title', 'fpsiam experiment'))}; written by fpsiam from results.json -->",
        main_table(results),
        "",
        "COCO box AP on the test set, in %; mean ± sample std over seeds; "
        + ("best per column and label fraction in bold. " if multi else "best per column in bold. ")
        + f"Evaluation: {'; '.join(sources) or 'not recorded'}."
        + (" " + labels_note(results) if multi else ""),
        "",
        seed_table(results),
        "",
    ]
    return "\n".join(parts)


__all__ = ["main_table", "markdown_report", "seed_table"]
