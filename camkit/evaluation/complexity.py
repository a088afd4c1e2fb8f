"""How concentrated a map is: pure functions of the maps alone, ``(B, ...) -> (B,)``, on any device.

- :func:`sparseness` (Chalasani et al., ICML 2020): the Gini index of ``|map|`` (1 = one pixel holds all).
- :func:`complexity` (Bhatt et al., IJCAI 2020): the entropy of ``|map| / sum |map|`` (log N = uniform).
- :func:`effective_complexity` (Nguyen and Martinez, 2020): the number of pixels with ``|map| > eps``.
- :func:`l1_complexity` (pytorch-grad-cam's ``Complexity``, used by ARCC): ``mean |map|``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ._common import check_map_batch

__all__ = ["sparseness", "complexity", "effective_complexity", "l1_complexity"]


def sparseness(maps: Tensor) -> Tensor:
    """Gini index of each map's absolute values: ``sum_i (2i - N - 1) a_(i) / (N sum a)`` over the ascending
    values ``a_(1) <= ... <= a_(N)``; 0 for an all-zero map.

    Args:
        maps (Tensor): ``(B, H, W)`` (or ``(B, N)``).

    Returns:
        *Tensor*: ``(B,)`` float64 in [0, 1).

    Raises:
        InputError: Not a batch of maps, or NaN / Inf values.
    """
    a = check_map_batch(maps).flatten(1).abs().double()
    n = a.shape[1]
    a = torch.sort(a, dim=1).values
    i = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    total = a.sum(1)
    return torch.where(total > 0, ((2 * i - n - 1) * a).sum(1) / (n * total.clamp(min=torch.finfo(a.dtype).tiny)),
                       torch.zeros_like(total))


def complexity(maps: Tensor) -> Tensor:
    """Entropy ``-sum p log p`` of ``p = |map| / sum |map|`` (natural log, ``0 log 0 = 0``); 0 for an all-zero map.

    Args:
        maps (Tensor): ``(B, H, W)`` (or ``(B, N)``).

    Returns:
        *Tensor*: ``(B,)`` float64 in [0, log N].

    Raises:
        InputError: Not a batch of maps, or NaN / Inf values.
    """
    a = check_map_batch(maps).flatten(1).abs().double()
    total = a.sum(1, keepdim=True)
    p = a / total.clamp(min=torch.finfo(a.dtype).tiny)
    return -torch.where(p > 0, p * p.clamp(min=torch.finfo(a.dtype).tiny).log(), torch.zeros_like(p)).sum(1)


def effective_complexity(maps: Tensor, eps: float = 1e-5) -> Tensor:
    """The number of pixels whose absolute map value exceeds ``eps``.

    Args:
        maps (Tensor): ``(B, H, W)`` (or ``(B, N)``).
        eps (float, optional): ``>= 0``. Default: 1e-5.

    Returns:
        *Tensor*: ``(B,)`` long.

    Raises:
        InputError: Not a batch of maps, NaN / Inf values, or a negative ``eps``.
    """
    if not eps >= 0:
        raise InputError(f"eps must be >= 0, got {eps!r}")
    return (check_map_batch(maps).flatten(1).abs() > eps).sum(1)


def l1_complexity(maps: Tensor) -> Tensor:
    """``mean |map|`` per map (pytorch-grad-cam's ``Complexity``; in [0, 1] for maps in [0, 1]).

    Args:
        maps (Tensor): ``(B, H, W)`` (or ``(B, N)``).

    Returns:
        *Tensor*: ``(B,)`` float64.

    Raises:
        InputError: Not a batch of maps, or NaN / Inf values.
    """
    return check_map_batch(maps).flatten(1).abs().double().mean(1)
