"""CAM methods, one family per module: ``base`` (the shared machinery),
``cam`` (CAM, ReCAM, the paper's ReCAM), ``gradient`` (Grad-CAM, Grad-CAM++,
LayerCAM, HiResCAM, XGrad-CAM, Grad-CAM element-wise, Eigen-Grad-CAM),
``eigen`` (Eigen-CAM and the channel reductions), ``perturbation``
(Score-CAM, SS-CAM, IS-CAM, Ablation-CAM), ``smooth`` (Smooth Grad-CAM++),
``fullgrad`` (FullGrad), ``activation`` (KPCA-CAM, FEM, RandomCAM, Seg-Eigen-CAM),
``factorization`` (Deep Feature Factorization), ``guided`` (Guided Backprop, Guided Grad-CAM);
beside them ``registry`` (each method declares
itself once), ``options`` (the constructor's keyword options), ``augment``
(``aug_smooth``), ``checks``, ``output``, ``precision`` and ``result``.

``METHODS`` maps each listed method's name (as the CLI spells it) to its class.
"""
from __future__ import annotations

# isort: off
# Import order is registration order: the order METHODS and --method list the methods in.
from .cam import CAM, PaperReCAM, ReCAM, cam_formula, find_classifier, gap_linear_mismatch
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
from .eigen import EigenCAM, channel_map, eigen_projection, eigencam_formula, element_map
from .perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM, ablationcam_formula, scorecam_formula
from .smooth import SmoothGradCAMpp, smoothgradcampp_formula
from .fullgrad import FullGrad, fullgrad_eigen, fullgrad_term
from .activation import (
    FEM,
    KPCACAM,
    RandomCAM,
    SegEigenCAM,
    fem_formula,
    kpca_projection,
    kpcacam_formula,
    randomcam_formula,
    segeigencam_formula,
)
from .factorization import DeepFeatureFactorization, DFFResult, dff_formula, nmf
from .guided import GuidedBackprop, GuidedGradCAM, guided_gradcam_formula, guided_map
from .shapley import ShapleyCAM, shapleycam_formula
from .contrast import FinerCAM, finer_values, similar_classes
from .refine import RefineCAM, refine_product
from .legrad import LeGrad, legrad_formula
# isort: on
from .augment import AUGMENTATIONS, aug_smooth
from .base import CallContext, target_gradients
from .multiscale import RECAM_SCALES, MultiScale, recam_max
from .options import Options
from .output import select_output
from .precision import float32_math, work_dtype
from .registry import METHODS, MethodInfo, cli_names, method_info, register_method, registered, unregister_method
from .result import CAMResult

__all__ = [
    "CAMResult", "CAM", "ReCAM", "PaperReCAM", "GradCAM", "GradCAMpp", "LayerCAM", "HiResCAM", "XGradCAM",
    "GradCAMElementWise", "EigenGradCAM", "EigenCAM", "ScoreCAM", "SSCAM", "ISCAM", "AblationCAM", "SmoothGradCAMpp",
    "FullGrad", "KPCACAM", "FEM", "RandomCAM", "SegEigenCAM", "DeepFeatureFactorization", "DFFResult",
    "GuidedBackprop", "GuidedGradCAM", "METHODS", "MethodInfo", "register_method", "unregister_method", "method_info", "registered",
    "cli_names", "Options", "CallContext",
    "cam_formula", "gradcam_formula", "gradcampp_formula", "layercam_formula", "hirescam_formula", "xgradcam_formula",
    "gradcam_elementwise_formula", "eigengradcam_formula", "eigencam_formula", "scorecam_formula",
    "ablationcam_formula", "smoothgradcampp_formula", "fullgrad_term", "fullgrad_eigen", "kpca_projection", "kpcacam_formula", "fem_formula", "randomcam_formula",
    "segeigencam_formula", "dff_formula", "nmf", "guided_map", "guided_gradcam_formula", "eigen_projection", "element_map", "channel_map",
    "aug_smooth", "AUGMENTATIONS",
    "ShapleyCAM", "FinerCAM", "RefineCAM", "LeGrad", "MultiScale", "RECAM_SCALES", "recam_max", "shapleycam_formula", "finer_values", "similar_classes",
    "refine_product", "legrad_formula",
    "gap_linear_mismatch", "find_classifier", "target_gradients", "select_output", "float32_math", "work_dtype",
]
