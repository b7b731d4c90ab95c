"""Faster R-CNN / RetinaNet built with the paper's recipe (DESIGN §2), on ResNet-18 and tiny images."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d, roi_align

from fpsiam.detect.models import (
    IMAGE_MEAN,
    IMAGE_STD,
    AlignedMultiScaleRoIAlign,
    FixedStrideAnchorGenerator,
    build_detector,
    convert_sync_bn,
    describe,
    load_detector,
    save_detector,
)
from fpsiam.errors import FpsiamError

SIZE = 64


def tiny(kind, **kw):
    torch.manual_seed(0)
    return build_detector(kind, "resnet18", min_size=SIZE, max_size=SIZE, **kw)


def fast(model):
    """Shrink proposal/RoI counts so a CPU step takes a fraction of a second (recipe checked elsewhere)."""
    if isinstance(model, FasterRCNN):
        model.rpn._pre_nms_top_n = {"training": 200, "testing": 100}
        model.rpn._post_nms_top_n = {"training": 64, "testing": 32}
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 32
    return model


def images_and_targets():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, SIZE, SIZE, generator=g), torch.rand(3, 48, SIZE, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 10.0, 62.0, 42.0], [5.0, 5.0, 25.0, 30.0]]), "labels": torch.tensor([1, 1])},
    ]
    return images, targets


@pytest.fixture(scope="module")
def frcnn():
    return tiny("faster_rcnn")


@pytest.fixture(scope="module")
def retina():
    return tiny("retinanet")


# ---------------------------------------------------------------------------------------- the recipe


def test_faster_rcnn_recipe(frcnn):
    assert isinstance(frcnn, FasterRCNN)
    d = describe(frcnn)
    assert d["anchors"]["sizes"] == [[32], [64], [128], [256], [512]]
    assert d["anchors"]["aspect_ratios"] == [[0.5, 1.0, 2.0]] * 5
    assert d["anchors"]["per_location"] == [3] * 5
    assert d["anchors"]["strides"] == [4, 8, 16, 32, 64]
    assert d["fpn"]["levels"] == ["0", "1", "2", "3", "pool"]
    assert d["fpn"]["returned_layers"] == ["layer1", "layer2", "layer3", "layer4"]
    assert d["rpn"]["pre_nms_top_n"] == {"training": 2000, "testing": 1000}
    assert d["rpn"]["post_nms_top_n"] == {"training": 1000, "testing": 1000}
    assert (d["rpn"]["nms_thresh"], d["rpn"]["fg_iou_thresh"], d["rpn"]["bg_iou_thresh"]) == (0.7, 0.7, 0.3)
    assert d["roi_heads"]["output_size"] == [7, 7]
    assert (d["roi_heads"]["sampling_ratio"], d["roi_heads"]["aligned"]) == (0, True)  # mmcv RoIAlign
    assert d["roi_heads"]["featmap_names"] == ["0", "1", "2", "3"]
    assert d["roi_heads"]["representation_size"] == 1024
    assert d["test"] == {"score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 100}
    assert frcnn.roi_heads.box_predictor.cls_score.out_features == 2  # background + polyp
    # the FPN really yields 5 maps at strides 4..64 (P2-P6)
    with torch.no_grad():
        feats = frcnn.backbone.eval()(torch.zeros(1, 3, 128, 128))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in feats.values()] == [32, 16, 8, 4, 2]
    assert all(f.shape[1] == 256 for f in feats.values())
    json.dumps(d)  # JSON-ready for run logs


def test_retinanet_recipe(retina):
    assert isinstance(retina, RetinaNet)
    d = describe(retina)
    sizes = d["anchors"]["sizes"]
    assert len(sizes) == 5
    for base, level in zip((32, 64, 128, 256, 512), sizes, strict=True):
        assert level == pytest.approx([base, base * 2 ** (1 / 3), base * 2 ** (2 / 3)])
    assert d["anchors"]["aspect_ratios"] == [[0.5, 1.0, 2.0]] * 5
    assert d["anchors"]["per_location"] == [9] * 5
    assert d["anchors"]["strides"] == [8, 16, 32, 64, 128]
    assert d["fpn"]["returned_layers"] == ["layer2", "layer3", "layer4"]
    assert d["fpn"]["levels"] == ["0", "1", "2", "p6", "p7"]
    assert (d["retinanet"]["fg_iou_thresh"], d["retinanet"]["bg_iou_thresh"]) == (0.5, 0.4)
    assert retina.head.regression_head._loss_type == "l1"
    assert d["retinanet"]["regression_loss"] == "l1"
    assert d["test"] == {"score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 100}
    # P6 comes from C5 (512 channels for ResNet-18), as mmdet's add_extra_convs='on_input'
    extra = retina.backbone.fpn.extra_blocks
    assert extra.p6.in_channels == 512 and not extra.use_P5
    with torch.no_grad():
        feats = retina.backbone.eval()(torch.zeros(1, 3, 256, 256))
    assert [f.shape[-1] for f in feats.values()] == [32, 16, 8, 4, 2]  # strides 8..128 (P3-P7)


@pytest.mark.parametrize("which", ["frcnn", "retina"])
def test_transform_and_batchnorm(which, request):
    model = request.getfixturevalue(which)
    t = model.transform
    assert list(t.min_size) == [SIZE] and t.max_size == SIZE and t.size_divisible == 32
    assert t.image_mean == pytest.approx([168.81 / 255, 104.04 / 255, 73.95 / 255])
    assert t.image_std == pytest.approx([68.595 / 255, 52.785 / 255, 41.82 / 255])
    assert list(IMAGE_MEAN) == pytest.approx(t.image_mean) and list(IMAGE_STD) == pytest.approx(t.image_std)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert type(model.backbone.body.layer2[0].bn1) is nn.BatchNorm2d
    assert describe(model)["batchnorm"]["types"] == ["BatchNorm2d"]


def test_default_size_is_480():
    m = build_detector("retinanet", "resnet18")
    assert list(m.transform.min_size) == [480] and m.transform.max_size == 480


@pytest.mark.parametrize("which", ["frcnn", "retina"])
def test_stem_frozen_and_bn1_stays_eval(which, request):
    model = request.getfixturevalue(which)
    body = model.backbone.body
    assert not body.conv1.weight.requires_grad
    assert not body.bn1.weight.requires_grad and not body.bn1.bias.requires_grad
    assert all(p.requires_grad for p in body.layer1.parameters())
    assert describe(model)["frozen_parameters"] == [
        "backbone.body.conv1.weight", "backbone.body.bn1.weight", "backbone.body.bn1.bias",
    ]  # fmt: skip
    model.train()
    assert not body.bn1.training
    assert body.layer1[0].bn1.training and body.layer4[1].bn2.training
    model.eval()
    assert not body.layer1[0].bn1.training
    model.train()


def test_convert_sync_bn_is_a_noop_on_cpu(retina):
    assert convert_sync_bn(retina) is retina
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in retina.modules())


def test_bad_arguments():
    with pytest.raises(FpsiamError, match="resnet101"):
        build_detector("retinanet", "resnet101")
    with pytest.raises(FpsiamError, match="kind"):
        build_detector("yolo", "resnet18")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- anchors, RoIAlign, head init


def anchor_generator(model):
    return model.rpn.anchor_generator if isinstance(model, FasterRCNN) else model.anchor_generator


def levels_at(model, padded_hw, image_hw):
    """The model's real feature maps for a padded batch of one image, and the anchors its generator puts on them."""
    images = ImageList(torch.zeros(1, 3, *padded_hw), [image_hw])
    with torch.no_grad():
        feats = list(model.backbone.eval()(images.tensors).values())
    return images, feats, anchor_generator(model)(images, feats)[0]


