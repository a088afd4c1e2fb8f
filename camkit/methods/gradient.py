"""Gradient methods: each map is a formula of a layer's output ``A (B, C, h, w)``
and the gradients ``G (B, K, C, h, w)`` of K targets with respect to it,
giving raw maps ``(B, K, h, w)``. One short function per formula; the classes
only name which formula they apply (the machinery is in ``base``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import _GradientMethod


def gradcam_formula(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017): ``ReLU(sum_k mean_ij(G_k) A_k)``."""
    return torch.einsum("bkc,bchw->bkhw", G.mean(dim=(-2, -1)), A).clamp_(min=0)


def gradcampp_formula(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al., 2018), closed form for ``Y = exp(y_c)``.

    ``alpha = G^2 / (2 G^2 + sum_ab A_k(a, b) G^3)`` (0 where the denominator is
    0), ``w_k = sum_ij alpha * ReLU(G)``, map ``ReLU(sum_k w_k A_k)``. The
    paper's weights carry an extra factor ``exp(y_c)`` (the derivative of Y);
    it is one positive number per image and target, dropped here because it
    overflows for large logits and every normalizer removes it.
    """
    g2 = G.pow(2)
    g3 = g2 * G
    denom = 2 * g2 + A.sum(dim=(-2, -1))[:, None, :, None, None] * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    w = (alpha * G.clamp(min=0)).sum(dim=(-2, -1))
    return torch.einsum("bkc,bchw->bkhw", w, A).clamp_(min=0)


def layercam_formula(A: Tensor, G: Tensor) -> Tensor:
    """LayerCAM (Jiang et al., 2021): ``ReLU(sum_k ReLU(G_k(i, j)) A_k(i, j))``."""
    return torch.einsum("bkchw,bchw->bkhw", G.clamp(min=0), A).clamp_(min=0)


# --------------------------------------------------------------------------- classes


class GradCAM(_GradientMethod):
    """Grad-CAM on one or more layers (several layers are fused like LayerCAM's)."""

    formula = staticmethod(gradcam_formula)


class GradCAMpp(_GradientMethod):
    """Grad-CAM++ on one or more layers."""

    formula = staticmethod(gradcampp_formula)


class LayerCAM(_GradientMethod):
    """LayerCAM on one or more layers; ``fusion="max"`` (the paper) or
    ``fusion="weighted", weights=[0.4, 0.4, 0.2]`` (the seed study, then tanh(2x))."""

    formula = staticmethod(layercam_formula)
