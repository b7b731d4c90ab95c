"""Did pretraining learn polyp features? A frozen-backbone linear + kNN probe (``fpsiam probe``).

The collapse monitor says whether the embedding is alive; the probe says whether it is *useful*: a self-
supervised backbone is frozen (eval mode), its global-average-pooled C5 vector (or C2..C4, ``level``: the
stages a detector's FPN reads) is taken for labeled examples, and two cheap classifiers are fit on one part
and scored on another:

- **linear**: L2-regularised logistic regression (L-BFGS) on standardised features;
- **kNN-20**: cosine similarity to the train examples, majority of the 20 nearest.

The examples come from a COCO json with boxes, in one of two modes:

- ``crops`` (default): per boxed frame, the polyp (its largest box) and a same-sized patch of mucosa that
  overlaps no true box by more than 10 % of its area, drawn at random (seeded per frame); frames where
  none fits are skipped. Chance is 50 %.
- ``frames``: each whole frame, labeled 1 when it has a box and 0 when it has none (the json must hold
  both kinds, e.g. video frames with polyp-free stretches).

Examples are resized to ``size`` x ``size`` and normalised with the pretraining statistics. By default
(``bn="data"``) each backbone's BatchNorm statistics are first re-estimated on the probe's train examples
(precise BN, on a copy): otherwise a random network, whose statistics are mean 0 / variance 1, would lose
several points to any network that merely saw the data, and the probe would measure BN statistics instead
of weights. ``bn="own"`` keeps each backbone's statistics. The held-out
part is ``test`` when given (another json); otherwise the json's frames are cross-validated in folds of
whole videos (when the frames have a ``video_id``, so neighbouring frames never straddle a split), each
``holdout`` of them. Each probe seed redraws the mucosa patches and the folds; the result is reported per seed
and as mean +- std.

The same probe runs *during* pretraining (``probe.ann`` + ``probe.every`` in the config, see
:class:`fpsiam.config.ProbeConfig`): :class:`Probe` prepares the examples once and scores the live
backbone at epoch ends, and the rows go to ``metrics.jsonl``.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from fpsiam.config import LDPOLYPVIDEO_MEAN, LDPOLYPVIDEO_STD, ProbeConfig
from fpsiam.errors import FpsiamError
from fpsiam.ssl.encoders import resnet_stages
from fpsiam.train.precise_bn import precise_bn

BATCH = 64
KNN_K = 20
LINEAR_L2 = 1e-3
MAX_MUCOSA_OVERLAP = 0.1


def overlap_fraction(a: Sequence[float], b: Sequence[float]) -> float:
    """Area of a ∩ b over the area of a (boxes x1, y1, x2, y2)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / max(1e-9, (a[2] - a[0]) * (a[3] - a[1]))


def _crop(image: Tensor, box: Sequence[float], size: int) -> Tensor:
    x1, y1, x2, y2 = (round(v) for v in box)
    return TF.resized_crop(image, y1, x1, max(1, y2 - y1), max(1, x2 - x1), [size, size], antialias=True)


@dataclasses.dataclass
class Examples:
    """Probe examples of one json: uint8 crops [N, 3, S, S], labels, and the frame/group each came from.

    In ``crops`` mode ``mucosa[s]`` holds seed ``s``'s mucosa patches (one per polyp crop, or None where
    none fitted); ``images`` holds the polyp crops. In ``frames`` mode ``images`` is every frame and
    ``mucosa`` is empty.
    """

    images: Tensor
    labels: Tensor
    groups: list[str]
    mucosa: dict[int, list[Tensor | None]]

    def for_seed(self, seed: int) -> tuple[Tensor, Tensor, list[str]]:
        """The seed's examples: (uint8 [M, 3, S, S], labels [M], group of each)."""
        if not self.mucosa:
            return self.images, self.labels, self.groups
        xs, ys, gs = [], [], []
        for i, patch in enumerate(self.mucosa[seed]):
            if patch is None:
                continue
            xs += [self.images[i], patch]
            ys += [1, 0]
            gs += [self.groups[i]] * 2
        return torch.stack(xs), torch.tensor(ys), gs


