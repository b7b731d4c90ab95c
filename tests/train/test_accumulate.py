"""Gradient accumulation (``train.accumulate``): k micro-batches per optimizer step equal one k-times larger batch
(no BN), the lr scales with the effective batch, queues fill per micro-batch, and kill + resume stays exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fpsiam.config import PretrainConfig, load_config
from fpsiam.errors import FpsiamError
from fpsiam.ssl import pretrain as P
from fpsiam.train.distributed import DistEnv
from fpsiam.train.loop import Engine, LoopSettings, Task, split_batch


def test_split_batch_cuts_tensors_lists_and_dicts_along_the_batch():
    a, b = torch.arange(8).reshape(4, 2), torch.arange(4)
    parts = split_batch([a, b], 2)
    assert [p[0].tolist() for p in parts] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert [p[1].tolist() for p in parts] == [[0, 1], [2, 3]]
    parts = split_batch({"x": a, "tag": "same"}, 4)
    assert [p["x"].tolist() for p in parts] == [[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]]
    assert all(p["tag"] == "same" for p in parts)
    with pytest.raises(ValueError, match="does not split into 3"):
        split_batch(a, 3)


class Regression(Task):
    """A linear model on a mean squared error: no BN, so a batch cut in parts has the same mean gradient."""

    def set_lr(self, optimizer, epoch, iteration):
        for g in optimizer.param_groups:
            g["lr"] = 0.1

    def losses(self, model, batch, device):
        x, y = batch
        return {"loss": ((model(x) - y) ** 2).mean()}


def step_with(accumulate: int, x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    settings = LoopSettings(epochs=1, batch_size=len(x) // accumulate, accumulate=accumulate)
    engine = Engine(Regression(), settings, "unused", None, DistEnv())
    engine.attach(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    values = engine.step((x, y))
    return [p.detach().clone() for p in model.parameters()], values, engine


def test_k_micro_batches_make_the_step_of_one_k_times_larger_batch():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)
    whole, logged_whole, e1 = step_with(1, x, y)
    for k in (2, 4):
        parts, logged, engine = step_with(k, x, y)
        for p, q in zip(parts, whole, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert logged["loss"] == pytest.approx(logged_whole["loss"], rel=1e-6)  # the mean over micro-batches
        assert engine.global_batch == e1.global_batch == 8  # per optimizer step
    moved = step_with(1, x[:4], y[:4])[0]  # a half batch alone is another step: the test can fail
    assert not all(torch.allclose(p, q) for p, q in zip(moved, whole, strict=True))


TINY = [
    "model.backbone=resnet18", "model.init=random", "model.hidden_dim=32", "model.head_dim=16", "model.proj_dim=32",
    "model.pred_dim=8", "model.queue_size=16", "data.size=32", "data.workers=0", "train.batch_size=2",
    "train.epochs=2", "train.log_every=1", "train.progress=false", "train.amp=none",
]  # fmt: skip


def cfg(frames: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, f"data.source={frames}", *extra])


def test_pretraining_steps_once_per_accumulated_batch_at_the_effective_lr(frames, tmp_path):
    run = tmp_path / "byol"
    P.pretrain(cfg(frames, "model.method=byol", "train.accumulate=2", "optim.lr=0.1"), run)
    info = json.loads((run / "run.json").read_text())
    assert info["global_batch"] == 4 and info["steps_per_epoch"] == 2  # 8 frames / (2 x 2)
    assert info["lr"] == pytest.approx(0.1 * 4 / 256)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)


def test_queues_fill_per_micro_batch(frames, tmp_path):
    result = P.pretrain(cfg(frames, "model.method=mocov2", "train.accumulate=2", "train.epochs=1"), tmp_path / "m")
    assert int(result.model.queue.ptr) == 2 * 2 * 2  # 2 steps x 2 micro-batches x 2 keys


def test_accumulation_survives_a_kill_exactly(frames, kill_and_resume):
    extra = ("model.method=byol", "train.accumulate=2", "train.checkpoint_steps=1", "train.keep_last=10")
    reference, resumed = kill_and_resume(lambda: cfg(frames, *extra))
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k


def test_bad_accumulation_is_one_line(frames, tmp_path):
    with pytest.raises(FpsiamError, match="accumulate"):
        cfg(frames, "train.accumulate=0")
    with pytest.raises(FpsiamError, match=r"one step needs 16 \(batch 2 x 1 processes x 8 accumulated"):
        P.pretrain(cfg(frames, "model.method=byol", "train.accumulate=8"), tmp_path / "big")
    assert not (tmp_path / "big").exists()  # no half-made run folder
