"""Guided Backprop (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al., 2017), at the
input's resolution.

Guided Backprop is the gradient of a target with respect to the input ``x (B, C, H, W)`` in which
every ReLU passes back only positive gradients at positive inputs: ``dL/dz = [z > 0] [g > 0] g``
for ``g`` the gradient arriving at the ReLU's output. camkit gets it with hooks that live for one
call: a forward hook on each ``nn.ReLU`` module registers a hook on the output tensor that
replaces ``g`` by ``ReLU(g)`` (the ReLU's own backward then applies ``[z > 0]``); the forward hooks
are removed when the forward ends and the tensor hooks go with the graph, so the model is left as
found (pytorch-grad-cam replaces the modules and puts back new, not-in-place ``nn.ReLU()`` ones).

Supported: every ``nn.ReLU`` module (subclasses included), in place or not, also one module called
several times (torchvision's ResNet blocks). Not hooked: ``torch.nn.functional.relu`` /
``torch.relu`` called inside a ``forward``, and other activations (ReLU6, GELU, SiLU ...): gradients
pass through them unchanged, as in plain backprop. A model without ``nn.ReLU`` modules is refused.

The map of each target is the guided gradient reduced over the input's C channels: ``max_c |g_c|``
(``reduce="abs_max"``, Simonyan et al.'s saliency reduction) or ``sum_c |g_c|`` (``"abs_sum"``).
Guided Grad-CAM multiplies it, position by position, by the layer's Grad-CAM map (plain
gradients) upsampled bilinearly to the input: ``reduce(g) * up(ReLU(sum_k mean(G_k) A_k))``
(the paper's product with the 3-channel gradient, reduced after it: the Grad-CAM value is one
non-negative number per position, so the order does not matter). Several layers' Grad-CAM maps
are fused first, each scaled by its maximum (a positive factor per map, which the final
normalization removes for one layer).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..hooks import LayerSpec
from ..normalize import Normalizer, relu_max
from .base import NO_PATH, CallContext, Layers, _GradientMethod, _Method, all_zero
from .gradient import gradcam_formula
from .options import GradientOptions
from .precision import float32_math, work_dtype
from .registry import register_method

REDUCTIONS = ("abs_max", "abs_sum")


# --------------------------------------------------------------------------- formulas


def guided_map(g: Tensor, reduce: str = "abs_max") -> Tensor:
    """A guided gradient ``(B, K, C, H, W)`` reduced over its C channels -> ``(B, K, H, W)``."""
    if reduce not in REDUCTIONS:
        raise InputError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    return g.abs().amax(dim=2) if reduce == "abs_max" else g.abs().sum(dim=2)


def guided_gradcam_formula(gb: Tensor, cam: Tensor) -> Tensor:
    """Guided Grad-CAM: ``gb * up(cam)``: gb ``(B, K, H, W)`` (:func:`guided_map`), cam ``(B, K, h, w)``
    (Grad-CAM's raw map) upsampled bilinearly (``align_corners=False``) to ``(H, W)``."""
    if cam.shape[-2:] != gb.shape[-2:]:
        cam = F.interpolate(cam, size=tuple(gb.shape[-2:]), mode="bilinear", align_corners=False)
    return gb * cam


def relu_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.ReLU`` module (each module once, however often it runs)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n]


class _Switch:
    """Whether the guided rule is on (Guided Grad-CAM turns it off for its plain backward)."""

    on = True


@contextmanager
def guided_relus(modules: Sequence[nn.Module], switch: _Switch) -> Iterator[None]:
    """During the block, every call of one of ``modules`` registers a hook on its output that replaces
    the arriving gradient ``g`` by ``ReLU(g)`` while ``switch.on``. The forward hooks are removed on
    leaving the block (also on error); the tensor hooks belong to that forward's graph."""

    def clamp(g: Tensor) -> Tensor:
        return g.clamp(min=0) if switch.on else g

    def hook(m: nn.Module, i: object, o: object) -> None:
        if isinstance(o, Tensor) and o.requires_grad:
            o.register_hook(clamp)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _grads(values: Tensor, tensors: Sequence[Tensor], batched: bool, retain: bool) -> List[Optional[Tensor]]:
    """d values[:, k] / d t ``(B, K, *t.shape[1:])`` for each tensor (the graph kept with ``retain``)."""
    b, k = values.shape
    eye = torch.eye(k, dtype=values.dtype, device=values.device)
    if k == 1 or not batched:
        per_k = [torch.autograd.grad(values, tensors, grad_outputs=eye[j].expand(b, k),
                                     retain_graph=retain or j < k - 1, allow_unused=True) for j in range(k)]
        return [None if per_k[0][i] is None else torch.stack([g[i] for g in per_k], dim=1)
                for i in range(len(tensors))]
    onehots = eye[:, None, :].expand(k, b, k).contiguous()
    grads = torch.autograd.grad(values, tensors, grad_outputs=onehots, is_grads_batched=True,
                                retain_graph=retain, allow_unused=True)
    return [g.transpose(0, 1) if g is not None else None for g in grads]


