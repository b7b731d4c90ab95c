"""`fpsiam experiment` / `fpsiam demo` end to end on tiny synthetic data: results, report, resume, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from fpsiam.cli import main
from fpsiam.config import DetectConfig, ExperimentConfig, load_config
from fpsiam.data.synthetic import SynthOptions, synth_split
from fpsiam.demo import demo_config
from fpsiam.errors import FpsiamError
from fpsiam.experiment import Experiment, check_config, run_experiment
from fpsiam.ssl.encoders import build_resnet
from fpsiam.train.distributed import DistEnv

TINY = [
    "name=tiny",
    "inits=[random]",
    "detectors=[retinanet]",
    "seeds=[0]",
    "gradcam_images=1",
    "sample_images=1",
    "pretrain.model.backbone=resnet18",
    "pretrain.model.init=random",
    "pretrain.model.proj_dim=64",
    "pretrain.model.pred_dim=16",
    "pretrain.model.pyramid_channels=32",
    "pretrain.data.size=32",
    "pretrain.data.workers=0",
    "pretrain.train.epochs=1",
    "pretrain.train.batch_size=4",
    "pretrain.train.max_steps_per_epoch=2",
    "pretrain.train.amp=none",
    "pretrain.train.progress=false",
    "detect.model.arch=resnet18",
    "detect.model.min_size=64",
    "detect.model.max_size=64",
    "detect.data.workers=0",
    "detect.optim.warmup_iters=1",
    "detect.train.epochs=2",
    "detect.train.batch_size=2",
    "detect.train.max_steps_per_epoch=1",
    "detect.train.amp=none",
    "detect.train.progress=false",
]
TIMING = ("model_images_per_s", "predict_images_per_s", "train_images_per_s")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return synth_split(out, SynthOptions(videos=4, frames=3, width=96, height=80, mp4=False, seed=2))


def tiny(synth, *extra: str) -> ExperimentConfig:
    paths = [f"frames={synth['frames']}", f"train={synth['train']}", f"test={synth['test']}"]
    return load_config(ExperimentConfig, None, [*TINY, *paths, *extra])


def comparable(results: dict) -> dict:
    """results.json without what legitimately differs between two runs (timings, dates)."""
    runs = []
    for r in results["runs"]:
        r = {k: v for k, v in r.items() if k not in ("speed", "best_val", "init")}  # init names the out folder
        runs.append(r)
    pre = {
        m: {k: v for k, v in p.items() if k not in ("seconds", "peak_rss_mb")} for m, p in results["pretrain"].items()
    }
    return {"runs": runs, "pretrain": pre, "gradcam": results["gradcam"], "arms": results["arms"]}


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("straight")
    return out, run_experiment(tiny(synth, "methods=[fpsiam, simsiam]"), out)


def test_results_json_and_a_self_contained_report(straight):
    out, results = straight
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["arms"] == ["random", "fpsiam", "simsiam"]
    assert [(r["arm"], r["detector"], r["seed"], r["status"]) for r in results["runs"]] == [
        ("random", "retinanet", 0, "done"), ("fpsiam", "retinanet", 0, "done"), ("simsiam", "retinanet", 0, "done"),
    ]  # fmt: skip
    for run in results["runs"]:
        assert set(run["metrics"]) >= {"mAP", "AP50", "AP75"} and all(-1 <= v <= 1 for v in run["metrics"].values())
        assert [h["epoch"] for h in run["history"]] == [1, 2]
        assert run["metrics"]["mAP"] == pytest.approx(run["history"][-1]["mAP"])  # last epoch on the test set
        assert "at_best_f1" in run["clinical"] and len(run["samples"]) == 1
        assert (out / run["samples"][0]["png"]).is_file()
    for method in ("fpsiam", "simsiam"):
        p = results["pretrain"][method]
        assert p["status"] == "done" and p["curve"][-1]["global_step"] == 2
        assert (out / p["backbone"]).is_file()
    assert "collapse_local" in results["pretrain"]["fpsiam"]["curve"][-1]
    # the backbone written by pretraining loads into the detector with every backbone tensor matched
    inits = {r["arm"]: r["init"] for r in results["runs"]}
    assert "loaded 120/120 tensors" in inits["fpsiam"] and "loaded 120/120 tensors" in inits["simsiam"]
    html = (out / "report.html").read_text()
    assert "<table" in html and "fpsiam" in html and "simsiam" in html and "random" in html
    assert "http://" not in html and "https://" not in html and 'src="data:image/png;base64,' in html
    assert (out / "config.yaml").is_file()
    table = (out / "table.md").read_text()
    assert "| fpsiam |" in table and "gap to random (paired)" in table
    # finished stages keep their weights, not their resume checkpoints (the bulk of a study's disk use)
    assert not list(out.rglob("checkpoints")) and not list(out.rglob("*.pt"))
    assert all((out / r["run_dir"] / "last.safetensors").is_file() for r in results["runs"])


def test_rerun_skips_finished_stages(straight, synth, capsys):
    out, results = straight
    again = run_experiment(tiny(synth, "methods=[fpsiam, simsiam]"), out)
    log = capsys.readouterr().out
    assert "done before; skipping" in log and "trained before; skipping" in log
    assert "== stage 5 of 5: simsiam retinanet seed 0" in log  # 2 pretrainings + 3 arms (random, fpsiam, simsiam)
    assert comparable(again) == comparable(results)


def test_killed_experiment_resumes_to_the_same_results(straight, synth, tmp_path, monkeypatch):
    _, reference = straight
    from fpsiam.detect import train as T

    original = T.evaluate_on
    calls = {"n": 0}

    def dying(*args, **kwargs):  # killed in the middle of the second fine-tuning (fpsiam arm)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(T, "evaluate_on", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny(synth, "methods=[fpsiam, simsiam]"), tmp_path)
    monkeypatch.setattr(T, "evaluate_on", original)
    assert not (tmp_path / "results.json").exists()
    resumed = run_experiment(tiny(synth, "methods=[fpsiam, simsiam]"), tmp_path)
    assert comparable(resumed) == comparable(reference)


def _files(folder: Path) -> dict[Path, int]:
    return {f: f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()}


def test_report_only_reports_the_finished_stages_and_runs_nothing(straight, synth, tmp_path, capsys, monkeypatch):
    """A study half done (seed 0 of seeds 0 and 1, a method not pretrained yet): the finished stages are reported
    as a full run reports them, the rest are "pending", nothing trains, and a running study's lock is no obstacle."""
    import torchvision

    from fpsiam.train.runfolder import RunLock

    src, reference = straight
    out = tmp_path / "study"
    shutil.copytree(src, out)

    # no ImageNet weights in the cache, and a report must not try to download them
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda *a, **k: pytest.fail("download"))
    # byol not pretrained yet, seed 1 not run, and an external arm whose weights file is not written yet
    cfg = tiny(synth, "methods=[fpsiam, simsiam, byol]", "seeds=[0, 1]", f"weights=[later={tmp_path / 'later.st'}]",
               "inits=[random, imagenet]")  # fmt: skip
    with RunLock(out):  # as if the study were still running in another process
        before = _files(out)
        results = run_experiment(cfg, out, report_only=True)
        after = _files(out)
    log = capsys.readouterr().out
    assert "== stage" not in log
    assert (
        "report only: 3 of 10 fine-tunes and 2 of 3 pretrainings finished; next: pretrain byol, "
        "byol retinanet seed 0 at 100 %, later retinanet seed 0 at 100 % and 5 more" in log
    )
    imagenet = [r for r in results["runs"] if r["arm"] == "imagenet"]
    assert [r["status"] for r in imagenet] == ["skipped"] * 2 and "not in torchvision's cache" in imagenet[0]["reason"]
    status = [(r["arm"], r["seed"], r["status"], r["reason"]) for r in results["runs"] if r["arm"] != "imagenet"]
    assert status == [
        ("random", 0, "done", None), ("random", 1, "pending", "not run yet"),
        ("fpsiam", 0, "done", None), ("fpsiam", 1, "pending", "not run yet"),
        ("simsiam", 0, "done", None), ("simsiam", 1, "pending", "not run yet"),
        ("byol", 0, "pending", "pretraining not finished"), ("byol", 1, "pending", "pretraining not finished"),
        ("later", 0, "pending", "not run yet"), ("later", 1, "pending", "not run yet"),
    ]  # fmt: skip
    volatile = ("init",)  # names the folder the run was trained in
    done = [{k: v for k, v in r.items() if k not in volatile} for r in results["runs"] if r["status"] == "done"]
    assert done == [{k: v for k, v in r.items() if k not in volatile} for r in reference["runs"]]
    assert results["pretrain"]["byol"] == {"run_dir": "pretrain/byol", "status": "pending", "reason": "not run yet"}
    assert {m: results["pretrain"][m] for m in ("fpsiam", "simsiam")} == reference["pretrain"]
    assert results["gradcam"] == reference["gradcam"]
    # nothing trained or pruned: only the report files are new or rewritten, all at the top of the folder
    assert set(before) <= set(after)
    changed = {f.relative_to(out) for f in after if before.get(f) != after[f]}
    assert {"results.json", "report.html", "table.md"} <= {str(f) for f in changed}
    assert all(len(f.parts) == 1 and (f.suffix == ".png" or f.name in ("results.json", "report.html", "table.md"))
               for f in changed), changed  # fmt: skip
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert "pending: not run yet" in (out / "report.html").read_text()
    assert "| byol | pending |" in (out / "table.md").read_text()


