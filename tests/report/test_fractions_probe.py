"""Label fractions and probe rows in the report: grouped tables, paired gaps, label-efficiency and probe plots.

An old results.json (no ``label_fractions``, no run ``labels``, no probe rows) must render exactly as before:
``golden/`` holds the rendering of ``make_results`` from before these were added (images replaced by
``src="IMG"``). After an intended change to the report, rewrite them from ``render_report`` / ``markdown_report``.
"""

from __future__ import annotations

import base64
import copy
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from fpsiam.errors import FpsiamError
from fpsiam.report import plots
from fpsiam.report.html import render_report, summary_table, write_report
from fpsiam.report.markdown import main_table, markdown_report, seed_table
from tests.report.test_report import PNG, make_results, run

GOLDEN = Path(__file__).parent / "golden"

# Test mAP per (arm, label fraction), one value per seed. fpsiam's seed 2 at 10 % has no random partner.
MAP = {
    ("random", 0.1): [0.100, 0.120],
    ("fpsiam", 0.1): [0.150, 0.180, 0.210],
    ("random", 1.0): [0.300, 0.320],
    ("fpsiam", 1.0): [0.290, 0.300],
}


def probe_rows(linear=(0.60, 0.72, 0.84), knn=(0.55, 0.70, 0.78)):
    return [
        {
            "kind": "probe",
            "epoch": 5 * k,
            "global_step": 125 * k,
            "probe_linear": lin,
            "probe_linear_std": 0.0,
            "probe_knn": kn,
            "probe_knn_std": 0.01 if k == len(linear) - 1 else 0.0,
        }
        for k, (lin, kn) in enumerate(zip(linear, knn, strict=True))
    ]


