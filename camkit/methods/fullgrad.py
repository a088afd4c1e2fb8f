"""FullGrad (Srinivas and Fleuret, 2019): input-gradient and bias-gradient terms of the whole network.

The map of a target y is ``psi(|dy/dx * x|) + sum_l sum_c psi(|b_lc * dy/dz_lc|)``,
where l runs over the layers that add a bias per channel, ``z_l`` is the
layer's output and ``b_lc`` its bias (a BatchNorm's effective bias in eval
mode, ``beta - gamma * mean / sqrt(var + eps)``), and ``psi`` takes the absolute
value, min-max-normalizes and upsamples (bilinear) to the input: by default the
C maps of a layer together (one min and max per image and layer, the authors'
code), with ``per_channel=True`` each channel's map on its own
(pytorch-grad-cam's). The layers are the ``nn.Conv2d`` with a bias and the
``nn.BatchNorm2d`` with affine weights and running statistics (exact types: a
fused norm + activation module's output is not the bias's; timm's ``BatchNormAct2d``
is hooked on its ``drop`` submodule, which returns the batch norm's output), and
the total is normalized at the end (``normalize``, default min-max).

It fits camkit's hooks: every such layer is hooked, the forward records the
whole graph from the input (a leaf that requires grad; the model's
parameters are not touched), and one batched backward gives the gradients
of the K targets with respect to the input and to every hooked output.
Each layer's term is summed over its channels at the layer's resolution
(upsampling is linear, so it commutes with that sum): ``layer_maps`` holds
one ``(B, K, h, w)`` map per layer plus ``"input"``, and the maps are their
sum upsampled, then normalized. With ``eigen_smooth`` the terms are reduced by their first
principal component instead of their sum (:func:`fullgrad_eigen`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..hooks import LayerSpec
from ..normalize import Normalizer, minmax, normalize_volume
from .base import CallContext, Layers, _GradientMethod, all_zero
from .eigen import eigen_projection
from .options import GradientOptions
from .precision import float32_math, work_dtype
from .registry import register_method
from .volume import upsample


def fullgrad_term(G: Tensor, b: Tensor, per_channel: bool = False) -> Tensor:
    """One layer's FullGrad term ``sum_c psi(|b_c G_c|)``: G ``(B, K, C, h, w)``, b broadcast to it
    (the bias ``(C, 1, 1)``; for the input term the input ``(B, 1, C, H, W)``) -> ``(B, K, h, w)``.
    ``psi``: min-max over the layer's C maps together, or over each map (``per_channel``)."""
    m = (G * b).abs()
    if m.dim() == 6:  # a 3-D layer's (B, K, C, t, h, w): each (t, h, w) map, or the C maps together
        return (normalize_volume(m) if per_channel else minmax(m.flatten(2).unsqueeze(-1)).view_as(m)).sum(dim=2)
    if per_channel:
        return minmax(m).sum(dim=2)
    return minmax(m.flatten(-3, -2)).unflatten(-2, m.shape[-3:-1]).sum(dim=2)


def fullgrad_eigen(terms: Sequence[Tensor], size: Tuple[int, ...], renormalize: bool = False) -> Tensor:
    """FullGrad's ``eigen_smooth``: the L terms ``(B, K, h_l, w_l)`` reduced by their first principal
    component instead of their sum -> ``(B, K, *size)``.

    As pytorch-grad-cam does, the terms are brought to the input's size, then to an eighth of it
    (``max(1, H // 8)``; bilinear, ``align_corners=False`` both times), where each position's vector of
    L terms is projected on their first principal direction (:func:`camkit.methods.eigen_projection`:
    centered, camkit's sign rule); ReLU; the projection upsampled (bilinear) to ``size``.
    ``renormalize`` (``per_channel=True``, pytorch-grad-cam's): each term min-max normalized at the
    input's size, before it is brought to the eighth."""
    small = (max(1, size[0] // 8), max(1, size[1] // 8))

    def at_small(m: Tensor) -> Tensor:
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
        return F.interpolate(minmax(m) if renormalize else m, size=small, mode="bilinear", align_corners=False)

    p = eigen_projection(torch.stack([at_small(m) for m in terms], dim=2)).clamp(min=0)
    return F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=False)


def bias_of(layer: nn.Module) -> Tensor:
    """The per-channel bias a layer adds: a Conv2d's (Conv3d's) bias, a BatchNorm2d's (BatchNorm3d's)
    effective bias in eval mode."""
    if isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm3d)):
        return layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return layer.bias


