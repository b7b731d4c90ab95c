"""Backbone weights: reading files, key layouts, loud loading, ImageNet init offline, extraction + export."""

from __future__ import annotations

import argparse
import pickle

import pytest
import safetensors.torch
import torch
import torchvision

from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import build_resnet
from fpsiam.ssl.methods import FPSiam
from fpsiam.weights import (
    BACKBONE_PREFIX,
    PRETRAIN_FORMAT,
    extract,
    extract_backbone,
    from_detectron2_key,
    infer_arch,
    init_backbone,
    load_backbone,
    load_state_file,
    save_backbone,
    to_detectron2_key,
    to_torchvision_keys,
)


@pytest.fixture(scope="module")
def r18_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in torchvision.models.resnet18().state_dict().items()}


def _equal_backbones(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))


# ---------------------------------------------------------------------------------------------- reading


def test_load_state_file_formats_and_unwrapping(tmp_path, r18_sd):
    safetensors.torch.save_file(r18_sd, tmp_path / "a.safetensors")
    assert set(load_state_file(tmp_path / "a.safetensors")) == set(r18_sd)
    torch.save({"state_dict": r18_sd, "meta": {"epoch": 3}}, tmp_path / "b.pth")
    assert set(load_state_file(tmp_path / "b.pth")) == set(r18_sd)
    torch.save({"format": "x", "model": {"state_dict": r18_sd}}, tmp_path / "c.pt")
    assert set(load_state_file(tmp_path / "c.pt")) == set(r18_sd)


