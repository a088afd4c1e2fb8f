"""ARCC (pytorch-grad-cam's metric, used with RefineCAM): the harmonic mean of three scores in [0, 1] of a map
in [0, 1] -- coherency (the map computed again on the image masked by the map correlates with it), 1 minus
complexity (the map's mean value) and ROAD (twice the combined ROAD score, clipped to [0, 1]).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from torch import Tensor

from ..errors import InputError
from ..metrics import Model, Targets
from ._common import check_inputs, check_maps
from .complexity import l1_complexity
from .faithfulness import road

__all__ = ["coherency", "arcc"]

_EPS = 1e-8  # pytorch-grad-cam's


def coherency(model: Model, explain: Callable, images: Tensor, maps: Tensor, targets: Targets) -> Tensor:
    """``(1 + r) / 2`` with ``r`` the Pearson correlation (sample deviations, ``+ 1e-8`` in the denominator, as
    pytorch-grad-cam's ``Coherency``) of each map and ``explain(model, images * map, targets)``.

    Args:
        model: Passed to ``explain``.
        explain (callable): ``explain(model, images, targets) -> (B, H, W)``.
        images (Tensor): ``(B, C, H, W)``.
        maps (Tensor): ``(B, H, W)`` in [0, 1].
        targets (sequence of int or Tensor): ``(B,)``.

    Returns:
        *Tensor*: ``(B,)`` float64 in [0, 1].

    Raises:
        InputError: Bad inputs, maps outside [0, 1], explainer maps of another shape.
    """
    images, maps, t = check_inputs(images, maps, targets)
    if (maps < 0).any() or (maps > 1).any():
        raise InputError("maps must lie in [0, 1] for ARCC and coherency (normalize them first)")
    again = check_maps(explain(model, images * maps[:, None].to(images.dtype), t), maps.shape[0],
                       tuple(maps.shape[-2:]), "the explainer's maps").detach()
    a, b = maps.flatten(1).double(), again.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    n = a.shape[1] - 1
    rho = (a * b).sum(1) / n / ((a.square().sum(1) / n).sqrt() * (b.square().sum(1) / n).sqrt() + _EPS)
    return (rho + 1) / 2


def arcc(model: Model, explain: Callable, images: Tensor, maps: Tensor, targets: Targets,
         percentiles: Sequence[float] = (20, 40, 60, 80), noise: float = 0.01, seed: int = 0,
         batch_size: int = 64, tol: float = 1e-4) -> Dict[str, Tensor]:
    """ARCC: ``3 / (1 / (coherency + e) + 1 / (1 - complexity + e) + 1 / (road + e))``, ``e = 1e-8``.

    Args:
        model (callable): Images -> logits; passed to ``explain`` too.
        explain (callable): ``explain(model, images, targets) -> (B, H, W)`` (the method that made ``maps``).
        images (Tensor): ``(B, C, H, W)``.
        maps (Tensor): ``(B, H, W)`` in [0, 1].
        targets (sequence of int or Tensor): ``(B,)``.
        percentiles (sequence of float, optional): ROAD's. Default: 20, 40, 60, 80 (pytorch-grad-cam's).
        noise (float, optional): ROAD's imputation noise. Default: 0.01.
        seed (int, optional): ROAD's seed. Default: 0.
        batch_size (int, optional): Default: 64.
        tol (float, optional): ROAD's imputation tolerance. Default: 1e-4.

    Returns:
        *dict*: ``{"arcc", "coherency", "complexity", "road"}``, each ``(B,)`` float64 (road: the clipped score).

    Raises:
        InputError: As :func:`coherency` and :func:`camkit.evaluation.road`.
    """
    coh = coherency(model, explain, images, maps, targets)
    comp = l1_complexity(maps).to(coh.device)
    r = (2 * road(model, images, maps, targets, percentiles, noise, "logit", seed, batch_size, tol)["combined"]).clamp(0, 1)
    score = 3 / (1 / (coh + _EPS) + 1 / ((1 - comp) + _EPS) + 1 / (r + _EPS))
    return {"arcc": score, "coherency": coh, "complexity": comp, "road": r}
