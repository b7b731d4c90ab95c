"""Every run folder says where it came from (run.json sessions, log.txt) and long runs report progress."""

from __future__ import annotations

import json

import pytest

import fpsiam
from fpsiam.config import PretrainConfig, load_config
from fpsiam.ssl import pretrain as P
from fpsiam.train.provenance import git_commit

TINY = [
    "model.backbone=resnet18", "model.init=random", "model.proj_dim=32", "model.pred_dim=8",
    "model.pyramid_channels=16", "data.size=32", "data.workers=0", "train.batch_size=4", "train.epochs=1",
    "train.max_steps_per_epoch=2", "train.progress=true", "train.amp=none", "train.seed=3",
]  # fmt: skip


def test_run_json_sessions_and_log_txt(frames, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    cfg = load_config(PretrainConfig, None, [*TINY, f"data.source={frames}"])
    monkeypatch.setattr("sys.argv", ["fpsiam", "pretrain", "x.yaml", "--set", "train.seed=3"])
    P.pretrain(cfg, run)
    cfg2 = load_config(PretrainConfig, None, [*TINY, f"data.source={frames}", "train.epochs=2"])
    P.pretrain(cfg2, run, resume=True)  # a second session of the same run
    info = json.loads((run / "run.json").read_text())
    assert len(info["sessions"]) == 2 and info["global_batch"] == 4
    s = info["sessions"][0]
    assert s["fpsiam"] == fpsiam.__version__ and s["torch"] and s["torchvision"] and s["seed"] == 3
    assert s["command"] == "fpsiam pretrain x.yaml --set train.seed=3" and s["host"] and s["pid"]
    assert s["git_commit"] == git_commit()
    log = (run / "log.txt").read_text()
    assert "fpsiam/resnet18: 8 frames" in log and "resumed from" in log and "epoch 2/2:" in log
    assert "\r" not in log  # no progress-bar redraws
    out = capsys.readouterr()
    assert "fpsiam/resnet18: 8 frames" in out.out  # the console still gets everything


def test_plain_progress_lines_without_a_terminal(frames, tmp_path, capsys, monkeypatch):
    from fpsiam.train import loop

    monkeypatch.setattr(loop, "PLAIN_EVERY_S", 0.0)  # every step, for the test
    cfg = load_config(PretrainConfig, None, [*TINY, f"data.source={frames}"])
    P.pretrain(cfg, tmp_path / "run")
    out = capsys.readouterr()
    lines = [x for x in out.out.splitlines() if x.startswith("epoch 1/1 step ")]
    assert len(lines) == 2 and "eta" in lines[-1] and "\r" not in out.err  # stderr is not a tty here: no bar


def test_tensorboard_and_mlflow_track_the_same_rows_and_resume_continues_the_mlflow_run(frames, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra")
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra")
    run = tmp_path / "run"
    sets = [*TINY, f"data.source={frames}", "train.tensorboard=true", "train.mlflow=true", "train.log_every=1"]
    P.pretrain(load_config(PretrainConfig, None, sets), run)
    P.pretrain(load_config(PretrainConfig, None, [*sets, "train.epochs=2"]), run, resume=True)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    run_id = (run / "mlflow_run_id.txt").read_text().strip()
    mlflow.set_tracking_uri((run / "mlruns").resolve().as_uri())  # fpsiam's default: a file store in the run
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]  # both sessions in one MLflow run
    assert client.get_run(run_id).data.params["train.seed"] == "3"


def test_a_tracker_asked_for_but_missing_is_one_loud_warning(frames, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)  # as if the extra were not installed
    sets = [*TINY, f"data.source={frames}", "train.mlflow=true"]
    P.pretrain(load_config(PretrainConfig, None, sets), tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count('pip install "fpsiam[mlflow]"') == 1 and (tmp_path / "run" / "metrics.jsonl").is_file()