def test_load_state_file_errors(tmp_path):
    with pytest.raises(FpsiamError, match="missing.pth: file not found"):
        load_state_file(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(FpsiamError, match="bad.pth: not a readable torch file"):
        load_state_file(tmp_path / "bad.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FpsiamError, match="bad.safetensors: not a readable safetensors file"):
        load_state_file(tmp_path / "bad.safetensors")
    torch.save({"epoch": 3, "name": "x"}, tmp_path / "nostate.pth")
    with pytest.raises(FpsiamError, match="no state_dict of tensors"):
        load_state_file(tmp_path / "nostate.pth")
    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(FpsiamError, match="never unpickles"):
        load_state_file(tmp_path / "w.pkl")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(FpsiamError, match="unknown weights file type"):
        load_state_file(tmp_path / "w.npz")


def test_pickled_objects_fail_with_weights_only(tmp_path, r18_sd):
    torch.save({"state_dict": r18_sd, "meta": argparse.Namespace(epoch=1)}, tmp_path / "obj.pth")
    with pytest.raises(FpsiamError, match=r"obj.pth: contains pickled Python objects \(argparse.Namespace\)"):
        load_state_file(tmp_path / "obj.pth")


# ---------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    "prefix",
    ["module.", "backbone.", "module.encoder.", "encoder_q.", "backbone.body.", "_orig_mod.model.", BACKBONE_PREFIX],
)
def test_to_torchvision_keys_prefixes(prefix, r18_sd):
    wrapped = {prefix + k: v for k, v in r18_sd.items()}
    wrapped["neck.fc0.weight" if "backbone" in prefix else prefix + "fc.0.weight"] = torch.zeros(1)
    got = to_torchvision_keys(wrapped)
    assert set(got) == {k for k in r18_sd if not k.startswith("fc.")}


def test_detectron2_key_names_and_round_trip(r18_sd):
    d2 = {to_detectron2_key(k): v for k, v in r18_sd.items() if not k.startswith("fc.")}
    assert len(d2) == len(r18_sd) - 2
    for name in (
        "res2.0.conv1.weight",
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "res3.0.shortcut.weight",
        "res3.0.shortcut.norm.running_var",
        "res5.1.conv2.norm.bias",
    ):
        assert name in d2
    assert not any(k.startswith(("layer", "bn", "conv1.")) for k in d2)
    assert {from_detectron2_key(k) for k in d2} == {k for k in r18_sd if not k.startswith("fc.")}
    assert set(to_torchvision_keys({"backbone.bottom_up." + k: v for k, v in d2.items()})) == set(
        k for k in r18_sd if not k.startswith("fc.")
    )


def test_infer_arch(r18_sd):
    assert infer_arch(r18_sd) == "resnet18"
    assert infer_arch(torchvision.models.resnet34().state_dict()) == "resnet34"
    assert infer_arch(torchvision.models.resnet50().state_dict()) == "resnet50"
    with pytest.raises(FpsiamError, match="not a ResNet-18/34/50"):
        infer_arch({"conv.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------- loading


def test_load_backbone_round_trip(tmp_path, r18_sd):
    torch.save(r18_sd, tmp_path / "r18.pth")
    model = build_resnet("resnet18")
    report = load_backbone(model, tmp_path / "r18.pth")
    assert report.loaded == report.total == len(r18_sd) - 2
    assert str(report) == f"loaded {report.total}/{report.total} tensors from {tmp_path / 'r18.pth'}"
    assert _equal_backbones(model, r18_sd)


def test_load_backbone_wrong_architecture_fails_naming_keys(tmp_path):
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    model = build_resnet("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FpsiamError) as err:
        load_backbone(model, tmp_path / "r50.pth")
    msg = str(err.value)
    assert "r50.pth" in msg and "unexpected keys" in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatches" in msg and "layer1.0.conv1.weight" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_load_backbone_missing_keys_fail(tmp_path, r18_sd):
    partial = {k: v for k, v in r18_sd.items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(FpsiamError, match=r"missing keys \(layer4\.0\.conv1\.weight"):
        load_backbone(build_resnet("resnet18"), tmp_path / "partial.pth")
    report = load_backbone(build_resnet("resnet18"), tmp_path / "partial.pth", strict=False)
    assert report.loaded < report.total and report.missing[0].startswith("layer4.")


def test_load_backbone_matching_nothing_fails_even_non_strict(tmp_path):
    torch.save({"head.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(FpsiamError, match="other.pth: none of its 2 tensors match"):
        load_backbone(build_resnet("resnet18"), tmp_path / "other.pth", strict=False)


def test_init_backbone_random_imagenet_offline_and_path(tmp_path, r18_sd):
    model = build_resnet("resnet18")
    assert "random" in init_backbone(model, "resnet18", "random", None)
    torch.save(r18_sd, tmp_path / "resnet18-f37072fd.pth")  # torchvision's file layout, fc included
    msg = init_backbone(model, "resnet18", "imagenet", str(tmp_path / "resnet18-f37072fd.pth"))
    assert "ImageNet" in msg and "loaded 120/120" in msg
    assert _equal_backbones(model, r18_sd)
    other = build_resnet("resnet18")
    assert "init from file" in init_backbone(other, "resnet18", str(tmp_path / "resnet18-f37072fd.pth"))
    assert _equal_backbones(other, r18_sd)
    with pytest.raises(FpsiamError, match="backbone init 'nowhere.pth': not 'random'"):
        init_backbone(other, "resnet18", "nowhere.pth")


def test_init_backbone_imagenet_download_failure_explains(monkeypatch):
    def no_internet(self, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_internet)
    with pytest.raises(FpsiamError, match=r"--set model.weights_file=PATH/resnet18-f37072fd.pth"):
        init_backbone(build_resnet("resnet18"), "resnet18", "imagenet", None)


# ---------------------------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def fpsiam_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = FPSiam("resnet18", pyramid_channels=16, proj_dim=32, pred_dim=8)
    path = tmp_path_factory.mktemp("run") / "ckpt_00000010.pt"
    torch.save(
        {
            "format": PRETRAIN_FORMAT,
            "method": "fpsiam",
            "arch": "resnet18",
            "model": model.state_dict(),
            "epoch": 1,
            "config": {"model": {"backbone": "resnet18"}},
        },
        path,
    )
    return path, model


def test_extract_round_trip_into_torchvision_strict(tmp_path, fpsiam_ckpt):
    path, model = fpsiam_ckpt
    sd, arch = extract_backbone(path)
    assert arch == "resnet18"
    written = extract(path, tmp_path / "backbone.safetensors", pth=True)
    assert [p.name for p in written] == ["backbone.safetensors", "backbone.pth"]
    for p in written:
        tv = torchvision.models.resnet18()
        loaded = load_state_file(p)
        result = tv.load_state_dict(loaded, strict=False)
        assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
        assert _equal_backbones(tv, model.backbone.state_dict())


def test_extract_from_run_folder(tmp_path, fpsiam_ckpt):
    path, _ = fpsiam_ckpt
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / path.name).write_bytes(path.read_bytes())
    assert extract_backbone(run)[1] == "resnet18"
    with pytest.raises(FpsiamError, match="without checkpoints"):
        extract_backbone(tmp_path)


def test_extract_rejects_wrong_format(tmp_path, r18_sd):
    torch.save({"state_dict": {"backbone." + k: v for k, v in r18_sd.items()}}, tmp_path / "mm.pth")
    with pytest.raises(FpsiamError, match=r"mm.pth: not an fpsiam pretraining checkpoint.*--from mmselfsup"):
        extract_backbone(tmp_path / "mm.pth")
    torch.save(r18_sd, tmp_path / "plain.pth")
    with pytest.raises(FpsiamError, match="plain.pth: not an MMSelfSup checkpoint"):
        extract_backbone(tmp_path / "plain.pth", source="mmselfsup")


def test_extract_mmselfsup_checkpoint(tmp_path, r18_sd):
    state = {"backbone." + k: v for k, v in r18_sd.items() if not k.startswith("fc.")}
    state |= {"encoder.0." + k: v for k, v in r18_sd.items()}  # MMSelfSup's FPSiam also holds encoder.0 = backbone
    state |= {"neck.FPN.lateral_convs.0.conv.weight": torch.zeros(2), "head.predictor.fc0.weight": torch.zeros(2)}
    torch.save({"meta": {"epoch": 200, "config": "model = dict(...)"}, "state_dict": state}, tmp_path / "epoch_200.pth")
    sd, arch = extract_backbone(tmp_path / "epoch_200.pth", source="mmselfsup")
    assert arch == "resnet18" and set(sd) == {k for k in r18_sd if not k.startswith("fc.")}
    written = extract(tmp_path / "epoch_200.pth", tmp_path / "out.safetensors", source="mmselfsup")
    tv = build_resnet("resnet18")
    load_backbone(tv, written[0])
    assert _equal_backbones(tv, r18_sd)


def test_extract_mmselfsup_with_pickled_meta_explains(tmp_path, r18_sd):
    torch.save(
        {"meta": argparse.Namespace(epoch=1), "state_dict": {"backbone." + k: v for k, v in r18_sd.items()}},
        tmp_path / "epoch_1.pth",
    )
    with pytest.raises(FpsiamError, match="pickled Python objects.*weights_only=False"):
        extract_backbone(tmp_path / "epoch_1.pth", source="mmselfsup")


def test_save_mmdet_layout(tmp_path, r18_sd):
    sd = {k: v for k, v in r18_sd.items() if not k.startswith("fc.")}
    (path,) = save_backbone(sd, tmp_path / "bb.safetensors", to="mmdet")
    assert path.name == "bb.pth"
    obj = torch.load(path, weights_only=True)
    assert set(obj["state_dict"]) == set(sd)  # MMSelfSup's extract_backbone_weights layout
    model = build_resnet("resnet18")
    assert load_backbone(model, path).loaded == len(sd)
    assert _equal_backbones(model, r18_sd)


def test_save_detectron2_layout(tmp_path, r18_sd):
    sd = {k: v for k, v in r18_sd.items() if not k.startswith("fc.")}
    (path,) = save_backbone(sd, tmp_path / "bb", to="detectron2")
    assert path.name == "bb.pkl"
    with open(path, "rb") as f:
        obj = pickle.load(f)  # our own file, written by the line above
    assert obj["__author__"] == "fpsiam" and obj["matching_heuristics"] is True
    model = obj["model"]
    assert len(model) == sum(not k.endswith("num_batches_tracked") for k in sd)
    assert {
        "res2.0.conv1.weight",
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "res3.0.shortcut.weight",
        "res3.0.shortcut.norm.running_mean",
    } <= set(model)
    assert (model["res2.0.conv1.weight"] == sd["layer1.0.conv1.weight"].numpy()).all()


def test_save_backbone_rejects_unknown_layout(tmp_path, r18_sd):
    with pytest.raises(FpsiamError, match="unknown output layout"):
        save_backbone(r18_sd, tmp_path / "x", to="onnx")
    assert list(tmp_path.iterdir()) == []


def test_backbones_carry_a_model_card_and_extract_prints_detectron2_lines(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from fpsiam.cli import main
    from fpsiam.config import PretrainConfig, load_config
    from fpsiam.ssl.pretrain import pretrain
    from fpsiam.weights import model_card

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((40, 48, 3)) * 255).astype(np.uint8)).save(frames / f"{i}.jpg")
    cfg = load_config(PretrainConfig, None, [
        f"data.source={frames}", "model.backbone=resnet18", "model.init=random", "model.proj_dim=16",
        "model.pred_dim=8", "model.pyramid_channels=8", "data.size=32", "data.workers=0", "train.batch_size=2",
        "train.epochs=1", "train.max_steps_per_epoch=1", "train.progress=false", "train.amp=none",
        "data.mean=[0.5, 0.4, 0.3]",
    ])  # fmt: skip
    result = pretrain(cfg, tmp_path / "run")
    card = model_card(result.backbone)
    assert card["method"] == "fpsiam" and card["arch"] == "resnet18" and card["mean"] == [0.5, 0.4, 0.3]
    assert card["view_size"] == 32 and card["epochs"] == 1 and card["frames"] == 4 and card["fpsiam"]
    assert main(["extract", str(tmp_path / "run"), "-o", str(tmp_path / "r18.pkl"), "--to", "detectron2"]) == 0
    out = capsys.readouterr().out
    assert "MODEL.RESNETS.STRIDE_IN_1X1: False" in out and "INPUT.FORMAT: RGB" in out
    assert "MODEL.PIXEL_MEAN: [127.5, 102.0, 76.5]" in out
    assert main(["extract", str(tmp_path / "run"), "-o", str(tmp_path / "r18.safetensors")]) == 0
    assert model_card(tmp_path / "r18.safetensors")["mean"] == [0.5, 0.4, 0.3]
