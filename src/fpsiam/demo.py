"""``fpsiam demo``: the whole study on built-in synthetic colonoscopy data, sized for a 2-core CPU.

synthetic frames + boxes -> FPSiam and SimSiam pretraining (ResNet-18, 64 px) -> Faster R-CNN and RetinaNet
fine-tuned from random / SimSiam / FPSiam backbones -> COCO + clinical metrics -> Grad-CAM -> report.html.
It is the same code path as ``fpsiam experiment``; only the sizes are small. Numbers on synthetic data say
nothing about real polyps: the demo shows that every stage works and what the report looks like.
"""

from __future__ import annotations

from pathlib import Path

from fpsiam.config import ExperimentConfig, load_config

# Sizes chosen so the whole demo finishes in a few minutes on 2 CPU cores (see README: measured time).
DEMO_SETTINGS = [
    "name=demo (synthetic data)",
    "methods=[fpsiam, simsiam]",
    "inits=[random]",
    "detectors=[faster_rcnn, retinanet]",
    "seeds=[0]",
    "gradcam_images=4",
    "sample_images=4",
    "pretrain.model.backbone=resnet18",
    "pretrain.model.init=random",
    "pretrain.data.size=64",
    "pretrain.data.workers=0",
    "pretrain.data.temporal_k=2",
    "pretrain.optim.lr=6.4",  # 0.4 at batch 16: the demo has 40 steps to show the loss falling
    "pretrain.train.epochs=10",
    "pretrain.train.batch_size=16",
    "pretrain.train.amp=none",
    "pretrain.train.log_every=2",
    "pretrain.train.progress=false",
    "detect.model.arch=resnet18",
    "detect.model.min_size=128",
    "detect.model.max_size=128",
    "detect.model.test_proposals=200",
    "detect.model.roi_samples=32",  # Faster R-CNN costs ~3x RetinaNet per step here, most of it per RoI
    "detect.data.workers=0",
    # Sized on the demo's own data, random init (every arm must learn): 36 steps at lr 0.01 left RetinaNet at
    # 0-2 mAP; >= 80 steps at 0.02 per 8 images with the gradient norm clipped at 10 reached 12 (RetinaNet) and 24
    # (Faster R-CNN) mAP. Without clipping 0.02 diverged.
    "detect.optim.lr=0.02",
    "detect.optim.warmup_iters=20",
    "detect.optim.clip_grad_norm=10",
    "detect.optim.steps=[3]",
    "detect.train.epochs=4",
    "detect.train.min_iters=80",
    "detect.train.eval_every=4",
    "detect.train.batch_size=4",
    "detect.train.amp=none",
    "detect.train.progress=false",
]

QUICK_SETTINGS = [
    "pretrain.train.epochs=1",
    "pretrain.train.max_steps_per_epoch=2",
    "detect.train.epochs=1",
    "detect.train.max_steps_per_epoch=2",
    "detect.train.min_iters=0",
    "detectors=[retinanet]",
    "gradcam_images=2",
    "sample_images=2",
]


def demo_config(data: dict[str, Path], quick: bool = False, overrides: list[str] | None = None) -> ExperimentConfig:
    """The demo's experiment config over a synthetic set written by :func:`fpsiam.data.synthetic.synth_split`."""
    paths = [f"frames={data['frames']}", f"train={data['train']}", f"test={data['test']}"]
    settings = DEMO_SETTINGS + (QUICK_SETTINGS if quick else []) + paths + list(overrides or [])
    return load_config(ExperimentConfig, None, settings)


def run_demo(out: str | Path, quick: bool = False, overrides: list[str] | None = None, videos: int = 6,
             frames: int = 12) -> Path:  # fmt: skip
    """Generate the synthetic set (once) and run the demo experiment into ``out``; returns report.html."""
    from fpsiam.data.synthetic import SynthOptions, synth_split
    from fpsiam.experiment import run_experiment

    out = Path(out)
    data_dir = out / "data"
    if (data_dir / "train.json").is_file() and (data_dir / "test.json").is_file():
        data = {"frames": data_dir / "frames", "train": data_dir / "train.json", "test": data_dir / "test.json"}
    else:
        data = synth_split(data_dir, SynthOptions(videos=videos, frames=frames, width=160, height=144, seed=0))
    cfg = demo_config(data, quick=quick, overrides=overrides)
    run_experiment(cfg, out, where="demo", command="fpsiam demo -o " + str(out) + (" --quick" if quick else ""))
    return out / "report.html"
