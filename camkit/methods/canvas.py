"""Detectors that pad: maps over the part of the padded canvas the input covers.

torchvision's R-CNN, RetinaNet and FCOS detectors resize each image (the short side to ``min_size``,
aspect kept) and pad the batch at the bottom and right to a multiple of ``size_divisible`` (32): the
canvas ``(Hc, Wc)``. Every feature map of the backbone and FPN spans the whole canvas, the image only
its top-left ``(h', w')`` part, so a layer's maps ``(B, K, hc, wc)`` upsampled to the input
``(H, W)`` as they are would stretch the image over the padding. :class:`CanvasRegion` records
``(h', w')`` and ``(Hc, Wc)`` from the detector's own ``transform`` during the call (a forward hook
that lives for the call) and :func:`image_part` resamples each layer's maps onto the image's part:
the ``e = hc * h' / Hc`` by ``wc * w' / Wc`` cells that lie on the image, laid on
``ceil(e)`` cells (bilinear, half-pixel centres; when ``e`` is whole, a crop). Upsampled to the
input, a map then puts each input pixel at the position the detector put it on the canvas (its boxes
are mapped back the same way, by ``H / h'`` and ``W / w'``). Inputs at
``camkit.adapters.detection.fit_size`` are not padded and pass unchanged, as do models without
such a transform and detectors that resize to a fixed size (SSD).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import InputError


def _padding_transform(model: nn.Module) -> Optional[nn.Module]:
    """The model's ``GeneralizedRCNNTransform``-like ``transform`` if it may pad (``size_divisible`` > 1,
    no fixed size), else None."""
    t = getattr(model, "transform", None)
    if not isinstance(t, nn.Module) or int(getattr(t, "size_divisible", 1) or 1) <= 1 or getattr(t, "fixed_size", None):
        return None
    return t


def _lerp(e: float, n: int, like: Tensor) -> Tensor:
    """``(n, n)``: output cell ``j`` of ``n`` spanning ``e`` input cells reads position ``(j + 0.5) * e / n - 0.5``,
    linearly between its two neighbours (clamped to cells ``0 .. n - 1``), as ``F.interpolate`` (bilinear,
    ``align_corners=False``) does for a scale of ``n / e``; the identity when ``e == n``."""
    r = torch.zeros(n, n, dtype=like.dtype, device=like.device)
    for j in range(n):
        src = max((j + 0.5) * e / n - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n - 1)
        lam = src - math.floor(src) if i0 < n - 1 else 0.0
        r[j, i0] += 1.0 - lam
        r[j, min(i0 + 1, n - 1)] += lam
    return r


def image_part(maps: Tensor, fraction: Tuple[float, float]) -> Tensor:
    """Maps ``(B, K, hc, wc)`` over a canvas whose top-left ``fraction`` ``(h'/Hc, w'/Wc)`` is the image,
    resampled onto that part: ``(B, K, ceil(fh * hc), ceil(fw * wc))``.

    The ``e = fraction * (hc, wc)`` cells over the image are laid on ``n = ceil(e)`` cells: output cell
    ``j`` reads the input at ``(j + 0.5) * e / n - 0.5`` (bilinear, half-pixel centres, edges clamped),
    so the result spans exactly the image. A whole ``e`` is a crop.
    """
    hc, wc = int(maps.shape[-2]), int(maps.shape[-1])
    eh, ew = fraction[0] * hc, fraction[1] * wc
    n = (max(1, math.ceil(eh - 1e-6)), max(1, math.ceil(ew - 1e-6)))
    kept = maps[..., :n[0], :n[1]]
    if abs(n[0] - eh) < 1e-6 and abs(n[1] - ew) < 1e-6:
        return kept
    return torch.einsum("...hw,ih,jw->...ij", kept, _lerp(eh, n[0], kept), _lerp(ew, n[1], kept))


class CanvasRegion:
    """For one call: the part of a padding detector's canvas its input covers (a context manager that
    hooks ``model.transform``; nothing for other models).

    Attributes:
        fraction: ``(h' / Hc, w' / Wc)`` of the first forward in the block, None when nothing was padded.
    """

    def __init__(self, model: nn.Module) -> None:
        self.transform = _padding_transform(model)
        self.fraction: Optional[Tuple[float, float]] = None
        self._seen = False
        self._handle: Any = None

    def _record(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._seen:
            return
        images = out[0] if isinstance(out, (tuple, list)) else out
        sizes = getattr(images, "image_sizes", None)
        tensors = getattr(images, "tensors", None)
        if sizes is None or not isinstance(tensors, Tensor):
            return
        self._seen = True
        hc, wc = int(tensors.shape[-2]), int(tensors.shape[-1])
        if len({tuple(int(v) for v in s) for s in sizes}) != 1:
            raise InputError(f"the detector resized the batch's images to different sizes {list(sizes)}: "
                             "pass images of one size (camkit.adapters.detection.fit_input)")
        h, w = (int(v) for v in sizes[0])
        if (h, w) != (hc, wc):
            self.fraction = (h / hc, w / wc)

    def __enter__(self) -> CanvasRegion:
        if self.transform is not None:
            self._handle = self.transform.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def crop(self, layer_maps: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Each ``(B, K, hc, wc)`` layer map on the image's part of the canvas (:func:`image_part`);
        unchanged when nothing was padded."""
        if self.fraction is None:
            return layer_maps
        return {n: image_part(m, self.fraction) if m.dim() == 4 else m for n, m in layer_maps.items()}
