"""CAM methods, one family per module: ``base`` (the shared machinery),
``gradient`` (Grad-CAM, Grad-CAM++, LayerCAM), ``cam`` (CAM, ReCAM).

``METHODS`` maps each method's name (as the CLI spells it) to its class.
"""
from __future__ import annotations

from .base import CAMResult, float32_math, select_output, target_gradients, work_dtype
from .cam import CAM, ReCAM, cam_formula, find_classifier, gap_linear_mismatch
from .gradient import GradCAM, GradCAMpp, LayerCAM, gradcam_formula, gradcampp_formula, layercam_formula

METHODS = {"cam": CAM, "gradcam": GradCAM, "gradcampp": GradCAMpp, "layercam": LayerCAM, "recam": ReCAM}

__all__ = [
    "CAMResult", "CAM", "ReCAM", "GradCAM", "GradCAMpp", "LayerCAM", "METHODS",
    "cam_formula", "gradcam_formula", "gradcampp_formula", "layercam_formula",
    "gap_linear_mismatch", "find_classifier", "target_gradients", "select_output", "float32_math", "work_dtype",
]
