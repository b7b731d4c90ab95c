"""Typed configs: strict YAML loading, --set overrides, the effective config written back."""

from pathlib import Path

import pytest
import yaml

from fpsiam.config import DetectConfig, ExperimentConfig, PretrainConfig, load_config, save_config
from fpsiam.errors import FpsiamError
from fpsiam.ssl.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_papers_values():
    cfg = load_config(PretrainConfig, None)
    assert cfg.model.method == "fpsiam" and cfg.model.backbone == "resnet50"
    assert cfg.model.lam == 0.5 and cfg.model.loss_scale == 1.0
    assert cfg.optim.lr == 0.05 and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 1e-4
    assert cfg.data.mean == [0.654, 0.424, 0.266] and cfg.data.std == [0.257, 0.182, 0.148]
    assert cfg.train.epochs == 200 and cfg.train.batch_size == 64


def config_class(name: str) -> type:
    return DetectConfig if name.startswith(("faster_rcnn", "retinanet")) else PretrainConfig


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads(preset):
    cfg = load_config(config_class(preset), CONFIGS / preset)
    if isinstance(cfg, DetectConfig):
        assert cfg.model.kind in preset
    else:
        assert cfg.model.method in METHODS and preset.startswith(cfg.model.method)


def test_detection_presets_carry_the_papers_recipe():
    for name in ("faster_rcnn_r50_fpn_1x_ldpolypvideo.yaml", "retinanet_r50_fpn_1x_ldpolypvideo.yaml"):
        cfg = load_config(DetectConfig, CONFIGS / name)
        assert (cfg.optim.lr, cfg.train.batch_size, cfg.optim.warmup_iters, cfg.optim.steps, cfg.train.epochs) == (
            0.002, 8, 500, [8, 11], 12)  # fmt: skip
        assert (cfg.model.min_size, cfg.model.max_size, cfg.model.arch, cfg.data.keep_negatives) == (
            480, 480, "resnet50", False)  # fmt: skip


def test_paper_presets_match_design():
    f = load_config(PretrainConfig, CONFIGS / "fpsiam_r50_4xb64-coslr-200e_ldpolypvideo.yaml")
    s = load_config(PretrainConfig, CONFIGS / "simsiam_r50_4xb64-coslr-200e_ldpolypvideo.yaml")
    for cfg in (f, s):
        assert (cfg.model.backbone, cfg.model.init, cfg.train.epochs, cfg.train.batch_size) == (
            "resnet50",
            "imagenet",
            200,
            64,
        )
        assert cfg.data.size == 224 and cfg.data.min_scale == 0.2
    assert f.model.method == "fpsiam" and s.model.method == "simsiam"


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    p = write(tmp_path, "train:\n  epohcs: 3\n")
    with pytest.raises(FpsiamError) as e:
        load_config(PretrainConfig, p)
    msg = str(e.value)
    assert str(p) in msg and "train.epohcs" in msg and "train.epochs" in msg


def test_wrong_type_names_expected_type(tmp_path):
    p = write(tmp_path, "train:\n  epochs: many\n")
    with pytest.raises(FpsiamError, match=r"train\.epochs.*expected int.*'many'"):
        load_config(PretrainConfig, p)
    p = write(tmp_path, "model:\n  method: byol2\n")
    with pytest.raises(
        FpsiamError, match=r"key 'model\.method': unknown method 'byol2'; choose one of: fpsiam, simsiam"
    ):
        load_config(PretrainConfig, p)
    p = write(tmp_path, "data:\n  mean: [0.5, x, 0.5]\n")
    with pytest.raises(FpsiamError, match=r"data\.mean\[1\]"):
        load_config(PretrainConfig, p)


def test_names_come_from_the_tables(tmp_path, monkeypatch):
    """Method, detector and backbone names are checked against the tables themselves, not a list in config.py:
    an unknown name is one line naming the key, and a name added to a table is accepted with no other change."""
    from fpsiam.backbones import BACKBONES
    from fpsiam.detect import models as M

    for cls, text, match in (
        (DetectConfig, "model:\n  kind: yolo\n", r"key 'model\.kind': unknown detector 'yolo'; choose one of: faster"),
        (DetectConfig, "model:\n  arch: vit\n", r"key 'model\.arch': unknown backbone 'vit'; choose one of: resnet18"),
        (PretrainConfig, "model:\n  backbone: vit\n", r"key 'model\.backbone': unknown backbone 'vit'"),
        (ExperimentConfig, "detectors: [retinanet, ssd]\n", r"key 'detectors\[1\]': unknown detector 'ssd'"),
    ):  # fmt: skip
        with pytest.raises(FpsiamError, match=match) as e:
            load_config(cls, write(tmp_path, text))
        assert "\n" not in str(e.value)
    monkeypatch.setitem(M.DETECTORS, "ssd", M.DETECTORS["retinanet"])
    monkeypatch.setitem(BACKBONES, "vit", BACKBONES["resnet18"])
    assert load_config(ExperimentConfig, write(tmp_path, "detectors: [retinanet, ssd]\n")).detectors[1] == "ssd"
    assert load_config(DetectConfig, write(tmp_path, "model:\n  arch: vit\n")).model.arch == "vit"


