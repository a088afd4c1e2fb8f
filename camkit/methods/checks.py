"""The checks of a method call: the model, the input, each hooked layer's output, and
the on-device problem flags raised after the call in one host read."""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from .precision import _autocast_on

Reshape = Callable[[Tensor], Tensor]


def _model_dtype(model: nn.Module) -> Optional[torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def check_input(x: object, model: nn.Module) -> Tensor:
    """``x`` if it is a non-empty floating-point ``(B, C, H, W)`` batch in the model's dtype
    (any dtype under autocast); else an :class:`InputError` naming the problem."""
    if not isinstance(x, Tensor):
        raise InputTypeError(f"expected an image batch tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() not in (4, 5):
        hint = " (a single image? add a batch dimension with x[None])" if x.dim() == 3 else ""
        raise InputError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}{hint}; "
                         "a 3-D model (Conv3d) takes videos or volumes (B, C, T, H, W)")
    if x.shape[0] == 0:
        raise InputError("the input batch is empty")
    if not x.is_floating_point():
        raise InputError(f"the input must be a floating-point image batch, normalized as the model expects; "
                         f"got dtype {x.dtype} (convert it, e.g. with the preset's transform)")
    dtype = _model_dtype(model)
    if dtype is not None and x.dtype != dtype and not _autocast_on(x.device.type):
        raise InputError(f"the input's dtype {x.dtype} differs from the model's {dtype}: "
                         f"convert one of them (e.g. x.to({dtype}))")
    return x


def _not_finite(t: Tensor, b: int, device: torch.device) -> Tensor:
    """``(b,)`` bool: row i of ``t`` holds a NaN or an Inf (exact; an elementwise pass)."""
    return (~torch.isfinite(t.detach()).reshape(b, -1).all(dim=1)).to(device)


def _sum_not_finite(t: Tensor, b: int, device: torch.device) -> Tensor:
    """``(b,)`` bool, True wherever :func:`_not_finite` is (and where a sum of finite values overflows): a
    row's sum is finite only if each of its values is. A sum is a few times cheaper on a CPU than
    ``isfinite``'s bool pass; half precision sums in float32."""
    acc = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
    return (~torch.isfinite(t.detach().reshape(b, -1).sum(dim=1, dtype=acc))).to(device)


def raise_problems(x: Tensor, scores: Tensor, values: Tensor,
                   problems: Sequence[Tuple[str, Optional[Tensor]]]) -> None:
    """All checks of a call's values in ONE host read: non-finite input, scores or target
    values per image, and the on-device flags in ``problems`` (name, 0-d bool): an error for
    the names in :data:`PROBLEMS`, a warning for those in :data:`WARNINGS`. Rows whose sum is
    not finite are looked at value by value before an error (an overflowing sum is no error)."""
    b, dev = x.shape[0], scores.device
    checked = (x, scores, values)
    flags = [_sum_not_finite(t, b, dev) for t in checked]
    named = [(name, f) for name, f in problems if f is not None]
    flags += [f.reshape(1).to(dev) for _, f in named]
    host = torch.cat(flags).tolist()  # the one host-device synchronization of a call without a problem
    if any(host[:3 * b]):
        host[:3 * b] = torch.cat([_not_finite(t, b, dev) for t in checked]).tolist()
    bad = [[i for i in range(b) if host[j * b + i]] for j in range(3)]
    if bad[0]:
        raise InputError(f"the input has NaN or Inf values in image(s) {bad[0]}")
    if bad[1]:
        raise InputError(f"the model's output is NaN or Inf for image(s) {bad[1]} "
                         "(check the weights and the input's range)")
    if bad[2]:
        raise InputError(f"the target values are NaN or Inf for image(s) {bad[2]} (check the target function)")
    for (name, _), flag in zip(named, host[3 * b:]):
        if flag and name in PROBLEMS:
            raise InputError(PROBLEMS[name])
        if flag:
            warnings.warn(WARNINGS[name], stacklevel=4)


PROBLEMS = {
    "index": "a target class index lies outside the model's classes",
    "head": ("the model's logits are not fc(GAP(layer)): its head is not global-average-pool + linear on this "
             "layer. Use another layer, or a camkit.CAMHead"),
}
WARNINGS = {
    "zero_gradients": ("the targets' gradients are exactly zero at every hooked layer, so the maps are blank: "
                       "does the output depend on these layers, or is the head zero-initialized (e.g. a "
                       "torchvision ViT built with weights=None)?"),
}


def _width(module: Optional[nn.Module]) -> Optional[int]:
    """The feature width of a module's output: that of the last of its submodules with one
    (Linear's out_features, LayerNorm's last normalized dimension, a conv's out_channels, a norm's
    num_features), None if none has one."""
    width = None
    for m in (module.modules() if module is not None else ()):
        if isinstance(m, nn.Linear):
            width = m.out_features
        elif isinstance(m, nn.LayerNorm):
            width = int(m.normalized_shape[-1])
        elif isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Conv1d)):
            width = m.out_channels
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            width = getattr(m, "num_features", None) or getattr(m, "num_channels", None)
    return width


def as_4d(name: str, a: Tensor, reshape: Optional[Reshape], module: Optional[nn.Module] = None) -> Tensor:
    """Layer ``name``'s output ``a`` after ``reshape``, which must be ``(B, C, h, w)``.

    Without ``reshape``, a 4-D output whose last dimension is the layer's feature width (and the
    second is not) is channels-last ``(B, h, w, C)`` (e.g. a Swin stage): refused, never read as
    ``(B, C, h, w)``."""
    if reshape is not None:
        a = reshape(a)
    elif a.dim() == 4 and a.shape[1] != a.shape[-1] and _width(module) == a.shape[-1]:
        raise InputError(f"layer {name!r} outputs shape {tuple(a.shape)}: channels last (B, h, w, C), with "
                         f"C = {a.shape[-1]} its width. Pass reshape=lambda t: t.permute(0, 3, 1, 2) "
                         "(camkit.adapters presets give it for the models they know)")
    if a.dim() != 4:
        raise InputError(
            f"layer {name!r} outputs shape {tuple(a.shape)}; expected (B, C, h, w). For token outputs (B, N, C) "
            "pass reshape=... or use camkit.adapters"
        )
    return a


def check_model(model: object) -> nn.Module:
    """``model`` if it is an ``nn.Module`` whose submodules run Python hooks (not TorchScript)."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError("TorchScript modules (torch.jit.script / torch.jit.trace) do not run Python forward hooks "
                         "on their submodules; pass the original nn.Module")
    return model
