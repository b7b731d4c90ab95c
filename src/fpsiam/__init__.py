"""fpsiam: FPSiam self-supervised pretraining and polyp-detection transfer on PyTorch + torchvision.

The Python entry point for inference is :class:`fpsiam.Detector` (``Detector.load("last.safetensors")``,
``.predict(frames)``); it is imported on first use, so ``import fpsiam`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detector", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from fpsiam.api import Detector

        return Detector
    raise AttributeError(f"module 'fpsiam' has no attribute {name!r}")
