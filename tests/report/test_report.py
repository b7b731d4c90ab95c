"""The HTML report: the summary table's statistics, a self-contained escaped HTML file, the plots."""

from __future__ import annotations

import base64
import copy
import math
import re
import statistics

import pytest
from PIL import Image

from fpsiam.errors import FpsiamError
from fpsiam.report import plots
from fpsiam.report.html import render_report, summary_table, write_report

PNG = b"\x89PNG\r\n\x1a\n"

# mAP / AP50 / AP75 per (arm, detector), one triple per seed.
VALUES = {
    ("random", "faster_rcnn"): [(0.201, 0.45, 0.15), (0.215, 0.47, 0.16), (0.190, 0.44, 0.14)],
    ("fpsiam", "faster_rcnn"): [(0.243, 0.50, 0.20), (0.255, 0.52, 0.21), (0.231, 0.48, 0.19)],
    ("random", "retinanet"): [(0.220, 0.50, 0.17), (0.230, 0.52, 0.18), (0.210, 0.48, 0.16)],
    # seed 2 fails below, so its numbers never count; AP50 ties with random's mean (0.50).
    ("fpsiam", "retinanet"): [(0.260, 0.49, 0.21), (0.240, 0.51, 0.19), (0.900, 0.90, 0.90)],
}


def run(arm, det, seed, m, status="done", reason=None, **extra):
    rec = {
        "arm": arm,
        "detector": det,
        "seed": seed,
        "status": status,
        "reason": reason,
        "metrics": {
            "mAP": m[0],
            "AP50": m[1],
            "AP75": m[2],
            "APs": -1.0,
            "APm": 0.1,
            "APl": 0.2,
            "AR100": 0.4,
        },
        "metrics_source": "mean of last k evaluations",
        "history": [{"epoch": e, "mAP": m[0] * e / 3, "AP50": m[1] * e / 3} for e in (1, 2, 3)],
        "clinical": {
            "at_best_f1": {
                "threshold": 0.4 + 0.01 * seed,
                "precision": 0.8,
                "recall": 0.6 + 0.01 * seed,
                "f1": 0.69,
                "fp_per_frame": 0.12,
                "per_polyp": {
                    "polyps": 4,
                    "detected": 3,
                    "detected_fraction": 0.75,
                    "median_frames_to_detection": 2.0,
                },
            },
            "at_fixed": None,
            "pr_curve": {
                "precision": [1.0, 0.9, 0.7, None],
                "recall": [0.1, 0.4, 0.7, None],
                "thresholds": [0.9, 0.7, 0.3, 0.1],
            },
        },
    }
    rec.update(extra)
    return rec


