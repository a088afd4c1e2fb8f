"""Quality metrics for saliency maps: pure, batched functions usable on any model.

Conventions (all functions):

- ``model`` is any callable mapping images ``(N, C, H, W)`` to logits
  ``(N, num_classes)``; it runs under ``torch.no_grad()`` and, when it is an
  ``nn.Module``, under :func:`camkit.hooks.eval_mode` (eval mode, every
  module's own flag restored after, one thread at a time per model).
- Non-finite images, maps or logits, and classes outside the model's range,
  raise :class:`camkit.errors.InputError` naming the image indices.
- ``images`` are ``(B, C, H, W)`` in the model's input space (already
  normalized); baselines are built in that same space.
- ``maps`` are ``(B, H, W)`` (one map per image) or ``(B, M, H, W)`` (M maps per
  image, e.g. M methods, all for the image's one target), at the images'
  resolution; larger value = more important. Only their order matters for
  deletion/insertion; their values matter for the other metrics.
- ``targets`` are ``(B,)`` class indices.

Metrics:

- :func:`deletion_curve` / :func:`insertion_curve` / :func:`deletion_insertion`
  (Petsiuk et al., 2018, "RISE"): pixels are replaced by a baseline (deletion)
  or revealed on top of it (insertion) in order of decreasing map value, in
  ``steps`` equal steps, and the target's softmax probability is tracked:
  ``(B, steps + 1)`` curves (``(B, M, steps + 1)`` for ``M`` maps per image).
  Step ``k`` has the first ``floor(k * H * W / steps)`` pixels of the order
  changed. **Ties** are broken deterministically: a stable sort keeps equal
  values in raster (row-major) order, so among equal values the pixel that
  comes first in raster order is removed/revealed first. :func:`auc` is the
  trapezoid rule over ``[0, 1]``.
- :func:`average_drop_increase` (Chattopadhay et al., 2018, "Grad-CAM++"): the
  model on the image multiplied by the map.
- :func:`pointing_game`, :func:`iou`, :func:`iou_sweep`: against ground-truth
  masks ``(B, H, W)`` (bool or {0, 1}).
- :func:`make_grids` and :func:`grid_pointing_game` (Rao et al., CVPR 2022,
  "Towards Better Understanding Attribution Methods"; grids as in Boehle et
  al., 2021): 2x2 grids of images of four distinct classes; the score of a map
  for the class of cell ``c`` is the fraction of its positive mass inside cell
  ``c``. Which images may enter a grid (only confidently classified ones) is
  decided by :func:`confident_mask` and passed to :func:`make_grids` as the
  pool of eligible images.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError, InputTypeError
from .hooks import eval_mode
from .targets import class_indices

Model = Callable[[Tensor], Tensor]
Baseline = Union[str, Tensor, Callable[[Tensor], Tensor]]
Targets = Union[Sequence[int], Tensor]

BASELINES = ("blur", "mean", "zeros")

# --------------------------------------------------------------------------- helpers


@contextmanager
def _inference(model: Model) -> Iterator[None]:
    """no_grad, and for an nn.Module :func:`camkit.hooks.eval_mode` (every flag restored, under its lock)."""
    with torch.no_grad(), (eval_mode(model) if isinstance(model, nn.Module) else nullcontext()):
        yield


def _listed(items: List[int], shown: int = 8) -> str:
    """'[0, 3]', at most ``shown`` items."""
    return str(items[:shown])[:-1] + (f", ... {len(items) - shown} more]" if len(items) > shown else "]")


def _check_finite(t: Tensor, what: str) -> None:
    """InputError naming the indices along dim 0 of ``t`` that hold a NaN or an Inf."""
    bad = ~torch.isfinite(t)
    if bad.any():
        idx = torch.nonzero(bad.reshape(bad.shape[0], -1).any(1)).flatten().tolist() if t.dim() else [0]
        raise InputError(f"{what} contain NaN or infinite values (index {_listed(idx)} along the first dimension)")


def _check_images(images: object) -> Tensor:
    if not isinstance(images, Tensor):
        raise InputTypeError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.dim() == 5:
        raise InputError(f"images have shape {tuple(images.shape)}: videos and 3-D volumes (B, C, T, H, W) are "
                         "not supported by this metric (its baseline and perturbations are defined on 2-D "
                         "images); iou and pointing_game take volumes with dims=3")
    if images.dim() != 4 or images.shape[0] == 0:
        raise InputError(f"images must have shape (B, C, H, W) with B >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputTypeError(f"images must be floating point, got dtype {images.dtype}")
    _check_finite(images, "images")
    return images


def _check_maps(maps: object, batch: int, size: Tuple[int, int], name: str = "maps") -> Tensor:
    """(B, H, W) or (B, M, H, W) floating maps -> (B, M, H, W)."""
    if not isinstance(maps, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of shape (B, H, W) or (B, M, H, W), got {type(maps).__name__}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.shape[0] != batch or tuple(maps.shape[-2:]) != tuple(size):
        raise InputError(
            f"{name} must have shape ({batch}, {size[0]}, {size[1]}) or ({batch}, M, {size[0]}, {size[1]}) "
            f"to match the images, got {tuple(maps.shape)} (upsample the maps to the images' size first)"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    _check_finite(maps, name)
    return maps


def _check_targets(targets: object, batch: int, what: str = "targets") -> Tensor:
    """One class per image, ``(B,)`` long, by :func:`camkit.targets.class_indices`'s rule (an int is every
    image's class)."""
    t = class_indices(targets, batch, what)  # type: ignore[arg-type]
    if t.shape[1] != 1:
        raise InputError(f"{what} must have shape ({batch},) (one class per image), got {tuple(t.shape)}")
    return t[:, 0]


