"""The run folder's safety rules: lock, no poisoned checkpoints, resume = same config, torn logs, temp files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fpsiam.cli import main
from fpsiam.config import PretrainConfig, load_config
from fpsiam.errors import FpsiamError
from fpsiam.fileio import atomic_path
from fpsiam.ssl import pretrain as P
from fpsiam.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from fpsiam.train.metrics import MetricsLog
from fpsiam.train.runfolder import RunLock, clean_temp_files, config_changes

TINY = [
    "model.backbone=resnet18", "model.init=random", "model.proj_dim=32", "model.pred_dim=8",
    "model.pyramid_channels=16", "data.size=32", "data.workers=0", "train.batch_size=4", "train.epochs=2",
    "train.max_steps_per_epoch=2", "train.log_every=1", "train.progress=false", "train.amp=none",
]  # fmt: skip


def cfg(frames: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, f"data.source={frames}", *extra])


def test_second_run_into_a_locked_folder_fails_naming_the_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from fpsiam.train.runfolder import RunLock
            with RunLock({str(run)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FpsiamError, match=rf"pid {holder.pid}\b.*another -o"), RunLock(run):
            pass
    finally:
        holder.kill()  # like kill -9: no clean-up code runs
        holder.wait()
    with RunLock(run):  # the dead holder's lock is gone with its process
        pass


def test_cli_pretrain_into_a_busy_folder_is_one_line(frames, tmp_path, capsys):
    with RunLock(tmp_path / "run"):
        rc = main(["pretrain", "configs/fpsiam_r18_cpu.yaml", "--data", str(frames), "-o", str(tmp_path / "run"),
                   *(f"--set={s}" for s in TINY)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "another fpsiam run" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_checkpoint_with_nan_is_never_written(tmp_path):
    good = save_checkpoint({"model": {"w": torch.ones(2)}, "global_step": 1}, checkpoint_path(tmp_path, 1))
    with pytest.raises(FpsiamError, match=rf"not finite.*Last good checkpoint: {good}"):
        save_checkpoint({"model": {"w": torch.tensor([1.0, float("nan")])}, "optimizer": {}, "global_step": 2},
                        checkpoint_path(tmp_path, 2))  # fmt: skip
    with pytest.raises(FpsiamError, match="optimizer.state.0.momentum_buffer"):
        save_checkpoint({"model": {}, "optimizer": {"state": {0: {"momentum_buffer": torch.tensor([float("inf")])}}}},
                        checkpoint_path(tmp_path, 3))  # fmt: skip
    assert list_checkpoints(tmp_path) == [good] and not clean_temp_files(tmp_path)


def test_diverging_pretraining_stops_naming_a_finite_checkpoint(frames, tmp_path, monkeypatch):
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def poison(self, *a, **k):  # the 3rd update writes NaN into the weights (as an lr of NaN would)
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                for g in self.param_groups:
                    for p in g["params"]:
                        p.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poison)
    with pytest.raises(FpsiamError, match="Last good checkpoint") as e:
        P.pretrain(cfg(frames, "train.checkpoint_steps=1", "train.keep_last=10"), tmp_path / "run")
    named = Path(str(e.value).split("Last good checkpoint: ")[1].split(".pt")[0] + ".pt")
    assert named.is_file()
    for path in list_checkpoints(tmp_path / "run"):  # every checkpoint on disk is finite
        ckpt = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_resume_refuses_a_changed_config_but_allows_safe_keys(frames, tmp_path, capsys):
    run = tmp_path / "run"
    P.pretrain(cfg(frames, "train.epochs=1"), run)
    with pytest.raises(FpsiamError, match=r"train.batch_size: 4 -> 2; train.seed: 0 -> 4.*--allow-config-change"):
        P.pretrain(cfg(frames, "train.epochs=2", "train.batch_size=2", "train.seed=4"), run, resume=True)
    P.pretrain(cfg(frames, "train.epochs=2", "train.log_every=2", "data.workers=1"), run, resume=True)
    assert load_checkpoint(list_checkpoints(run)[-1])["epoch"] == 2  # extended, with safe changes only
    P.pretrain(cfg(frames, "train.epochs=3", "optim.lr=0.1"), run, resume=True, allow_config_change=True)
    assert load_checkpoint(list_checkpoints(run)[-1])["epoch"] == 3
    assert config_changes({"a": {"b": 1}}, {"a": {"b": 1}}) == []


def test_a_key_added_since_the_run_started_passes_at_its_default_only():
    old, defaults = {"a": {"b": 1}}, {"a": {"b": 1, "new": 96}}
    assert config_changes(old, {"a": {"b": 1, "new": 96}}, defaults) == []  # a later version's key, default value
    assert config_changes(old, {"a": {"b": 1, "new": 64}}, defaults) == [("a.new", None, 64)]
    assert config_changes(old, {"a": {"b": 1, "new": 96}}) == [("a.new", None, 96)]  # no defaults known: refused
    assert config_changes({"a": {"b": 1, "new": 64}}, {"a": {"b": 1}}, defaults) == [("a.new", 64, None)]


def test_torn_metrics_line_is_dropped_on_resume_and_a_torn_middle_line_refused(frames, tmp_path, capsys):
    run = tmp_path / "run"
    P.pretrain(cfg(frames, "train.epochs=1"), run)
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + '\n{"epoch": 2, "glo')  # a kill in the middle of a write
    P.pretrain(cfg(frames), run, resume=True)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4]
    log.write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")
    with pytest.raises(FpsiamError, match=r"metrics.jsonl:2: a damaged line"):
        MetricsLog(run).rows()


def test_temp_files_of_a_killed_write_are_removed_and_a_damaged_newest_checkpoint_skipped(frames, tmp_path, capsys):
    run = tmp_path / "run"
    P.pretrain(cfg(frames, "train.epochs=1", "train.checkpoint_steps=1", "train.keep_last=5"), run)
    (run / "checkpoints" / ".ckpt_00000003.pt.abc.tmp.pt").write_bytes(b"x" * 1000)  # a kill mid-write
    newest = list_checkpoints(run)[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # a damaged newest checkpoint
    P.pretrain(cfg(frames, "train.epochs=2", "train.checkpoint_steps=1", "train.keep_last=5"), run, resume=True)
    out = capsys.readouterr()
    assert "removed 1 temp file" in out.out and not list((run / "checkpoints").glob(".*"))
    assert f"skipped damaged checkpoint(s) {newest.name}" in out.out + out.err
    assert "ckpt_00000001.pt" in out.out + out.err  # resumed from the one before


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert os.listdir(tmp_path) == []
