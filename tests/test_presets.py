"""The YAML presets inside the package: by name or by path, ``fpsiam config list/show``, and the optional extras."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from fpsiam import presets
from fpsiam.cli import main
from fpsiam.config import DetectConfig, ExperimentConfig, PretrainConfig, load_config, save_config
from fpsiam.errors import FpsiamError

ROOT = Path(__file__).resolve().parents[1]
NAMES = presets.preset_names()


def run(capsys, *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def test_the_presets_are_in_the_package_and_the_repository_configs_folder_is_them():
    packaged = Path(str(presets.root()))
    assert packaged.resolve() == (ROOT / "src" / "fpsiam" / "configs").resolve()
    assert (ROOT / "configs").resolve() == packaged.resolve(), "configs/ must be the link to src/fpsiam/configs"
    configs = ROOT / "configs"
    assert sorted(p.relative_to(configs).with_suffix("").as_posix() for p in configs.rglob("*.yaml")) == NAMES
    assert {"fpsiam_r18_cpu", "retinanet_r18_fpn_cpu", "experiments/kvasir_cpu"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_loads_with_its_config_class(name):
    kind = presets.preset_kind(name)
    assert kind in presets.KINDS, f"{name}: its keys fit no single kind of config"
    cfg = load_config(presets.KINDS[kind], name)
    assert isinstance(cfg, presets.KINDS[kind])
    assert name in presets.preset_names(kind)


def test_kinds_are_read_from_the_keys():
    assert presets.preset_kind("fpsiam_r18_cpu") == "pretrain"
    assert presets.preset_kind("faster_rcnn_r18_fpn_cpu") == "detect"
    assert presets.preset_kind("experiments/kvasir_cpu") == "experiment"
    assert presets.kind_of({"model": {"kind": "retinanet"}}) == "detect"
    assert presets.kind_of({"methods": ["fpsiam"], "pretrain": {"train": {"epochs": 1}}}) == "experiment"
    assert presets.kind_of({"train": {"epochs": 2}}) is None  # pretraining and detection both have it
    assert presets.kind_of({"nope": 1}) is None


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("fpsiam_r18_cpu", "fpsiam_r18_cpu"),
        ("fpsiam_r18_cpu.yaml", "fpsiam_r18_cpu"),
        ("configs/fpsiam_r18_cpu.yaml", "fpsiam_r18_cpu"),  # the README's path, from any folder
        ("experiments/kvasir_cpu", "experiments/kvasir_cpu"),
        ("experiments/kvasir_cpu.yaml", "experiments/kvasir_cpu"),
        ("kvasir_cpu", "experiments/kvasir_cpu"),
        ("configs/experiments/kvasir_cpu.yaml", "experiments/kvasir_cpu"),
    ],
)
def test_a_name_resolves_like_its_path(text, name, tmp_path, monkeypatch):
    path = ROOT / "configs" / f"{name}.yaml"
    cls = presets.KINDS[presets.preset_kind(name)]
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name means the packaged preset
    assert presets.resolve(text).resolve() == path.resolve()
    overrides = ["seeds=[3]"] if cls is ExperimentConfig else ["train.seed=3"]
    assert load_config(cls, text, overrides) == load_config(cls, path, overrides)


def test_a_file_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("fpsiam_r18_cpu").write_text("train:\n  epochs: 7\n", encoding="utf-8")
    assert load_config(PretrainConfig, "fpsiam_r18_cpu").train.epochs == 7
    assert load_config(PretrainConfig, "fpsiam_r18_cpu.yaml").train.epochs == 20  # the preset


def test_an_unknown_name_is_one_line_with_the_closest_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FpsiamError, match="did you mean fpsiam_r18_cpu") as e:
        load_config(PretrainConfig, "fpsiam_r81_cpu")
    assert "fpsiam config list" in str(e.value) and "\n" not in str(e.value)

    code, out, err = run(capsys, "pretrain", "fpsiam_r18cpu")
    assert code == 2 and out == "" and len(err) == 1
    assert "fpsiam_r18cpu" in err[0] and "did you mean fpsiam_r18_cpu" in err[0] and "fpsiam config list" in err[0]

    code, _, err = run(capsys, "experiment", "kvasir")
    assert code == 2 and len(err) == 1 and "experiments/kvasir_cpu" in err[0]

    code, _, err = run(capsys, "pretrain", "zzzz_nothing_like_it")
    assert code == 2 and len(err) == 1 and "not found" in err[0] and "fpsiam config list" in err[0]


def test_a_preset_of_another_kind_names_the_command_that_runs_it(capsys):
    with pytest.raises(FpsiamError, match="fpsiam detect train retinanet_r18_fpn_cpu"):
        load_config(PretrainConfig, "retinanet_r18_fpn_cpu")
    code, _, err = run(capsys, "detect", "train", "fpsiam_r18_cpu")
    assert code == 2 and len(err) == 1 and "fpsiam pretrain fpsiam_r18_cpu" in err[0]


def test_config_list_groups_every_preset_by_kind(capsys):
    code, out, err = run(capsys, "config", "list")
    assert code == 0 and not err
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.endswith("NAME):")]
    assert [lines[i].split(" ", 1)[0] for i in heads] == ["pretraining", "detection", "experiments"]
    listed = {line.split()[0]: lines[max(i for i in heads if i < n)].split(" ", 1)[0]
              for n, line in enumerate(lines) if line.startswith("  ")}  # fmt: skip
    assert set(listed) == set(NAMES)
    assert listed["fpsiam_r18_cpu"] == "pretraining"
    assert listed["retinanet_r18_fpn_cpu"] == "detection"
    assert listed["experiments/kvasir_cpu"] == "experiments"
    from fpsiam.backbones import BACKBONES
    from fpsiam.data.convert import FORMATS
    from fpsiam.detect.models import DETECTORS
    from fpsiam.ssl.methods import METHODS

    tables = {line.split(" (")[0]: line.split(": ")[-1].split(", ") for line in lines if line.startswith(
        ("methods", "detectors", "backbones", "data formats"))}  # fmt: skip
    assert tables == {"methods": list(METHODS), "detectors": list(DETECTORS), "backbones": list(BACKBONES),
                      "data formats": list(FORMATS)}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "cls", "overrides"),
    [
        ("fpsiam_r18_cpu", PretrainConfig, ["train.epochs=3", "data.size=64"]),
        ("retinanet_r18_fpn_cpu.yaml", DetectConfig, ["model.min_size=128"]),
        ("kvasir_cpu", ExperimentConfig, ["seeds=[0]", "detect.train.epochs=1"]),
    ],
)
def test_config_show_prints_the_merged_config_as_save_config_writes_it(name, cls, overrides, tmp_path, capsys):
    argv = ["config", "show", name]
    for item in overrides:
        argv += ["--set", item]
    code, out, err = run(capsys, *argv)
    assert code == 0 and not err
    expected = load_config(cls, name, overrides)
    shown = tmp_path / "shown.yaml"
    shown.write_text(out, encoding="utf-8")
    assert isinstance(yaml.safe_load(out), dict)
    assert load_config(cls, shown) == expected  # valid YAML that reloads to the same config
    save_config(expected, tmp_path / "saved.yaml")
    assert out == (tmp_path / "saved.yaml").read_text(encoding="utf-8")  # the YAML a run folder gets

    code, out_kind, _ = run(capsys, *argv, "--kind", _kind(cls))
    assert code == 0 and out_kind == out


def _kind(cls: type) -> str:
    return next(kind for kind, c in presets.KINDS.items() if c is cls)


def test_config_show_errors_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "config", "show", "fpsiam_r18_cpu", "--set", "train.epochs=0")
    assert code == 2 and len(err) == 1 and "train.epochs" in err[0]
    code, _, err = run(capsys, "config", "show", "fpsiam_r18_cpu", "--kind", "detect")
    assert code == 2 and len(err) == 1 and "fpsiam pretrain fpsiam_r18_cpu" in err[0]
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  epochs: 2\n", encoding="utf-8")
    code, _, err = run(capsys, "config", "show", str(both))
    assert code == 2 and len(err) == 1 and "--kind" in err[0]
    code, out, _ = run(capsys, "config", "show", str(both), "--kind", "detect")
    assert code == 0 and yaml.safe_load(out)["train"]["epochs"] == 2
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  kind: retinanet\n  acrh: resnet18\n", encoding="utf-8")
    code, _, err = run(capsys, "config", "show", str(typo))
    assert code == 2 and len(err) == 1 and "did you mean 'model.arch'" in err[0]


def test_gradcam_without_grad_cam_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if grad-cam were not installed
    monkeypatch.delitem(sys.modules, "fpsiam.explain.gradcam", raising=False)
    code, out, err = run(capsys, "gradcam", "random", str(tmp_path / "frame.png"), "-o", str(tmp_path / "cam"))
    assert code == 2 and out == "" and len(err) == 1
    assert 'pip install "fpsiam[explain]"' in err[0] and "grad-cam" in err[0]
    assert not (tmp_path / "cam").exists()


def test_pyproject_ships_the_presets_and_keeps_grad_cam_optional():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    core = " ".join(project["project"]["dependencies"])
    extras = project["project"]["optional-dependencies"]
    assert "grad-cam" not in core
    for extra in ("explain", "dev"):
        assert any(d.startswith("grad-cam") for d in extras[extra]), extra
    assert {"explain", "onnx", "tensorboard", "mlflow", "dev"} <= set(extras)
    globs = project["tool"]["setuptools"]["package-data"]["fpsiam"]
    shipped = {p for g in globs for p in (ROOT / "src" / "fpsiam").glob(g)}
    assert {p.resolve() for p in (ROOT / "configs").rglob("*.yaml")} <= {p.resolve() for p in shipped}