def _logits(model: Model, x: Tensor, source: Tensor) -> Tensor:
    """The model's logits (N, num_classes) for ``x`` (N, C, H, W), checked; ``source`` (N,) are
    the indices of the images ``x`` was made from (named in errors). Half precision is upcast."""
    logits = model(x)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"the model must return logits of shape (N, num_classes), got {shape}")
    bad = ~torch.isfinite(logits).all(1)
    if bad.any():
        images = sorted(set(source[bad.cpu()].tolist()))
        raise InputError(f"the model returned NaN or infinite logits for image(s) {_listed(images)} "
                         "(or for inputs made from them); check the model's weights and the input's scale")
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _check_classes(targets: Tensor, num_classes: int, source: Tensor, what: str = "target classes") -> None:
    """targets (N,) in [0, num_classes); ``source`` (N,) the images they belong to."""
    bad = (targets < 0) | (targets >= num_classes)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise InputError(f"{what} must lie in [0, {num_classes - 1}] (the model's classes), "
                         f"got {int(targets[i])} for image {int(source[i])}")


def _scores(model: Model, x: Tensor, targets: Tensor, score: str, source: Tensor) -> Tensor:
    """The target's softmax probability (or logit) ``(N,)`` for inputs ``x`` made from images ``source``."""
    logits = _logits(model, x, source)
    _check_classes(targets, logits.shape[1], source)
    out = logits.softmax(dim=1) if score == "softmax" else logits
    return out.gather(1, targets.to(out.device)[:, None])[:, 0]


def _check_score(score: str) -> None:
    if score not in ("softmax", "logit"):
        raise InputError(f"score must be 'softmax' or 'logit', got {score!r}")


def make_baseline(images: Tensor, baseline: Baseline = "blur", blur_kernel: int = 11, blur_sigma: float = 5.0) -> Tensor:
    """The image that replaces removed pixels, ``(B, C, H, W)``, in the images' space.

    - ``"blur"``: Gaussian blur of each image (kernel ``blur_kernel``, sigma
      ``blur_sigma``; RISE's defaults are 11 and 5), via torchvision's
      ``gaussian_blur`` (reflect padding).
    - ``"mean"``: each image's per-channel mean, everywhere.
    - ``"zeros"``: zeros (for inputs normalized by a dataset mean, the mean colour).
    - a tensor broadcastable to ``(B, C, H, W)``, or a callable ``images -> baseline``.

    Args:
        images (Tensor): ``(B, C, H, W)`` floating point.
        baseline (str, Tensor or callable, optional): As above. Default: ``"blur"``.
        blur_kernel (int, optional): Positive, odd, at most ``2 * min(H, W) - 1``. Default: 11.
        blur_sigma (float, optional): Positive. Default: 5.0.

    Returns:
        *Tensor*: ``(B, C, H, W)``, the images' dtype and device.

    Raises:
        InputError: Bad images, an unknown name, a bad blur kernel or sigma,
            or a tensor (or callable's result) that does not broadcast.
    """
    images = _check_images(images)
    if isinstance(baseline, str):
        if baseline == "blur":
            from torchvision.transforms.functional import gaussian_blur

            if blur_kernel < 1 or blur_kernel % 2 == 0:
                raise InputError(f"blur_kernel must be a positive odd integer, got {blur_kernel}")
            if blur_sigma <= 0:
                raise InputError(f"blur_sigma must be positive, got {blur_sigma}")
            H, W = images.shape[-2:]
            if blur_kernel // 2 >= min(H, W):  # reflect padding needs pad < size
                raise InputError(
                    f"the blur baseline's kernel {blur_kernel} is too large for {H}x{W} images (its reflect padding "
                    f"of {blur_kernel // 2} needs images larger than that): pass blur_kernel <= {2 * min(H, W) - 1} "
                    "or baseline='mean'"
                )
            return gaussian_blur(images, [blur_kernel, blur_kernel], [float(blur_sigma), float(blur_sigma)])
        if baseline == "mean":
            return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).clone()
        if baseline == "zeros":
            return torch.zeros_like(images)
        raise InputError(f"unknown baseline {baseline!r}; choose one of {BASELINES}, or pass a tensor or a callable")
    out = baseline(images) if callable(baseline) else baseline
    if not isinstance(out, Tensor):
        raise InputTypeError(f"the baseline must be a tensor (or a callable returning one), got {type(out).__name__}")
    try:
        return torch.broadcast_to(out.to(images.dtype).to(images.device), images.shape)
    except RuntimeError as e:
        raise InputError(f"baseline of shape {tuple(out.shape)} does not broadcast to the images' {tuple(images.shape)}") from e