def make_results(tmp_path):
    sample = tmp_path / "samples" / "s0.png"
    sample.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (200, 40, 40)).save(sample)
    runs = []
    for (arm, det), triples in VALUES.items():
        for seed, m in enumerate(triples):
            extra = {"samples": [{"png": "samples/s0.png"}]} if seed == 0 else {}
            if (arm, det, seed) == ("fpsiam", "retinanet", 2):
                runs.append(run(arm, det, seed, m, status="failed", reason="loss is NaN at step 12"))
            else:
                runs.append(run(arm, det, seed, m, **extra))
    runs.append(run("simsiam", "faster_rcnn", 0, (0.222, 0.47, 0.18)))
    runs.append(run("simsiam", "retinanet", 0, (0.228, math.nan, -1.0)))
    for det in ("faster_rcnn", "retinanet"):
        runs.append(run("imagenet", det, 0, (0, 0, 0), status="skipped", reason="<script>alert(1)</script> offline"))
    curve = [
        {
            "global_step": s,
            "epoch": s // 2,
            "loss": -0.5 - 0.04 * s,
            "loss_local": -0.5 - 0.05 * s,
            "loss_global": -0.5 - 0.03 * s,
            "collapse_local": 0.9,
            "collapse_global": 0.8,
        }
        for s in range(1, 9)
    ]
    simsiam_curve = [{"global_step": s, "epoch": s // 2, "loss": -0.4 - 0.05 * s, "collapse": 0.7} for s in range(1, 9)]
    return {
        "title": "Kvasir CPU protocol",
        "created": "2025-01-02T03:04:05",
        "machine": "2-core CPU",
        "command": "fpsiam experiment configs/experiments/kvasir_cpu.yaml -o out",
        "config": {"seeds": [0, 1, 2], "detectors": ["faster_rcnn", "retinanet"]},
        "detectors": ["faster_rcnn", "retinanet"],
        "arms": ["random", "imagenet", "simsiam", "fpsiam"],
        "runs": runs,
        "pretrain": {
            "fpsiam": {"status": "done", "reason": None, "seconds": 120.0, "curve": curve},
            "simsiam": {"status": "done", "reason": None, "seconds": 90.0, "curve": simsiam_curve},
        },
        "gradcam": {
            "random": {
                "energy_in_box": 0.2,
                "peak_in_box": 0.3,
                "chance": 0.15,
                "n": 2,
                "images": ["samples/s0.png"],
            },
            "fpsiam": {
                "energy_in_box": 0.4,
                "peak_in_box": 0.6,
                "chance": 0.15,
                "n": 2,
                "images": ["samples/s0.png", "samples/missing.png"],
            },
        },
        "reference": [
            {
                "arm": "lightly SimSiam",
                "detector": "retinanet",
                "mAP": 0.332,
                "AP50": 0.665,
                "AP75": None,
                "note": "stock tools, one seed",
            }
        ],
    }


def cell(rows, arm, det):
    (row,) = [r for r in rows if r["arm"] == arm and r["detector"] == det]
    return row


# ------------------------------------------------------------------------------------- summary_table


def test_summary_table_mean_and_sample_std(tmp_path):
    rows = summary_table(make_results(tmp_path))
    assert [(r["arm"], r["detector"]) for r in rows][:4] == [
        ("random", "faster_rcnn"),
        ("random", "retinanet"),
        ("imagenet", "faster_rcnn"),
        ("imagenet", "retinanet"),
    ]
    for (arm, det), triples in VALUES.items():
        done = triples[:2] if (arm, det) == ("fpsiam", "retinanet") else triples
        row = cell(rows, arm, det)
        assert row["n"] == len(done)
        assert row["metrics_source"] == "mean of last k evaluations"
        for k, key in enumerate(("mAP", "AP50", "AP75")):
            values = [t[k] for t in done]
            assert row[key]["mean"] == pytest.approx(statistics.mean(values), abs=1e-15)
            assert row[key]["std"] == pytest.approx(statistics.stdev(values), abs=1e-15)
            assert row[key]["n"] == len(values)


def test_summary_table_best_per_column_with_ties(tmp_path):
    rows = summary_table(make_results(tmp_path))
    best = {(r["arm"], r["detector"], k) for r in rows for k in ("mAP", "AP50", "AP75") if r[k]["best"]}
    assert best == {
        ("fpsiam", "faster_rcnn", "mAP"),
        ("fpsiam", "faster_rcnn", "AP50"),
        ("fpsiam", "faster_rcnn", "AP75"),
        ("fpsiam", "retinanet", "mAP"),
        ("fpsiam", "retinanet", "AP75"),
        # AP50 on RetinaNet: random's mean 0.50 == fpsiam's mean of its two finished seeds 0.50: both marked.
        ("random", "retinanet", "AP50"),
        ("fpsiam", "retinanet", "AP50"),
    }


def test_summary_table_failed_run_excluded_and_reported(tmp_path):
    rows = summary_table(make_results(tmp_path))
    row = cell(rows, "fpsiam", "retinanet")
    assert row["seeds"] == [0, 1]
    assert row["failures"] == [{"seed": 2, "status": "failed", "reason": "loss is NaN at step 12"}]
    assert row["mAP"]["mean"] == pytest.approx(0.25)  # the failed seed's 0.9 is not in it
    skipped = cell(rows, "imagenet", "faster_rcnn")
    assert skipped["n"] == 0 and skipped["mAP"] == {"mean": None, "std": None, "n": 0, "best": False}
    assert skipped["failures"][0]["status"] == "skipped"


def test_summary_table_single_seed_and_undefined_values(tmp_path):
    rows = summary_table(make_results(tmp_path))
    one = cell(rows, "simsiam", "faster_rcnn")
    assert one["mAP"] == {"mean": pytest.approx(0.222), "std": None, "n": 1, "best": False}
    undefined = cell(rows, "simsiam", "retinanet")  # AP50 NaN and AP75 -1: left out, not averaged as numbers
    assert undefined["AP50"]["mean"] is None and undefined["AP50"]["n"] == 0
    assert undefined["AP75"]["mean"] is None and not undefined["AP75"]["best"]


# ------------------------------------------------------------------------------------- render_report


def embedded_images(text):
    return re.findall(r'src="([^"]*)"', text)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The full fixture rendered once (plots take ~1 s): (results, HTML)."""
    base = tmp_path_factory.mktemp("report")
    results = make_results(base)
    results["title"] = "a <b>bold</b> & title"
    return results, render_report(results, base)


def test_render_report_table_values_failures_and_best(rendered):
    _, text = rendered
    m = statistics.mean(t[0] for t in VALUES[("fpsiam", "faster_rcnn")])
    s = statistics.stdev(t[0] for t in VALUES[("fpsiam", "faster_rcnn")])
    assert f"{100 * m:.1f} ± {100 * s:.1f}" == "24.3 ± 1.2"
    assert '<td class="num best"><b>24.3 ± 1.2</b></td>' in text
    assert '<td class="num">20.2 ± 1.3</td>' in text  # random / faster_rcnn mAP, not bold
    assert '22.2 <span class="small">(n=1)</span>' in text  # one seed: no ±, its count said
    assert "loss is NaN at step 12" in text
    assert 'colspan="3"' in text and "skipped: " in text
    assert "mean of last k evaluations" in text
    assert "33.2" in text and "66.5" in text  # reference points, in %
    for section in (
        "Clinical metrics",
        "Pretraining",
        "Validation mAP per epoch",
        "Precision-recall curves",
        "Sample predictions",
        "Grad-CAM",
        "Configuration",
    ):
        assert f"<h2>{section}</h2>" in text
    assert "75.0" in text  # per-polyp detected fraction
    assert "missing image: samples/missing.png" in text


def test_render_report_is_self_contained(rendered):
    _, text = rendered
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)=["']?(/|\w+:)(?!image/)""", text.replace("data:image/", "image/"))
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    sources = embedded_images(text)
    assert len(sources) >= 6  # 5 plots + a sample + Grad-CAM views
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)


