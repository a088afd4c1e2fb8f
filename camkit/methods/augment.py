"""Test-time augmentation (the ``aug_smooth`` option): :func:`aug_smooth` wraps any
method's call, averaging its maps over flipped and scaled copies of the input."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import InputError
from ..targets import ClassScore, TargetSpec, TopK, as_target
from .result import CAMResult

# (horizontal flip, intensity factor): pytorch-grad-cam's default, ttach's
# Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])]).
AUGMENTATIONS: Tuple[Tuple[bool, float], ...] = tuple((f, m) for f in (False, True) for m in (0.9, 1.0, 1.1))


def _augment(x: Tensor, flip: bool, factor: float) -> Tensor:
    x = x * factor if factor != 1.0 else x
    return x.flip(-1) if flip else x


def aug_smooth(
    call: Callable[..., CAMResult],
    x: Tensor,
    targets: TargetSpec = None,
    topk: Optional[int] = None,
    augmentations: Sequence[Tuple[bool, float]] = AUGMENTATIONS,
) -> CAMResult:
    """Maps averaged over test-time augmentations of ``x``, each mapped back.

    ``call(x, targets, topk)`` is a method's call. Each augmentation
    ``(flip, factor)`` multiplies the input by ``factor`` and flips it left-right
    if ``flip``; its maps (and raw layer maps) are flipped back, and ``maps`` /
    ``layer_maps`` are the means over the augmentations. The targets are fixed by
    the un-augmented input: ``topk`` / top-1 classes are chosen there and kept
    for the others. ``logits``, ``targets``, ``scores`` and ``valid`` are the
    un-augmented call's.
    """
    augmentations = [(bool(f), float(m)) for f, m in augmentations]
    if (False, 1.0) not in augmentations:
        raise InputError("aug_smooth's augmentations must include the identity (False, 1.0)")
    first = call(x, targets, topk)
    target = as_target(targets, topk)
    fixed = ClassScore(first.targets) if isinstance(target, TopK) else target
    maps: List[Tensor] = []
    layer_maps: Dict[str, List[Tensor]] = {n: [] for n in first.layer_maps}
    for flip, factor in augmentations:
        res = first if (flip, factor) == (False, 1.0) else call(_augment(x, flip, factor), fixed, None)
        maps.append(res.maps.flip(-1) if flip else res.maps)
        for n, m in res.layer_maps.items():
            layer_maps[n].append(m.flip(-1) if flip else m)
    return CAMResult(
        maps=torch.stack(maps).mean(dim=0), targets=first.targets, logits=first.logits,
        layer_maps={n: torch.stack(ms).mean(dim=0) for n, ms in layer_maps.items()},
        scores=first.scores, valid=first.valid,
    )