def read_examples(ann: str | Path, images: str | None, size: int, seeds: Sequence[int], mode: str) -> Examples:
    """Decode every frame of ``ann`` once and cut the probe examples of every seed (see the module doc)."""
    from fpsiam.data.coco import CocoDetection

    if mode not in ("crops", "frames"):
        raise FpsiamError(f"probe mode '{mode}': choose crops or frames")
    data = CocoDetection(ann, images, keep_negatives=True)
    groups_of = {im["id"]: str(im.get("video_id") or f"image{im['id']}") for im in data.coco["images"]}
    boxed = {a["image_id"] for a in data.coco["annotations"]}
    if not boxed:
        raise FpsiamError(f"{ann}: no boxes; the probe needs a COCO json with polyp boxes")
    crops, labels, groups = [], [], []
    mucosa: dict[int, list[Tensor | None]] = {s: [] for s in seeds} if mode == "crops" else {}
    for k in range(len(data)):
        if mode == "crops" and data.images[k]["id"] not in boxed:
            continue  # a frame without polyps: no crop pair
        frame, target = data[k]  # float 0..1, boxes XYXY clipped to the frame
        image = frame.mul(255).round().to(torch.uint8)
        H, W = image.shape[-2:]
        boxes = target["boxes"].tolist()
        image_id = target["image_id"]
        if mode == "frames":
            groups.append(groups_of[image_id])
            crops.append(TF.resize(image, [size, size], antialias=True))
            labels.append(1 if boxes else 0)
            continue
        if not boxes:  # its boxes all lay outside the frame
            continue
        polyp = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        groups.append(groups_of[image_id])
        crops.append(_crop(image, polyp, size))
        labels.append(1)
        bw, bh = min(polyp[2] - polyp[0], W / 2), min(polyp[3] - polyp[1], H / 2)  # a huge polyp: a smaller patch
        for s in seeds:
            rng = random.Random(f"{s}/{image_id}")
            patch = None
            for _ in range(100):
                x, y = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
                cand = [x, y, x + bw, y + bh]
                if all(overlap_fraction(cand, b) <= MAX_MUCOSA_OVERLAP for b in boxes):
                    patch = _crop(image, cand, size)
                    break
            mucosa[s].append(patch)
    out = Examples(torch.stack(crops), torch.tensor(labels), groups, mucosa)
    if mode == "frames" and len(set(labels)) < 2:
        have = "a box" if labels[0] else "no box"
        raise FpsiamError(
            f"{ann}: every frame has {have}; the frames probe needs frames with and without polyps "
            "(or use --mode crops)"
        )
    return out


