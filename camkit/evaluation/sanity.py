"""Sanity checks for saliency maps: does the map depend on the model at all?

- :func:`model_randomization` (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency Maps"): the
  layers' parameters are re-drawn, top layer first, cumulatively ("cascading") or one layer at a time
  ("independent"), and the maps of the randomized model are compared with the original maps (Spearman
  rank correlation, SSIM, HOG similarity). A map that stays similar does not explain the model.
- :func:`random_logit` (Sixt et al., ICML 2020, "When Explanations Lie"): the map of the target class
  against the map of a random other class.

The user's model is never changed: the randomization works on a deep copy (``copy_bytes`` in the result
says how much memory its parameters and buffers take). Randomness comes from private seeded generators.

``explain`` is any callable ``explain(model, images (B, C, H, W), targets (B,)) -> maps (B, H, W)``, e.g.
:func:`method_explainer` for a camkit method.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from ..metrics import Targets, _check_targets
from ._common import check_images_targets, check_maps, generator
from .similarity import SIMILARITIES

__all__ = ["model_randomization", "random_logit", "randomizable_layers", "reinitialize", "method_explainer",
           "shuffled_labels"]

Randomizer = Callable[[nn.Module, torch.Generator], None]


def method_explainer(method: type, layers: Any = None, **options: Any) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """An ``explain`` callable for a camkit method class: ``method(model, layers, **options)(images, targets)``'s
    maps at the images' size, ``(B, H, W)``.

    Args:
        method (type): A camkit method class, e.g. ``camkit.GradCAM``.
        layers: Its layers (names resolve on whichever model ``explain`` is given, e.g. a randomized copy).
        **options: The method's options.

    Returns:
        *callable*: ``explain(model, images, targets) -> (B, H, W)``.
    """
    def explain(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return method(model, layers, **options)(images, targets.reshape(-1)).maps[:, 0]

    return explain


def randomizable_layers(model: nn.Module) -> List[str]:
    """Names of the modules that hold floating-point parameters of their own, in ``named_modules()`` order
    (input side first).

    Args:
        model (nn.Module): The model.

    Returns:
        *list of str*: Module names.
    """
    return [n for n, m in model.named_modules()
            if any(p.is_floating_point() for p in m.parameters(recurse=False))]


def reinitialize(module: nn.Module, gen: torch.Generator) -> None:
    """Re-draw ``module``'s own floating parameters from ``U(-b, b)``, ``b = 1 / sqrt(fan_in)`` (PyTorch's
    default bound for Conv and Linear weights and biases; ``fan_in`` of the module's first >= 2-D parameter,
    1 for modules without one, e.g. norm layers), drawn on the CPU from ``gen`` (the same on every device).

    Args:
        module (nn.Module): The module (changed in place).
        gen (torch.Generator): A CPU generator.
    """
    own = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
    fan_in = next((p[0].numel() for p in own if p.dim() >= 2), 1)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        for p in own:
            draw = torch.rand(p.shape, generator=gen, dtype=torch.float64) * (2 * bound) - bound
            p.copy_(draw.to(p.dtype))


def _own_state(module: nn.Module) -> List[Tensor]:
    """The module's own parameters and buffers (a randomizer may reset both, e.g. BatchNorm's statistics)."""
    return list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))


def _check_layers(model: nn.Module, layers: Optional[Sequence[str]]) -> List[str]:
    names = randomizable_layers(model)
    if not names:
        raise InputError("the model has no parameters to randomize")
    if layers is None:
        return names[::-1]
    if isinstance(layers, str):
        layers = [layers]
    known = dict(model.named_modules())
    bad = [n for n in layers if n not in known or n not in names]
    if bad:
        raise InputError(f"cannot randomize layer(s) {bad}: not modules of the model with parameters of their "
                         f"own (randomizable: {names[:6]}{' ...' if len(names) > 6 else ''})")
    return list(layers)


def _explained(explain: Callable, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    maps = explain(model, images, targets)
    return check_maps(maps, images.shape[0], tuple(images.shape[-2:]), "the explainer's maps").detach()


def _similarities(names: Sequence[str], a: Tensor, b: Tensor) -> Dict[str, Tensor]:
    return {n: SIMILARITIES[n](a, b) for n in names}


def _check_similarity(similarity: Union[str, Sequence[str]]) -> List[str]:
    names = [similarity] if isinstance(similarity, str) else list(similarity)
    bad = [n for n in names if n not in SIMILARITIES]
    if not names or bad:
        raise InputError(f"unknown similarity {bad or names}; choose from {sorted(SIMILARITIES)}")
    return names


def model_randomization(model: nn.Module, explain: Callable, images: Tensor, targets: Targets,
                        order: str = "cascading", layers: Optional[Sequence[str]] = None,
                        similarity: Union[str, Sequence[str]] = ("spearman", "ssim", "hog"), seed: int = 0,
                        randomize: Optional[Randomizer] = None, keep_maps: bool = False) -> Dict[str, Any]:
    """Model parameter randomization test (Adebayo et al., 2018) on a deep copy of ``model``.

    The original maps are the explainer's maps on the (not yet randomized) copy. Then, for each layer in
    ``layers`` (default: every module with parameters of its own, output side first), its parameters are
    re-drawn by ``randomize`` (default :func:`reinitialize`) from one CPU generator seeded with ``seed``:
    ``"cascading"`` keeps the layers randomized so far (layer ``i`` of the result has layers ``0..i`` random),
    ``"independent"`` restores the previous layer first (only layer ``i`` is random).

    Args:
        model (nn.Module): The model; never changed.
        explain (callable): ``explain(model, images, targets) -> (B, H, W)``.
        images (Tensor): ``(B, C, H, W)``.
        targets (sequence of int or Tensor): ``(B,)`` class indices (the same for every randomization).
        order (str, optional): ``"cascading"`` or ``"independent"``. Default: ``"cascading"``.
        layers (sequence of str, optional): Module names in the order to randomize them.
        similarity (str or sequence of str, optional): Names in :data:`~camkit.evaluation.similarity.SIMILARITIES`.
        seed (int, optional): Default: 0.
        randomize (callable, optional): ``randomize(module, generator)`` re-draws one module in place.
        keep_maps (bool, optional): Also return every randomized model's maps. Default: False.

    Returns:
        *dict*: ``{"layers": [L names], similarity name: (L, B) float64, ..., "original_maps": (B, H, W),
        "maps": (L, B, H, W) (with keep_maps), "copy_bytes": int}``.

    Raises:
        InputError: Unknown order, similarity or layers, a model without parameters, bad images or
            targets, explainer maps of another shape or not finite.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be an nn.Module (its copy is randomized), got {type(model).__name__}")
    if order not in ("cascading", "independent"):
        raise InputError(f"order must be 'cascading' or 'independent', got {order!r}")
    names = _check_similarity(similarity)
    chosen = _check_layers(model, layers)
    images, t = check_images_targets(images, targets)
    work = copy.deepcopy(model)
    copy_bytes = sum(x.numel() * x.element_size() for x in list(work.parameters()) + list(work.buffers()))
    original = _explained(explain, work, images, t)
    gen, randomize = generator(seed, "cpu"), randomize or reinitialize
    modules = dict(work.named_modules())
    out: Dict[str, Any] = {"layers": chosen, **{n: [] for n in names}, "original_maps": original,
                           "copy_bytes": copy_bytes}
    kept, saved = [], None
    for name in chosen:
        if order == "independent" and saved is not None:
            with torch.no_grad():
                for p, v in zip(_own_state(saved[0]), saved[1]):
                    p.copy_(v)
        m = modules[name]
        saved = (m, [p.detach().clone() for p in _own_state(m)])
        randomize(m, gen)
        maps = _explained(explain, work, images, t)
        for n, v in _similarities(names, original, maps).items():
            out[n].append(v)
        if keep_maps:
            kept.append(maps)
    for n in names:
        out[n] = torch.stack(out[n])
    if keep_maps:
        out["maps"] = torch.stack(kept)
    return out