def bias_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(hooked name, module whose bias it adds)``: each ``nn.Conv2d`` with a bias and
    ``nn.BatchNorm2d`` with affine weights and running statistics, hooked at its output;
    for timm's ``BatchNormAct2d`` (batch norm, then ``drop``, then ``act``) the hook is
    on ``drop``, whose output is the batch norm's (the module's own output is after the
    activation)."""
    out = []
    for name, m in model.named_modules():
        if type(m) in (nn.Conv2d, nn.Conv3d) and m.bias is not None:
            out.append((name, m))
        elif type(m) is nn.BatchNorm3d and m.affine and m.running_mean is not None:  # 3-D models
            out.append((name, m))
        elif isinstance(m, nn.BatchNorm2d) and m.affine and m.running_mean is not None:
            if type(m) is nn.BatchNorm2d:
                out.append((name, m))
            elif _is_timm_norm_act(m):
                out.append((f"{name}.drop" if name else "drop", m))
    return out


def _is_timm_norm_act(m: nn.Module) -> bool:
    return (type(m).__name__ == "BatchNormAct2d" and type(m).__module__.startswith("timm.")
            and isinstance(getattr(m, "drop", None), nn.Module) and isinstance(getattr(m, "act", None), nn.Module))


@dataclass(frozen=True)
class FullGradOptions(GradientOptions):
    """Plus ``per_channel``: normalize each channel's term on its own (pytorch-grad-cam's)
    instead of each layer's (the authors' code). ``eigen_smooth`` applies (:func:`fullgrad_eigen`);
    ``aug_smooth`` does not."""

    per_channel: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aug_smooth:
            raise InputError("FullGrad takes no aug_smooth")


@register_method("fullgrad", layers="biases")
class FullGrad(_GradientMethod):
    """FullGrad maps of any target (see the module's notes). Every bias layer is hooked:
    ``layers`` is accepted so that every method takes the same call, and ignored with a
    warning (as pytorch-grad-cam does). ``normalize`` applies to the total (default min-max); None gives the raw sum.
    ``per_channel``: normalize each channel's term on its own (pytorch-grad-cam) instead of
    each layer's (the authors' code). ``eigen_smooth``: the terms reduced by their first principal
    component instead of their sum (:func:`fullgrad_eigen`, pytorch-grad-cam's option)."""

    Options = FullGradOptions
    grad_from_input = True  # dy/dx is one of the terms
    volumes = True  # Conv3d / BatchNorm3d biases, terms per (t, h, w) volume, trilinear upsampling
    canvas_crop = False  # its terms are upsampled to the input before they are summed

    def _setup(self) -> None:
        self._bias_of = dict(bias_layers(self.model))
        if not self._bias_of:
            raise InputError(f"{type(self.model).__name__} has no nn.Conv2d with a bias nor nn.BatchNorm2d: FullGrad "
                             "needs the layers whose biases it explains")

    def _default_layers(self, layers: Layers) -> Sequence[LayerSpec]:
        if layers is not None:
            warnings.warn("FullGrad uses every bias layer of the model; layers= is ignored", stacklevel=3)
        return list(self._bias_of)

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        x, names, per_channel = ctx.x, self.layer_names, self.options.per_channel
        if x.dim() == 5 and self.options.eigen_smooth:
            raise InputError("FullGrad's eigen_smooth is written for 2-D images; on videos and volumes use it without")
        grads = self._gradients(ctx.values, [x] + [ctx.acts[n] for n in names], ["input"] + names)
        ctx.flag("zero_gradients", all_zero(grads))
        out: Dict[str, Tensor] = {}
        with float32_math(ctx.values.device.type):
            out["input"] = fullgrad_term(work_dtype(grads[0]), work_dtype(x.detach())[:, None], per_channel)
            for name, g in zip(names, grads[1:]):
                b = work_dtype(bias_of(self._bias_of[name]).detach()).view(-1, *([1] * (g.dim() - 3)))
                out[name] = fullgrad_term(work_dtype(g), b, per_channel)
        return out

    def _combine(self, layer_maps: Dict[str, Tensor], size: Tuple[int, ...], normalize: Optional[Normalizer],
                 fusion: str, weights: Optional[Sequence[float]], valid: Optional[Tensor] = None) -> Tensor:
        """The terms upsampled (bilinear) to the input and summed (``eigen_smooth``: reduced by
        :func:`fullgrad_eigen`), then normalized."""
        first = next(iter(layer_maps.values()))
        with float32_math(first.device.type):
            if self.options.eigen_smooth:
                total = fullgrad_eigen(list(layer_maps.values()), tuple(size), self.options.per_channel)
            else:  # bilinear; trilinear for volumes
                total = sum(upsample(m, size) for m in layer_maps.values())
            out = total if normalize is None else normalize(total) if total.dim() == 4 else \
                normalize_volume(total, normalize)  # type: ignore[arg-type]  # a volume as one map
            if valid is not None:
                out = out * valid.reshape(*valid.shape, *([1] * (out.dim() - 2)))
        return out
