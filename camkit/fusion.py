"""Fusion of several layers' maps into one: pure functions.

Inputs are a sequence of L maps of equal shape ``(B, K, H, W)`` with values in
[0, 1] (already normalized per map and upsampled to a common size); the output
has the same shape and stays in [0, 1].
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .errors import InputError


def _stack(maps: Sequence[Tensor]) -> Tensor:
    if len(maps) == 0:
        raise InputError("fusion needs at least one map")
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        raise InputError(f"all maps must have the same shape (B, K, H, W), got {sorted(shapes)}")
    return torch.stack(list(maps), dim=0)


def fuse_max(maps: Sequence[Tensor]) -> Tensor:
    """Element-wise maximum over layers (the LayerCAM paper's fusion)."""
    return _stack(maps).amax(dim=0)


def fuse_weighted(maps: Sequence[Tensor], weights: Sequence[float], scale: float = 2.0) -> Tensor:
    """tanh(scale * sum_l w_l M_l): the seed study's fusion (weights 0.4, 0.4, 0.2, scale 2).

    Weights must be non-negative, one per map, and sum to at most 1 so the
    result stays in [0, tanh(scale)].
    """
    stacked = _stack(maps)
    w = torch.as_tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    if w.dim() != 1 or w.numel() != stacked.shape[0]:
        raise InputError(f"expected {stacked.shape[0]} fusion weights (one per layer), got {list(weights)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise InputError(f"fusion weights must be finite and non-negative, got {list(weights)}")
    if float(w.sum()) > 1.0 + 1e-6:
        raise InputError(f"fusion weights must sum to at most 1, got {list(weights)} (sum {float(w.sum()):g})")
    return torch.tanh(scale * torch.einsum("l,l...->...", w, stacked))


def fuse(maps: Sequence[Tensor], method: str = "max", weights: Optional[Sequence[float]] = None) -> Tensor:
    """Dispatch on ``method``: ``"max"`` or ``"weighted"`` (needs ``weights``)."""
    if method == "max":
        if weights is not None:
            raise InputError("fusion='max' takes no weights; use fusion='weighted' to weight layers")
        return fuse_max(maps)
    if method == "weighted":
        if weights is None:
            raise InputError("fusion='weighted' needs weights=[...], one per layer (the study used 0.4, 0.4, 0.2)")
        return fuse_weighted(maps, weights)
    raise InputError(f"unknown fusion {method!r}; choose 'max' or 'weighted'")
