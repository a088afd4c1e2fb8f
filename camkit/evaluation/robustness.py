"""Robustness: how much does the map move when the input moves a little?

``explain`` is any callable ``explain(model, images (N, C, H, W), targets (N,)) -> maps (N, H, W)``; it is
called on chunks of ``batch_size`` perturbed images (all images' perturbations in one stream), never on
the user's model in another state. Noise comes from a private generator seeded with ``seed``.

- :func:`max_sensitivity` / :func:`avg_sensitivity` (Yeh et al., NeurIPS 2019; captum's
  ``sensitivity_max``, Quantus's ``MaxSensitivity`` / ``AvgSensitivity``):
  ``||map(x + d) - map(x)|| / ||map(x)||`` over ``d`` uniform in the L-inf ball of ``radius``.
- :func:`local_lipschitz` (Alvarez-Melis and Jaakkola, 2018; Quantus's ``LocalLipschitzEstimate``):
  ``max ||map(x + d) - map(x)||_2 / ||d||_2`` over Gaussian ``d``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from ..errors import InputError
from ..metrics import Targets
from ._common import check_images_targets, check_maps, check_positive_int, generator

__all__ = ["sensitivity", "max_sensitivity", "avg_sensitivity", "local_lipschitz"]


def _explain_all(explain: Callable, model: object, x: Tensor, t: Tensor, batch_size: int) -> Tensor:
    out = [check_maps(explain(model, x[i:i + batch_size], t[i:i + batch_size]), min(batch_size, x.shape[0] - i),
                      tuple(x.shape[-2:]), "the explainer's maps").detach() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def _noise(images: Tensor, samples: int, kind: str, scale: float, seed: int,
           perturbations: Optional[Tensor]) -> Tensor:
    B = images.shape[0]
    if perturbations is not None:
        if perturbations.dim() != 5 or perturbations.shape[0] != B or perturbations.shape[2:] != images.shape[1:]:
            raise InputError(f"perturbations must have shape ({B}, samples, {', '.join(map(str, images.shape[1:]))})")
        return perturbations.to(images)
    check_positive_int(samples, "samples")
    if not scale > 0:
        raise InputError(f"the perturbation's radius / std must be positive, got {scale!r}")
    g = generator(seed, images.device)
    shape = (B, samples, *images.shape[1:])
    if kind == "uniform":
        return (torch.rand(shape, generator=g, device=images.device, dtype=images.dtype) * 2 - 1) * scale
    return torch.randn(shape, generator=g, device=images.device, dtype=images.dtype) * scale


def sensitivity(model: object, explain: Callable, images: Tensor, targets: Targets, samples: int = 10,
                radius: float = 0.02, seed: int = 0, batch_size: int = 64,
                perturbations: Optional[Tensor] = None, maps: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Max- and average-sensitivity of the explainer at each image (captum's ``sensitivity_max`` rule).

    Per perturbation ``d`` (uniform in ``[-radius, radius]`` per input element),
    ``s = ||explain(x + d) - explain(x)||_F / ||explain(x)||_F`` (divided by 1 where the map is all zero).

    Args:
        model: Passed to ``explain``.
        explain (callable): ``explain(model, images, targets) -> (N, H, W)``.
        images (Tensor): ``(B, C, H, W)``.
        targets (sequence of int or Tensor): ``(B,)``.
        samples (int, optional): Perturbations per image. Default: 10.
        radius (float, optional): Default: 0.02 (captum's).
        seed (int, optional): Default: 0.
        batch_size (int, optional): Images per ``explain`` call. Default: 64.
        perturbations (Tensor, optional): ``(B, samples, C, H, W)`` the ``d``, instead of drawing them.
        maps (Tensor, optional): ``(B, H, W)`` ``explain(x)``, when already computed.

    Returns:
        *dict*: ``{"max": (B,), "avg": (B,), "all": (B, samples)}`` float64.

    Raises:
        InputError: Bad inputs, samples, radius or perturbations; explainer maps of another shape.
    """
    images, t = check_images_targets(images, targets)
    check_positive_int(batch_size, "batch_size")
    d = _noise(images, samples, "uniform", radius, seed, perturbations)
    B, S = d.shape[:2]
    a = _explain_all(explain, model, images, t, batch_size) if maps is None else \
        check_maps(maps, B, tuple(images.shape[-2:])).to(images.device)
    ap = _explain_all(explain, model, (images[:, None] + d).flatten(0, 1), t.repeat_interleave(S), batch_size)
    num = (ap.view(B, S, -1).double() - a.flatten(1).double()[:, None]).norm(dim=2)
    den = a.flatten(1).double().norm(dim=1)
    s = num / torch.where(den == 0, torch.ones_like(den), den)[:, None]
    return {"max": s.amax(1), "avg": s.mean(1), "all": s}


def max_sensitivity(model: object, explain: Callable, images: Tensor, targets: Targets, **kw: object) -> Tensor:
    """:func:`sensitivity`'s ``"max"``, ``(B,)`` float64 (lower is better).

    Args:
        model, explain, images, targets: As in :func:`sensitivity`.
        **kw: :func:`sensitivity`'s options.

    Returns:
        *Tensor*: ``(B,)``.
    """
    return sensitivity(model, explain, images, targets, **kw)["max"]  # type: ignore[arg-type]


def avg_sensitivity(model: object, explain: Callable, images: Tensor, targets: Targets, **kw: object) -> Tensor:
    """:func:`sensitivity`'s ``"avg"``, ``(B,)`` float64 (lower is better).

    Args:
        model, explain, images, targets: As in :func:`sensitivity`.
        **kw: :func:`sensitivity`'s options.

    Returns:
        *Tensor*: ``(B,)``.
    """
    return sensitivity(model, explain, images, targets, **kw)["avg"]  # type: ignore[arg-type]


def local_lipschitz(model: object, explain: Callable, images: Tensor, targets: Targets, samples: int = 10,
                    std: float = 0.1, seed: int = 0, batch_size: int = 64,
                    perturbations: Optional[Tensor] = None) -> Tensor:
    """Local Lipschitz estimate: ``max_d ||explain(x + d) - explain(x)||_2 / ||d||_2`` over ``samples``
    Gaussian perturbations ``d ~ N(0, std^2)`` per input element.

    Args:
        model, explain, images, targets, samples, seed, batch_size, perturbations: As in :func:`sensitivity`.
        std (float, optional): Default: 0.1 (Quantus's).

    Returns:
        *Tensor*: ``(B,)`` float64 (lower is better).

    Raises:
        InputError: As :func:`sensitivity`.
    """
    images, t = check_images_targets(images, targets)
    check_positive_int(batch_size, "batch_size")
    d = _noise(images, samples, "normal", std, seed, perturbations)
    B, S = d.shape[:2]
    a = _explain_all(explain, model, images, t, batch_size)
    ap = _explain_all(explain, model, (images[:, None] + d).flatten(0, 1), t.repeat_interleave(S), batch_size)
    num = (ap.view(B, S, -1).double() - a.flatten(1).double()[:, None]).norm(dim=2)
    den = d.flatten(2).double().norm(dim=2)
    return (num / den.clamp(min=torch.finfo(torch.float64).tiny)).amax(1)