def test_report_only_on_a_folder_without_a_study_is_one_line(synth, tmp_path, capsys):
    cfg = tmp_path / "e.yaml"
    cfg.write_text("name: tiny\n")
    paths = [f"frames={synth['frames']}", f"train={synth['train']}", f"test={synth['test']}"]
    sets = [a for kv in [*TINY, *paths] for a in ("--set", kv)]
    assert main(["experiment", str(cfg), "-o", str(tmp_path / "nothing"), "--report-only", *sets]) == 2
    err = capsys.readouterr().err
    assert "no experiment has started in this folder" in err and "Traceback" not in err
    assert not (tmp_path / "nothing").exists()


def test_a_broken_arm_is_reported_and_the_others_complete(synth, tmp_path):
    wrong = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in build_resnet("resnet50").state_dict().items()}, wrong)
    cfg = tiny(synth, "methods=[]", f"weights=[wrong_arch={wrong}]", "gradcam_images=0", "sample_images=0",
               "keep_checkpoints=true")  # fmt: skip
    results = run_experiment(cfg, tmp_path / "out")
    status = {r["arm"]: (r["status"], r["reason"]) for r in results["runs"]}
    assert status["random"] == ("done", None)
    assert list((tmp_path / "out" / "detect" / "random" / "retinanet" / "seed0" / "checkpoints").glob("*.pt"))
    assert status["wrong_arch"][0] == "failed" and "r50.safetensors" in status["wrong_arch"][1]
    assert "failed" in (tmp_path / "out" / "report.html").read_text()


