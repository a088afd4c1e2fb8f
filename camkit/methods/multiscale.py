"""Multi-scale and flip inference for any method, as ReCAM's authors make their pseudo-masks.

ReCAM's ``make_cam.py`` / ``make_recam.py`` (Chen et al., CVPR 2022, after IRN) explain each image at
the scales 1.0, 0.5, 1.5 and 2.0, each with its horizontal flip: per scale ``s`` the map of the image
and the flipped-back map of its flip are added, ``M_s = ReLU(CAM(x_s)) + flip(ReLU(CAM(flip(x_s))))``;
the "strided" map is ``sum_s up(M_s, layer size)`` and the high-resolution one ``sum_s up(M_s, (H, W))``
(bilinear, ``align_corners=False``: each scale upsampled on its own, then summed), each divided by its
maximum plus ``1e-5`` per image and class. :class:`MultiScale` does that for any camkit method: its
raw per-layer maps, ReLU'd, play the role of ``ReLU(CAM)``; ``layer_maps`` holds the strided sums (at the
layer's size for the unscaled image), ``maps`` the high-resolution ones, normalized (ReCAM's rule by
default) and fused as the method fuses its layers.

The scaled inputs are resized in the network's input space (``bicubic``, antialiased when shrinking;
the authors resize the uint8 photo with PIL's bicubic before normalizing it). Targets are the
method's own on the unscaled image (``topk`` / ``None``: its top classes), then the same classes at
every scale and flip. One call of the method per scale, the image and its flip in one batch; the
unscaled image is always explained (it picks the targets and sets the layer maps' size; at scale 1.0
its maps are reused and its flip is a second call).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, InputTypeError
from ..normalize import Normalizer
from .result import CAMResult
from .volume import upsample

#: ReCAM's test-time scales (its ``--cam_scales`` default).
RECAM_SCALES = (1.0, 0.5, 1.5, 2.0)
RECAM_EPS = 1e-5


def recam_max(m: Tensor) -> Tensor:
    """ReCAM's normalization: ``M / (max(M) + 1e-5)`` per map, ``(..., h, w) -> (..., h, w)``."""
    return m / (m.amax(dim=(-2, -1), keepdim=True) + RECAM_EPS)


def check_scales(scales: Sequence[float]) -> Tuple[float, ...]:
    """The scales as a tuple of positive finite floats; an empty list or a bad value is an InputError."""
    if isinstance(scales, (int, float)) or not isinstance(scales, Sequence) or isinstance(scales, str):
        raise InputTypeError(f"scales must be a list of numbers, got {scales!r}")
    out = []
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise InputTypeError(f"scales must be numbers, got {s!r}")
        if not math.isfinite(s) or s <= 0:
            raise InputError(f"every scale must be a finite number > 0, got {s!r}")
        out.append(float(s))
    if not out:
        raise InputError("scales is empty: give at least one scale, e.g. scales=[1.0]")
    return tuple(out)


def rescale(x: Tensor, scale: float) -> Tensor:
    """``(B, C, H, W)`` resized to ``(round(H s), round(W s))`` (bicubic; antialiased when shrinking)."""
    if scale == 1.0:
        return x
    size = tuple(max(1, int(round(n * scale))) for n in x.shape[-2:])
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=scale < 1)


def _relu(m: Tensor) -> Tensor:
    return m.clamp(min=0)  # ReCAM's ReLU(CAM); a no-op for methods whose maps are ReLU'd already


def flip_sum(maps: Tensor, b: int) -> Tensor:
    """``(2B, K, h, w)`` maps of ``[x, flip(x)]`` -> ``(B, K, h, w)``: ``M(x) + flip(M(flip(x)))``."""
    return maps[:b] + maps[b:].flip(-1)