@pytest.mark.parametrize("which", ["frcnn", "retina"])
@pytest.mark.parametrize(("padded_hw", "image_hw"), [((480, 480), (480, 480)), ((224, 352), (200, 328))])
def test_anchors_sit_on_fixed_strides(which, padded_hw, image_hw, request):
    """Every level's anchor centres are at (x * stride, y * stride) with the reference's fixed stride."""
    model = request.getfixturevalue(which)
    gen = anchor_generator(model)
    assert isinstance(gen, FixedStrideAnchorGenerator)
    strides = [4, 8, 16, 32, 64] if which == "frcnn" else [8, 16, 32, 64, 128]
    assert gen.strides == strides
    images, feats, anchors = levels_at(model, padded_hw, image_hw)
    per_location = gen.num_anchors_per_location()
    counts = [f.shape[-2] * f.shape[-1] * a for f, a in zip(feats, per_location, strict=True)]
    assert anchors.shape == (sum(counts), 4)
    for feat, level, stride, a in zip(feats, anchors.split(counts), strides, per_location, strict=True):
        h, w = feat.shape[-2:]
        # the grid is the feature map's: ceil(padded / stride) positions per axis
        assert (h, w) == (math.ceil(padded_hw[0] / stride), math.ceil(padded_hw[1] / stride))
        boxes = level.reshape(h, w, a, 4)
        cx = (boxes[..., 0] + boxes[..., 2]) / 2
        cy = (boxes[..., 1] + boxes[..., 3]) / 2
        xs = (torch.arange(w, dtype=torch.float32) * stride)[None, :, None].expand(h, w, a)
        ys = (torch.arange(h, dtype=torch.float32) * stride)[:, None, None].expand(h, w, a)
        assert torch.equal(cx, xs) and torch.equal(cy, ys)
        # and every position holds the same base anchors (sizes unchanged by the fix)
        assert torch.equal(boxes - boxes[:1, :1], torch.stack([xs - xs[:1, :1], ys - ys[:1, :1]] * 2, dim=-1))
    # grid_anchors ignores the strides torchvision's callers derive (fpsiam.detect.export's per-level ONNX path)
    derived = [[torch.tensor(padded_hw[0] // f.shape[-2]), torch.tensor(padded_hw[1] // f.shape[-1])] for f in feats]
    assert torch.equal(torch.cat(gen.grid_anchors([list(f.shape[-2:]) for f in feats], derived)), anchors)


@pytest.mark.parametrize(
    ("which", "level", "torchvision_stride", "fixed_stride"),
    [("frcnn", 4, 60, 64), ("retina", 3, 60, 64), ("retina", 4, 120, 128)],  # P6, P6, P7
)
def test_coarse_level_strides_at_480(which, level, torchvision_stride, fixed_stride, request):
    """At 480 px torchvision's AnchorGenerator puts P6 on a stride of 60 (P7: 120); ours on 64 (128)."""
    model = request.getfixturevalue(which)
    gen = anchor_generator(model)
    images, feats, anchors = levels_at(model, (480, 480), (480, 480))
    stock = AnchorGenerator(gen.sizes, gen.aspect_ratios)(images, feats)[0]
    counts = [f.shape[-2] * f.shape[-1] * a for f, a in zip(feats, gen.num_anchors_per_location(), strict=True)]
    a = gen.num_anchors_per_location()[level]

    def stride_of(all_anchors):  # distance between the first two positions of the level along x
        boxes = all_anchors.split(counts)[level]
        return (boxes[a, 0] - boxes[0, 0]).item()

    assert stride_of(stock) == torchvision_stride
    assert stride_of(anchors) == gen.strides[level] == fixed_stride
    # the finer levels agree with torchvision's at a size divisible by 32
    fine = 4 if which == "frcnn" else 3
    assert torch.equal(anchors[: sum(counts[:fine])], stock[: sum(counts[:fine])])


def test_fixed_stride_anchor_generator_checks_its_strides():
    with pytest.raises(ValueError, match="one positive integer per level"):
        FixedStrideAnchorGenerator(((32,), (64,)), ((1.0,), (1.0,)), (4,))
    with pytest.raises(ValueError, match="one positive integer per level"):
        FixedStrideAnchorGenerator(((32,),), ((1.0,),), (4.5,))


def test_roi_align_is_aligned_and_adaptive(frcnn):
    """Each box is pooled by roi_align(aligned=True, sampling_ratio=0) on the level the FPN mapper picks."""
    pool = frcnn.roi_heads.box_roi_pool
    assert isinstance(pool, AlignedMultiScaleRoIAlign)
    assert (pool.sampling_ratio, pool.aligned, pool.output_size) == (0, True, (7, 7))
    g = torch.Generator().manual_seed(0)
    size = 512
    feats = {name: torch.randn(1, 8, size // s, size // s, generator=g) for name, s in
             (("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64))}  # fmt: skip
    # sides 20, 120, 250, 480 -> P2, P3, P4, P5 (mmdet: floor(log2(side / 56)) clamped to 0..3)
    boxes = torch.tensor([[3.3, 7.1, 23.3, 27.1], [100.5, 50.2, 220.5, 170.2], [10.0, 200.0, 260.0, 450.0],
                          [16.0, 16.0, 496.0, 496.0]])  # fmt: skip
    fresh = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 0)  # the model's pooler caches its scales
    pooled = fresh(feats, [boxes], [(size, size)])
    assert fresh.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    levels = fresh.map_levels([boxes])
    assert levels.tolist() == [0, 1, 2, 3]
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    assert levels.tolist() == torch.floor(torch.log2(side / 56 + 1e-6)).clamp(0, 3).long().tolist()
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    for i, level in enumerate(levels.tolist()):
        feat = feats[str(level)]
        want = roi_align(feat, rois[i : i + 1], 7, spatial_scale=fresh.scales[level], sampling_ratio=0, aligned=True)
        assert torch.equal(pooled[i : i + 1], want)
        legacy = roi_align(feat, rois[i : i + 1], 7, spatial_scale=fresh.scales[level], sampling_ratio=2)
        assert not torch.allclose(pooled[i : i + 1], legacy, atol=1e-4)  # torchvision's old default differs
    # scripted, it pools the same (the whole detector is scripted by fpsiam export)
    scripted = torch.jit.script(AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 0))
    assert torch.equal(scripted(feats, [boxes], [(size, size)]), pooled)
    assert "aligned=True" in repr(pool)


def xavier_bound(layer):
    return math.sqrt(6 / (layer.in_features + layer.out_features))


def check_xavier(layer):
    w, bound = layer.weight.detach(), xavier_bound(layer)
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # uniform(-b, b): std b / sqrt(3)
    assert w.abs().max() > 0.99 * bound  # the full range is used (PyTorch's default: 1 / sqrt(fan_in))
    assert torch.count_nonzero(layer.bias) == 0


def test_box_head_init_is_the_reference(frcnn):
    """mmdet Shared2FCBBoxHead: FCs Xavier-uniform, fc_cls normal(0, 0.01), fc_reg normal(0, 0.001), biases 0."""
    head, predictor = frcnn.roi_heads.box_head, frcnn.roi_heads.box_predictor
    for fc in (head.fc6, head.fc7):
        check_xavier(fc)
    assert xavier_bound(head.fc6) > 2 / math.sqrt(head.fc6.in_features)  # far from PyTorch's default bound
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        w = layer.weight.detach()
        assert w.mean().item() == pytest.approx(0.0, abs=std / 5)
        assert w.std().item() == pytest.approx(std, rel=0.1)
        assert w.abs().max() > 2.5 * std  # normal, not uniform
        assert torch.count_nonzero(layer.bias) == 0
    # the RPN head keeps torchvision's normal(0, 0.01), which is mmdet's RPNHead init too
    assert frcnn.rpn.head.conv[0][0].weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_gn_box_head_linear_is_xavier_too():
    model = tiny("faster_rcnn", head_norm="gn")
    linears = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    check_xavier(linears[0])
    assert torch.count_nonzero(model.roi_heads.box_predictor.cls_score.bias) == 0


@pytest.mark.parametrize("which", ["frcnn", "retina"])
def test_anchors_and_pooler_hold_no_tensors(which, request):
    """The fixes add no state: model files keep their keys (files written before them still load)."""
    model = request.getfixturevalue(which)
    assert anchor_generator(model).state_dict() == {}
    if which == "frcnn":
        assert model.roi_heads.box_roi_pool.state_dict() == {}


# ------------------------------------------------------------------------------------ train / eval


@pytest.mark.parametrize("kind", ["faster_rcnn", "retinanet"])
def test_train_step_changes_weights_and_eval_returns_boxes(kind):
    model = fast(tiny(kind))
    images, targets = images_and_targets()
    body = model.backbone.body
    before = {
        "layer4": body.layer4[0].downsample[0].weight.detach().clone(),
        "layer4_bn2": body.layer4[0].bn2.weight.detach().clone(),
        "stem": body.conv1.weight.detach().clone(),
        "bn1_mean": body.bn1.running_mean.clone(),
        "layer1_mean": body.layer1[0].bn1.running_mean.clone(),
    }
    model.train()
    losses = model(images, targets)
    expected = (
        {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        if kind == "faster_rcnn"
        else {"classification", "bbox_regression"}
    )
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(body.layer4[0].downsample[0].weight, before["layer4"])
    # zero_init_residual (mmdet's ResNet default): the last BN of each block starts at 0 and moves
    assert torch.count_nonzero(before["layer4_bn2"]) == 0
    assert torch.count_nonzero(body.layer4[0].bn2.weight) > 0
    assert torch.equal(body.conv1.weight, before["stem"])  # frozen stem
    assert torch.equal(body.bn1.running_mean, before["bn1_mean"])  # bn1 in eval: statistics untouched
    assert not torch.equal(body.layer1[0].bn1.running_mean, before["layer1_mean"])  # other BNs train

    model.eval()
    # a fresh RetinaNet scores ~0.01 (prior); one step on mostly-background RoIs puts Faster R-CNN's small-init
    # classifier (normal 0.01) near 0.03: keep everything to see boxes
    keep_every_box(model)
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images, strict=True):
        assert o["boxes"].shape[1] == 4 and o["boxes"].shape[0] == o["scores"].shape[0] == o["labels"].shape[0]
        assert 0 < o["boxes"].shape[0] <= 100
        assert (o["boxes"][:, 2] <= img.shape[2] + 1e-3).all() and (o["boxes"][:, 3] <= img.shape[1] + 1e-3).all()


def test_faster_rcnn_l1_box_loss_is_torchvision_loss_with_l1(monkeypatch):
    """box_loss="l1" equals torchvision's own loss code with smooth-L1 replaced by L1 (same samples)."""
    images, targets = images_and_targets()
    l1 = fast(tiny("faster_rcnn", box_loss="l1")).train()
    ref = fast(tiny("faster_rcnn", box_loss="smooth_l1")).train()
    ref.load_state_dict(l1.state_dict())
    assert describe(l1)["rpn"]["loss"] == "L1RegionProposalNetwork"
    assert describe(ref)["roi_heads"]["loss"] == "RoIHeads"
    torch.manual_seed(3)
    smooth = ref(images, targets)
    torch.manual_seed(3)
    ours = l1(images, targets)

    def l1_instead(a, b, beta=1.0, reduction="mean"):
        return torch.nn.functional.l1_loss(a, b, reduction=reduction)

    monkeypatch.setattr(torch.nn.functional, "smooth_l1_loss", l1_instead)
    ref.load_state_dict(l1.state_dict())  # undo the running-stat updates of the first pass
    torch.manual_seed(3)
    patched = ref(images, targets)
    for key in ours:
        assert torch.allclose(ours[key], patched[key], atol=1e-6), key
    assert ours["loss_classifier"].item() == pytest.approx(smooth["loss_classifier"].item(), abs=1e-6)
    # L1 > smooth-L1 for any non-zero residual: the two recipes really differ
    assert ours["loss_box_reg"] > smooth["loss_box_reg"] and ours["loss_rpn_box_reg"] > smooth["loss_rpn_box_reg"]


# ------------------------------------------------------------------------------------- weights files


def backbone_state(net):
    return {k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("fc.")}


def test_backbone_weights_load(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    src = resnet18()
    with torch.no_grad():
        src.bn1.running_mean.uniform_(0.1, 0.2)  # something the random init cannot produce
    sd = backbone_state(src)
    path = tmp_path / "r18.safetensors"
    save_file(sd, str(path))
    model = build_detector("faster_rcnn", "resnet18", init=str(path), min_size=SIZE, max_size=SIZE)
    body = model.backbone.body
    assert torch.equal(body.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert torch.equal(body.bn1.running_mean, sd["bn1.running_mean"])
    n = len(sd)
    assert f"{n}/{n}" in model.init_message and str(path) in model.init_message
    assert not body.conv1.weight.requires_grad  # still frozen after loading
    # a torch.save file (weights_only loading) works too
    pt = tmp_path / "r18.pth"
    torch.save(sd, pt)
    other = build_detector("retinanet", "resnet18", init=str(pt), min_size=SIZE, max_size=SIZE)
    assert torch.equal(other.backbone.body.layer4[0].conv1.weight, sd["layer4.0.conv1.weight"])


def test_backbone_of_another_arch_fails(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "r50.safetensors"
    save_file(backbone_state(resnet50()), str(path))
    with pytest.raises(FpsiamError, match="r50.safetensors"):
        build_detector("faster_rcnn", "resnet18", init=str(path), min_size=SIZE, max_size=SIZE)


def keep_every_box(model):
    if isinstance(model, FasterRCNN):
        model.roi_heads.score_thresh = 0.0
    else:
        model.score_thresh = 0.0
    return model


@pytest.mark.parametrize("kind", ["retinanet", "faster_rcnn"])
def test_save_load_round_trip(kind, tmp_path):
    model = fast(tiny(kind))
    images, targets = images_and_targets()
    model.train()
    model(images, targets)  # move BN running statistics off their defaults
    model.eval()
    keep_every_box(model)
    with torch.no_grad():
        expected = model(images)
    path = save_detector(model, tmp_path / "model.safetensors", {"epoch": 3, "backbone": "random"})
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    loaded, meta = load_detector(path, kind=kind, arch="resnet18")
    assert (meta["kind"], meta["arch"], meta["min_size"], meta["epoch"]) == (kind, "resnet18", SIZE, 3)
    assert not loaded.training
    assert not loaded.backbone.body.conv1.weight.requires_grad
    fast(keep_every_box(loaded))
    with torch.no_grad():
        got = loaded(images)
    for a, b in zip(expected, got, strict=True):
        assert a["boxes"].shape[0] > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])


def test_load_detector_mismatches_fail_clearly(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_detector(tiny("retinanet"), tmp_path / "retina.safetensors", {})
    with pytest.raises(FpsiamError, match=r"retina\.safetensors.*retinanet.*faster_rcnn"):
        load_detector(path, kind="faster_rcnn")
    with pytest.raises(FpsiamError, match="resnet50"):
        load_detector(path, arch="resnet50")

    # metadata that lies about the backbone: the keys do not fit
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["fpsiam_detector"])
    meta["arch"] = "resnet34"
    lying = tmp_path / "lying.safetensors"
    save_file(load_file(str(path)), str(lying), metadata={"fpsiam_detector": json.dumps(meta)})
    with pytest.raises(FpsiamError, match=r"lying\.safetensors.*resnet34.*missing"):
        load_detector(lying)

    # a backbone weights file, a non-safetensors file, a missing file
    weights = tmp_path / "backbone.safetensors"
    save_file(backbone_state(resnet18()), str(weights))
    with pytest.raises(FpsiamError, match="backbone"):
        load_detector(weights)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(FpsiamError, match="junk.safetensors"):
        load_detector(junk)
    with pytest.raises(FpsiamError, match="not found"):
        load_detector(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("kind", ["retinanet", "faster_rcnn"])
def test_fpn_channels_sets_the_width_of_fpn_and_heads_and_round_trips(kind, tmp_path):
    model = fast(tiny(kind, fpn_channels=64))
    assert describe(model)["fpn_channels"] == 64 and model.backbone.out_channels == 64
    fpn_convs = [m for m in model.backbone.fpn.modules() if isinstance(m, nn.Conv2d)]
    assert fpn_convs and all(m.out_channels == 64 for m in fpn_convs)
    # every conv after the FPN reads 64 channels: the towers, the classifier and the box regressor
    assert all(m.in_channels == 64 for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "head" in n)
    narrow = sum(p.numel() for p in model.parameters())
    assert narrow < sum(p.numel() for p in tiny(kind).parameters())
    images, targets = images_and_targets()
    model.train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    keep_every_box(model)
    with torch.no_grad():
        expected = model(images)
    loaded, meta = load_detector(save_detector(model, tmp_path / "m.safetensors"))
    assert meta["fpn_channels"] == 64 and loaded.backbone.out_channels == 64
    with torch.no_grad():
        got = fast(keep_every_box(loaded))(images)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(expected, got, strict=True))


def test_model_file_without_fpn_channels_is_the_paper_width(tmp_path):
    """Files written before the key existed carry no fpn_channels: they were 256 wide and load as such."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_detector(tiny("retinanet"), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["fpsiam_detector"])
    del meta["fpn_channels"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={"fpsiam_detector": json.dumps(meta)})
    loaded, _ = load_detector(old)
    assert loaded.backbone.out_channels == 256


def test_bad_fpn_channels():
    with pytest.raises(FpsiamError, match="fpn_channels=4"):
        tiny("retinanet", fpn_channels=4)
    with pytest.raises(FpsiamError, match="fpn_channels=48.*gn.*32"):
        tiny("retinanet", fpn_channels=48, head_norm="gn")
    assert tiny("retinanet", fpn_channels=64, head_norm="gn").backbone.out_channels == 64


def test_fpn_channels_config_key_reaches_the_spec():
    from fpsiam.config import DetectConfig, load_config
    from fpsiam.detect.models import DetectorSpec

    assert DetectorSpec.of(DetectConfig().model).fpn_channels == 256  # the paper's width by default
    cfg = load_config(DetectConfig, None, ["model.fpn_channels=96"])
    assert DetectorSpec.of(cfg.model).fpn_channels == 96
