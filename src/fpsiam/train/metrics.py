"""Run metrics: JSONL (one row per logged step or epoch) plus a CSV view, and an optional TensorBoard."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from fpsiam.fileio import atomic_open


class MetricsLog:
    """Append-only JSONL at ``RUN_DIR/<name>.jsonl``; ``write_csv`` rewrites ``<name>.csv`` from it.

    On resume, :meth:`truncate_after` drops rows that a killed run logged after its last checkpoint, so a
    resumed run's log is the same as an uninterrupted one's.
    """

    def __init__(self, run_dir: str | Path, name: str = "metrics", enabled: bool = True, tensorboard: bool = False):
        self.path = Path(run_dir) / f"{name}.jsonl"
        self.csv_path = Path(run_dir) / f"{name}.csv"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                self._tb = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None and "global_step" in row:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "global_step":
                    self._tb.add_scalar(k, v, row["global_step"])

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

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
        if self._tb is not None:
            self._tb.close()