def step_rows():
    return [{"global_step": s, "epoch": s // 25, "loss": -0.5 - 0.001 * s, "collapse": 0.8} for s in range(1, 251, 10)]


def fraction_results():
    """Two arms, one detector, fractions 10 % / 25 % (nothing run) / 100 %, a failed run, a probed pretraining."""
    runs = [
        run(arm, "retinanet", seed, (m, 2 * m, m / 2), labels=f, train_images=round(880 * f))
        for (arm, f), values in MAP.items()
        for seed, m in enumerate(values)
    ]
    runs.append(run("random", "retinanet", 2, (0.9, 0.9, 0.9), status="failed", reason="boom", labels=1.0))
    probes = probe_rows()
    return {
        "title": "label fractions",
        "arms": ["random", "fpsiam"],
        "detectors": ["retinanet"],
        "label_fractions": [0.1, 0.25, 1.0],
        "runs": runs,
        "pretrain": {
            "fpsiam": {"status": "done", "seconds": 60.0, "curve": probes[:1] + step_rows() + probes[1:]},
            "simsiam": {"status": "done", "seconds": 60.0, "curve": probe_rows((0.5, 0.6, 0.7), (0.5, 0.55, 0.6))},
        },
    }


@pytest.fixture(scope="module")
def fraction_html(tmp_path_factory):
    return render_report(fraction_results(), tmp_path_factory.mktemp("fractions"))


def without_images(text):
    return re.sub(r'src="data:image/[a-z]+;base64,[^"]*"', 'src="IMG"', text)


def table_rows(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def assert_png(png):
    assert png is not None and png.startswith(PNG)
    with Image.open(io.BytesIO(png)) as im:
        assert 200 < im.width < 1600 and 150 < im.height < 900


# ------------------------------------------------------------------------------- one fraction: unchanged


def test_single_fraction_output_unchanged(tmp_path):
    results = make_results(tmp_path)
    text, md = render_report(results, tmp_path), markdown_report(results)
    assert md == (GOLDEN / "fixture_report.md").read_text(encoding="utf-8")
    assert without_images(text) == (GOLDEN / "fixture_report.html").read_text(encoding="utf-8")
    # saying the defaults out loud changes nothing, the plots included
    explicit = copy.deepcopy(results)
    explicit["label_fractions"] = [1.0]
    for r in explicit["runs"]:
        r.update(labels=1.0, train_images=880)
    assert render_report(explicit, tmp_path) == text and markdown_report(explicit) == md
    assert plots.label_efficiency_plot(results) is None


# ---------------------------------------------------------------------------------------------- tables


def test_summary_table_groups_by_labels_best_within_a_fraction():
    rows = summary_table(fraction_results())
    assert [(r["labels"], r["arm"]) for r in rows] == [
        (0.1, "random"),
        (0.1, "fpsiam"),
        (0.25, "random"),
        (0.25, "fpsiam"),
        (1.0, "random"),
        (1.0, "fpsiam"),
    ]
    by = {(r["arm"], r["labels"]): r for r in rows}
    assert by[("fpsiam", 0.1)]["mAP"]["mean"] == pytest.approx(0.18)
    assert by[("fpsiam", 0.1)]["mAP"]["best"] and not by[("random", 0.1)]["mAP"]["best"]
    assert by[("random", 1.0)]["mAP"]["best"] and not by[("fpsiam", 1.0)]["mAP"]["best"]
    assert by[("random", 0.25)]["n"] == 0 and not by[("random", 0.25)]["failures"]
    assert by[("random", 1.0)]["seeds"] == [0, 1] and by[("random", 1.0)]["failures"][0]["reason"] == "boom"


def test_main_table_labels_column_and_rows():
    table = main_table(fraction_results())
    assert table.splitlines()[0].startswith("| method | labels | retinanet mAP |")
    assert table_rows(table) == [
        ["random", "10 %", "11.0 ± 1.4", "22.0 ± 2.8", "5.5 ± 0.7", "0, 1"],
        ["fpsiam", "10 %", "**18.0 ± 3.0**", "**36.0 ± 6.0**", "**9.0 ± 1.5**", "0, 1, 2"],
        ["random", "25 %", "not run", "—", "—", "—"],
        ["fpsiam", "25 %", "not run", "—", "—", "—"],
        ["random", "100 %", "**31.0 ± 1.4**", "**62.0 ± 2.8**", "**15.5 ± 0.7**", "0, 1"],
        ["fpsiam", "100 %", "29.5 ± 0.7", "59.0 ± 1.4", "14.8 ± 0.4", "0, 1"],
    ]


def test_seed_table_gap_pairs_same_detector_labels_and_seed():
    table = seed_table(fraction_results())
    assert table.splitlines()[0] == (
        "| method | detector | labels | seed 0 | seed 1 | seed 2 | mean ± std | gap to random (paired) |"
    )
    assert table_rows(table) == [
        ["random", "retinanet", "10 %", "10.0", "12.0", "—", "11.0 ± 1.4", "—"],
        # 15 - 10, 18 - 12 = 5, 6 -> +5.5 ± 0.7; seed 2 (21.0) has no random run at 10 %: unpaired, left out
        ["fpsiam", "retinanet", "10 %", "15.0", "18.0", "21.0", "18.0 ± 3.0", "+5.5 ± 0.7"],
        ["random", "retinanet", "100 %", "30.0", "32.0", "—", "31.0 ± 1.4", "—"],
        # 29 - 30, 30 - 32 = -1, -2 -> -1.5 ± 0.7 (random's failed seed 2 never counts)
        ["fpsiam", "retinanet", "100 %", "29.0", "30.0", "—", "29.5 ± 0.7", "-1.5 ± 0.7"],
    ]


def test_markdown_report_notes_labels_and_sizes():
    md = markdown_report(fraction_results())
    assert "best per column and label fraction in bold" in md
    assert "(10 % = 88, 100 % = 880 train images)" in md


def test_bad_label_fractions_rejected(tmp_path):
    results = fraction_results()
    results["runs"][0]["labels"] = "half"
    with pytest.raises(FpsiamError, match="labels"):
        render_report(results, tmp_path)
    with pytest.raises(FpsiamError, match="label_fractions"):
        summary_table({"label_fractions": [0.5, 1.5], "runs": []})


# ------------------------------------------------------------------------------------------------ HTML


def test_render_report_labels_column_and_efficiency_plot(fraction_html):
    text = fraction_html
    assert '<th class="arm" rowspan="2">method</th><th rowspan="2">labels</th>' in text
    assert '<td class="arm">fpsiam</td><td class="num">10 %</td><td class="num best"><b>18.0 ± 3.0' in text
    assert '<td class="arm">random</td><td class="num">25 %</td><td class="failed" colspan="3">not run</td>' in text
    assert "Best per column and label fraction in bold." in text
    assert "10 % = 88, 100 % = 880 train images" in text
    assert "random / retinanet, 100 % labels, seed 2: failed: boom" in text
    assert "<th>detector</th><th>labels</th><th>seeds</th>" in text  # the clinical table
    assert text.count("Runs fine-tuned on 100 % of the labels.") == 2  # val-map and PR captions
    # the label-efficiency plot right after the table and its notes, its caption saying what the band is
    caption = text.index("Label efficiency: test mAP")
    assert text.index("</tbody></table>") < caption < text.index("Runs not finished")
    assert "band = ± one sample std over seeds" in text


def test_render_report_probe_section(fraction_html):
    text = fraction_html
    assert "Frozen-backbone probe (polyp vs mucosa crops) during pretraining: it says whether the features " in text
    assert "<th>final linear probe (%)</th><th>final kNN probe (%)</th>" in text
    # fpsiam's curve ends with a probe row: the final loss is still its last step's (-0.741), the probe its last
    assert '<td class="num">-0.7410</td><td class="num">0.800</td><td class="num">84.0</td>' in text
    assert '<td class="num">78.0 ± 1.0</td>' in text
    # simsiam has probe rows only: no loss, no collapse value
    assert '<td class="num">—</td><td class="num">—</td><td class="num">70.0</td>' in text
    alts = re.findall(r'<img src="data:image/png;base64,[^"]*" alt="([^"]*)"', text)
    assert "frozen-backbone probe accuracy during pretraining" in alts
    assert "pretraining loss curves" in alts and "collapse monitor curves" in alts


def test_write_report_writes_label_efficiency_png(tmp_path):
    out = tmp_path / "report.html"
    write_report(fraction_results(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label_efficiency.png", "report.html"]
    png = (tmp_path / "label_efficiency.png").read_bytes()
    assert_png(png)
    assert base64.b64encode(png).decode("ascii") in out.read_text(encoding="utf-8")  # the same plot is embedded


# ----------------------------------------------------------------------------------------------- plots


def test_label_efficiency_plot_png_for_two_fractions_none_for_one(tmp_path):
    results = fraction_results()
    assert_png(plots.label_efficiency_plot(results))
    one_seed = copy.deepcopy(results)  # one seed per fraction: markers, no band
    one_seed["runs"] = [r for r in one_seed["runs"] if r["seed"] == 0]
    assert_png(plots.label_efficiency_plot(one_seed))
    only_small = copy.deepcopy(results)  # two fractions listed, but only one has finished runs
    for r in only_small["runs"]:
        if r["labels"] == 1.0:
            r["status"] = "failed"
    assert plots.label_efficiency_plot(only_small) is None
    assert plots.label_efficiency_plot(make_results(tmp_path)) is None
    assert plots.label_efficiency_plot({}) is None


def test_probe_plot_png_or_none(tmp_path):
    results = fraction_results()
    assert_png(plots.probe_plot(results["pretrain"], results["arms"]))
    assert plots.probe_plot(make_results(tmp_path)["pretrain"], ["fpsiam"]) is None  # step rows only
    assert plots.probe_plot({}) is None and plots.probe_plot({"a": {"curve": []}}) is None


def test_loss_and_collapse_plots_ignore_probe_rows():
    probes = probe_rows()
    mixed = {"fpsiam": {"curve": probes[:1] + step_rows() + probes[1:]}}
    steps_only = {"fpsiam": {"curve": step_rows()}}
    for make in (plots.pretrain_loss_plot, plots.collapse_plot):
        assert make(mixed, ["fpsiam"]) == make(steps_only, ["fpsiam"])  # same pixels: the probe rows add nothing
        assert make({"fpsiam": {"curve": probes}}, ["fpsiam"]) is None  # probe rows only: no empty plot
