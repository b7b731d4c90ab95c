"""The transfer recipe for pretrained backbones: backbone lr multiplier, precise BN, GroupNorm in the FPN and heads,
and stretched epochs for small labeled sets. Off by default (the paper's recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fpsiam.config import DetectConfig, load_config
from fpsiam.data.coco import CocoDetection, detection_transforms
from fpsiam.data.synthetic import SynthOptions, synth_split
from fpsiam.detect import train as T
from fpsiam.detect.models import build_detector, load_detector
from fpsiam.train.distributed import DistEnv
from fpsiam.train.loop import Engine, LoopSettings
from fpsiam.train.sampling import ResumableSampler

TINY = [
    "model.kind=retinanet", "model.arch=resnet18", "model.backbone=random", "model.min_size=64", "model.max_size=64",
    "data.workers=0", "train.batch_size=2", "train.epochs=2", "train.progress=false", "train.amp=none",
    "train.log_every=1", "optim.warmup_iters=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return synth_split(out, SynthOptions(videos=4, frames=3, width=96, height=80, mp4=False, seed=4))


def cfg_for(synth, *extra: str) -> DetectConfig:
    return load_config(DetectConfig, None, [*TINY, f"data.train={synth['train']}", f"data.val={synth['test']}", *extra])


def test_defaults_are_the_papers_recipe():
    cfg = DetectConfig()
    assert (cfg.optim.backbone_lr_mult, cfg.model.precise_bn, cfg.model.head_norm, cfg.train.min_iters) == (
        1.0, 0, "none", 0,
    )  # fmt: skip


def test_backbone_lr_multiplier_applies_to_the_backbone_only():
    model = build_detector("retinanet", "resnet18", min_size=64, max_size=64)
    groups = T.param_groups(model, 0.1)
    assert [g["name"] for g in groups] == ["neck+heads", "backbone"]
    body = {id(p) for p in model.backbone.body.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == body
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_trainable
    opt = torch.optim.SGD(groups, lr=1.0)
    task = T.DetectTask.without_data(load_config(DetectConfig, None, ["optim.warmup_iters=0"]), base_lr=0.01)
    engine = Engine(task, LoopSettings(epochs=1, batch_size=2), "unused", None, DistEnv()).attach(model, opt)
    images = [torch.rand(3, 64, 64)] * 2
    targets = [{"boxes": torch.tensor([[5.0, 5, 40, 40]]), "labels": torch.tensor([1])}] * 2
    engine.step((images, targets))
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"backbone": pytest.approx(0.001),
                                                              "neck+heads": pytest.approx(0.01)}  # fmt: skip


def test_precise_bn_changes_backbone_statistics_not_weights(synth):
    model = build_detector("retinanet", "resnet18", min_size=64, max_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = CocoDetection(synth["train"], transforms=detection_transforms(False))
    assert T.precise_backbone_bn(model, data, 4, 2) == 4
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("backbone.body.") for k in changed)
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert not model.backbone.body.bn1.training and model.backbone.body.layer1[0].bn1.training  # modes kept


def test_head_norm_gn_puts_groupnorm_in_fpn_and_heads_and_round_trips(tmp_path):
    for kind in ("retinanet", "faster_rcnn"):
        model = build_detector(kind, "resnet18", min_size=64, max_size=64, head_norm="gn")
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)]
        assert any(n.startswith("backbone.fpn") for n in names)
        assert any(n.startswith(("head.", "roi_heads.")) for n in names)
        assert not any(n.startswith("backbone.body") for n in names)  # the backbone keeps its BatchNorm
        from fpsiam.detect.models import save_detector

        path = save_detector(model, tmp_path / f"{kind}.safetensors")
        loaded, meta = load_detector(path)
        assert meta["head_norm"] == "gn" and set(load_file(path)) == set(loaded.state_dict())


def test_min_iters_stretches_epochs_of_a_small_set(synth, tmp_path):
    run = tmp_path / "run"
    T.train_detector(cfg_for(synth, "train.min_iters=10", "optim.backbone_lr_mult=0.5", "model.precise_bn=2",
                             "model.head_norm=gn"), run)  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    steps = [h["global_step"] for h in results["history"]]
    assert steps == [5, 10]  # 6 train images / batch 2 = 3 steps an epoch, stretched to 5
    assert results["grad_norm"]["steps"] == 10 and results["grad_norm"]["max"] >= results["grad_norm"]["median"]
    assert "precise BN" in results["init"] and results["train_images"] == 6
    from fpsiam.detect.models import read_detector_meta

    card = read_detector_meta(run / "last.safetensors")["card"]  # the model card travels with the weights
    assert card["trained_on"] == str(synth["train"]) and card["train_images"] == 6 and "mAP" in card["val_metrics"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("grad_norm" in r for r in rows if "kind" not in r)


def test_stretched_sampler_is_seeded_covers_the_set_and_resumes():
    s = ResumableSampler(list(range(10)), 1, 0, seed=0, min_samples=25)
    s.set_epoch(3)
    order = list(s)
    assert len(order) == len(s) == 25 and set(order[:10]) == set(range(10))  # whole permutations back to back
    s.start_index = 7
    assert list(s) == order[7:]
    halves = [ResumableSampler(list(range(10)), 2, r, seed=0, min_samples=25) for r in (0, 1)]
    for h in halves:
        h.set_epoch(3)
    both = list(halves[0]) + list(halves[1])
    assert len(halves[0]) == len(halves[1]) == 13 and set(both) == set(range(10))
    plain = ResumableSampler(list(range(10)), 1, 0, seed=0, min_samples=4)
    assert len(plain) == 10  # never shortened


def test_a_nonfinite_gradient_step_is_skipped_counted_and_past_the_limit_stops(synth, tmp_path, monkeypatch):
    from fpsiam.errors import FpsiamError
    from fpsiam.train import loop as engine

    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}
    updates = {"n": 0}
    real_step = torch.optim.SGD.step

    def nan_on_second(params, max_norm):
        calls["n"] += 1
        norm = real(params, max_norm)
        return torch.tensor(float("nan")) if calls["n"] == 2 else norm

    def counted_step(self, *a, **k):
        updates["n"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(engine.torch.nn.utils, "clip_grad_norm_", nan_on_second)
    monkeypatch.setattr(torch.optim.SGD, "step", counted_step)
    run = tmp_path / "run"
    T.train_detector(cfg_for(synth, "train.epochs=1"), run)
    results = json.loads((run / "results.json").read_text())
    assert results["skipped_steps"] == [2] and results["grad_norm"]["steps"] == 2  # the NaN is not in the stats
    assert updates["n"] == 2  # 3 steps, the skipped one never reached the optimizer
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if r.get("skipped")] == [2]
    calls["n"] = 0
    with pytest.raises(FpsiamError, match="1 steps with a non-finite gradient norm.*Last good checkpoint: none"):
        T.train_detector(cfg_for(synth, "train.epochs=1", "train.nonfinite_skips=0"), tmp_path / "strict")
