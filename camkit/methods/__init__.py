"""CAM methods, one family per module: ``base`` (the shared machinery),
``gradient`` (Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM, XGrad-CAM, Grad-CAM
element-wise, Eigen-Grad-CAM), ``cam`` (CAM, ReCAM, the paper's ReCAM),
``perturbation`` (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM), ``eigen``
(Eigen-CAM and the channel reductions), ``smooth`` (Smooth Grad-CAM++),
``fullgrad`` (FullGrad), ``options`` (``aug_smooth`` / ``eigen_smooth``),
``rerun`` (the call's input, for the methods that run the model again).

``METHODS`` maps each method's name (as the CLI spells it) to its class.
"""
from __future__ import annotations

from .base import CAMResult, float32_math, select_output, target_gradients, work_dtype
from .cam import CAM, PaperReCAM, ReCAM, cam_formula, find_classifier, gap_linear_mismatch
from .eigen import EigenCAM, channel_map, eigen_projection, eigencam_formula, element_map
from .fullgrad import FullGrad, fullgrad_term
from .gradient import (
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMpp,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    eigengradcam_formula,
    gradcam_elementwise_formula,
    gradcam_formula,
    gradcampp_formula,
    hirescam_formula,
    layercam_formula,
    xgradcam_formula,
)
from .options import AUGMENTATIONS, SmoothOptions, aug_smooth
from .perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM, ablationcam_formula, scorecam_formula
from .smooth import SmoothGradCAMpp, smoothgradcampp_formula

METHODS = {
    "cam": CAM, "gradcam": GradCAM, "gradcampp": GradCAMpp, "layercam": LayerCAM, "recam": ReCAM,
    "paper_recam": PaperReCAM, "hirescam": HiResCAM, "xgradcam": XGradCAM, "gradcamelementwise": GradCAMElementWise,
    "eigengradcam": EigenGradCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM, "ablationcam": AblationCAM,
    "smoothgradcampp": SmoothGradCAMpp, "fullgrad": FullGrad,
}
# SSCAM and ISCAM (num_samples forwards per channel at their defaults) are classes only: not in the
# registry that every method-wide test and benchmark loops over.

__all__ = [
    "CAMResult", "CAM", "ReCAM", "PaperReCAM", "GradCAM", "GradCAMpp", "LayerCAM", "HiResCAM", "XGradCAM",
    "GradCAMElementWise", "EigenGradCAM", "EigenCAM", "ScoreCAM", "SSCAM", "ISCAM", "AblationCAM", "SmoothGradCAMpp",
    "FullGrad", "METHODS",
    "cam_formula", "gradcam_formula", "gradcampp_formula", "layercam_formula", "hirescam_formula", "xgradcam_formula",
    "gradcam_elementwise_formula", "eigengradcam_formula", "eigencam_formula", "scorecam_formula",
    "ablationcam_formula", "smoothgradcampp_formula", "fullgrad_term", "eigen_projection", "element_map", "channel_map",
    "aug_smooth", "AUGMENTATIONS", "SmoothOptions",
    "gap_linear_mismatch", "find_classifier", "target_gradients", "select_output", "float32_math", "work_dtype",
]
