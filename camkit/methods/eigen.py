"""Eigen-CAM and the channel reductions every map formula ends with.

A map is a layer's per-channel contributions ``E (B, K, C, h, w)`` reduced
over the channels, then ReLU: by their sum (every method's default) or, with
``eigen=True`` (the ``eigen_smooth`` option), by their projection on their
first principal direction (:func:`eigen_projection`). Channel-weight methods
(Grad-CAM, Score-CAM ...) have ``E = w_k A_k``; :func:`channel_map` forms the
sum without building E.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from .base import CallContext, _Method
from .options import SmoothingOptions
from .precision import float32_math, work_dtype
from .registry import register_method


def eigen_projection(E: Tensor) -> Tensor:
    """Each position's channel vector projected on the first principal direction:
    ``(..., C, h, w) -> (..., h, w)``.

    The ``h * w`` vectors are centered (their mean over the positions
    removed) before the SVD, as pytorch-grad-cam does. The sign of a
    principal direction is arbitrary; here it is the one whose loadings sum
    to >= 0, so that the map correlates positively with the (centered) sum
    of the channels. A map whose contributions hold a NaN or an Inf comes out
    all NaN (camkit's non-finite policy).
    """
    M = E.flatten(-2).transpose(-1, -2)  # (..., hw, C)
    finite = torch.isfinite(M)
    M = torch.where(finite, M, torch.zeros_like(M))  # the SVD cannot take them; such maps come out NaN
    M = M - M.mean(dim=-2, keepdim=True)
    _, _, vh = torch.linalg.svd(M, full_matrices=False)
    v = vh[..., 0, :]  # (..., C)
    v = torch.where(v.sum(dim=-1, keepdim=True) < 0, -v, v)
    proj = (M @ v.unsqueeze(-1)).squeeze(-1)
    proj = torch.where(finite.all(dim=-1).all(dim=-1, keepdim=True), proj, torch.full_like(proj, float("nan")))
    return proj.unflatten(-1, E.shape[-2:])


def element_map(E: Tensor, eigen: bool = False) -> Tensor:
    """``ReLU(sum_k E_k)`` (or ``ReLU(eigen_projection(E))``): ``(B, K, C, h, w) -> (B, K, h, w)``."""
    return (eigen_projection(E) if eigen else E.sum(dim=2)).clamp_(min=0)


def channel_map(w: Tensor, A: Tensor, eigen: bool = False) -> Tensor:
    """``ReLU(sum_k w_k A_k)`` (or its eigen projection): w ``(B, K, C)``, A ``(B, C, h, w)`` -> ``(B, K, h, w)``."""
    if eigen:
        return element_map(w[..., None, None] * A[:, None], eigen=True)
    return torch.einsum("bkc,bchw->bkhw", w, A).clamp_(min=0)


def eigencam_formula(A: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad and Yeasin, 2020): ``ReLU(eigen_projection(A))``, ``(B, C, h, w) -> (B, h, w)``."""
    return eigen_projection(A).clamp_(min=0)


@register_method("eigencam", layers="last")
class EigenCAM(_Method):
    """Eigen-CAM: the first principal component of a layer's output (no gradients).
    Class-agnostic: every target of an image gets the same map."""

    Options = SmoothingOptions
    volumes = True  # positions of a (B, C, t, h, w) layer as one set (camkit.methods.volume)
    differentiable = True  # the projection keeps its graph with create_graph=True

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        for name in self.layer_names:
            A = self._as_4d(name, ctx.acts[name])
            with float32_math(A.device.type):
                out[name] = eigencam_formula(work_dtype(A))[:, None].expand(-1, ctx.values.shape[1], -1, -1)
        return out
