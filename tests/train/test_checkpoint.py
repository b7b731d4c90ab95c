"""Checkpoints: atomic, pruned, safe to load, and RNG states restored exactly."""

import random

import numpy as np
import pytest
import torch

from fpsiam.errors import FpsiamError
from fpsiam.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fpsiam.train.metrics import MetricsLog


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    path = save_checkpoint({"rng": rng_state()}, checkpoint_path(tmp_path, 1))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(path)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_keep_last_prunes_oldest_and_latest_is_by_step(tmp_path):
    for step in (3, 10, 7, 12):
        save_checkpoint({"step": step}, checkpoint_path(tmp_path, step), keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000010.pt", "ckpt_00000012.pt"]
    assert latest_checkpoint(tmp_path).name == "ckpt_00000012.pt"
    assert not list((tmp_path / "checkpoints").glob("*.tmp*"))


def test_failed_save_leaves_no_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint({"x": Boom()}, checkpoint_path(tmp_path, 1))
    assert list((tmp_path / "checkpoints").iterdir()) == []


class Evil:
    """Any class instance: weights_only=True refuses to rebuild it."""


def test_pickled_objects_and_garbage_are_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"obj": Evil()}, p)
    with pytest.raises(FpsiamError, match="weights_only|pickled"):
        load_checkpoint(p)
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(FpsiamError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FpsiamError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_metrics_log_truncates_rows_after_a_resumed_step(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.log({"global_step": step, "loss": -0.1 * step, "bad": float("nan")})
    log.truncate_after(3)
    assert [r["global_step"] for r in log.rows()] == [1, 2, 3]
    assert log.rows()[0]["bad"] is None
    log.write_csv()
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "global_step,loss,bad"
