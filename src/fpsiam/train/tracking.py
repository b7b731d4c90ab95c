"""Experiment trackers beside the metrics log: TensorBoard and MLflow. ``metrics.jsonl`` stays the source of truth.

Both are optional extras (``pip install "fpsiam[tensorboard]"``, ``"fpsiam[mlflow]"``). Asked for but not installed,
a tracker says so once, loudly, and the run goes on with its JSONL log. MLflow logs to a file store inside the run
folder by default (``RUN_DIR/mlruns``; ``train.mlflow_uri`` for a server), with the run's config as parameters;
the MLflow run id is kept in the run folder, so ``--resume`` continues the same MLflow run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

MLFLOW_RUN_ID = "mlflow_run_id.txt"


def _warn(what: str, extra: str) -> None:
    print(f"WARNING: {what} was asked for but is not installed: pip install \"fpsiam[{extra}]\". The run goes on "
          "with metrics.jsonl only.", file=sys.stderr)  # fmt: skip


class TensorBoard:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        step = row.get("global_step")
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "global_step" and step is not None:
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, run_dir: Path, uri: str | None, params: dict[str, Any]):
        import mlflow

        self.mlflow = mlflow
        if uri is None:  # the file store in the run folder; MLflow 3 asks for an explicit opt-in to it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri or (run_dir / "mlruns").resolve().as_uri())
        id_file = run_dir / MLFLOW_RUN_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=run_dir.name)
        if run_id is None:
            id_file.write_text(self.run.info.run_id + "\n")
            flat = _flatten(params)
            for i in range(0, len(flat), 100):  # MLflow takes at most 100 params per call
                mlflow.log_params(dict(list(flat.items())[i : i + 100]))

    def log(self, row: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = int(values.pop("global_step", 0))
        if values:
            self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:250]
    return out


def make_trackers(run_dir: Path, tensorboard: bool, mlflow: bool, mlflow_uri: str | None,
                  params: dict[str, Any]) -> list[Any]:  # fmt: skip
    """The trackers asked for that are installed (a loud warning for each that is not)."""
    trackers: list[Any] = []
    if tensorboard:
        try:
            trackers.append(TensorBoard(run_dir))
        except ImportError:
            _warn("TensorBoard (train.tensorboard)", "tensorboard")
    if mlflow:
        try:
            trackers.append(MLflow(run_dir, mlflow_uri, params))
        except ImportError:
            _warn("MLflow (train.mlflow)", "mlflow")
    return trackers
