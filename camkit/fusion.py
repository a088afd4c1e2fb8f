"""Fusion of several layers' maps into one: pure functions.

Inputs are a sequence of L maps of equal shape ``(B, K, H, W)`` (normalized
per map and upsampled to a common size); the output has the same shape.
With maps in [0, 1] the output stays in [0, 1]. Weights are checked on the
host (:func:`check_weights`), so fusing does no host-device synchronization.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .errors import InputError

FUSIONS = ("max", "weighted")


def _stack(maps: Sequence[Tensor]) -> Tensor:
    if len(maps) == 0:
        raise InputError("fusion needs at least one map")
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        raise InputError(f"all maps must have the same shape (B, K, H, W), got {sorted(shapes)}")
    return torch.stack(list(maps), dim=0)


def check_weights(weights: object, count: int) -> Tuple[float, ...]:
    """Fusion weights as floats: one per layer, finite, non-negative, summing to at most 1."""
    try:
        w = tuple(float(v) for v in weights)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"fusion weights must be a sequence of numbers, got {weights!r}") from None
    if len(w) != count:
        raise InputError(f"expected {count} fusion weights, one weight per layer, got {list(w)}")
    if not all(math.isfinite(v) and v >= 0 for v in w):
        raise InputError(f"fusion weights must be finite and non-negative, got {list(w)}")
    if sum(w) > 1.0 + 1e-6:
        raise InputError(f"fusion weights must sum to at most 1, got {list(w)} (sum {sum(w):g})")
    return w


def fuse_max(maps: Sequence[Tensor]) -> Tensor:
    """Element-wise maximum over layers (the LayerCAM paper's fusion)."""
    return _stack(maps).amax(dim=0)


def fuse_weighted(maps: Sequence[Tensor], weights: Sequence[float], scale: Optional[float] = 2.0) -> Tensor:
    """``tanh(scale * sum_l w_l M_l)``: the seed study's fusion (weights 0.4, 0.4, 0.2, scale 2).

    With maps in [0, 1] the result lies in [0, tanh(scale)]. ``scale=None``
    gives the plain weighted sum ``sum_l w_l M_l`` (used for raw, unnormalized
    maps, where the tanh would only squash an arbitrary scale). One layer is
    fused too: ``tanh(scale * w M)``.
    """
    stacked = _stack(maps)
    w = check_weights(weights, stacked.shape[0])
    out = sum(wl * m for wl, m in zip(w, stacked.unbind(0)))
    return out if scale is None else torch.tanh(scale * out)


def fuse(maps: Sequence[Tensor], method: str = "max", weights: Optional[Sequence[float]] = None,
         scale: Optional[float] = 2.0) -> Tensor:
    """Dispatch on ``method``: ``"max"`` or ``"weighted"`` (needs ``weights``)."""
    if method == "max":
        if weights is not None:
            raise InputError("fusion='max' takes no weights; use fusion='weighted' to weight layers")
        return fuse_max(maps)
    if method == "weighted":
        if weights is None:
            raise InputError("fusion='weighted' needs weights=[...], one per layer (the study used 0.4, 0.4, 0.2)")
        return fuse_weighted(maps, weights, scale)
    raise InputError(f"unknown fusion {method!r}; choose one of {', '.join(FUSIONS)}")
