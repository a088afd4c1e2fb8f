"""Normalizers: pure functions mapping raw maps to [0, 1].

Every function takes a tensor of any shape ``(..., h, w)`` (h, w >= 1) and
normalizes each ``(h, w)`` map on its own (so maps in a batch never influence
each other). Outputs are finite for every finite input, including constant,
all-negative, single-pixel and huge or tiny maps; a map with nothing to show
(constant for ``minmax``, no positive value for ``relu_max``/``tanh_max``)
becomes all zeros.

Non-finite maps (one policy for every normalizer): a map that holds a NaN or
an Inf anywhere comes out entirely NaN, never as a plausible-looking partial
map. The normalizers never read values on the host, so they add no
device-to-host synchronization to the methods' hot path; where a clear error
is wanted, call :func:`check_finite` (one synchronization), which raises
:class:`camkit.errors.InputError` naming the bad maps. Wrong types, non-float
dtypes and empty maps raise at once (checked from the shape alone).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import Tensor

from .errors import InputError, InputTypeError

Normalizer = Callable[[Tensor], Tensor]


def _check(m: Tensor) -> None:
    if not isinstance(m, Tensor):
        raise InputTypeError(f"expected a torch.Tensor of shape (..., h, w), got {type(m).__name__}")
    if m.dim() < 2 or m.shape[-2] == 0 or m.shape[-1] == 0:
        raise InputError(f"expected maps of shape (..., h, w), got shape {tuple(m.shape)} (h and w must be >= 1)")
    if not m.is_floating_point():
        raise InputTypeError(f"expected a floating-point map, got dtype {m.dtype}")


def _finite_maps(m: Tensor) -> Tensor:
    """(..., 1, 1) bool: the map holds no NaN or Inf."""
    return torch.isfinite(m).all(dim=-1, keepdim=True).all(dim=-2, keepdim=True)


def _nan_where_not_finite(out: Tensor, m: Tensor) -> Tensor:
    """``out`` with every map whose input ``m`` holds a NaN or Inf set to NaN (no host sync)."""
    return torch.where(_finite_maps(m), out, float("nan"))


def check_finite(m: Tensor, what: str = "maps") -> Tensor:
    """Refuse maps that hold a NaN or an Inf.

    One device-to-host synchronization (reads one bool per map).

    Args:
        m (Tensor): ``(..., h, w)`` floating-point maps.
        what (str, optional): What the maps are, for the message. Default: ``"maps"``.

    Returns:
        *Tensor*: ``m`` itself.

    Raises:
        InputError: A map holds a NaN or an Inf (the message names the maps'
            indices over the leading dims), or ``m`` is not a floating-point
            ``(..., h, w)`` tensor with ``h, w >= 1``.
    """
    _check(m)
    bad = ~_finite_maps(m)[..., 0, 0]
    if not bad.any():
        return m
    if bad.dim() == 0:
        raise InputError(f"{what}: the map holds NaN or infinite values")
    idx = [tuple(i) if len(i) > 1 else i[0] for i in torch.nonzero(bad).tolist()]
    shown = ", ".join(map(str, idx[:8])) + (f", ... {len(idx) - 8} more" if len(idx) > 8 else "")
    raise InputError(f"{what} hold NaN or infinite values: map index {shown} (of leading shape {tuple(bad.shape)})")


def _amax(m: Tensor) -> Tensor:
    return m.amax(dim=(-2, -1), keepdim=True)


def _amin(m: Tensor) -> Tensor:
    return m.amin(dim=(-2, -1), keepdim=True)


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, else 0 (num, den >= 0, num <= den)."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)), torch.zeros_like(num))


def minmax(m: Tensor) -> Tensor:
    """``(M - min) / (max - min)`` per map; constant maps become 0.

    Invariant under positive affine maps ``a * M + b`` (a > 0).

    Args:
        m (Tensor): ``(..., h, w)`` floating-point maps, ``h, w >= 1``.

    Returns:
        *Tensor*: ``m``'s shape and dtype, in [0, 1]; a map holding a NaN or an Inf is all NaN.

    Raises:
        InputError: ``m`` is not a tensor, not floating point, or empty.
    """
    _check(m)
    lo, hi = _amin(m), _amax(m)
    # Shift by the min first, then divide by the range; computing the range as
    # hi - lo can overflow for maps spanning +-3e38, so scale both by the
    # larger magnitude beforehand.
    scale = torch.maximum(hi.abs(), lo.abs())
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shifted = m / scale - lo / scale
    rng = hi / scale - lo / scale
    finite = torch.isfinite(lo) & torch.isfinite(hi)  # amin / amax propagate NaN: the map's own check, cheaply
    return torch.where(finite, _safe_ratio(shifted, rng).clamp_(0.0, 1.0), float("nan"))


def sigmoid(m: Tensor) -> Tensor:
    """Element-wise logistic sigmoid (the study's 'sigmoid' normalizer).

    Args:
        m (Tensor): ``(..., h, w)`` floating-point maps, ``h, w >= 1``.

    Returns:
        *Tensor*: ``m``'s shape and dtype, in [0, 1]; a map holding a NaN or an Inf is all NaN.

    Raises:
        InputError: ``m`` is not a tensor, not floating point, or empty.
    """
    _check(m)
    return _nan_where_not_finite(torch.sigmoid(m), m)


def relu_max(m: Tensor) -> Tensor:
    """The study's 'relu hybrid': ``ReLU(M) / max(ReLU(M))`` per map.

    Maps with no positive value become 0. Invariant under positive scaling.

    Args:
        m (Tensor): ``(..., h, w)`` floating-point maps, ``h, w >= 1``.

    Returns:
        *Tensor*: ``m``'s shape and dtype, in [0, 1]; a map holding a NaN or an Inf is all NaN.

    Raises:
        InputError: ``m`` is not a tensor, not floating point, or empty.
    """
    _check(m)
    r = m.clamp(min=0)
    return _nan_where_not_finite(_safe_ratio(r, _amax(r)).clamp_(0.0, 1.0), m)


def tanh_max(m: Tensor) -> Tensor:
    """``tanh(2 * ReLU(M) / max(ReLU(M)))`` per map.

    Args:
        m (Tensor): ``(..., h, w)`` floating-point maps, ``h, w >= 1``.

    Returns:
        *Tensor*: ``m``'s shape and dtype, in [0, tanh(2)] (about 0.964); a map holding a NaN or an Inf is all NaN.

    Raises:
        InputError: ``m`` is not a tensor, not floating point, or empty.
    """
    return torch.tanh(2.0 * relu_max(m))


def postprocess(m: Tensor, threshold: float = 0.3, gain: float = 1.5) -> Tensor:
    """The study's display post-process: values below ``threshold`` set to 0,
    the rest multiplied by ``gain`` and clamped to 1.

    Args:
        m (Tensor): ``(..., h, w)`` floating-point maps in [0, 1].
        threshold (float, optional): Default: 0.3.
        gain (float, optional): Default: 1.5.

    Returns:
        *Tensor*: ``m``'s shape and dtype, in [0, 1]; a map holding a NaN or an Inf is all NaN.

    Raises:
        InputError: ``m`` is not a tensor, not floating point, or empty.
    """
    _check(m)
    return _nan_where_not_finite(torch.where(m < threshold, torch.zeros_like(m), m * gain).clamp_(0.0, 1.0), m)


NORMALIZERS: Dict[str, Normalizer] = {
    "minmax": minmax,
    "sigmoid": sigmoid,
    "relu_max": relu_max,
    "tanh_max": tanh_max,
}
# Names used by the study and by other libraries.
_ALIASES = {"relu": "relu_max", "relu_hybrid": "relu_max", "tanh": "tanh_max", "min_max": "minmax"}


def normalize_volume(m: Tensor, normalizer: str | Normalizer = "minmax") -> Tensor:
    """Normalize each ``(T, H, W)`` volume as one map (a video's or a 3-D scan's), not frame by frame.

    The volume is passed to the normalizer as the 2-D map ``(T * H, W)`` (its frames stacked), so
    every built-in normalizer, which treats a map's positions as a set, sees all ``T * H * W``
    values at once; a custom callable gets ``(..., T * H, W)`` too.

    Args:
        m (Tensor): ``(..., T, H, W)`` floating-point maps, ``T, H, W >= 1``.
        normalizer (str or callable, optional): As :func:`get_normalizer` takes. Default: ``"minmax"``.

    Returns:
        *Tensor*: ``m``'s shape and dtype (e.g. in [0, 1] for ``minmax``).

    Raises:
        InputError: ``m`` is not a tensor of at least 3 dimensions, or what the normalizer refuses.
    """
    if not isinstance(m, Tensor):
        raise InputTypeError(f"expected a torch.Tensor of shape (..., T, H, W), got {type(m).__name__}")
    if m.dim() < 3 or 0 in m.shape[-3:]:
        raise InputError(f"expected volumes of shape (..., T, H, W) (T, H, W >= 1), got shape {tuple(m.shape)}")
    return get_normalizer(normalizer)(m.flatten(-3, -2)).unflatten(-2, m.shape[-3:-1])


def get_normalizer(name_or_fn: str | Normalizer) -> Normalizer:
    """Look up a normalizer by name, or pass a callable through.

    Args:
        name_or_fn (str or callable): ``minmax``/``min_max``, ``sigmoid``,
            ``relu_max``/``relu``/``relu_hybrid``, ``tanh_max``/``tanh``, or
            any ``(..., h, w) -> (..., h, w)`` callable.

    Returns:
        *callable*: The normalizer.

    Raises:
        InputError: An unknown name.
    """
    if callable(name_or_fn):
        return name_or_fn
    key = _ALIASES.get(str(name_or_fn), str(name_or_fn))
    if key not in NORMALIZERS:
        known = sorted(set(NORMALIZERS) | set(_ALIASES))
        raise InputError(f"unknown normalizer {name_or_fn!r}; choose one of {known}")
    return NORMALIZERS[key]