def test_render_report_escapes_text(rendered):
    _, text = rendered
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; offline" in text
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; title" in text


def test_render_report_without_optional_sections(tmp_path):
    results = make_results(tmp_path)
    for key in ("pretrain", "gradcam", "reference", "config", "title", "created", "machine", "command"):
        del results[key]
    for r in results["runs"]:
        for key in ("clinical", "history", "samples", "metrics_source"):
            r.pop(key, None)
    text = render_report(results, tmp_path)
    assert "24.3 ± 1.2" in text
    for gone in ("Clinical metrics", "Pretraining", "Grad-CAM", "Sample predictions", "<details>"):
        assert gone not in text
    assert "not recorded" in text
    assert "<h2>" in render_report({}, tmp_path)  # nothing at all: still a page that says so
    assert "No runs" in render_report({}, tmp_path)


def test_render_report_rejects_non_dict(tmp_path):
    with pytest.raises(FpsiamError, match="results"):
        render_report([], tmp_path)
    with pytest.raises(FpsiamError, match="runs"):
        render_report({"runs": {"a": 1}}, tmp_path)


def test_write_report_atomic_one_file(tmp_path):
    results = make_results(tmp_path)
    out = tmp_path / "out" / "report.html"
    (out.parent / "samples").mkdir(parents=True)
    (tmp_path / "samples" / "s0.png").rename(out.parent / "samples" / "s0.png")
    assert write_report(results, out) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "samples"]
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "missing image: samples/s0.png" not in text  # read relative to the report's folder
    assert 20_000 < out.stat().st_size < 3_000_000
    write_report({"title": "again"}, out)  # overwrite in place, still one file
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "samples"]
    assert "<title>again</title>" in out.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- plots


def test_plots_return_png_or_none(tmp_path):
    results = make_results(tmp_path)
    arms = results["arms"]
    made = [
        plots.pretrain_loss_plot(results["pretrain"], arms),
        plots.collapse_plot(results["pretrain"], arms),
        plots.val_map_plot(results),
        plots.pr_curve_plot(results),
        plots.cam_energy_plot(results["gradcam"], arms),
    ]
    for png in made:
        assert png is not None and png.startswith(PNG)
        with Image.open(__import__("io").BytesIO(png)) as im:
            assert 200 < im.width < 1600 and 150 < im.height < 900
    empty = {"arms": [], "detectors": [], "runs": []}
    assert plots.val_map_plot(empty) is None and plots.pr_curve_plot(empty) is None
    assert plots.pretrain_loss_plot({}) is None and plots.collapse_plot({"x": {"curve": []}}) is None
    assert plots.cam_energy_plot({"a": {"energy_in_box": None}}) is None
    broken = copy.deepcopy(results)
    for r in broken["runs"]:
        r["history"] = [{"epoch": 1, "mAP": math.nan}]
        r["clinical"] = None
    assert plots.val_map_plot(broken) is None and plots.pr_curve_plot(broken) is None