def test_nan_pretraining_fails_its_arm_only(synth, tmp_path, monkeypatch):
    from fpsiam.ssl import methods

    forward = methods.SimSiam.forward

    def nan_forward(self, x1, x2):
        out = forward(self, x1, x2)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(methods.SimSiam, "forward", nan_forward)
    cfg = tiny(synth, "methods=[simsiam]", "inits=[random]", "gradcam_images=0", "sample_images=0")
    results = run_experiment(cfg, tmp_path)
    assert results["pretrain"]["simsiam"]["status"] == "failed"
    assert "not finite" in results["pretrain"]["simsiam"]["reason"]
    by_arm = {r["arm"]: r for r in results["runs"]}
    assert by_arm["simsiam"]["status"] == "failed" and by_arm["random"]["status"] == "done"


def test_config_errors_before_any_compute(synth, tmp_path, capsys):
    with pytest.raises(FpsiamError, match="frames"):
        check_config(tiny(synth, "frames=''"), "x.yaml")
    with pytest.raises(FpsiamError, match="must be the detector's"):
        check_config(tiny(synth, "detect.model.arch=resnet50"), "x.yaml")
    with pytest.raises(FpsiamError, match="name=path"):
        check_config(tiny(synth, "weights=[nonsense]"), "x.yaml")
    cfg = tmp_path / "e.yaml"
    cfg.write_text("methods: [byol2]\n")
    assert main(["experiment", str(cfg), "-o", str(tmp_path / "o")]) == 2
    assert "methods[0]" in capsys.readouterr().err


def test_imagenet_arm_is_skipped_with_a_note_when_weights_are_offline(synth, tmp_path, monkeypatch, capsys):
    from fpsiam import experiment as E

    monkeypatch.setattr(
        E, "imagenet_weights", lambda cfg, download=True: (None, "ImageNet weights not available offline (test)")
    )
    cfg = tiny(synth, "methods=[]", "inits=[imagenet]", "gradcam_images=0", "sample_images=0")
    results = run_experiment(cfg, tmp_path)
    assert "== stage" not in capsys.readouterr().out  # an arm that cannot run is no stage (nor in the ETA)
    assert results["runs"] == [
        {"arm": "imagenet", "detector": "retinanet", "seed": 0, "labels": 1.0, "status": "skipped",
         "reason": "ImageNet weights not available offline (test)"}
    ]  # fmt: skip