def test_bool_is_not_an_int_and_int_is_a_float(tmp_path):
    p = write(tmp_path, "train:\n  epochs: true\n")
    with pytest.raises(FpsiamError):
        load_config(PretrainConfig, p)
    cfg = load_config(PretrainConfig, write(tmp_path, "optim:\n  lr: 1\n"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_set_overrides_and_validates(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(PretrainConfig, p, ["train.epochs=7", "data.mean=[0.1,0.2,0.3]", "model.weights_file=null"])
    assert cfg.train.epochs == 7 and cfg.data.mean == [0.1, 0.2, 0.3] and cfg.model.weights_file is None
    with pytest.raises(FpsiamError, match="--set"):
        load_config(PretrainConfig, p, ["train.epochs"])
    with pytest.raises(FpsiamError, match="train.nope"):
        load_config(PretrainConfig, p, ["train.nope=1"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(FpsiamError, match="not found"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")
    with pytest.raises(FpsiamError, match=r"c\.yaml:\d+: not valid YAML"):
        load_config(PretrainConfig, write(tmp_path, "train: [1, 2\n  x: {"))
    with pytest.raises(FpsiamError, match="mapping"):
        load_config(PretrainConfig, write(tmp_path, "- 1\n- 2\n"))


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(PretrainConfig, None, ["train.epochs=5", "data.source=/x"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(PretrainConfig, tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["epochs"] == 5


@pytest.mark.parametrize("preset", sorted(p.name for p in (CONFIGS / "experiments").glob("*.yaml")))
def test_every_experiment_config_loads(preset):
    cfg = load_config(ExperimentConfig, CONFIGS / "experiments" / preset)
    assert cfg.train and cfg.test and len(cfg.seeds) >= 3
    assert cfg.pretrain.model.backbone == cfg.detect.model.arch


@pytest.mark.parametrize(
    ("cls", "item"),
    [(DetectConfig, "train.eval_every=0"), (DetectConfig, "train.epochs=0"), (PretrainConfig, "train.log_every=0"),
     (PretrainConfig, "train.batch_size=-2"), (DetectConfig, "model.min_size=8"), (ExperimentConfig, "average_last=0")],
)  # fmt: skip
def test_counts_below_their_minimum_are_refused_by_key(tmp_path, cls, item):
    key = item.split("=")[0]
    with pytest.raises(FpsiamError, match=f"key '{key}': must be >= "):
        load_config(cls, write(tmp_path, "{}\n"), [item])
    lowest = {"train.eval_every=0": "train.eval_every=1", "model.min_size=8": "model.min_size=32"}.get(item)
    if lowest:
        assert load_config(cls, None, [lowest]) is not None  # the minimum itself is allowed


def test_exponent_floats_are_floats_in_yaml_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  weight_decay: 5e-4\n  lr: 1E-2\n", encoding="utf-8")
    cfg = load_config(PretrainConfig, path, ["optim.momentum=9e-1"])
    assert (cfg.optim.weight_decay, cfg.optim.lr, cfg.optim.momentum) == (5e-4, 1e-2, 0.9)


def test_probe_keys_are_checked(tmp_path):
    with pytest.raises(FpsiamError, match="probe.holdout"):
        load_config(PretrainConfig, None, ["probe.holdout=0"])
    with pytest.raises(FpsiamError, match="probe.every"):
        load_config(PretrainConfig, None, ["probe.every=0"])
    with pytest.raises(FpsiamError, match="optim.backbone_lr_mult"):
        load_config(DetectConfig, None, ["optim.backbone_lr_mult=0"])


@pytest.mark.parametrize(
    ("item", "expect"),
    [("train.epoch=2", "--set 'train.epoch=2': unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
     ("optim.lr=-1", "--set 'optim.lr=-1': key 'optim.lr': must be > 0"),
     ("train=3", "--set 'train=3': 'train' is a section"),
     ("train.epochs.x=3", "--set 'train.epochs.x=3': 'train.epochs' is a value, not a section")],
)  # fmt: skip
def test_set_errors_name_set_and_the_key_not_the_file(tmp_path, item, expect):
    with pytest.raises(FpsiamError) as e:
        load_config(PretrainConfig, write(tmp_path, "train:\n  epochs: 3\n"), [item])
    assert str(e.value).startswith(expect) and "c.yaml" not in str(e.value)
