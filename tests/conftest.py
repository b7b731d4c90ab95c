"""Fixtures shared by the tests of the training engine and the methods: a folder of random frames for tiny
pretraining runs, and the kill-and-resume harness that checks a resumed run ends exactly where an uninterrupted
one does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="session")
def frames(tmp_path_factory) -> Path:
    """Eight 48 x 40 noise frames in one flat folder (a frame source for `fpsiam pretrain`)."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / f"{i:04d}.jpg")
    return root


@pytest.fixture
def kill_and_resume(tmp_path, monkeypatch) -> Callable[..., tuple[dict, dict]]:
    """``run(make_cfg, kill_at=3)``: pretrain ``make_cfg()`` straight, then again killed inside step ``kill_at``
    (after its update, before anything of it is saved) and resumed; returns the model states of both runs' last
    checkpoints, which an exact resume makes equal (momentum encoders, queues and prototypes included)."""
    from fpsiam.ssl import pretrain as P
    from fpsiam.train.checkpoint import list_checkpoints, load_checkpoint

    def last_model(run: Path) -> dict[str, torch.Tensor]:
        return load_checkpoint(list_checkpoints(run)[-1])["model"]

    def run(make_cfg: Callable[[], object], kill_at: int = 3) -> tuple[dict, dict]:
        P.pretrain(make_cfg(), tmp_path / "straight")
        real, calls = P.PretrainTask.after_step, {"n": 0}

        def dying(self, engine):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt
            return real(self, engine)

        monkeypatch.setattr(P.PretrainTask, "after_step", dying)
        with pytest.raises(KeyboardInterrupt):
            P.pretrain(make_cfg(), tmp_path / "killed")
        monkeypatch.setattr(P.PretrainTask, "after_step", real)
        P.pretrain(make_cfg(), tmp_path / "killed", resume=True)
        return last_model(tmp_path / "straight"), last_model(tmp_path / "killed")

    return run
