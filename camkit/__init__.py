"""camkit: class activation maps from hooks on named layers of PyTorch vision models."""
from __future__ import annotations

import importlib
from typing import Any

from . import errors, fusion, heads, hooks, normalize, targets
from .errors import InputError
from .heads import CAMHead, CAMModel, ReCAMHead, load_head, save_head
from .methods import CAM, CAMResult, GradCAM, GradCAMpp, LayerCAM, ReCAM

__version__ = "0.1.0"
__all__ = [
    "CAM", "GradCAM", "GradCAMpp", "LayerCAM", "ReCAM", "CAMResult",
    "CAMHead", "ReCAMHead", "CAMModel", "save_head", "load_head", "InputError",
    "normalize", "fusion", "heads", "hooks", "targets", "errors",
    "metrics", "overlay", "adapters", "geometry", "export",
]

# Imported on first use: they pull in torchvision / timm / PIL, which a plain
# `import camkit` does not need.
_LAZY = {"metrics", "overlay", "adapters", "geometry", "export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")
