"""Run metrics: JSONL (one row per logged step or epoch) plus a CSV view, and optional trackers fed the same rows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_open


class MetricsLog:
    """Append-only JSONL at ``RUN_DIR/<name>.jsonl``; ``write_csv`` rewrites ``<name>.csv`` from it.

    On resume, :meth:`truncate_after` drops rows that a killed run logged after its last checkpoint, so a
    resumed run's log is the same as an uninterrupted one's.
    """

    def __init__(self, run_dir: str | Path, name: str = "metrics", enabled: bool = True, trackers: list | None = None):
        self.path = Path(run_dir) / f"{name}.jsonl"
        self.csv_path = Path(run_dir) / f"{name}.csv"
        self.enabled = enabled
        self.trackers = list(trackers or [])  # TensorBoard / MLflow (fpsiam.train.tracking), fed every row

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        for tracker in self.trackers:
            tracker.log(row)

    def rows(self) -> list[dict[str, Any]]:
        """The logged rows. A torn last line (a kill in the middle of a write) is dropped; a damaged line
        before the last is an FpsiamError naming the file and line (the log was edited or the disk is bad)."""
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
        rows = []
        for k, (n, line) in enumerate(lines):
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError:
                if k == len(lines) - 1:
                    break  # torn by a kill: the resumed run rewrites it
                raise FpsiamError(
                    f"{self.path}:{n}: a damaged line in the middle of the metrics log; remove it (or the run folder) "
                    "and resume again"
                ) from None
            rows.append(row)
        return rows

    def truncate_after(self, global_step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in self.rows() if r.get("global_step", 0) <= global_step]
        with atomic_open(self.path, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")

    def write_csv(self) -> None:
        if not self.enabled:
            return
        rows = self.rows()
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with atomic_open(self.csv_path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
