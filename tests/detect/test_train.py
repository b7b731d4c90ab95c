"""Detection training and evaluation end to end on synthetic data: run folder, schedule, resume, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fpsiam.cli import main
from fpsiam.config import DetectConfig, load_config
from fpsiam.data.synthetic import SynthOptions, synth_split
from fpsiam.detect import train as T
from fpsiam.detect.engine import evaluate_file, step_lr
from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import build_resnet

TINY = [
    "model.arch=resnet18",
    "model.backbone=random",
    "model.min_size=96",
    "model.max_size=96",
    "data.workers=0",
    "train.batch_size=2",
    "train.epochs=2",
    "train.max_steps_per_epoch=2",
    "train.progress=false",
    "train.amp=none",
    "train.log_every=1",
    "optim.warmup_iters=2",
    "optim.steps=[1]",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return synth_split(out, SynthOptions(videos=4, frames=4, width=96, height=80, mp4=False, seed=1))


def cfg_for(synth, *extra: str, kind: str = "faster_rcnn") -> DetectConfig:
    return load_config(
        DetectConfig,
        None,
        [*TINY, f"model.kind={kind}", f"data.train={synth['train']}", f"data.val={synth['test']}", *extra],  # fmt: skip
    )


def test_schedule_is_warmup_then_steps():
    args = dict(steps=[8, 11], gamma=0.1, warmup_iters=500, warmup_ratio=0.001)
    assert step_lr(0.002, 0, 0, **args) == pytest.approx(0.002 * 0.001)
    assert step_lr(0.002, 0, 250, **args) == pytest.approx(0.002 * (1 - 0.5 * 0.999))
    assert step_lr(0.002, 1, 500, **args) == pytest.approx(0.002)
    assert step_lr(0.002, 8, 9000, **args) == pytest.approx(0.0002)
    assert step_lr(0.002, 11, 9000, **args) == pytest.approx(0.00002)


@pytest.mark.parametrize("kind", ["faster_rcnn", "retinanet"])
def test_two_epochs_write_models_metrics_and_results(synth, tmp_path, kind):
    run = tmp_path / "run"
    result = T.train_detector(cfg_for(synth, kind=kind), run)
    assert (run / "config.yaml").is_file() and (run / "best.safetensors").is_file()
    results = json.loads((run / "results.json").read_text())
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    assert results["last"]["epoch"] == 2 and 0.0 <= results["last"]["mAP"] <= 1.0
    assert results["best"]["mAP"] == max(h["mAP"] for h in results["history"])
    assert result.last == results["last"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") != "epoch"]
    assert [r["global_step"] for r in steps] == [1, 2, 3, 4]
    lrs = [r["lr"] for r in steps]
    base = 0.002 * 2 / 8
    assert lrs[0] == pytest.approx(base * 0.001) and lrs[2] == pytest.approx(base * 0.1)  # warm-up, then step 1
    # the saved model evaluates through `fpsiam detect eval`
    m = evaluate_file(run / "last.safetensors", synth["test"], output=tmp_path / "m.json")
    assert m["coco"]["mAP"] == pytest.approx(results["last"]["mAP"])
    assert m["clinical"]["at_fixed"]["fp_per_frame"] >= 0
    predictions = json.loads((tmp_path / "m.predictions.json").read_text())
    assert all(set(p) >= {"image_id", "bbox", "score", "category_id"} for p in predictions)


def test_resume_equals_uninterrupted(synth, tmp_path, monkeypatch):
    straight = T.train_detector(cfg_for(synth, "train.keep_last=5"), tmp_path / "a")
    original = T.evaluate_on
    calls = {"n": 0}

    def dying(*args, **kwargs):  # the run dies while evaluating epoch 2, after epoch 1's checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(T, "evaluate_on", dying)
    with pytest.raises(KeyboardInterrupt):
        T.train_detector(cfg_for(synth, "train.keep_last=5"), tmp_path / "b")
    monkeypatch.setattr(T, "evaluate_on", original)
    resumed = T.train_detector(cfg_for(synth, "train.keep_last=5"), tmp_path / "b", resume=True)
    a = load_file(tmp_path / "a" / "last.safetensors")
    b = load_file(tmp_path / "b" / "last.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    timing = ("model_images_per_s", "predict_images_per_s", "train_images_per_s")
    assert {k: v for k, v in resumed.last.items() if k not in timing} == {
        k: v for k, v in straight.last.items() if k not in timing
    }


def test_evaluation_cadence_does_not_change_what_trains(synth, tmp_path):
    # Faster R-CNN samples its boxes from the global generator, and every evaluation's loader draws a seed from
    # it: unless the engine puts the random state back, evaluating after epoch 1 changes epoch 2's training
    runs = {}
    for every in (1, 2):
        T.train_detector(cfg_for(synth, f"train.eval_every={every}"), tmp_path / str(every))
        runs[every] = load_file(tmp_path / str(every) / "last.safetensors")
    for k in runs[1]:
        assert torch.equal(runs[1][k], runs[2][k]), k


def test_pretrained_backbone_file_loads_and_wrong_one_fails(synth, tmp_path, capsys):
    net = build_resnet("resnet18")
    good = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, good)
    cfg = cfg_for(synth, f"model.backbone={good}", "train.epochs=1", "train.max_steps_per_epoch=1")
    T.train_detector(cfg, tmp_path / "run")
    assert "loaded" in json.loads((tmp_path / "run" / "results.json").read_text())["init"]
    bad = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in build_resnet("resnet50").state_dict().items()}, bad)
    preset = Path(__file__).parents[2] / "configs" / "faster_rcnn_r18_fpn_cpu.yaml"
    sets = [x for s in TINY for x in ("--set", s) if "backbone" not in s]
    capsys.readouterr()  # the good run's output
    code = main(["detect", "train", str(preset), "--train", str(synth["train"]), "--val", str(synth["test"]),
                 "--backbone", str(bad), "-o", str(tmp_path / "bad"), *sets])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "r50.safetensors" in err and len(err.strip().splitlines()) == 1


def test_eval_bad_inputs(synth, tmp_path, capsys):
    T.train_detector(cfg_for(synth, "train.epochs=1", "train.max_steps_per_epoch=1", kind="retinanet"), tmp_path / "r")
    model = tmp_path / "r" / "last.safetensors"
    # annotation ids that do not match the images
    data = json.loads(Path(synth["test"]).read_text())
    data["annotations"][0]["image_id"] = 999_999
    broken = Path(synth["test"]).with_name("broken.json")
    broken.write_text(json.dumps(data))
    assert main(["detect", "eval", str(model), "--ann", str(broken)]) == 2
    assert "999999" in capsys.readouterr().err
    # an empty test set
    empty = Path(synth["test"]).with_name("empty.json")
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": data["categories"]}))
    assert main(["detect", "eval", str(model), "--ann", str(empty)]) == 2
    assert "empty.json" in capsys.readouterr().err
    # a model file of another architecture: a backbone file is not a detector
    backbone = tmp_path / "bb.safetensors"
    save_file({k: v.contiguous() for k, v in build_resnet("resnet18").state_dict().items()}, backbone)
    assert main(["detect", "eval", str(backbone), "--ann", str(synth["test"])]) == 2
    assert "bb.safetensors" in capsys.readouterr().err
    # resuming a run with another detector kind
    with pytest.raises(FpsiamError, match="retinanet"):
        T.train_detector(cfg_for(synth, "train.epochs=2"), tmp_path / "r", resume=True)


def test_real_data_smoke_on_kvasir(tmp_path):
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        pytest.skip("FPSIAM_KVASIR not set: real Kvasir-SEG frames unavailable")
    from fpsiam.data.convert import ConvertOptions, convert_dataset

    all_json = tmp_path / "kvasir.json"
    convert_dataset("kvasir", Path(root), all_json, None, ConvertOptions())
    data = json.loads(all_json.read_text())
    train_ids = set(Path(root, "train.txt").read_text().split()[:6])
    test_ids = set(Path(root, "test.txt").read_text().split()[:3])
    for name, ids in (("train", train_ids), ("test", test_ids)):
        keep = [im for im in data["images"] if Path(im["file_name"]).stem in ids]
        kept = {im["id"] for im in keep}
        anns = [a for a in data["annotations"] if a["image_id"] in kept]
        (tmp_path / f"{name}.json").write_text(json.dumps({**data, "images": keep, "annotations": anns}))
    cfg = load_config(DetectConfig, None, [*TINY, f"data.train={tmp_path / 'train.json'}",
                                           f"data.val={tmp_path / 'test.json'}", "train.epochs=1"])  # fmt: skip
    result = T.train_detector(cfg, tmp_path / "run")
    assert result.last["images"] == 3 and 0.0 <= result.last["mAP"] <= 1.0


DDP_SCRIPT = """
import sys, torch
from fpsiam.config import DetectConfig, load_config
from fpsiam.detect.train import train_detector
from fpsiam.train import distributed as D
env = D.init_distributed("cpu")
result = train_detector(load_config(DetectConfig, None, sys.argv[3:]), sys.argv[1], env=env)
torch.save({k: p.detach() for k, p in result.model.named_parameters()}, f"{sys.argv[2]}/rank{env.rank}.pt")
D.cleanup()
"""


@pytest.mark.slow
def test_torchrun_two_processes_train_identical_detectors(synth, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    args = [*TINY, "model.kind=retinanet", f"data.train={synth['train']}", f"data.val={synth['test']}",
            "train.epochs=1", "train.batch_size=1"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "run"), str(tmp_path), *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["last"]["epoch"] == 1 and results["history"][0]["global_step"] == 2


@pytest.mark.parametrize("value", [0, -1.0])
def test_clip_grad_norm_must_be_positive(synth, tmp_path, value):
    with pytest.raises(FpsiamError, match="optim.clip_grad_norm"):
        T.train_detector(cfg_for(synth, f"optim.clip_grad_norm={value}"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_image_read_in_a_loader_worker_is_one_line(synth, tmp_path, capsys):
    data = json.loads(Path(synth["train"]).read_text())
    boxed = {a["image_id"] for a in data["annotations"]}
    next(im for im in data["images"] if im["id"] in boxed)["file_name"] = "no_such_frame.jpg"  # not a dropped negative
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps(data))
    preset = Path(__file__).parents[2] / "configs" / "retinanet_r18_fpn_cpu.yaml"
    args = ["detect", "train", str(preset), "-o", str(tmp_path / "run"), "--train", str(bad), "--val",
            str(synth["test"]), "--images", str(Path(synth["train"]).parent)]  # fmt: skip
    sets = [x for item in TINY if item != "data.workers=0" for x in ("--set", item)]
    assert main([*args, *sets, "--set", "data.workers=1", "--set", "model.kind=retinanet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_frame.jpg: image not found" in err[0], err
    assert "Traceback" not in err[0] and "DataLoader worker" not in err[0]
