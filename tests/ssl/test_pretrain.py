"""The pretraining loop: run folder contents, lr schedule, exact resume, DDP on CPU, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from fpsiam.cli import main
from fpsiam.config import PretrainConfig, load_config
from fpsiam.errors import FpsiamError
from fpsiam.ssl import pretrain as P
from fpsiam.train.checkpoint import list_checkpoints, load_checkpoint

TINY = [
    "model.backbone=resnet18",
    "model.init=random",
    "model.proj_dim=64",
    "model.pred_dim=16",
    "model.pyramid_channels=32",
    "data.size=32",
    "data.workers=0",
    "train.batch_size=4",
    "train.epochs=2",
    "train.max_steps_per_epoch=3",
    "train.log_every=1",
    "train.progress=false",
    "train.amp=none",
]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for v in range(3):
        (root / f"video{v}").mkdir()
        for i in range(8):
            arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"video{v}" / f"{i:04d}.jpg")
    return root


def tiny_cfg(frames: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, f"data.source={frames}", *extra])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run_dir)[-1])["model"]


def test_run_folder_has_config_metrics_checkpoints_and_backbone(frames, tmp_path):
    run = tmp_path / "run"
    result = P.pretrain(tiny_cfg(frames, "train.keep_last=1"), run)
    assert result.global_step == 6
    assert (run / "config.yaml").is_file() and load_config(PretrainConfig, run / "config.yaml").train.epochs == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "loss_local", "loss_global", "collapse_local", "collapse_global", "lr", "samples_per_s"):
        assert key in rows[0], key
    assert all(-1.0 <= r["loss"] <= 1.0 for r in rows)  # λ-average of negative cosines
    assert (run / "metrics.csv").read_text().startswith("epoch,")
    assert len(list_checkpoints(run)) == 1  # keep_last
    # the extracted backbone loads into torchvision's resnet18, strict apart from fc
    sd = load_file(run / "backbone.safetensors")
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert unexpected == [] and sorted(missing) == ["fc.bias", "fc.weight"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["peak_rss_mb"] > 0 and summary["global_step"] == 6


def test_predictor_lr_fixed_while_the_rest_follows_the_cosine(frames, tmp_path):
    cfg = tiny_cfg(frames, "train.epochs=4", "train.max_steps_per_epoch=1", "model.method=simsiam")
    P.pretrain(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    base = 0.05 * 4 / 256  # lr scaled by the global batch
    assert [r["lr_predictor"] for r in rows] == pytest.approx([base] * 4)
    assert [r["lr"] for r in rows] == pytest.approx([P.cosine_lr(base, e, 4) for e in range(4)])
    assert rows[0]["lr"] > rows[1]["lr"] > rows[2]["lr"] > rows[3]["lr"] > 0


def test_constant_schedule_keeps_every_group_at_the_scaled_lr(frames, tmp_path):
    cfg = tiny_cfg(frames, "train.epochs=3", "train.max_steps_per_epoch=1", "optim.schedule=constant",
                   "optim.fix_predictor_lr=false")  # fmt: skip
    P.pretrain(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    base = 0.05 * 4 / 256
    assert [r["lr"] for r in rows] == pytest.approx([base] * 3)
    assert [r["lr_predictor"] for r in rows] == pytest.approx([base] * 3)


def test_kill_and_resume_equals_uninterrupted(frames, tmp_path, monkeypatch):
    extra = ("train.checkpoint_steps=2", "train.keep_last=10", "data.temporal_k=2")
    P.pretrain(tiny_cfg(frames, *extra), tmp_path / "straight")
    reference = weights(tmp_path / "straight")

    # die in the middle of step 5 (after its update, before anything is saved)
    calls = {"n": 0}
    real = P.collapse_std

    def dying(z):
        calls["n"] += 1
        if calls["n"] == 2 * 5:  # two monitors per FPSiam step
            raise KeyboardInterrupt
        return real(z)

    monkeypatch.setattr(P, "collapse_std", dying)
    with pytest.raises(KeyboardInterrupt):
        P.pretrain(tiny_cfg(frames, *extra), tmp_path / "killed")
    monkeypatch.setattr(P, "collapse_std", real)
    assert load_checkpoint(list_checkpoints(tmp_path / "killed")[-1])["global_step"] == 4
    with pytest.raises(FpsiamError, match="--resume"):
        P.pretrain(tiny_cfg(frames, *extra), tmp_path / "killed")
    P.pretrain(tiny_cfg(frames, *extra), tmp_path / "killed", resume=True)
    resumed = weights(tmp_path / "killed")
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    steps = [
        json.loads(line)["global_step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]  # the dead run's step 5 row does not survive twice


def test_resume_with_another_method_is_refused(frames, tmp_path):
    P.pretrain(tiny_cfg(frames, "train.epochs=1", "train.max_steps_per_epoch=1"), tmp_path / "run")
    cfg = tiny_cfg(frames, "train.epochs=2", "model.method=simsiam")
    with pytest.raises(FpsiamError, match="fpsiam/resnet18 but the config asks for simsiam/resnet18"):
        P.pretrain(cfg, tmp_path / "run", resume=True)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(frames, tmp_path, monkeypatch):
    run = tmp_path / "run"
    P.pretrain(tiny_cfg(frames, "train.epochs=1"), run)
    good = list_checkpoints(run)
    from fpsiam.ssl import methods

    forward = methods.FPSiam.forward

    def nan_forward(self, x1, x2):
        out = forward(self, x1, x2)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(methods.FPSiam, "forward", nan_forward)
    with pytest.raises(FpsiamError, match="not finite"):
        P.pretrain(tiny_cfg(frames), run, resume=True)
    assert list_checkpoints(run) == good


def test_bad_inputs_are_one_clear_error(frames, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FpsiamError, match="empty"):
        P.pretrain(tiny_cfg(empty), tmp_path / "a")
    with pytest.raises(FpsiamError, match="24 frames, but one step needs 32"):
        P.pretrain(tiny_cfg(frames, "train.batch_size=32"), tmp_path / "b")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  backbone: resnet51\n")
    assert main(["pretrain", str(cfg), "--data", str(frames), "-o", str(tmp_path / "c")]) == 2
    assert "model.backbone" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    ckdir = tmp_path / "d" / "checkpoints"
    ckdir.mkdir(parents=True)
    (ckdir / "ckpt_00000001.pt").write_bytes(b"truncated")
    with pytest.raises(FpsiamError, match="cannot be read"):
        P.pretrain(tiny_cfg(frames), tmp_path / "d", resume=True)


DDP_SCRIPT = """
import sys, torch
from fpsiam.config import PretrainConfig, load_config
from fpsiam.ssl.pretrain import pretrain
from fpsiam.train import distributed as D
env = D.init_distributed("cpu")
result = pretrain(load_config(PretrainConfig, None, sys.argv[3:]), sys.argv[1], env=env)
# parameters: DDP all-reduces gradients, so every rank must hold the same weights. (BN running stats are
# rank-local on CPU, where SyncBN does not run; DDP re-broadcasts rank 0's buffers at every forward.)
params = {k: p.detach() for k, p in result.model.named_parameters()}
torch.save(params, f"{sys.argv[2]}/rank{env.rank}.pt")
D.cleanup()
"""


@pytest.mark.slow
def test_torchrun_two_processes_gloo_end_with_identical_weights(frames, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    run = tmp_path / "run"
    args = [*TINY, f"data.source={frames}", "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(run), str(tmp_path), *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys() and len(r0) > 60
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["global_batch"] == 4
    # rank 0 checkpointed both steps
    assert load_checkpoint(list_checkpoints(run)[-1])["global_step"] == 2


def test_real_data_smoke_on_kvasir(tmp_path):
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        pytest.skip("FPSIAM_KVASIR not set: real Kvasir-SEG frames unavailable")
    cfg = load_config(
        PretrainConfig, None, [*TINY, f"data.source={Path(root) / 'images'}", "data.stride=50", "train.epochs=1"]
    )
    result = P.pretrain(cfg, tmp_path / "run")
    assert result.global_step == 3
    assert all(np.isfinite(v) for v in result.final.values())
    assert (tmp_path / "run" / "backbone.safetensors").is_file()


def test_probe_during_pretraining_is_logged_and_changes_nothing(tmp_path):
    from fpsiam.data.synthetic import SynthOptions, generate

    generate(tmp_path / "synth", SynthOptions(videos=3, frames=4, width=96, height=80, mp4=False, seed=5))
    ann = tmp_path / "synth" / "annotations.json"
    base = (f"data.source={ann}", "train.checkpoint_every=1")
    P.pretrain(tiny_cfg(tmp_path, *base), tmp_path / "plain")
    probed = (*base, f"probe.ann={ann}", "probe.size=32", "probe.every=1", "probe.seeds=[0, 1]")
    result = P.pretrain(tiny_cfg(tmp_path, *probed), tmp_path / "probed")
    plain, with_probe = weights(tmp_path / "plain"), weights(tmp_path / "probed")
    assert all(torch.equal(plain[k], with_probe[k]) for k in plain)  # the probe touches neither weights nor RNG
    rows = [json.loads(line) for line in (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if r.get("kind") == "probe"]
    assert [(r["epoch"], r["global_step"]) for r in probes] == [(0, 0), (1, 3), (2, 6)]
    assert all(0 <= r["probe_linear"] <= 1 and r["probe_linear_std"] >= 0 for r in probes)
    summary = json.loads((tmp_path / "probed" / "summary.json").read_text())
    assert summary["probe"]["probe_linear"] == probes[-1]["probe_linear"]
    assert result.final  # the loss terms, as without a probe
    # resuming a finished run probes nothing again and keeps the summary; a bad probe json fails before training
    P.pretrain(tiny_cfg(tmp_path, *probed), tmp_path / "probed", resume=True)
    assert len((tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()) == len(rows)
    assert json.loads((tmp_path / "probed" / "summary.json").read_text())["probe"] == summary["probe"]
    with pytest.raises(FpsiamError, match="missing.json"):
        P.pretrain(tiny_cfg(tmp_path, *base, "probe.ann=missing.json"), tmp_path / "bad")
    assert not list_checkpoints(tmp_path / "bad")
