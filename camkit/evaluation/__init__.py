"""Can this map be trusted? Sanity checks, faithfulness, robustness and complexity metrics for saliency
maps: pure, batched functions of documented shapes (``images (B, C, H, W)``, ``maps (B, H, W)``,
``targets (B,)``), on any device, that leave the model as found and draw randomness only from private
seeded generators. The older metrics (deletion / insertion, average drop, pointing game) are in
:mod:`camkit.metrics`.
"""
from __future__ import annotations

from .aggregate import RunningMetrics
from .arcc import arcc, coherency
from .complexity import complexity, effective_complexity, l1_complexity, sparseness
from .faithfulness import (
    faithfulness_correlation,
    infidelity,
    irof,
    monotonicity,
    noisy_linear_imputation,
    pixel_flipping,
    region_perturbation,
    road,
    slic_segments,
    sufficiency,
)
from .robustness import avg_sensitivity, local_lipschitz, max_sensitivity, sensitivity
from .sanity import (
    method_explainer,
    model_randomization,
    random_logit,
    randomizable_layers,
    reinitialize,
    shuffled_labels,
)
from .similarity import SIMILARITIES, hog_similarity, spearman_similarity, ssim

__all__ = [
    "RunningMetrics", "arcc", "coherency", "irof", "slic_segments", "sufficiency", "complexity", "effective_complexity", "l1_complexity", "sparseness",
    "faithfulness_correlation", "infidelity", "monotonicity", "noisy_linear_imputation", "pixel_flipping",
    "region_perturbation", "road", "avg_sensitivity", "local_lipschitz", "max_sensitivity", "sensitivity",
    "method_explainer", "model_randomization", "random_logit", "randomizable_layers", "reinitialize",
    "shuffled_labels", "SIMILARITIES", "hog_similarity", "spearman_similarity", "ssim",
]
