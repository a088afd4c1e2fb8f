"""What the evaluation metrics share: input checks, the model's scores on many inputs in chunks, private
generators, and ranks with averaged ties.

Shapes: ``images`` ``(B, C, H, W)`` in the model's input space, ``maps`` ``(B, H, W)`` at the images' size
(one map per image, for the image's one target), ``targets`` ``(B,)`` class indices.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from ..metrics import Model, Targets, _check_classes, _check_finite, _check_images, _check_targets, _inference, _logits

Score = str  # "logit" or "softmax"
Explainer = Callable[..., Tensor]


def check_inputs(images: object, maps: object, targets: Targets) -> Tuple[Tensor, Tensor, Tensor]:
    """Checked ``images (B, C, H, W)``, ``maps (B, H, W)`` (float, finite, the images' size) and ``targets (B,)``."""
    images = _check_images(images)
    B, _, H, W = images.shape
    maps = check_maps(maps, B, (H, W))
    return images, maps.to(images.device), _check_targets(targets, B).to(images.device)


def check_images_targets(images: object, targets: Targets) -> Tuple[Tensor, Tensor]:
    """Checked ``images (B, C, H, W)`` and ``targets (B,)`` (on the images' device)."""
    images = _check_images(images)
    return images, _check_targets(targets, images.shape[0]).to(images.device)


def check_maps(maps: object, batch: int, size: Tuple[int, int], name: str = "maps") -> Tensor:
    """``(B, H, W)`` floating, finite maps of the images' size."""
    if not isinstance(maps, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or maps.shape[0] != batch or tuple(maps.shape[-2:]) != tuple(size):
        raise InputError(f"{name} must have shape ({batch}, {size[0]}, {size[1]}) to match the images, got "
                         f"{tuple(maps.shape)} (upsample the maps to the images' size first)")
    maps = maps if maps.is_floating_point() else maps.float()
    _check_finite(maps, name)
    return maps


def check_map_batch(maps: object, name: str = "maps") -> Tensor:
    """``(B, H, W)`` (or ``(B, N)``) floating, finite maps, for metrics that need no images."""
    if not isinstance(maps, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(maps).__name__}")
    if maps.dim() < 2 or maps.shape[0] == 0 or maps[0].numel() == 0:
        raise InputError(f"{name} must have shape (B, H, W) with B >= 1, got {tuple(maps.shape)}")
    maps = maps if maps.is_floating_point() else maps.float()
    _check_finite(maps, name)
    return maps


def check_score(score: str) -> None:
    if score not in ("softmax", "logit"):
        raise InputError(f"score must be 'softmax' or 'logit', got {score!r}")


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def check_percentiles(percentiles: Union[float, Sequence[float]]) -> Tuple[float, ...]:
    """Percentiles strictly inside (0, 100), at least one."""
    p = (percentiles,) if isinstance(percentiles, (int, float)) else tuple(percentiles)
    if not p or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 100 for v in p):
        raise InputError(f"percentiles must be numbers strictly between 0 and 100, got {percentiles!r}")
    return tuple(float(v) for v in p)


def generator(seed: int, device: Union[str, torch.device]) -> torch.Generator:
    """A private generator on ``device`` seeded with ``seed`` (the global RNG is never drawn from)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError(f"seed must be an int, got {seed!r}")
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def scores(model: Model, x: Tensor, targets: Tensor, score: str, batch_size: int,
           source: Optional[Tensor] = None) -> Tensor:
    """The target's logit (or softmax probability) ``(N,)`` for inputs ``x (N, C, H, W)``, ``batch_size`` inputs
    per model call, under no_grad and eval mode; ``source (N,)`` names the images the inputs came from."""
    source = torch.arange(x.shape[0]) if source is None else source.cpu()
    out = []
    with _inference(model):
        for i in range(0, x.shape[0], batch_size):
            logits = _logits(model, x[i:i + batch_size], source[i:i + batch_size])
            t = targets[i:i + batch_size].to(logits.device)
            _check_classes(t, logits.shape[1], source[i:i + batch_size])
            v = logits.softmax(1) if score == "softmax" else logits
            out.append(v.gather(1, t[:, None])[:, 0])
    return torch.cat(out)


def predictions(model: Model, x: Tensor, batch_size: int) -> Tensor:
    """The model's logits ``(N, num_classes)`` for ``x (N, C, H, W)``, in chunks, no_grad and eval mode."""
    source = torch.arange(x.shape[0])
    with _inference(model):
        return torch.cat([_logits(model, x[i:i + batch_size], source[i:i + batch_size])
                          for i in range(0, x.shape[0], batch_size)])


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N along the last dimension, ties given their average rank (scipy's ``rankdata``), float64.

    Args:
        x (Tensor): ``(B, N)``.

    Returns:
        *Tensor*: ``(B, N)`` float64.
    """
    B, N = x.shape
    v, order = torch.sort(x, dim=1, stable=True)
    new = torch.ones(B, N, dtype=torch.bool, device=x.device)
    new[:, 1:] = v[:, 1:] != v[:, :-1]
    group = new.cumsum(1) - 1 + (torch.arange(B, device=x.device) * N)[:, None]  # unique per row
    pos = torch.arange(1, N + 1, dtype=torch.float64, device=x.device).expand(B, N).reshape(-1)
    sums = torch.zeros(B * N, dtype=torch.float64, device=x.device).index_add_(0, group.reshape(-1), pos)
    counts = torch.zeros(B * N, dtype=torch.float64, device=x.device).index_add_(0, group.reshape(-1),
                                                                              torch.ones_like(pos))
    ranked = (sums / counts.clamp(min=1))[group.reshape(-1)].view(B, N)
    return torch.empty_like(ranked).scatter_(1, order, ranked)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the rows of ``a`` and ``b`` ``(B, N)`` -> ``(B,)`` float64; NaN where a row is
    constant (the correlation is undefined there, as in scipy)."""
    a, b = a.double(), b.double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(den > 0, (a * b).sum(1) / den.clamp(min=torch.finfo(torch.float64).tiny),
                       torch.full_like(den, float("nan")))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the rows of ``a`` and ``b`` ``(B, ...)`` -> ``(B,)`` float64: the Pearson
    correlation of their average ranks (scipy's ``spearmanr``); NaN where a row is constant."""
    return pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))
