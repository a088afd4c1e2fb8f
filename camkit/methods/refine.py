"""RefineCAM ("How to Evaluate and Refine your CAM", arXiv 2605.14641): the
maps of several layers, each normalized to [0, 1], resized to one size and
multiplied element-wise, then normalized again. A coarse layer's map keeps a
fine layer's detail only where both agree, which denoises the early layers.

The per-layer maps are a base gradient formula's (Grad-CAM++ by default, as
both peers have it), from one forward and one batched backward for all layers
and targets. ``result.maps`` is the product at the input's size;
``result.maps_at(size)`` at any other (torchcam forms it at the largest
layer's size, pytorch-grad-cam at the input's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

from .base import _GradientMethod
from .contrast import BASES, check_base
from .options import GradientOptions
from .precision import float32_math
from .registry import register_method


def refine_product(maps: Sequence[Tensor], size: Tuple[int, int], normalize=None) -> Tensor:
    """RefineCAM's fusion: ``N(prod_l up(N(M_l)))``.

    Args:
        maps: each layer's raw maps ``(B, K, h_l, w_l)``.
        size: the ``(H, W)`` the normalized maps are resized to (bilinear, ``align_corners=False``).
        normalize: ``N``, a normalizer ``(..., h, w) -> (..., h, w)`` (min-max in the paper);
            None multiplies the raw maps and leaves the product as it is.

    Returns:
        ``(B, K, H, W)``.
    """
    out: Optional[Tensor] = None
    for m in maps:
        m = m if normalize is None else normalize(m)
        if tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
        out = m if out is None else out * m
    assert out is not None
    return out if normalize is None else normalize(out)


@dataclass(frozen=True)
class RefineOptions(GradientOptions):
    """Plus ``base``: the per-layer formula (``"gradcampp"``, ``"gradcam"`` or ``"layercam"``).
    ``fusion=`` and ``weights=`` do not apply (the layers are multiplied)."""

    base: str = "gradcampp"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_base(self.base)


@register_method("refinecam", layers="stages", fuses=False)
class RefineCAM(_GradientMethod):
    """RefineCAM: the base method's map at each layer, normalized, resized and multiplied."""

    Options = RefineOptions
    volumes = False  # the product fusion is 2-D
    differentiable = False

    def _formula(self, A: Tensor, G: Tensor) -> Tensor:
        return BASES[self.options.base](A, G, eigen=self.options.eigen_smooth)

    @staticmethod
    def _combine(layer_maps: Dict[str, Tensor], size: Tuple[int, ...], normalize, fusion: str,
                 weights: Optional[Sequence[float]], valid: Optional[Tensor] = None) -> Tensor:
        """The product of the layers' normalized maps at ``size`` (see :func:`refine_product`)."""
        first = next(iter(layer_maps.values()))
        with float32_math(first.device.type):
            out = refine_product(list(layer_maps.values()), (int(size[0]), int(size[1])), normalize)
            if valid is not None:
                out = out * valid[..., None, None]
        return out