def test_the_demo_config_runs_scaled_down(synth, tmp_path):
    cfg = demo_config(synth, quick=True, overrides=[s for s in TINY if not s.startswith(("name", "inits"))])
    assert cfg.methods == ["fpsiam", "simsiam"] and cfg.detectors == ["retinanet"]
    exp = Experiment(cfg, tmp_path, env=DistEnv())
    results = exp.run()
    assert {r["status"] for r in results["runs"]} == {"done"}
    assert (tmp_path / "report.html").is_file()


def test_label_fractions_axis_nested_subsets_table_and_plot(synth, tmp_path):
    cfg = tiny(synth, "methods=[]", "label_fractions=[1.0, 0.5]", "gradcam_images=0", "sample_images=0",
               "detect.train.min_iters=2")  # fmt: skip
    out = tmp_path / "out"
    results = run_experiment(cfg, out)
    assert results["label_fractions"] == [0.5, 1.0]
    rows = [(r["arm"], r["labels"], r["seed"], r["status"]) for r in results["runs"]]
    assert rows == [("random", 0.5, 0, "done"), ("random", 1.0, 0, "done")]
    half = json.loads((out / "labels" / "seed0" / "labels50.json").read_text())
    full = json.loads(Path(synth["train"]).read_text())
    assert {im["id"] for im in half["images"]} < {im["id"] for im in full["images"]}
    assert results["runs"][0]["train_images"] == len(half["images"]) == round(0.5 * len(full["images"]))
    assert results["runs"][0]["run_dir"] == "detect/random/retinanet/labels50/seed0"
    assert "labels" in (out / "table.md").read_text() and (out / "label_efficiency.png").is_file()


@pytest.mark.parametrize("bad", ["label_fractions=[0.0]", "label_fractions=[1.5]", "label_fractions=[]"])
def test_bad_label_fractions_are_refused_by_key(synth, bad):
    with pytest.raises(FpsiamError, match="label_fractions"):
        check_config(tiny(synth, bad), "cfg.yaml")


def test_transfer_overrides_apply_to_pretrained_arms_only(synth, tmp_path):
    r18 = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in build_resnet("resnet18").state_dict().items()}, r18)
    cfg = tiny(synth, "methods=[]", f"weights=[mine={r18}]", "gradcam_images=0", "sample_images=0",
               "transfer=[optim.backbone_lr_mult=0.5, model.precise_bn=2]")  # fmt: skip
    out = tmp_path / "out"
    run_experiment(cfg, out)
    got = {arm: load_config(DetectConfig, out / "detect" / arm / "retinanet" / "seed0" / "config.yaml")
           for arm in ("random", "mine")}  # fmt: skip
    assert (got["random"].optim.backbone_lr_mult, got["random"].model.precise_bn) == (1.0, 0)
    assert (got["mine"].optim.backbone_lr_mult, got["mine"].model.precise_bn) == (0.5, 2)
    with pytest.raises(FpsiamError, match="transfer entry"):
        check_config(tiny(synth, "transfer=[optim.nope=1]"), "cfg.yaml")


def test_eta_weights_stages_by_kind(monkeypatch):
    """The ETA sums each stage left at the mean time of its own kind: pretrainings don't inflate fine-tunes."""
    from fpsiam import experiment

    clock = iter([0.0, 0, 100, 100, 200, 200, 210, 210, 220, 220, 240])  # seconds at each begin/end
    monkeypatch.setattr(experiment.time, "perf_counter", lambda: next(clock))
    lines: list[str] = []
    plan = [("pretrain",)] * 2 + [("finetune", 0.1)] * 2 + [("finetune", 1.0)] * 2
    s = experiment.Stages(plan, lines.append)
    assert s.total == 6
    s.begin("p1", plan[0])
    assert s.eta() is None and lines[-1].endswith("eta ?)")
    s.end(ran=True)  # 100 s
    s.begin("p2", plan[1])
    assert s.eta() == 500  # only pretrainings timed: this stage and the 4 left at their mean
    s.end(ran=True)  # 100 s
    s.begin("f1", plan[2])
    s.end(ran=True)  # 10 s
    s.begin("f2", plan[3])
    # this stage at its kind's 10 s; the two 100 % fine-tunes, not yet timed, at the fine-tune mean (10 s)
    assert s.eta() == 30
    s.end(ran=True)
    s.begin("f3", plan[4])
    assert s.eta() == 20 and "stage 5 of 6" in lines[-1]
