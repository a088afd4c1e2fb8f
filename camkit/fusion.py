"""Fusion of several layers' maps into one: pure functions.

Inputs are a sequence of L maps of equal shape ``(B, K, H, W)``, or ``(B, K, T, H, W)``
for videos and 3-D volumes (normalized per map and upsampled to a common size); the
output has the same shape.
With maps in [0, 1] the output stays in [0, 1]. Weights are checked on the
host (:func:`check_weights`), so fusing does no host-device synchronization.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .errors import InputError, InputTypeError

#: ``max`` (the LayerCAM paper), ``weighted`` (the seed study), ``mean`` (pytorch-grad-cam's multi-layer
#: rule), ``tanh_max`` (torchcam's LayerCAM fusion).
FUSIONS = ("max", "weighted", "mean", "tanh_max")


def _stack(maps: Sequence[Tensor]) -> Tensor:
    """``L`` maps ``(B, K, H, W)`` -> ``(L, B, K, H, W)``; InputError for none or unequal shapes."""
    if isinstance(maps, Tensor) or not all(isinstance(m, Tensor) for m in maps):
        raise InputTypeError("fusion takes a list of maps, one (B, K, H, W) tensor per layer, "
                             f"not {'a single tensor' if isinstance(maps, Tensor) else type(maps).__name__}")
    if len(maps) == 0:
        raise InputError("fusion needs at least one map")
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        raise InputError(f"all maps must have the same shape (B, K, H, W), got {sorted(shapes)}")
    return torch.stack(list(maps), dim=0)


def check_weights(weights: object, count: int) -> Tuple[float, ...]:
    """Fusion weights as floats: one per layer, finite, non-negative, summing to at most 1.

    Args:
        weights (sequence of numbers): One weight per layer.
        count (int): The number of layers.

    Returns:
        *tuple of float*: The ``count`` weights.

    Raises:
        InputError: ``weights`` is not a sequence of numbers, has another
            length than ``count``, holds a negative or non-finite value, or
            sums to more than 1.
    """
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


def check_fusion(fusion: str, weights: Optional[Sequence[float]], count: int) -> Optional[Tuple[float, ...]]:
    """Check a fusion name and its weights together.

    Args:
        fusion (str): One of :data:`FUSIONS`.
        weights (sequence of float or None): ``None`` for ``"max"``; one
            weight per layer for ``"weighted"``.
        count (int): The number of layers.

    Returns:
        *tuple of float or None*: The checked weights (:func:`check_weights`)
        for ``"weighted"``; ``None`` for ``"max"``.

    Raises:
        InputError: An unknown ``fusion``, weights given to ``"max"``, none
            given to ``"weighted"``, or weights :func:`check_weights` refuses.
    """
    if fusion not in FUSIONS:
        raise InputError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    if fusion != "weighted":
        if weights is not None:
            raise InputError(f"fusion={fusion!r} takes no weights; use fusion='weighted' to weight layers")
        return None
    if weights is None:
        raise InputError(f"fusion='weighted' needs one weight per layer ({count} layers), e.g. weights=[0.4, 0.4, 0.2]")
    return check_weights(weights, count)


def fuse_max(maps: Sequence[Tensor]) -> Tensor:
    """Element-wise maximum over layers (the LayerCAM paper's fusion).

    Args:
        maps (sequence of Tensor): ``L >= 1`` maps of one shape ``(B, K, H, W)``.

    Returns:
        *Tensor*: ``(B, K, H, W)``, the maps' dtype.

    Raises:
        InputError: No maps, or maps of different shapes.
    """
    return _stack(maps).amax(dim=0)


def fuse_mean(maps: Sequence[Tensor]) -> Tensor:
    """The mean over layers, min-max normalized again per map: pytorch-grad-cam's rule for several
    target layers (its ``aggregate_multi_layers``: each layer's map min-max scaled and resized to the
    input, ReLU, mean, then ``scale_cam_image``).

    Args:
        maps (sequence of Tensor): ``L >= 1`` maps ``(B, K, H, W)``, each normalized.

    Returns:
        *Tensor*: ``(B, K, H, W)`` in [0, 1] (0 where the mean is constant).
    """
    from .normalize import minmax

    mean = _stack(maps).clamp(min=0).mean(dim=0)
    return minmax(mean.flatten(2).unsqueeze(-1)).view_as(mean)  # each (H, W) or (T, H, W) map as one


def _weighted(stacked: Tensor, weights: Tuple[float, ...], scale: Optional[float]) -> Tensor:
    out = sum(wl * m for wl, m in zip(weights, stacked.unbind(0)))
    return out if scale is None else torch.tanh(scale * out)


def fuse_weighted(maps: Sequence[Tensor], weights: Sequence[float], scale: Optional[float] = 2.0) -> Tensor:
    """``tanh(scale * sum_l w_l M_l)``: the seed study's fusion (weights 0.4, 0.4, 0.2, scale 2).

    With maps in [0, 1] the result lies in [0, tanh(scale)]. ``scale=None``
    gives the plain weighted sum ``sum_l w_l M_l`` (used for raw, unnormalized
    maps, where the tanh would only squash an arbitrary scale). One layer is
    fused too: ``tanh(scale * w M)``.

    Args:
        maps (sequence of Tensor): ``L >= 1`` maps of one shape ``(B, K, H, W)``.
        weights (sequence of float): ``L`` weights (see :func:`check_weights`).
        scale (float or None, optional): The tanh's gain; ``None``: no tanh.
            Default: 2.0.

    Returns:
        *Tensor*: ``(B, K, H, W)``, the maps' dtype.

    Raises:
        InputError: No maps, maps of different shapes, or bad weights.
    """
    stacked = _stack(maps)
    return _weighted(stacked, check_weights(weights, stacked.shape[0]), scale)


def fuse(maps: Sequence[Tensor], method: str = "max", weights: Optional[Sequence[float]] = None,
         scale: Optional[float] = 2.0) -> Tensor:
    """Fuse with :func:`fuse_max`, :func:`fuse_mean`, :func:`fuse_weighted` or ``tanh_max``
    (the maximum of ``tanh(2 M)``, torchcam's rule at one size), checked by :func:`check_fusion`.

    Args:
        maps (sequence of Tensor): ``L >= 1`` maps of one shape ``(B, K, H, W)``.
        method (str, optional): One of :data:`FUSIONS`. Default: ``"max"``.
        weights (sequence of float, optional): ``L`` weights, for ``"weighted"`` only.
        scale (float or None, optional): ``"weighted"``'s tanh gain. Default: 2.0.

    Returns:
        *Tensor*: ``(B, K, H, W)``, the maps' dtype.

    Raises:
        InputError: What :func:`check_fusion` or the fusion itself refuses.
    """
    if method != "weighted":
        check_fusion(method, weights, 0)  # the count only matters for "weighted"
        if method == "mean":
            return fuse_mean(maps)
        return fuse_max([torch.tanh(2.0 * m) for m in _stack(maps)] if method == "tanh_max" else maps)
    stacked = _stack(maps)  # the maps are checked before the weights, as in fuse_weighted
    return _weighted(stacked, check_fusion(method, weights, stacked.shape[0]), scale)  # type: ignore[arg-type]
