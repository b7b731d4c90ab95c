"""The frozen-backbone probe (``fpsiam probe`` and the probe during pretraining) on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fpsiam.cli import main
from fpsiam.config import ProbeConfig
from fpsiam.data.cocojson import load_coco, save_coco
from fpsiam.data.synthetic import SynthOptions, generate
from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import build_resnet
from fpsiam.ssl.probe import (
    Probe,
    features,
    folds,
    knn_probe,
    linear_probe,
    markdown_table,
    normalise,
    read_examples,
    run_probe,
)
from fpsiam.weights import save_backbone


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthOptions(videos=4, frames=5, width=96, height=80, mp4=False, seed=3))
    return out / "annotations.json"


def test_examples_polyp_and_mucosa_crops_per_seed(synth):
    ex = read_examples(synth, None, 32, [0, 1], "crops")
    x0, y0, g0 = ex.for_seed(0)
    x1, _, _ = ex.for_seed(1)
    assert x0.dtype == torch.uint8 and x0.shape[1:] == (3, 32, 32)
    assert y0.tolist()[:2] == [1, 0] and y0.sum() * 2 == len(y0)  # one mucosa crop per polyp crop
    assert len(g0) == len(y0)
    assert not torch.equal(x0[1], x1[1])  # seeds redraw the mucosa patches
    assert torch.equal(x0[0], x1[0])  # the polyp crop is the same


def test_folds_keep_groups_whole_cover_everything_once_and_vary_with_seed():
    groups = [f"v{i // 4}" for i in range(40)]
    splits = folds(groups, 4, seed=0)
    held = [i for _, te in splits for i in te]
    assert sorted(held) == list(range(40))  # every example scored exactly once
    for tr, te in splits:
        assert sorted(tr + te) == list(range(40)) and 8 <= len(te) <= 12
        assert not {groups[i] for i in tr} & {groups[i] for i in te}
    assert [te for _, te in folds(groups, 4, seed=1)] != [te for _, te in splits]


def test_linear_and_knn_separate_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 16, generator=g) + 3 * (2 * y[:, None].float() - 1)  # opposite directions: cosine too
    assert linear_probe(x[:100], y[:100], x[100:], y[100:]) > 0.95
    assert knn_probe(x[:100], y[:100], x[100:], y[100:]) > 0.95
    noise = torch.randn(200, 16, generator=g)
    assert linear_probe(noise[:100], y[:100], noise[100:], y[100:]) < 0.75


def test_probe_bn_data_leaves_the_callers_statistics(synth):
    probe = Probe(ProbeConfig(ann=str(synth), size=32, seeds=[0, 1]))
    net = build_resnet("resnet18")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = probe(net)
    assert [r["seed"] for r in out["seeds"]] == [0, 1] and 0 <= out["linear"] <= 1 and out["linear_std"] >= 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # a copy got the precise BN
    assert net.training  # mode restored


def test_features_pool_the_chosen_stage():
    """Each level pools its own ResNet stage (C2..C5: 64..512 channels for R18); C5 is the backbone's own output."""
    net = build_resnet("resnet18").eval()
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    dims = [features(net, x, [0.5] * 3, [0.25] * 3, level).shape for level in ("c2", "c3", "c4", "c5")]
    assert dims == [(3, 64), (3, 128), (3, 256), (3, 512)]
    with torch.no_grad():
        whole = net(normalise(x, [0.5] * 3, [0.25] * 3, torch.device("cpu"))).flatten(1)
    torch.testing.assert_close(features(net, x, [0.5] * 3, [0.25] * 3), whole)


def test_run_probe_names_files_and_checks_arch(synth, tmp_path):
    r18 = save_backbone(build_resnet("resnet18").state_dict(), tmp_path / "r18.safetensors")[0]
    rows = run_probe(ProbeConfig(ann=str(synth), size=32, seeds=[0]), ["random", f"mine={r18}"], arch="resnet18")
    assert [r["backbone"] for r in rows] == ["random", "mine"]
    assert "linear - random" in markdown_table(rows)
    with pytest.raises(FpsiamError, match="a resnet18 backbone, but --arch is resnet34"):
        run_probe(ProbeConfig(ann=str(synth), size=32), [str(r18)], arch="resnet34")


def test_cli_probe_writes_json(synth, tmp_path, capsys):
    out = tmp_path / "probe.json"
    rc = main(["probe", "random", "--ann", str(synth), "--arch", "resnet18", "--size", "32", "--seeds", "0", "1",
               "--level", "c3", "-o", str(out)])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["rows"][0]["backbone"] == "random" and len(data["rows"][0]["seeds"]) == 2
    assert data["probe"]["level"] == "c3"
    assert "| random |" in capsys.readouterr().out


def _bad(argv, capsys, *expect):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for e in expect:
        assert e in err, err


def test_cli_probe_bad_input(synth, tmp_path, capsys):
    no_boxes = tmp_path / "noboxes.json"
    data = load_coco(synth)
    data["annotations"] = []
    data["info"] = {"images_root": str(synth.parent.resolve())}  # the same images, read from their own folder
    save_coco(no_boxes, data)
    _bad(["probe", "random", "--ann", str(no_boxes)], capsys, str(no_boxes), "no boxes")
    r50 = save_backbone(build_resnet("resnet50").state_dict(), tmp_path / "r50.safetensors")[0]
    _bad(["probe", str(r50), "--ann", str(synth), "--arch", "resnet18"], capsys, str(r50), "--arch")
    _bad(["probe", "missing.safetensors", "--ann", str(synth)], capsys, "missing.safetensors")
    _bad(["probe", "random", "--ann", str(synth), "--holdout", "1.5"], capsys, "--holdout")
    _bad(["probe", "random", "--ann", str(synth), "-o", str(tmp_path / "nope" / "p.json")], capsys, "nope")
    assert not (tmp_path / "nope").exists()


def test_bad_level_is_one_clear_error(tmp_path, capsys):
    """A stage that is not C2..C5 stops at the config key or the flag, before any backbone is built."""
    from fpsiam.config import PretrainConfig, load_config

    p = tmp_path / "bad.yaml"
    p.write_text("probe:\n  level: c9\n")
    with pytest.raises(FpsiamError, match=r"probe\.level.*'c9'") as e:
        load_config(PretrainConfig, p)
    assert str(p) in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["probe", "random", "--ann", "x.json", "--level", "c9"])
    assert e.value.code == 2 and "invalid choice: 'c9'" in capsys.readouterr().err
