"""Finer-CAM (Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer
Details for Visual Explanation", CVPR 2025, arXiv 2501.11309): a gradient
method explaining the contrast of the target class with its most similar
classes instead of the target's score alone.

For target class ``c`` of an image, its ``references`` most similar classes
``d_1..d_T`` are those whose scores are closest to ``y_c`` (``|y_d - y_c|``
smallest, ``c`` itself excluded). The explained value is the paper's
``y_c - gamma * (1/T) sum_t y_{d_t}`` (``weighting="mean"``; torchcam's
reading) or pytorch-grad-cam's ``sum_t p_t (y_c - gamma y_{d_t}) / sum_t p_t``
with the softmax probabilities ``p`` (``weighting="softmax"``, differentiated
through ``p`` as it does). The base formula (Grad-CAM by default) takes the
gradients of that value; K targets are one batched backward.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from .base import CallContext, _GradientMethod
from .gradient import gradcam_formula, gradcampp_formula, layercam_formula
from .options import GradientOptions, non_negative, positive_int
from .registry import register_method

#: The base formulas Finer-CAM (and RefineCAM) apply to their gradients.
BASES = {"gradcam": gradcam_formula, "gradcampp": gradcampp_formula, "layercam": layercam_formula}
WEIGHTINGS = ("mean", "softmax")


def similar_classes(scores: Tensor, classes: Tensor, t: int) -> Tensor:
    """The ``t`` classes whose scores are closest to each target's, nearest first.

    Args:
        scores: ``(B, C)`` logits.
        classes: ``(B, K)`` target class indices (in ``0..C-1``).
        t: how many (at most ``C - 1``).

    Returns:
        ``(B, K, t)`` long class indices, never the target itself.
    """
    s = scores.detach()
    dist = (s[:, None, :] - s.gather(1, classes)[..., None]).abs()  # (B, K, C)
    dist = dist.scatter(2, classes[..., None], float("inf"))
    return dist.topk(t, dim=2, largest=False).indices


def finer_values(scores: Tensor, classes: Tensor, refs: Tensor, gamma: float, weighting: str = "mean") -> Tensor:
    """Finer-CAM's contrast of each target with its references.

    Args:
        scores: ``(B, C)`` logits (with autograd history).
        classes: ``(B, K)`` target classes.
        refs: ``(B, K, T)`` reference classes.
        gamma: the comparison strength.
        weighting: ``"mean"``: ``y_c - gamma mean_t y_{d_t}``; ``"softmax"``:
            ``sum_t p_t (y_c - gamma y_{d_t}) / sum_t p_t`` (pytorch-grad-cam's, ``p = softmax(y)``).

    Returns:
        ``(B, K)`` values to differentiate.
    """
    b, k, t = refs.shape
    yc = scores.gather(1, classes)  # (B, K)
    yd = scores.gather(1, refs.reshape(b, k * t)).reshape(b, k, t)
    if weighting == "mean":
        return yc - gamma * yd.mean(dim=2)
    p = torch.softmax(scores, dim=1).gather(1, refs.reshape(b, k * t)).reshape(b, k, t)
    return (p * (yc[..., None] - gamma * yd)).sum(dim=2) / (p.sum(dim=2) + 1e-9)


@dataclass(frozen=True)
class FinerOptions(GradientOptions):
    """Plus ``references`` (how many similar classes, capped at C - 1), ``gamma`` (the
    comparison strength, >= 0; 0 gives the base method), ``weighting`` (``"mean"``, the paper's,
    or ``"softmax"``, pytorch-grad-cam's) and ``base`` (``"gradcam"``, ``"gradcampp"``, ``"layercam"``)."""

    references: int = 3
    gamma: float = 0.6
    weighting: str = "mean"
    base: str = "gradcam"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "references", positive_int("references", self.references))
        object.__setattr__(self, "gamma", non_negative("gamma", self.gamma))
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        check_base(self.base)


def check_base(base: object) -> None:
    """``base`` must name one of :data:`BASES`."""
    if not isinstance(base, str):
        raise InputTypeError(f"base must be a method name, got {base!r}")
    if base not in BASES:
        raise InputError(f"unknown base {base!r}; choose one of {', '.join(BASES)}")


@register_method("finercam", layers="last")
class FinerCAM(_GradientMethod):
    """Finer-CAM: the base method (Grad-CAM) on ``y_c - gamma * mean(y of the most similar classes)``."""

    Options = FinerOptions

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        o, scores = self.options, ctx.scores
        classes = ctx.target.classes(scores) if getattr(ctx.target, "logit", False) else None
        if classes is None or scores.dim() != 2:
            raise InputError("FinerCAM needs class targets (ints, topk=, 'all') on (B, C) logits")
        if scores.shape[1] < 2:
            raise InputError("FinerCAM needs at least two classes to contrast")
        classes = classes.clamp(min=0)  # padding columns (-1) are masked out afterwards
        refs = similar_classes(scores, classes, min(o.references, scores.shape[1] - 1))
        with torch.enable_grad():
            values = finer_values(scores, classes, refs, o.gamma, o.weighting)
        return super()._layer_maps(replace(ctx, values=values))

    def _formula(self, A: Tensor, G: Tensor) -> Tensor:
        return BASES[self.options.base](A, G, eigen=self.options.eigen_smooth)
