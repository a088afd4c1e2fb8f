"""camkit: class activation maps from hooks on named layers of PyTorch vision models."""
from __future__ import annotations

import importlib
from typing import Any

from . import errors, fusion, heads, hooks, normalize, targets
from .errors import InputError
from .heads import CAMHead, CAMModel, PaperReCAMHead, ReCAMHead, load_head, save_head
from .methods import (
    CAM,
    FEM,
    ISCAM,
    KPCACAM,
    METHODS,
    SSCAM,
    AblationCAM,
    CAMResult,
    DeepFeatureFactorization,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMpp,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    LeGrad,
    MultiScale,
    PaperReCAM,
    RandomCAM,
    ReCAM,
    RefineCAM,
    ScoreCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMpp,
    XGradCAM,
)

__version__ = "0.1.0"
__all__ = [
    "CAM", "GradCAM", "GradCAMpp", "LayerCAM", "ReCAM", "PaperReCAM", "HiResCAM", "XGradCAM",
    "GradCAMElementWise", "EigenGradCAM", "EigenCAM", "ScoreCAM", "SSCAM", "ISCAM", "AblationCAM",
    "SmoothGradCAMpp", "FullGrad", "KPCACAM", "FEM", "RandomCAM", "SegEigenCAM", "DeepFeatureFactorization",
    "GuidedBackprop", "GuidedGradCAM", "METHODS", "CAMResult",
    "ShapleyCAM", "FinerCAM", "RefineCAM", "LeGrad", "MultiScale",
    "CAMHead", "ReCAMHead", "PaperReCAMHead", "CAMModel", "save_head", "load_head", "InputError",
    "normalize", "fusion", "heads", "hooks", "targets", "errors",
    "metrics", "evaluation", "overlay", "adapters", "geometry", "app", "export", "load_image", "video",
]

# Imported on first use: they pull in torchvision / timm / PIL, which a plain
# `import camkit` does not need.
_LAZY = {"metrics", "evaluation", "overlay", "adapters", "geometry", "app", "export", "video"}
_LAZY_NAMES = {"load_image": "app.images"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")
