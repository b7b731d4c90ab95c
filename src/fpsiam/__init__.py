"""fpsiam: FPSiam self-supervised pretraining and polyp-detection transfer on PyTorch + torchvision."""

__version__ = "0.1.0"
