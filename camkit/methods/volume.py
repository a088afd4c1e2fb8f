"""Video and 3-D volumes: inputs ``(B, C, T, H, W)`` into models of ``nn.Conv3d`` layers.

A 3-D layer's output ``A (B, C, t, h, w)`` is *folded* to ``(B, C, t * h, w)`` before a
method's formula runs, and its raw maps ``(B, K, t * h, w)`` are unfolded back to
``(B, K, t, h, w)``. Every formula of CAM, Eigen-CAM, the gradient methods and the channel
weights of Score-CAM / Ablation-CAM treats the positions of a map as a set (a mean or sum over
them, an element-wise product, or the principal component of the position vectors), so folding
changes nothing: the maps are those of the formula written over ``(t, h, w)``. Score-CAM's masks
and Ablation-CAM's copies are made from the unfolded output. Maps are upsampled to the input's
``(T, H, W)`` trilinearly (``align_corners=False``), normalized per volume (each
``(T, H, W)`` map one map: :func:`camkit.normalize.normalize_volume`) and fused as 2-D maps are.

The model's kind is read from its first registered convolution: a 5-D input to a model
whose first convolution is ``nn.Conv2d`` and a 4-D input to one whose first convolution
is ``nn.Conv3d`` (which would read it as one unbatched volume) are refused.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .checks import _width as feature_width

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def first_conv(model: nn.Module) -> Optional[Tuple[str, int]]:
    """``(name, spatial dims)`` of the model's first registered convolution (1, 2 or 3), None without one."""
    for name, m in model.named_modules():
        for cls, dims in _CONVS.items():
            if isinstance(m, cls):
                return name, dims
    return None


def check_input_dims(x: Tensor, conv: Optional[Tuple[str, int]], method: str, volumes: bool) -> None:
    """Refuse an input whose dimensions do not fit the model (``conv``: :func:`first_conv`) or the method.

    Raises:
        InputError: a 5-D input to a 2-D model, a 4-D input to a 3-D model, or a 5-D input to a
            method that does not support volumes (``volumes`` False).
    """
    if conv is not None and conv[1] == 3 and x.dim() == 4:
        raise InputError(
            f"the model's first convolution {conv[0]!r} is a Conv3d: it takes videos or volumes "
            f"(B, C, T, H, W), got a 4-D input {tuple(x.shape)} (which Conv3d would read as one unbatched "
            "volume). If it is one clip (C, T, H, W), add the batch dimension (x[None]); for images, use a "
            "2-D model")
    if x.dim() != 5:
        return
    if conv is not None and conv[1] != 3:
        raise InputError(
            f"a 5-D input {tuple(x.shape)} (B, C, T, H, W) is for 3-D models (Conv3d), but the model's first "
            f"convolution {conv[0]!r} is a Conv{conv[1]}d, which takes (B, C, H, W) images: explain the frames "
            "as images (x[:, :, t]) or use a 3-D model")
    if not volumes:
        raise no_volumes(method)


def no_volumes(method: str) -> InputError:
    """The error for a method that does not take videos or 3-D volumes."""
    return InputError(
        f"{method} does not support videos or 3-D volumes (B, C, T, H, W) (its terms are written for 2-D "
        "images); use CAM, Eigen-CAM, a gradient method (Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM, XGrad-CAM, "
        "Grad-CAM element-wise, Eigen-Grad-CAM, Smooth Grad-CAM++, FullGrad), Score-CAM, SS-CAM, IS-CAM or "
        "Ablation-CAM")


def check_channels_first(name: str, a: Tensor, module: Optional[nn.Module]) -> Tensor:
    """``a`` if it is ``(B, C, t, h, w)``; a channels-last ``(B, t, h, w, C)`` output (its last dimension
    the layer's width and the second not, e.g. a video Swin stage) is refused, never read as channels."""
    if a.shape[1] != a.shape[-1] and feature_width(module) == a.shape[-1]:
        raise InputError(f"layer {name!r} outputs shape {tuple(a.shape)}: channels last (B, t, h, w, C), with "
                         f"C = {a.shape[-1]} its width. Pass reshape=lambda t: t.permute(0, 4, 1, 2, 3)")
    return a


def fold(a: Tensor) -> Tensor:
    """A layer's output ``(B, C, t, h, w) -> (B, C, t * h, w)`` (or a gradient ``(B, K, C, t, h, w)`` ->
    ``(B, K, C, t * h, w)``): the volume's positions as a 2-D grid."""
    return a.flatten(-3, -2)


def unfold(m: Tensor, spatial: Sequence[int]) -> Tensor:
    """Folded maps ``(..., t * h, w) -> (..., t, h, w)`` for a layer of spatial shape ``(t, h, w)``."""
    t, h, w = (int(s) for s in spatial)
    if tuple(m.shape[-2:]) != (t * h, w):
        raise InputError(f"maps of shape {tuple(m.shape)} do not fold a volume of shape {(t, h, w)}")
    return m.unflatten(-2, (t, h))


def upsample(m: Tensor, size: Sequence[int]) -> Tensor:
    """Maps ``(B, K, *s) -> (B, K, *size)``: bilinear for ``(h, w)``, trilinear for ``(t, h, w)``
    (``align_corners=False``); returned as they are at that size."""
    size = tuple(int(s) for s in size)
    if tuple(m.shape[2:]) == size:
        return m
    if m.dim() - 2 != len(size) or len(size) not in (2, 3):
        raise InputError(f"cannot resize maps of shape {tuple(m.shape)} to {size}: expected (h, w) or (t, h, w)")
    return F.interpolate(m, size=size, mode="bilinear" if len(size) == 2 else "trilinear", align_corners=False)


def probe_input(model: nn.Module, channels: int, batch: int = 2, seed: int = 0) -> Tensor:
    """A random video ``(batch, channels, 8, 112, 112)`` on the model's device and in its dtype, from a
    private generator (for a dry run of a 3-D model; the global RNG is not consumed)."""
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, 8, 112, 112, generator=g)
    return x if ref is None else x.to(device=ref.device, dtype=ref.dtype)


def conv3d_channels(model: nn.Module) -> int:
    """``in_channels`` of the model's first registered ``nn.Conv3d`` (3 without one)."""
    return next((int(m.in_channels) for m in model.modules() if isinstance(m, nn.Conv3d)), 3)