def folds(groups: Sequence[str], k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``k`` (train, held out) index pairs; whole groups (videos), shuffled by ``seed``, each group held out once.

    Groups go, largest first after the shuffle, to the fold with the fewest examples so far, so folds are even.
    """
    names = sorted(set(groups))
    random.Random(seed).shuffle(names)
    sizes = {n: 0 for n in names}
    for g in groups:
        sizes[g] += 1
    fold_of: dict[str, int] = {}
    load = [0] * min(k, len(names))
    for name in sorted(names, key=lambda n: -sizes[n]):  # stable: equal sizes keep the shuffled order
        i = load.index(min(load))
        fold_of[name] = i
        load[i] += sizes[name]
    out = []
    for i in range(len(load)):
        test = [j for j, g in enumerate(groups) if fold_of[g] == i]
        train = [j for j, g in enumerate(groups) if fold_of[g] != i]
        out.append((train, test))
    return out


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device) -> Tensor:
    """uint8 [N, 3, S, S] -> float, normalised with the pretraining statistics, on ``device``."""
    m = torch.tensor(list(mean), device=device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), device=device).view(1, 3, 1, 1)
    return (x.to(device).float().div_(255) - m) / s


@torch.inference_mode()
def features(backbone: nn.Module, x: Tensor, mean: Sequence[float], std: Sequence[float], level: str = "c5") -> Tensor:
    """Pooled ``level`` (C2..C5) features of uint8 images [N, 3, S, S] through a frozen ResNet (eval mode, restored
    after). C3..C5 are what a RetinaNet's FPN reads, C2 what FPSiam's local branch adds; C5 is what a classifier
    sees."""
    stage = int(level[1]) - 2  # resnet_stages gives [C2, C3, C4, C5]
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        out = []
        for i in range(0, len(x), BATCH):
            c = resnet_stages(backbone, normalise(x[i : i + BATCH], mean, std, device))[stage]
            out.append(F.adaptive_avg_pool2d(c, 1).flatten(1).float().cpu())
        return torch.cat(out)
    finally:
        backbone.train(was_training)


def linear_probe(xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor) -> float:
    """Accuracy of an L2 logistic regression (L-BFGS) fit on standardised train features."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    with torch.enable_grad():
        w = torch.zeros(xtr.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xtr @ w + b, ytr.float()) + LINEAR_L2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        return ((xte @ w + b > 0).long() == yte).float().mean().item()


def knn_probe(xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, k: int = KNN_K) -> float:
    """Accuracy of a cosine kNN majority vote (ties count as polyp-absent)."""
    sim = F.normalize(xte, dim=1) @ F.normalize(xtr, dim=1).T
    votes = ytr[sim.topk(min(k, len(xtr)), dim=1).indices].float().mean(1)
    return ((votes > 0.5).long() == yte).float().mean().item()


def summarise(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and std (0 for one seed) of each measure over seeds, plus the per-seed rows."""
    out: dict[str, Any] = {"seeds": per_seed}
    for key in ("linear", "knn"):
        values = [r[key] for r in per_seed]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


class Probe:
    """The probe of one labeled set, prepared once; ``probe(backbone)`` scores a backbone on every seed.

    Without a test json the examples are cross-validated: their frames are cut into ``round(1 / holdout)`` folds
    of whole videos (4 for the default 0.25), each fold is held out once, and the accuracy counts every example,
    which makes it about twice as precise as one held-out quarter at the same cost (the features are computed
    once per seed; only the classifiers are refit). The BN statistics (``bn="data"``) are estimated on all the
    examples of a seed: they need no labels.
    """

    def __init__(
        self, cfg: ProbeConfig, mean: Sequence[float] = LDPOLYPVIDEO_MEAN, std: Sequence[float] = LDPOLYPVIDEO_STD
    ):
        if not cfg.ann:
            raise FpsiamError("probe: no labeled json; set probe.ann (a COCO json with boxes)")
        if not cfg.seeds:
            raise FpsiamError("probe.seeds: give at least one seed")
        self.cfg, self.mean, self.std = cfg, list(mean), list(std)
        self.train = read_examples(cfg.ann, cfg.images, cfg.size, cfg.seeds, cfg.mode)
        self.test = read_examples(cfg.test, cfg.images, cfg.size, cfg.seeds, cfg.mode) if cfg.test else None
        for s in cfg.seeds:  # fail now, not at the first probe of a long run
            self._splits(s)

    def _splits(self, seed: int) -> tuple[Tensor, Tensor, list[tuple[list[int], list[int]]]]:
        """The seed's uint8 examples, labels, and (train, held-out) index pairs into them."""
        x, y, g = self.train.for_seed(seed)
        if self.test is not None:
            xt, yt, _ = self.test.for_seed(seed)
            n = len(y)
            x, y, splits = torch.cat([x, xt]), torch.cat([y, yt]), [(list(range(n)), list(range(n, n + len(yt))))]
        else:
            splits = folds(g, max(2, round(1 / self.cfg.holdout)), seed)
        for tr, te in splits:
            if not te or not tr:
                raise FpsiamError(
                    f"{self.cfg.ann}: too few frames (or videos) to hold some out for the probe; add frames or pass "
                    "a test json"
                )
            if len(set(y[tr].tolist())) < 2:
                raise FpsiamError(f"{self.cfg.ann}: a probe fold has one class only (seed {seed}); add frames")
        return x, y, splits

    def __call__(self, backbone: nn.Module) -> dict[str, Any]:
        rows = []
        for seed in self.cfg.seeds:
            x, y, splits = self._splits(seed)
            net = backbone
            if self.cfg.bn == "data":  # on a copy: the caller's statistics (a live training run's) stay
                net = copy.deepcopy(backbone)
                device = next(net.parameters()).device
                fit = x[: len(splits[0][0])] if self.test is not None else x  # the train json's examples only
                precise_bn(net, (normalise(fit[i : i + BATCH], self.mean, self.std, device)
                                 for i in range(0, len(fit), BATCH)))  # fmt: skip
            f = features(net, x, self.mean, self.std, self.cfg.level)
            right = {"linear": 0.0, "knn": 0.0}
            for tr, te in splits:
                args = (f[tr], y[tr], f[te], y[te])
                right["linear"] += linear_probe(*args) * len(te)
                right["knn"] += knn_probe(*args) * len(te)
            scored = sum(len(te) for _, te in splits)
            rows.append({"seed": seed, "linear": right["linear"] / scored, "knn": right["knn"] / scored,
                         "examples": scored, "folds": len(splits)})  # fmt: skip
        return summarise(rows)


# ---------------------------------------------------------------------------------------------- backbones


def resolve_backbone(spec: str, arch: str | None, weights_file: str | None = None) -> tuple[str, nn.Module, str]:
    """``[name=]random|imagenet|FILE|RUN_DIR`` -> (name, ResNet, what was loaded, in words).

    A file's architecture is read off its tensors; ``arch`` (when given) must match it. A run folder of
    ``fpsiam pretrain`` gives its ``backbone.safetensors``, or else its newest checkpoint's backbone.
    ``random`` and ``imagenet`` are built as ``arch`` (default resnet50).
    """
    from fpsiam.backbones import build_resnet
    from fpsiam.weights import (
        extract_backbone,
        infer_arch,
        init_backbone,
        load_state_dict_checked,
        load_state_file,
        to_torchvision_keys,
    )

    name, sep, target = spec.partition("=")
    if not sep:
        name, target = "", spec
    if target in ("random", "imagenet"):
        use = arch or "resnet50"
        torch.manual_seed(0)  # 'random' is the same network in every probe
        model = build_resnet(use)
        return name or target, model, init_backbone(model, use, target, weights_file)
    path = Path(target)
    if path.is_dir() and not (path / "backbone.safetensors").is_file():
        sd, _ = extract_backbone(path)  # a run folder still training: its newest checkpoint
        name = name or path.name
    elif path.is_dir() or path.is_file():
        name = name or (path.name if path.is_dir() else path.stem)
        path = path / "backbone.safetensors" if path.is_dir() else path
        sd = to_torchvision_keys(load_state_file(path))
    else:
        raise FpsiamError(f"probe backbone '{target}': not 'random', 'imagenet', a weights file or a run folder")
    found = infer_arch(sd, str(path))
    if arch is not None and found != arch:
        raise FpsiamError(f"{path}: a {found} backbone, but --arch is {arch}; pass --arch {found} or the right file")
    model = build_resnet(found)
    report = load_state_dict_checked(model, sd, str(path))
    return name, model, f"{found}: {report}"


def run_probe(cfg: ProbeConfig, backbones: Sequence[str], arch: str | None = None, weights_file: str | None = None):
    """``fpsiam probe``: every backbone through the same prepared probe; returns the rows (see :func:`summarise`)."""
    resolved = [resolve_backbone(spec, arch, weights_file) for spec in backbones]  # bad files fail before the work
    names = [r[0] for r in resolved]
    if len(set(names)) != len(names):
        raise FpsiamError(f"probe backbones: names {names} repeat; give each a name (name=FILE)")
    probe = Probe(cfg)
    rows = []
    for name, model, loaded in resolved:
        torch.manual_seed(0)
        rows.append({"backbone": name, "loaded": loaded, **probe(model)})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The probe table: mean +- std over seeds (in %), and the gap of each row to the ``random`` row when present."""
    base = next((r for r in rows if r["backbone"] == "random"), None)
    lines = ["| backbone | linear probe (%) | kNN-20 (%) | linear - random (points) |", "|---|---:|---:|---:|"]
    for r in rows:
        gap = "—"
        if base is not None and r is not base:
            gaps = [a["linear"] - b["linear"] for a, b in zip(r["seeds"], base["seeds"], strict=True)]
            sd = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
            gap = f"{100 * statistics.fmean(gaps):+.1f} ± {100 * sd:.1f}"
        lines.append(
            f"| {r['backbone']} | {100 * r['linear']:.1f} ± {100 * r['linear_std']:.1f} | "
            f"{100 * r['knn']:.1f} ± {100 * r['knn_std']:.1f} | {gap} |"
        )
    return "\n".join(lines)
