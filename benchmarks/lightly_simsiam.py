"""External peer arm: SimSiam pretrained with lightly's own transform, heads and loss -> a torchvision backbone.

This is the "stock tools" reference of the Kvasir CPU protocols: lightly's ``SimSiamTransform``,
``SimSiamProjectionHead``, ``SimSiamPredictionHead`` and ``NegativeCosineSimilarity`` on a torchvision ResNet,
SGD as in lightly's SimSiam example (lr 0.06, momentum 0.9, wd 5e-4, no schedule). The backbone is written with
torchvision keys (safetensors), ready for ``fpsiam experiment --set 'weights=[lightly_simsiam=OUT]'`` or
``fpsiam detect train --backbone OUT``. lightly is not an fpsiam dependency: ``.venv/bin/pip install lightly``.

Resumable: the state is kept in ``OUT.state.pt`` after every epoch (plain tensors, read back with
``weights_only=True``); each epoch's shuffle and augmentations are seeded by (seed, epoch), so a resumed run
gives the uninterrupted run's backbone. With ``--probe ANN`` the backbone is probed (``fpsiam.ssl.probe``, the
same probe as ``fpsiam pretrain``'s ``probe.*``) before the first epoch and every ``--probe-every`` epochs; the
rows go to ``OUT.probe.jsonl``.

    .venv/bin/python benchmarks/lightly_simsiam.py data/kvasir/train.json -o runs/lightly_simsiam_r18.safetensors \\
        --arch resnet18 --size 128 --batch 32 --epochs 100 --probe data/kvasir/train.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms.functional import to_pil_image

from fpsiam.config import ProbeConfig
from fpsiam.data.frames import open_frames
from fpsiam.ssl.encoders import RESNET_CHANNELS, build_resnet
from fpsiam.train.checkpoint import rng_state, set_rng_state
from fpsiam.weights import save_backbone

# lightly's SimSiamTransform normalises with ImageNet statistics; the probe uses the same.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Views(torch.utils.data.Dataset):
    def __init__(self, source, transform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.transform(to_pil_image(self.source.read(i)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("frames", help="frame source (folder, video, COCO json)")
    ap.add_argument("-o", "--output", required=True, help="backbone .safetensors")
    ap.add_argument("--images", default=None, help="images root when FRAMES is a COCO json (default: its folder)")
    ap.add_argument("--arch", default="resnet18", choices=sorted(RESNET_CHANNELS))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=89)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe", help="labeled COCO json: probe the backbone during training (a carve of it)")
    ap.add_argument("--probe-every", type=int, default=5)
    args = ap.parse_args()
    try:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
        from lightly.transforms import SimSiamTransform
    except ImportError:
        raise SystemExit("lightly is not installed: .venv/bin/pip install lightly") from None

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_file, probe_file = out.with_suffix(".state.pt"), out.with_suffix(".probe.jsonl")
    torch.manual_seed(args.seed)
    backbone = build_resnet(args.arch)
    dim = RESNET_CHANNELS[args.arch][-1]
    projector = SimSiamProjectionHead(dim, 2048, 2048)
    predictor = SimSiamPredictionHead(2048, 512, 2048)
    modules = nn.ModuleDict({"backbone": backbone, "projector": projector, "predictor": predictor})
    criterion = NegativeCosineSimilarity()
    opt = torch.optim.SGD(modules.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    data = Views(open_frames(args.frames, images=args.images), SimSiamTransform(input_size=args.size))
    if len(data) < args.batch:
        raise SystemExit(f"{args.frames}: {len(data)} frames, fewer than one batch of {args.batch}; lower --batch")
    probe = None
    if args.probe:
        from fpsiam.ssl.probe import Probe

        probe = Probe(ProbeConfig(ann=args.probe, images=args.images), IMAGENET_MEAN, IMAGENET_STD)

    start_epoch = step = 0
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        modules.load_state_dict(state["modules"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"], state["step"]
        set_rng_state(state["rng"])
        print(f"resumed from {state_file} (epoch {start_epoch})", flush=True)
        lines = probe_file.read_text().splitlines() if probe_file.is_file() else []
        kept = [ln for ln in lines if json.loads(ln)["epoch"] <= start_epoch]  # a kill after a probe, before a save
        probe_file.write_text("".join(ln + "\n" for ln in kept))
    elif probe_file.exists():
        probe_file.unlink()

    def run_probe(epoch: int) -> None:
        if probe is None or (epoch % args.probe_every and epoch != args.epochs):
            return
        r = probe(backbone)
        row = {"kind": "probe", "epoch": epoch, "global_step": step, "probe_linear": r["linear"],
               "probe_linear_std": r["linear_std"], "probe_knn": r["knn"], "probe_knn_std": r["knn_std"]}  # fmt: skip
        with open(probe_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"probe after epoch {epoch}: linear {100 * r['linear']:.1f}% kNN {100 * r['knn']:.1f}%", flush=True)

    pool = nn.AdaptiveAvgPool2d(1)

    def embed(x):
        f = pool(backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(
            backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))))))).flatten(1)  # fmt: skip
        z = projector(f)
        return z.detach(), predictor(z)  # stop-gradient on the target branch, as lightly's example

    if start_epoch == 0:
        run_probe(0)
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                                             num_workers=args.workers, generator=gen)  # fmt: skip
        modules.train()
        for x0, x1 in loader:
            z0, p0 = embed(x0)
            z1, p1 = embed(x1)
            loss = 0.5 * (criterion(z0, p1) + criterion(z1, p0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if args.max_steps and step >= args.max_steps:
                break
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
        run_probe(epoch + 1)
        tmp = state_file.with_suffix(".tmp")
        torch.save({"modules": modules.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                    "step": step, "rng": rng_state()}, tmp)  # fmt: skip
        tmp.replace(state_file)
        if args.max_steps and step >= args.max_steps:
            break
    print(save_backbone(backbone.state_dict(), out)[0])


if __name__ == "__main__":
    main()
