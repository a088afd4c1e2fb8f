"""Gradient methods: each map is a formula of a layer's output ``A (B, C, h, w)``
and the gradients ``G (B, K, C, h, w)`` of K targets with respect to it,
giving raw maps ``(B, K, h, w)``. One short function per formula; the classes
only name which formula they apply (the machinery is in ``base``).

Every formula takes ``eigen``: the ``eigen_smooth`` option, which reduces the
per-channel contributions by their first principal component instead of
their sum (see ``eigen.element_map``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import _GradientMethod
from .eigen import channel_map, eigen_projection, element_map
from .registry import register_method


def gradcam_formula(A: Tensor, G: Tensor, eigen: bool = False) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017): ``ReLU(sum_k mean_ij(G_k) A_k)``."""
    return channel_map(G.mean(dim=(-2, -1)), A, eigen)


def gradcampp_formula(A: Tensor, G: Tensor, eigen: bool = False) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al., 2018), closed form for ``Y = exp(y_c)``.

    ``alpha = G^2 / (2 G^2 + sum_ab A_k(a, b) G^3)`` (0 where the denominator is
    0), ``w_k = sum_ij alpha * ReLU(G)``, map ``ReLU(sum_k w_k A_k)``. The
    paper's weights carry an extra factor ``exp(y_c)`` (the derivative of Y);
    it is one positive number per image and target, dropped here because it
    overflows for large logits and every normalizer removes it.
    """
    return channel_map(gradcampp_weights(A, G.pow(2), G.pow(3), G), A, eigen)


def gradcampp_weights(A: Tensor, G2: Tensor, G3: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++'s ``w_k = sum_ij alpha ReLU(G)``, ``alpha = G2 / (2 G2 + sum_ab A_k G3)``
    (0 where the denominator is 0): G2, G3, G ``(B, K, C, h, w)`` -> ``(B, K, C)``."""
    denom = 2 * G2 + A.sum(dim=(-2, -1))[:, None, :, None, None] * G3
    alpha = torch.where(denom != 0, G2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(G2))
    return (alpha * G.clamp(min=0)).sum(dim=(-2, -1))


def layercam_formula(A: Tensor, G: Tensor, eigen: bool = False) -> Tensor:
    """LayerCAM (Jiang et al., 2021): ``ReLU(sum_k ReLU(G_k(i, j)) A_k(i, j))``."""
    if eigen:
        return element_map(G.clamp(min=0) * A[:, None], eigen=True)
    return torch.einsum("bkchw,bchw->bkhw", G.clamp(min=0), A).clamp_(min=0)


def hirescam_formula(A: Tensor, G: Tensor, eigen: bool = False) -> Tensor:
    """HiResCAM (Draelos and Carin, 2020): ``ReLU(sum_k G_k(i, j) A_k(i, j))``."""
    if eigen:
        return element_map(G * A[:, None], eigen=True)
    return torch.einsum("bkchw,bchw->bkhw", G, A).clamp_(min=0)


def gradcam_elementwise_formula(A: Tensor, G: Tensor, eigen: bool = False) -> Tensor:
    """Grad-CAM element-wise (pytorch-grad-cam's): ``ReLU(sum_k ReLU(G_k(i, j) A_k(i, j)))``."""
    return element_map((G * A[:, None]).clamp_(min=0), eigen)


def xgradcam_formula(A: Tensor, G: Tensor, eigen: bool = False) -> Tensor:
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij G_k A_k / sum_ij A_k`` (0 where
    ``sum_ij A_k = 0``), map ``ReLU(sum_k w_k A_k)``."""
    s = A.sum(dim=(-2, -1))  # (B, C)
    w = torch.einsum("bkchw,bchw->bkc", G, A) / torch.where(s != 0, s, torch.ones_like(s))[:, None]
    return channel_map(torch.where(s[:, None] != 0, w, torch.zeros_like(w)), A, eigen)


def eigengradcam_formula(A: Tensor, G: Tensor, eigen: bool = True) -> Tensor:
    """Eigen-Grad-CAM (pytorch-grad-cam's): ``ReLU(eigen_projection(G * A))`` (always the eigen reduction)."""
    return eigen_projection(G * A[:, None]).clamp_(min=0)


# --------------------------------------------------------------------------- classes


@register_method("gradcam", layers="last")
class GradCAM(_GradientMethod):
    """Grad-CAM on one or more layers (several layers are fused like LayerCAM's)."""

    formula = staticmethod(gradcam_formula)


@register_method("gradcampp", layers="last")
class GradCAMpp(_GradientMethod):
    """Grad-CAM++ on one or more layers."""

    formula = staticmethod(gradcampp_formula)


@register_method("layercam", layers="stages")
class LayerCAM(_GradientMethod):
    """LayerCAM on one or more layers; ``fusion="max"`` (the paper) or
    ``fusion="weighted", weights=[0.4, 0.4, 0.2]`` (the seed study, then tanh(2x))."""

    formula = staticmethod(layercam_formula)


@register_method("hirescam", layers="last")
class HiResCAM(_GradientMethod):
    """HiResCAM: gradient times activation at each position, summed over channels."""

    formula = staticmethod(hirescam_formula)


@register_method("xgradcam", layers="last")
class XGradCAM(_GradientMethod):
    """XGrad-CAM: channel weights ``sum(G * A) / sum(A)``."""

    formula = staticmethod(xgradcam_formula)


@register_method("gradcamelementwise", layers="last")
class GradCAMElementWise(_GradientMethod):
    """Grad-CAM element-wise: ReLU of gradient times activation, summed over channels."""

    formula = staticmethod(gradcam_elementwise_formula)


@register_method("eigengradcam", layers="last")
class EigenGradCAM(_GradientMethod):
    """Eigen-Grad-CAM: first principal component of gradient times activation."""

    formula = staticmethod(eigengradcam_formula)