def pixel_ranks(maps: Tensor) -> Tensor:
    """Rank of every pixel in the order of decreasing map value, ``(..., H, W) -> (..., H, W)`` long.

    Rank 0 is the most important pixel. Ties keep raster (row-major) order: a
    stable sort, so the result is deterministic and the same on every device.

    Args:
        maps (Tensor): ``(..., H, W)``.

    Returns:
        *Tensor*: ``(..., H, W)`` long, each map a permutation of ``0 .. H*W-1``.
    """
    flat = maps.flatten(-2)
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(flat.shape[-1], device=flat.device).expand_as(order).contiguous())
    return ranks.view(maps.shape)


def step_counts(num_pixels: int, steps: int) -> Tensor:
    """Pixels changed at each step: ``floor(k * num_pixels / steps)`` for k = 0..steps.

    Args:
        num_pixels (int): ``H * W``.
        steps (int): >= 1.

    Returns:
        *Tensor*: ``(steps + 1,)`` long, on the CPU.

    Raises:
        InputError: ``steps`` is not a positive int.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise InputTypeError(f"steps must be a positive int, got {steps!r}")
    if steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    return (torch.arange(steps + 1, dtype=torch.long) * num_pixels) // steps


# --------------------------------------------------------------------------- deletion / insertion


def _check_modes(modes: Sequence[str]) -> Tuple[str, ...]:
    modes = tuple(modes)
    if not modes or any(m not in ("deletion", "insertion") for m in modes):
        raise InputError(f"modes must be a non-empty subset of ('deletion', 'insertion'), got {modes}")
    return modes


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise InputTypeError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")


def _batched_scores(model: Model, x: Tensor, targets: Tensor, score: str, source: Tensor, batch_size: int) -> Tensor:
    """:func:`_scores` of ``x`` (N, C, H, W) in chunks of ``batch_size``: ``(N,)``."""
    return torch.cat([_scores(model, x[i:i + batch_size], targets[i:i + batch_size], score, source[i:i + batch_size])
                      for i in range(0, x.shape[0], batch_size)])


def _curves_with_ends(p_img: Tensor, p_base: Tensor, modes: Tuple[str, ...], maps_per_image: int, steps: int,
                      device: torch.device) -> Dict[str, Tensor]:
    """Per mode, ``(B, M, steps + 1)`` curves with both end points set (the interior is left unset).

    Deletion starts at the image's score ``p_img`` (B,) and ends at the
    baseline's ``p_base`` (B,); insertion the other way round.
    """
    curves = {}
    for mode in modes:
        first, last = (p_img, p_base) if mode == "deletion" else (p_base, p_img)
        c = torch.empty(p_img.shape[0], maps_per_image, steps + 1, dtype=p_img.dtype, device=device)
        c[:, :, 0] = first[:, None]
        c[:, :, steps] = last[:, None]
        curves[mode] = c
    return curves


class _RankCache:
    """:func:`pixel_ranks` of each image's maps, computed when a chunk of jobs first
    needs them and dropped once the (image-major) jobs have moved past the image."""

    def __init__(self, maps: Tensor) -> None:
        self.maps = maps  # (B, M, H, W)
        self.ranks: Dict[int, Tensor] = {}

    def get(self, images: List[int], map_index: List[int]) -> Tensor:
        """Ranks ``(P, H, W)`` of map ``map_index[p]`` of image ``images[p]``."""
        need = sorted(set(images) - set(self.ranks))
        if need:
            r = pixel_ranks(self.maps[need])
            for i, b in enumerate(need):
                self.ranks[b] = r[i]
            for b in [b for b in self.ranks if b < min(images)]:
                del self.ranks[b]
        return torch.stack([self.ranks[b][m] for b, m in zip(images, map_index)])


def _perturbed(images: Tensor, base: Tensor, changed: Tensor, deletion: Tensor) -> Tensor:
    """Inputs ``(P, C, H, W)`` with the ``changed`` pixels (P, H, W) swapped.

    Where ``deletion`` (P,) the changed pixels come from ``base`` and the rest
    from ``images``; elsewhere (insertion) the other way round.
    """
    d = deletion[:, None, None, None]
    src_changed = torch.where(d, base, images)
    src_kept = torch.where(d, images, base)
    return torch.where(changed.unsqueeze(1), src_changed, src_kept)


def _fill_interior(curves: Dict[str, Tensor], modes: Tuple[str, ...], model: Model, images: Tensor, base: Tensor,
                   maps4: Tensor, targets: Tensor, counts: Tensor, score: str, batch_size: int) -> None:
    """Set the curves' points 1 .. steps - 1: (image, mode, map, step) jobs, image-major,
    built on the fly and sent to the model in chunks of ``batch_size``."""
    B, M, steps = maps4.shape[0], maps4.shape[1], counts.numel() - 1
    jobs = torch.cartesian_prod(torch.arange(B), torch.arange(len(modes)), torch.arange(M), torch.arange(1, steps))
    ranks = _RankCache(maps4)
    for s in range(0, jobs.shape[0], batch_size):
        jb, jm, jmap, jk = jobs[s:s + batch_size].unbind(1)
        rk = ranks.get(jb.tolist(), jmap.tolist())
        changed = rk < counts[jk.to(counts.device)][:, None, None]
        deletion = torch.tensor([modes[i] == "deletion" for i in jm.tolist()], device=images.device)
        p = _scores(model, _perturbed(images[jb], base[jb], changed, deletion), targets[jb], score, jb)
        for i, mode in enumerate(modes):
            sel = jm == i
            if sel.any():
                curves[mode][jb[sel], jmap[sel], jk[sel]] = p[sel.to(p.device)]


def deletion_insertion(model: Model, images: Tensor, maps: Tensor, targets: Targets, steps: int = 16,
                       baseline: Baseline = "blur", batch_size: int = 64,
                       modes: Sequence[str] = ("deletion", "insertion"), score: str = "softmax",
                       blur_kernel: int = 11, blur_sigma: float = 5.0) -> dict:
    """Deletion and insertion curves of every map (Petsiuk et al., 2018).

    The target's softmax probability (``score="logit"``: its logit) after
    changing the first ``floor(k H W / steps)`` pixels of the map's order
    (:func:`pixel_ranks`; ties in raster order). Deletion replaces them by the
    baseline, starting from the image; insertion copies them from the image,
    starting from the baseline. The two end points (the image and the baseline)
    do not depend on the map, so they are evaluated once per image and shared by
    all its maps and both modes. All other (image, map, step) inputs are built on
    the fly and sent to the model in chunks of ``batch_size``.

    Args:
        model (callable): Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``.
        images (Tensor): ``(B, C, H, W)`` floating point, in the model's input space.
        maps (Tensor): ``(B, H, W)`` or ``(B, M, H, W)``, at the images' size.
        targets (sequence of int or Tensor): ``(B,)`` class indices.
        steps (int, optional): Steps from the start to the end, >= 1. Default: 16.
        baseline (str, Tensor or callable, optional): See :func:`make_baseline`.
            Default: ``"blur"``.
        batch_size (int, optional): Inputs per model call, >= 1. Default: 64.
        modes (sequence of str, optional): A non-empty subset of
            ``("deletion", "insertion")``. Default: both.
        score (str, optional): ``"softmax"`` or ``"logit"``. Default: ``"softmax"``.
        blur_kernel (int, optional): See :func:`make_baseline`. Default: 11.
        blur_sigma (float, optional): See :func:`make_baseline`. Default: 5.0.

    Returns:
        *dict*: ``{mode: curves}`` for the requested ``modes``, each
        ``(B, steps + 1)`` for ``(B, H, W)`` maps or ``(B, M, steps + 1)``, in
        the logits' dtype (float32 for half-precision logits).

    Raises:
        InputError: Bad images, maps, targets, ``steps``, ``modes``,
            ``batch_size``, ``score`` or baseline; non-finite inputs or logits;
            target classes outside the model's range.
    """
    images = _check_images(images)
    B, _, H, W = images.shape
    maps4 = _check_maps(maps, B, (H, W))
    t = _check_targets(targets, B)
    _check_score(score)
    modes = _check_modes(modes)
    _check_batch_size(batch_size)
    counts = step_counts(H * W, steps).to(images.device)
    base = make_baseline(images, baseline, blur_kernel, blur_sigma)
    with _inference(model):
        p_ends = _batched_scores(model, torch.cat([images, base]), torch.cat([t, t]), score,
                                 torch.arange(B).repeat(2), batch_size)
        curves = _curves_with_ends(p_ends[:B], p_ends[B:], modes, maps4.shape[1], steps, images.device)
        if steps > 1:
            _fill_interior(curves, modes, model, images, base, maps4, t, counts, score, batch_size)
    if maps.dim() == 3:
        curves = {k: v[:, 0] for k, v in curves.items()}
    return curves


def deletion_curve(model: Model, images: Tensor, maps: Tensor, targets: Targets, steps: int = 16,
                   baseline: Baseline = "blur", batch_size: int = 64, score: str = "softmax", **kw: Any) -> Tensor:
    """Deletion curve: start from the image, replace pixels by the baseline in
    order of decreasing map value; a good map makes the probability fall fast
    (low :func:`auc`).

    Args:
        model, images, maps, targets, steps, baseline, batch_size, score: As in
            :func:`deletion_insertion`.
        **kw: ``blur_kernel``, ``blur_sigma`` of :func:`deletion_insertion`.

    Returns:
        *Tensor*: ``(B, steps + 1)``, or ``(B, M, steps + 1)`` for ``(B, M, H, W)`` maps.

    Raises:
        InputError: As :func:`deletion_insertion`.
    """
    return deletion_insertion(model, images, maps, targets, steps, baseline, batch_size, ("deletion",), score, **kw)["deletion"]


def insertion_curve(model: Model, images: Tensor, maps: Tensor, targets: Targets, steps: int = 16,
                    baseline: Baseline = "blur", batch_size: int = 64, score: str = "softmax", **kw: Any) -> Tensor:
    """Insertion curve: start from the baseline, reveal the image's pixels in
    order of decreasing map value; a good map makes the probability rise fast
    (high :func:`auc`).

    Args:
        model, images, maps, targets, steps, baseline, batch_size, score: As in
            :func:`deletion_insertion`.
        **kw: ``blur_kernel``, ``blur_sigma`` of :func:`deletion_insertion`.

    Returns:
        *Tensor*: ``(B, steps + 1)``, or ``(B, M, steps + 1)`` for ``(B, M, H, W)`` maps.

    Raises:
        InputError: As :func:`deletion_insertion`.
    """
    return deletion_insertion(model, images, maps, targets, steps, baseline, batch_size, ("insertion",), score, **kw)["insertion"]


def auc(curve: Tensor) -> Tensor:
    """Area under curves sampled at ``steps + 1`` equally spaced points of [0, 1] (trapezoid rule).

    Args:
        curve (Tensor): ``(..., steps + 1)``, ``steps >= 1``.

    Returns:
        *Tensor*: ``(...)`` float32.

    Raises:
        InputError: Not a tensor, or fewer than 2 points.
    """
    if not isinstance(curve, Tensor) or curve.dim() < 1 or curve.shape[-1] < 2:
        raise InputError(f"expected curves of shape (..., steps + 1) with steps >= 1, got {getattr(curve, 'shape', curve)}")
    n = curve.shape[-1] - 1
    return torch.trapezoid(curve.float(), dx=1.0 / n, dim=-1)


# --------------------------------------------------------------------------- average drop / increase


def _explanation_scores(model: Model, images: Tensor, base: Optional[Tensor], maps4: Tensor, targets: Tensor,
                        score: str, batch_size: int, dtype: torch.dtype) -> Tensor:
    """Scores ``(B, M)`` of the explanation images ``images * map`` (with a baseline:
    ``base + map * (images - base)``), one per (image, map), in chunks of ``batch_size``."""
    B, M = maps4.shape[:2]
    jobs = torch.cartesian_prod(torch.arange(B), torch.arange(M))
    out = torch.empty(B, M, dtype=dtype, device=images.device)
    for s in range(0, jobs.shape[0], batch_size):
        jb, jm = jobs[s:s + batch_size].unbind(1)
        m = maps4[jb, jm].unsqueeze(1).to(images.dtype)
        x = images[jb] * m if base is None else base[jb] + m * (images[jb] - base[jb])
        out[jb, jm] = _scores(model, x, targets[jb], score, jb)
    return out


def average_drop_increase(model: Model, images: Tensor, maps: Tensor, targets: Targets, batch_size: int = 64,
                          baseline: Optional[Baseline] = None, score: str = "softmax", reduce: bool = True) -> dict:
    """Average drop and increase in confidence (Chattopadhay et al., 2018).

    The explanation image is ``images * map`` (with ``baseline``:
    ``baseline + map * (images - baseline)``); maps (B, H, W) or (B, M, H, W)
    with values in [0, 1]. With ``Y`` the target's softmax probability on the
    image and ``out`` on the explanation image:

    - average drop = ``100 * mean(max(0, Y - out) / Y)`` (lower is better),
    - increase in confidence = ``100 * mean(out > Y)`` (higher is better).

    Args:
        model (callable): Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``.
        images (Tensor): ``(B, C, H, W)`` floating point, in the model's input space.
        maps (Tensor): ``(B, H, W)`` or ``(B, M, H, W)`` in [0, 1], at the images' size.
        targets (sequence of int or Tensor): ``(B,)`` class indices.
        batch_size (int, optional): Inputs per model call. Default: 64.
        baseline (str, Tensor or callable, optional): See :func:`make_baseline`;
            default none (``images * map``).
        score (str, optional): ``"softmax"`` or ``"logit"``. Default: ``"softmax"``.
        reduce (bool, optional): Average over the images. Default: True.

    Returns:
        *dict*: ``{"drop": ..., "increase": ..., "Y": (B,), "O": (B,) or (B, M)}``
        where drop/increase are 0-d, or ``(M,)`` for ``(B, M, H, W)`` maps;
        with ``reduce=False`` they are per image, ``(B,)`` / ``(B, M)`` (drop
        in % of Y, increase 0 or 100).

    Raises:
        InputError: Bad images, maps (or maps outside [0, 1]), targets,
            ``score`` or baseline; non-finite inputs or logits; target classes
            outside the model's range.
    """
    images = _check_images(images)
    B, _, H, W = images.shape
    maps4 = _check_maps(maps, B, (H, W))
    if (maps4 < 0).any() or (maps4 > 1).any():
        raise InputError("maps must lie in [0, 1] for the average drop (normalize them first)")
    t = _check_targets(targets, B)
    _check_score(score)
    _check_batch_size(batch_size)
    base = None if baseline is None else make_baseline(images, baseline)
    with _inference(model):
        Y = _batched_scores(model, images, t, score, torch.arange(B), batch_size)
        out = _explanation_scores(model, images, base, maps4, t, score, batch_size, Y.dtype)
    Yc = Y[:, None]
    drop = 100.0 * (Yc - out).clamp(min=0) / Yc.clamp(min=torch.finfo(Yc.dtype).tiny)
    inc = 100.0 * (out > Yc).float()
    if reduce:
        drop, inc = drop.mean(0), inc.mean(0)
    if maps.dim() == 3:
        drop, inc, out = drop[..., 0], inc[..., 0], out[:, 0]
    return {"drop": drop, "increase": inc, "Y": Y, "O": out}


# --------------------------------------------------------------------------- masks


def _check_masks(maps: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
    if not isinstance(maps, Tensor) or not isinstance(masks, Tensor):
        raise InputTypeError("maps and masks must be torch.Tensors of shape (B, H, W)")
    if maps.dim() < 2 or maps.shape != masks.shape:
        raise InputError(f"maps and masks must have the same shape (B, H, W), got {tuple(maps.shape)} and {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if ((masks != 0) & (masks != 1)).any():
            raise InputError("masks must be boolean or hold only 0 and 1")
        masks = masks != 0
    _check_finite(maps, "maps")
    return maps, masks


def _disk(radius: int, device, dims: int = 2) -> Tensor:
    """The pixels (voxels for ``dims=3``) within Euclidean distance ``radius`` of the centre."""
    r = torch.arange(-radius, radius + 1, device=device)
    grids = torch.meshgrid(*([r] * dims), indexing="ij")
    return (sum(g ** 2 for g in grids) <= radius ** 2).float()


def _map_dims(dims: object, maps: Tensor) -> int:
    """``dims`` (2: each map is ``(H, W)``; 3: each is a volume ``(T, H, W)``), checked against ``maps``."""
    if dims not in (2, 3) or isinstance(dims, bool):
        raise InputError(f"dims must be 2 (maps (..., H, W)) or 3 (volumes (..., T, H, W)), got {dims!r}")
    if maps.dim() < dims:
        raise InputError(f"dims={dims} needs maps of at least {dims} dimensions, got shape {tuple(maps.shape)}")
    return int(dims)  # type: ignore[arg-type]


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0, dims: int = 2) -> Tensor:
    """Pointing game (Zhang et al., 2016): is the map's maximum inside the mask?

    maps, masks ``(..., H, W)`` -> bool ``(...)``. The point is the first
    maximum in raster order (``argmax`` of the flattened map), so ties are
    broken deterministically. With ``tolerance = r > 0`` pixels a hit is a point
    within Euclidean distance r of the mask (Zhang et al. used 15). With
    ``dims=3`` each map is a video's or volume's ``(T, H, W)``: the point is
    the volume's maximum and the tolerance a ball of voxels.

    Args:
        maps (Tensor): ``(..., H, W)``.
        masks (Tensor): ``(..., H, W)``, bool or {0, 1}.
        tolerance (int, optional): ``r >= 0`` pixels. Default: 0.
        dims (int, optional): 2 (maps ``(..., H, W)``) or 3 (volumes ``(..., T, H, W)``). Default: 2.

    Returns:
        *Tensor*: ``(...)`` bool.

    Raises:
        InputError: Shapes differ, masks not 0/1, non-finite maps, ``tolerance < 0`` or a bad ``dims``.
    """
    maps, masks = _check_masks(maps, masks)
    dims = _map_dims(dims, maps)
    size = maps.shape[-dims:]
    idx = maps.flatten(-dims).argmax(dim=-1)
    m = masks
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}")
    if tolerance > 0:
        lead = m.shape[:-dims]
        k = _disk(int(tolerance), m.device, dims)[None, None]
        conv = F.conv2d if dims == 2 else F.conv3d
        m = conv(m.reshape(-1, 1, *size).float(), k, padding=int(tolerance)).reshape(*lead, *size) > 0
    return m.flatten(-dims).gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def iou(maps: Tensor, masks: Tensor, threshold: float = 0.5, dims: int = 2) -> Tensor:
    """Intersection over union of ``maps >= threshold`` and the masks; two empty sets give IoU 1.

    Args:
        maps (Tensor): ``(..., H, W)`` (``dims=3``: volumes ``(..., T, H, W)``, one IoU per volume).
        masks (Tensor): ``(..., H, W)``, bool or {0, 1}.
        threshold (float, optional): Default: 0.5.
        dims (int, optional): 2 or 3: the trailing dimensions that make one map. Default: 2.

    Returns:
        *Tensor*: ``(...)`` float32.

    Raises:
        InputError: Shapes differ, masks not 0/1, or non-finite maps.
    """
    maps, masks = _check_masks(maps, masks)
    dims = _map_dims(dims, maps)
    pred = maps >= threshold
    inter = (pred & masks).flatten(-dims).sum(-1).float()
    union = (pred | masks).flatten(-dims).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_sweep(maps: Tensor, masks: Tensor, thresholds: Optional[Union[Sequence[float], Tensor]] = None,
              dims: int = 2) -> dict:
    """:func:`iou` at every threshold.

    Args:
        maps (Tensor): ``(..., H, W)``.
        masks (Tensor): ``(..., H, W)``, bool or {0, 1}.
        thresholds (sequence of float or Tensor, optional): ``(T,)``, T >= 1;
            default 0.05, 0.10, ..., 0.95.
        dims (int, optional): As :func:`iou`. Default: 2.

    Returns:
        *dict*: ``{"thresholds": (T,), "iou": (..., T), "mean": (T,),
        "best_threshold": float, "best_mean_iou": float}`` where "mean"
        averages over all maps and "best" is the threshold with the highest
        mean IoU (the first one on ties).

    Raises:
        InputError: No thresholds, or what :func:`iou` refuses.
    """
    if thresholds is None:
        thresholds = torch.linspace(0.05, 0.95, 19)
    th = torch.as_tensor(thresholds, dtype=torch.float32).reshape(-1)
    if th.numel() == 0:
        raise InputError("thresholds must not be empty")
    vals = torch.stack([iou(maps, masks, float(v), dims) for v in th], dim=-1)
    mean = vals.reshape(-1, th.numel()).mean(0)
    best = int(mean.argmax())
    return {"thresholds": th, "iou": vals, "mean": mean, "best_threshold": float(th[best]),
            "best_mean_iou": float(mean[best])}


# --------------------------------------------------------------------------- grid pointing game


def confident_mask(model: Model, images: Tensor, labels: Targets, min_prob: float = 0.9,
                   batch_size: int = 64) -> dict:
    """Which images the model classifies confidently: top-1 == label and the
    label's softmax probability >= ``min_prob``, each image alone.

    Args:
        model (callable): Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``.
        images (Tensor): ``(N, C, H, W)`` floating point.
        labels (sequence of int or Tensor): ``(N,)`` class indices.
        min_prob (float, optional): Default: 0.9.
        batch_size (int, optional): Images per model call. Default: 64.

    Returns:
        *dict*: ``{"mask": (N,) bool, "prob": (N,), "pred": (N,) long}``.

    Raises:
        InputError: Bad images or labels, non-finite inputs or logits, labels
            outside the model's range.
    """
    images = _check_images(images)
    y = _check_targets(labels, images.shape[0], "labels")
    src = torch.arange(images.shape[0])
    with _inference(model):
        logits = torch.cat([_logits(model, images[i:i + batch_size], src[i:i + batch_size])
                            for i in range(0, images.shape[0], batch_size)])
    _check_classes(y, logits.shape[1], src, "labels")
    prob = logits.softmax(1)
    pred = prob.argmax(1)
    py = prob.gather(1, y[:, None].to(prob.device))[:, 0]
    return {"mask": (pred == y.to(pred.device)) & (py >= min_prob), "prob": py, "pred": pred}


def make_grids(images: Tensor, labels: Targets, n_grids: int, seed: int = 0, eligible: Optional[Tensor] = None,
               cell_size: Optional[Tuple[int, int]] = None) -> dict:
    """2x2 grids of four images of four distinct classes (Rao et al., 2022).

    images (N, C, H, W); labels (N,); ``eligible`` (N,) bool selects the images
    allowed in grids (e.g. :func:`confident_mask`; default all). For each grid,
    four distinct classes among those with an eligible image are drawn, then
    one eligible image of each, in random cell order, from
    ``torch.Generator().manual_seed(seed)`` (same seed, same grids). Each image
    is resized (bilinear, antialiased) to ``cell_size`` (default ``(H//2, W//2)``,
    so a grid has the images' size) and placed in cells 0 1 / 2 3
    (top-left, top-right, bottom-left, bottom-right).

    Args:
        images (Tensor): ``(N, C, H, W)`` floating point.
        labels (sequence of int or Tensor): ``(N,)`` class indices.
        n_grids (int): ``G >= 1``.
        seed (int, optional): Default: 0.
        eligible (Tensor, optional): ``(N,)`` bool; default all.
        cell_size (tuple of int, optional): ``(h, w)``; default ``(H // 2, W // 2)``.

    Returns:
        *dict*: ``{"grids": (G, C, 2h, 2w), "labels": (G, 4), "index": (G, 4)}``:
        the grids (the images' dtype), and the classes and the source image
        indices (long, on the CPU) of cells 0..3.

    Raises:
        InputError: Bad images or labels, ``eligible`` of another shape, fewer
            than 4 eligible classes, or ``n_grids`` not a positive int.
    """
    images = _check_images(images)
    N, C, H, W = images.shape
    y = _check_targets(labels, N, "labels").cpu()
    ok = torch.ones(N, dtype=torch.bool) if eligible is None else torch.as_tensor(eligible, dtype=torch.bool).cpu()
    if ok.shape != (N,):
        raise InputError(f"eligible must have shape ({N},), got {tuple(ok.shape)}")
    classes = torch.unique(y[ok])
    if classes.numel() < 4:
        raise InputError(f"grids need eligible images of at least 4 distinct classes, got {classes.numel()}")
    if not isinstance(n_grids, int) or n_grids < 1:
        raise InputError(f"n_grids must be a positive int, got {n_grids!r}")
    h, w = cell_size if cell_size is not None else (H // 2, W // 2)
    g = torch.Generator().manual_seed(seed)
    by_class = {int(c): torch.nonzero(ok & (y == c)).flatten() for c in classes}
    idx = torch.empty(n_grids, 4, dtype=torch.long)
    for i in range(n_grids):
        cls = classes[torch.randperm(classes.numel(), generator=g)[:4]]
        for j, c in enumerate(cls.tolist()):
            pool = by_class[c]
            idx[i, j] = pool[torch.randint(pool.numel(), (1,), generator=g)]
    small = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    cells = small[idx.to(images.device)]  # (G, 4, C, h, w)
    top = torch.cat([cells[:, 0], cells[:, 1]], dim=-1)
    bottom = torch.cat([cells[:, 2], cells[:, 3]], dim=-1)
    return {"grids": torch.cat([top, bottom], dim=-2), "labels": y[idx], "index": idx}


def cell_masks(size: Tuple[int, int], device: Optional[Union[str, torch.device]] = None) -> Tensor:
    """Masks of the cells 0 1 / 2 3 of a 2x2 grid (the first ``H // 2`` rows and
    ``W // 2`` columns are the top and left cells).

    Args:
        size (tuple of int): ``(H, W)``.
        device (str or torch.device, optional): Default: the CPU.

    Returns:
        *Tensor*: ``(4, H, W)`` bool.
    """
    H, W = size
    rows = torch.arange(H, device=device)[:, None] < H // 2
    cols = torch.arange(W, device=device)[None, :] < W // 2
    return torch.stack([rows & cols, rows & ~cols, ~rows & cols, ~rows & ~cols])


def grid_pointing_game(maps: Tensor, cells: Union[int, Sequence[int], Tensor]) -> Tensor:
    """Grid pointing game score: the fraction of the map's positive mass inside
    the target's cell.

    ``sum(relu(map) in cell) / sum(relu(map))``, and 0 for a map with no
    positive value (it points nowhere). A map that is uniform over the grid
    scores 0.25 (for even H and W).

    Args:
        maps (Tensor): ``(..., H, W)`` on 2x2 grid images.
        cells (int, sequence of int or Tensor): The target cell (0..3, cells
            0 1 / 2 3) of each map, broadcastable to ``maps.shape[:-2]``.

    Returns:
        *Tensor*: ``(...)`` float32, in [0, 1].

    Raises:
        InputError: ``maps`` not ``(..., H, W)`` or not finite, cells outside
            0..3, or cells that do not broadcast.
    """
    if not isinstance(maps, Tensor) or maps.dim() < 2:
        raise InputError(f"maps must be a tensor of shape (..., H, W), got {getattr(maps, 'shape', maps)}")
    _check_finite(maps, "maps")
    c = torch.as_tensor(cells, device=maps.device).long()
    if c.numel() and (c.min() < 0 or c.max() > 3):
        raise InputError("cells must be in 0..3 (cells 0 1 / 2 3 of the 2x2 grid)")
    try:
        c = torch.broadcast_to(c, maps.shape[:-2])
    except RuntimeError as e:
        raise InputError(f"cells of shape {tuple(c.shape)} do not match maps of shape {tuple(maps.shape)}") from e
    pos = maps.float().clamp(min=0)
    cm = cell_masks(tuple(maps.shape[-2:]), maps.device)  # (4, H, W)
    inside = (pos * cm[c]).flatten(-2).sum(-1)
    total = pos.flatten(-2).sum(-1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))