class MultiScale:
    """A method explained at several scales with flips, summed and normalized as ReCAM's authors do.

    Args:
        method: any camkit method object (e.g. ``camkit.CAM(model)``, ``camkit.LayerCAM(model, layers)``).
        scales: the input scales (default ReCAM's ``(1.0, 0.5, 1.5, 2.0)``).
        flip: add each scale's horizontally flipped image (flipped back) too.
        normalize: ``"recam"`` (``M / (max M + 1e-5)``, the authors'), ``None`` (the raw sums), or any
            normalizer of :mod:`camkit.normalize` (a name or a function) applied to the sums.

    Example:
        >>> res = camkit.MultiScale(camkit.CAM(model))(x, targets=labels)   # doctest: +SKIP
    """

    def __init__(self, method, scales: Sequence[float] = RECAM_SCALES, flip: bool = True,  # noqa: ANN001
                 normalize: Optional[str | Normalizer] = "recam") -> None:
        if not callable(method) or not hasattr(method, "_combine"):
            raise InputTypeError(f"MultiScale takes a camkit method object, got {type(method).__name__}")
        self.method, self.scales, self.flip = method, check_scales(scales), bool(flip)
        if normalize == "recam":
            self.normalize: Optional[Normalizer] = recam_max
        elif normalize is None or callable(normalize):
            self.normalize = normalize
        else:
            self.normalize = method._normalizer(normalize)

    def __repr__(self) -> str:
        return f"MultiScale({self.method!r}, scales={list(self.scales)}, flip={self.flip})"

    @property
    def model(self):  # noqa: ANN201
        """The method's model."""
        return self.method.model

    @property
    def layer_names(self) -> List[str]:
        """The method's hooked layers."""
        return self.method.layer_names

    def __enter__(self) -> MultiScale:
        self.method.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.method.__exit__(*exc)

    def __call__(self, x: Tensor, targets=None, topk: Optional[int] = None) -> CAMResult:  # noqa: ANN001
        """Maps of ``x`` ``(B, C, H, W)``; ``targets`` / ``topk`` as for the method (class targets).

        Returns:
            A :class:`CAMResult`: ``layer_maps`` the strided sums ``(B, K, h, w)`` (before normalization),
            ``maps`` ``(B, K, H, W)`` the high-resolution sums, normalized and fused; ``targets``,
            ``logits`` and ``scores`` of the unscaled image.
        """
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise InputError(f"MultiScale takes image batches (B, C, H, W), got {getattr(x, 'shape', type(x))}")
        b = x.shape[0]
        first = self.method(x, targets=targets, topk=topk)  # the unscaled image: targets, layer sizes
        classes, valid = first.targets, first.valid
        if ((classes < 0) & valid).any():
            raise InputError("MultiScale takes class targets (indices, top-k or a multi-label list): the same "
                             "classes are explained at every scale")
        classes = classes.clamp(min=0)  # padding columns (valid False) stay zero maps
        per_scale: List[Dict[str, Tensor]] = []
        for s in self.scales:
            per_scale.append(self._scale_maps(x, s, classes, b, first if s == 1.0 else None))
        return self._result(first, per_scale, tuple(x.shape[-2:]))

    def _scale_maps(self, x: Tensor, s: float, classes: Tensor, b: int,
                    plain: Optional[CAMResult]) -> Dict[str, Tensor]:
        """One scale's maps ``{layer: (B, K, h_s, w_s)}``, its flip added (flipped back)."""
        xs = rescale(x, s)
        if plain is not None:  # scale 1: the plain image's maps are already there
            maps = {n: _relu(m) for n, m in plain.layer_maps.items()}
            if not self.flip:
                return maps
            flipped = self.method(xs.flip(-1), targets=classes).layer_maps
            return {n: m + _relu(flipped[n]).flip(-1) for n, m in maps.items()}
        if not self.flip:
            return {n: _relu(m) for n, m in self.method(xs, targets=classes).layer_maps.items()}
        both = self.method(torch.cat([xs, xs.flip(-1)]), targets=torch.cat([classes, classes])).layer_maps
        return {n: flip_sum(_relu(m), b) for n, m in both.items()}

    def _result(self, first: CAMResult, per_scale: List[Dict[str, Tensor]], size: Tuple[int, int]) -> CAMResult:
        names = list(first.layer_maps)
        keep = first.valid[..., None, None].to(first.layer_maps[names[0]].dtype)
        strided = {n: keep * sum(upsample(d[n], first.layer_maps[n].shape[-2:]) for d in per_scale) for n in names}
        o, combine, normalize, valid = self.method.options, self.method._combine, self.normalize, first.valid

        def make_maps(at: Tuple[int, ...]) -> Tensor:
            high = {n: sum(upsample(d[n], at) for d in per_scale) for n in names}
            return combine(high, at, normalize, o.fusion, o.weights, valid)

        res = CAMResult(targets=first.targets, logits=first.logits, layer_maps=strided, scores=first.scores,
                        valid=valid, make_maps=make_maps, size=size)
        res.inputs = first.inputs
        return res
