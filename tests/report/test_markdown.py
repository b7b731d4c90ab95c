"""The Markdown tables (table.md) and `fpsiam report`: same cells as the HTML, per-seed values, paired gaps."""

from __future__ import annotations

import json

import pytest

from fpsiam.cli import main
from fpsiam.report.markdown import main_table, markdown_report, seed_table
from tests.report.test_report import make_results


def rows_of(table: str) -> dict[str, list[str]]:
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[f"{cells[0]}/{cells[1]}" if cells[1] in ("faster_rcnn", "retinanet") else cells[0]] = cells[1:]
    return out


def test_main_table_cells_best_and_failures(tmp_path):
    table = main_table(make_results(tmp_path))
    head = table.splitlines()[0]
    assert "faster_rcnn mAP" in head and "retinanet AP75" in head
    rows = rows_of(table)
    assert list(rows) == ["random", "imagenet", "simsiam", "fpsiam"]
    # fpsiam faster_rcnn mAP: mean of 24.3, 25.5, 23.1 = 24.3, sample std 1.2; best in its column -> bold
    assert rows["fpsiam"][0] == "**24.3 ± 1.2**"
    # fpsiam retinanet: seed 2 failed, so two seeds: mean 25.0, std 1.4 (the failed 90.0 never counts)
    assert rows["fpsiam"][3] == "**25.0 ± 1.4**" and rows["fpsiam"][-1] == "0, 1, 2"
    assert rows["imagenet"][:3] == ["skipped", "—", "—"]
    assert rows["simsiam"][0] == "22.2"  # one seed: no ±


def test_seed_table_values_and_paired_gap(tmp_path):
    table = seed_table(make_results(tmp_path))
    assert "gap to random (paired)" in table.splitlines()[0]
    rows = rows_of(table)
    assert rows["fpsiam/faster_rcnn"][1:4] == ["24.3", "25.5", "23.1"]
    # per-seed gaps 4.2, 4.0, 4.1 -> +4.1 ± 0.1
    assert rows["fpsiam/faster_rcnn"][-1] == "+4.1 ± 0.1"
    assert rows["fpsiam/retinanet"][3] == "—"  # the failed seed
    assert rows["random/faster_rcnn"][-1] == "—"
    no_base = seed_table(make_results(tmp_path), baseline="nope")
    assert "gap to" not in no_base


def test_report_command_rebuilds_html_and_table(tmp_path, capsys):
    results = make_results(tmp_path)
    src = tmp_path / "results.json"
    src.write_text(json.dumps(results))
    assert main(["report", str(src)]) == 0
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "table.md").read_text() == markdown_report(results)
    assert "**24.3 ± 1.2**" in capsys.readouterr().out
    # -o elsewhere: table.md and the plot go with the report, nothing new lands beside results.json
    (tmp_path / "table.md").unlink()
    assert main(["report", str(src), "-o", str(tmp_path / "out" / "report.html")]) == 0
    assert (tmp_path / "out" / "table.md").read_text() == markdown_report(results)
    assert not (tmp_path / "table.md").exists()


@pytest.mark.parametrize(
    "text, expect",
    [
        (None, "file not found"),
        ("{not json", "results.json:1: not valid JSON"),
        ('{"runs": 3}', "runs: expected a list, got 3"),
        (b"\xff\xfe\x00binary", "not a UTF-8 text file"),
    ],
)
def test_report_command_bad_input(tmp_path, capsys, text, expect):
    src = tmp_path / "results.json"
    if isinstance(text, bytes):
        src.write_bytes(text)
    elif text is not None:
        src.write_text(text)
    assert main(["report", str(src)]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and expect in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "table.md").exists()
