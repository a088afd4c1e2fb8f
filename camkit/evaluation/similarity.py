"""Similarity of two batches of maps, as Adebayo et al. (NeurIPS 2018, "Sanity Checks for Saliency Maps")
compare a map before and after randomizing the model: Spearman rank correlation, SSIM and the Pearson
correlation of HOG features. Pure functions of ``(B, H, W)`` pairs, each returning ``(B,)``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DependencyError, InputError
from ._common import check_map_batch, pearson, spearman

__all__ = ["spearman_similarity", "ssim", "hog_similarity", "SIMILARITIES"]


def _pair(a: object, b: object) -> Tuple[Tensor, Tensor]:
    a, b = check_map_batch(a, "maps"), check_map_batch(b, "other maps")
    if a.shape != b.shape or a.dim() != 3:
        raise InputError(f"the two batches of maps must have the same shape (B, H, W), got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    return a, b.to(a.device)


def spearman_similarity(a: Tensor, b: Tensor, absolute: bool = False) -> Tensor:
    """Spearman rank correlation of each pair of maps (ties get their average rank, as scipy's ``spearmanr``).

    Args:
        a (Tensor): ``(B, H, W)``.
        b (Tensor): ``(B, H, W)``.
        absolute (bool, optional): Compare ``|a|`` and ``|b|`` (Adebayo et al.'s "absolute value" variant).
            Default: False.

    Returns:
        *Tensor*: ``(B,)`` float64 in [-1, 1]; NaN where a map is constant (undefined).

    Raises:
        InputError: Shapes differ, or a map holds NaN or Inf.
    """
    a, b = _pair(a, b)
    return spearman(a.abs(), b.abs()) if absolute else spearman(a, b)


def ssim(a: Tensor, b: Tensor, win_size: int = 7, data_range: Optional[float] = None,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean structural similarity (Wang et al., 2004) of each pair of maps, as scikit-image's
    ``structural_similarity`` computes it by default: a ``win_size`` square uniform window, sample
    covariances, the mean over the windows that lie inside the map.

    Args:
        a (Tensor): ``(B, H, W)``, H and W at least ``win_size``.
        b (Tensor): ``(B, H, W)``.
        win_size (int, optional): Odd, >= 3. Default: 7.
        data_range (float, optional): The maps' value range; default per pair the range of both maps
            together (Quantus's rule; 1 where both are one constant).
        k1 (float, optional): Default: 0.01.
        k2 (float, optional): Default: 0.03.

    Returns:
        *Tensor*: ``(B,)`` float64, at most 1 (1 for equal maps).

    Raises:
        InputError: Shapes differ, non-finite maps, a bad ``win_size`` or ``data_range``.
    """
    a, b = _pair(a, b)
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise InputError(f"win_size must be an odd int >= 3, got {win_size!r}")
    if min(a.shape[-2:]) < win_size:
        raise InputError(f"maps of size {tuple(a.shape[-2:])} are smaller than the SSIM window {win_size}")
    x, y = a.double()[:, None], b.double()[:, None]
    if data_range is None:
        both = torch.cat([x.flatten(1), y.flatten(1)], 1)
        r = both.amax(1) - both.amin(1)
        r = torch.where(r > 0, r, torch.ones_like(r))[:, None, None, None]
    elif not data_range > 0:
        raise InputError(f"data_range must be positive, got {data_range!r}")
    else:
        r = torch.tensor(float(data_range), dtype=torch.float64, device=x.device)
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731 (windows inside the map only)
    ux, uy = mean(x), mean(y)
    norm = win_size ** 2 / (win_size ** 2 - 1)
    vx, vy = norm * (mean(x * x) - ux * ux), norm * (mean(y * y) - uy * uy)
    vxy = norm * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def hog_similarity(a: Tensor, b: Tensor, orientations: int = 9, pixels_per_cell: Tuple[int, int] = (8, 8),
                   cells_per_block: Tuple[int, int] = (3, 3)) -> Tensor:
    """Pearson correlation of the HOG features (Dalal and Triggs, 2005) of each pair of maps (Adebayo et al.).

    HOG comes from scikit-image (an optional dependency: ``pip install scikit-image``), computed on the
    CPU per map; the maps go to the host once.

    Args:
        a (Tensor): ``(B, H, W)``.
        b (Tensor): ``(B, H, W)``.
        orientations, pixels_per_cell, cells_per_block: scikit-image's ``hog`` options (its defaults are
            9, (8, 8), (3, 3)).

    Returns:
        *Tensor*: ``(B,)`` float64 in [-1, 1]; NaN where a map's HOG is constant.

    Raises:
        InputError: Shapes differ, non-finite maps, maps too small for one HOG block.
        DependencyError: scikit-image is not installed.
    """
    a, b = _pair(a, b)
    try:
        from skimage.feature import hog
    except ImportError as e:  # pragma: no cover - scikit-image is in the test environment
        raise DependencyError("hog_similarity needs scikit-image: pip install scikit-image") from e
    need = (pixels_per_cell[0] * cells_per_block[0], pixels_per_cell[1] * cells_per_block[1])
    if a.shape[-2] < need[0] or a.shape[-1] < need[1]:
        raise InputError(f"maps of size {tuple(a.shape[-2:])} are smaller than one HOG block {need}")
    feats = [torch.stack([torch.from_numpy(hog(m.numpy(), orientations=orientations, pixels_per_cell=pixels_per_cell,
                                                cells_per_block=cells_per_block, feature_vector=True))
                          for m in t.detach().double().cpu()]) for t in (a, b)]
    return pearson(feats[0], feats[1]).to(a.device)


#: Name -> similarity function ``(a (B, H, W), b (B, H, W)) -> (B,)``, for :func:`model_randomization`.
SIMILARITIES: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "spearman": spearman_similarity,
    "spearman_abs": lambda a, b: spearman_similarity(a, b, absolute=True),
    "ssim": ssim,
    "hog": hog_similarity,
}