# --------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class GuidedOptions(GradientOptions):
    """Plus ``reduce``: how the guided gradient's input channels become one map (:data:`REDUCTIONS`).
    ``eigen_smooth`` does not apply."""

    reduce: str = "abs_max"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reduce not in REDUCTIONS:
            raise InputError(f"unknown reduce {self.reduce!r}; choose one of {', '.join(REDUCTIONS)}")
        if self.eigen_smooth:
            raise InputError("Guided Backprop and Guided Grad-CAM take no eigen_smooth")


class _Guided(_GradientMethod):
    """The guided gradient at the input; hooks on the ``nn.ReLU`` modules for each call."""

    Options = GuidedOptions
    grad_from_input = True

    def _setup(self) -> None:
        self._relus = relu_modules(self.model)
        if not self._relus:
            raise InputError(f"{type(self.model).__name__} has no nn.ReLU module: Guided Backprop hooks "
                             "nn.ReLU modules (torch.nn.functional.relu calls and other activations cannot be hooked)")
        self._switch = _Switch()

    def _run_model(self, x: Tensor) -> object:
        with guided_relus([m for _, m in self._relus], self._switch):
            return super()._run_model(x)

    def _guided(self, ctx: CallContext, retain: bool) -> Tensor:
        """The targets' guided maps ``(B, K, H, W)``."""
        self._switch.on = True
        (g,) = _grads(ctx.values, [ctx.x], self._batched([ctx.x]), retain)
        if g is None:
            raise InputError("the targets do not depend on the input through autograd")
        ctx.flag("zero_gradients", all_zero([g]))
        with float32_math(ctx.values.device.type):
            return guided_map(work_dtype(g), self.options.reduce)


@register_method("guidedbackprop", layers="input")
class GuidedBackprop(_Guided):
    """Guided Backprop maps at the input's resolution (see the module's notes). It needs no layer:
    ``layers`` is accepted so that every method takes the same call, and ignored with a warning."""

    def _default_layers(self, layers: Layers) -> Sequence[LayerSpec]:
        if layers is not None:
            warnings.warn("Guided Backprop reads the input's gradient; layers= is ignored", stacklevel=3)
        return [n for n, _ in self._relus]

    def _hooked(self) -> List[Tuple[str, nn.Module]]:
        return []

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        return {"input": self._guided(ctx, retain=False)}


@register_method("guidedgradcam", layers="last")
class GuidedGradCAM(_Guided):
    """Guided Grad-CAM: the guided map times the layers' (plain) Grad-CAM, upsampled. Several layers'
    Grad-CAM maps are fused first (``fusion`` / ``weights``, each scaled by its maximum, ``relu_max``;
    raw with ``normalize=None``). ``layer_maps`` holds ``"input"`` (the guided map) and each layer's
    Grad-CAM map."""

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        names = self.layer_names
        if not ctx.values.requires_grad:
            raise InputError(NO_PATH.format(names=names))
        self._switch.on = False  # Grad-CAM's own gradients are the plain ones
        try:
            acts = [ctx.acts[n] for n in names]
            grads = _grads(ctx.values, acts, self._batched(acts), retain=True)
        finally:
            self._switch.on = True
        out: Dict[str, Tensor] = {}
        for name, G in zip(names, grads):
            if G is None:
                raise InputError(NO_PATH.format(names=[name]))
            with float32_math(ctx.values.device.type):
                A = self._as_4d(name, ctx.acts[name].detach())
                out[name] = gradcam_formula(work_dtype(A), work_dtype(self._reshaped(G)))
        out["input"] = self._guided(ctx, retain=False)
        return out

    @staticmethod
    def _combine(layer_maps: Dict[str, Tensor], size: Tuple[int, ...], normalize: Optional[Normalizer],
                 fusion: str, weights: Optional[Sequence[float]], valid: Optional[Tensor] = None) -> Tensor:
        """The guided map times the layers' Grad-CAM maps fused at the input's size, resized to ``size``,
        then normalized."""
        gb = layer_maps["input"]
        cams = {n: m for n, m in layer_maps.items() if n != "input"}
        cam = _Method._combine(cams, tuple(gb.shape[-2:]), None if normalize is None else relu_max, fusion, weights)
        with float32_math(gb.device.type):
            out = guided_gradcam_formula(gb, cam)
            if tuple(out.shape[-2:]) != tuple(size):
                out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
            out = out if normalize is None else normalize(out)
            if valid is not None:
                out = out * valid[..., None, None]
        return out