def random_logit(model: nn.Module, explain: Callable, images: Tensor, targets: Targets, num_classes: int,
                 similarity: str = "ssim", seed: int = 0, off_targets: Optional[Targets] = None) -> Dict[str, Tensor]:
    """Random logit test (Sixt et al., 2020): the similarity of the target's map and the map of a random
    other class, drawn uniformly from the ``num_classes - 1`` others by a generator seeded with ``seed``.

    Args:
        model (nn.Module): The model (``explain`` runs on it; camkit methods leave it as found).
        explain (callable): ``explain(model, images, targets) -> (B, H, W)``.
        images (Tensor): ``(B, C, H, W)``.
        targets (sequence of int or Tensor): ``(B,)`` class indices.
        num_classes (int): The model's classes, >= 2.
        similarity (str, optional): A name in :data:`~camkit.evaluation.similarity.SIMILARITIES`. Default: "ssim".
        seed (int, optional): Default: 0.
        off_targets (sequence of int or Tensor, optional): ``(B,)`` the other classes, instead of drawing them.

    Returns:
        *dict*: ``{"similarity": (B,) float64, "off_targets": (B,) long, "maps": (B, H, W), "off_maps": (B, H, W)}``
        (low similarity: the map is class-specific).

    Raises:
        InputError: ``num_classes < 2``, an off target equal to the target, bad inputs.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"num_classes must be an int >= 2, got {num_classes!r}")
    name = _check_similarity(similarity)[0]
    images, t = check_images_targets(images, targets)
    if off_targets is None:
        draw = torch.randint(0, num_classes - 1, (t.shape[0],), generator=generator(seed, "cpu")).to(t.device)
        off = draw + (draw >= t).long()  # the draw-th class among the others
    else:
        off = _check_targets(off_targets, t.shape[0], "off_targets").to(t.device)
    if (off == t).any() or (off < 0).any() or (off >= num_classes).any():
        raise InputError("off_targets must differ from the targets and lie in [0, num_classes)")
    maps = _explained(explain, model, images, t)
    off_maps = _explained(explain, model, images, off)
    return {"similarity": SIMILARITIES[name](maps, off_maps), "off_targets": off, "maps": maps, "off_maps": off_maps}


def shuffled_labels(labels: Targets, seed: int = 0) -> Tensor:
    """Labels permuted by a generator seeded with ``seed``: the data randomization test's training labels
    (Adebayo et al.: train the same head on them; its maps should no longer look like the real head's).

    Args:
        labels (sequence of int or Tensor): ``(N,)`` class indices.
        seed (int, optional): Default: 0.

    Returns:
        *Tensor*: ``(N,)`` long, the same multiset of labels in a random order.
    """
    y = torch.as_tensor(labels).reshape(-1).long()
    return y[torch.randperm(y.numel(), generator=generator(seed, "cpu")).to(y.device)]
