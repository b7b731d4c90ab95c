"""External peer arm: SimSiam pretrained with lightly's own transform, heads and loss -> a torchvision backbone.

This is the "stock tools" reference of the Kvasir CPU protocol (issue 5): lightly's ``SimSiamTransform``,
``SimSiamProjectionHead``, ``SimSiamPredictionHead`` and ``NegativeCosineSimilarity`` on a torchvision ResNet,
SGD as in lightly's SimSiam example (lr 0.06, momentum 0.9, wd 5e-4, no schedule). The backbone is written with
torchvision keys (safetensors), ready for ``fpsiam experiment --set 'weights=[lightly_simsiam=OUT]'`` or
``fpsiam detect train --backbone OUT``. lightly is not an fpsiam dependency: ``.venv/bin/pip install lightly``.

    .venv/bin/python benchmarks/lightly_simsiam.py data/kvasir/train.json -o runs/lightly_simsiam_r18.safetensors \\
        --arch resnet18 --size 128 --batch 64 --epochs 89
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torchvision.transforms.functional import to_pil_image

from fpsiam.data.frames import open_frames
from fpsiam.ssl.encoders import RESNET_CHANNELS, build_resnet
from fpsiam.weights import save_backbone


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
    args = ap.parse_args()
    try:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
        from lightly.transforms import SimSiamTransform
    except ImportError:
        raise SystemExit("lightly is not installed: .venv/bin/pip install lightly") from None

    torch.manual_seed(args.seed)
    backbone = build_resnet(args.arch)
    dim = RESNET_CHANNELS[args.arch][-1]
    projector = SimSiamProjectionHead(dim, 2048, 2048)
    predictor = SimSiamPredictionHead(2048, 512, 2048)
    criterion = NegativeCosineSimilarity()
    params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters()]
    opt = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
    data = Views(open_frames(args.frames, images=args.images), SimSiamTransform(input_size=args.size))
    if len(data) < args.batch:
        raise SystemExit(f"{args.frames}: {len(data)} frames, fewer than one batch of {args.batch}; lower --batch")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers)  # fmt: skip
    pool = nn.AdaptiveAvgPool2d(1)

    def embed(x):
        f = pool(backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(
            backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))))))).flatten(1)  # fmt: skip
        z = projector(f)
        return z.detach(), predictor(z)  # stop-gradient on the target branch, as lightly's example

    step, start = 0, time.perf_counter()
    for epoch in range(args.epochs):
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
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True
        )
        if args.max_steps and step >= args.max_steps:
            break
    print(save_backbone(backbone.state_dict(), args.output)[0])


if __name__ == "__main__":
    main()
