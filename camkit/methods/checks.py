"""The checks of a method call: the model, the input, each hooked layer's output, and
the on-device problem flags raised after the call in one host read."""
from __future__ import annotations

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
    if x.dim() != 4:
        hint = " (a single image? add a batch dimension with x[None])" if x.dim() == 3 else ""
        raise InputError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}{hint}")
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


def raise_problems(x: Tensor, scores: Tensor, problems: Sequence[Tuple[str, Optional[Tensor]]]) -> None:
    """All checks of a call's values in ONE host read: non-finite input or scores
    per image, and the on-device flags in ``problems`` (name, 0-d bool)."""
    b = x.shape[0]
    flags = [(~torch.isfinite(x).reshape(b, -1).all(dim=1)).to(scores.device),
             ~torch.isfinite(scores.detach()).reshape(b, -1).all(dim=1)]
    named = [(name, f) for name, f in problems if f is not None]
    flags += [f.reshape(1) for _, f in named]
    host = torch.cat(flags).tolist()  # the one host-device synchronization of a call
    bad_x = [i for i in range(b) if host[i]]
    bad_s = [i for i in range(b) if host[b + i]]
    if bad_x:
        raise InputError(f"the input has NaN or Inf values in image(s) {bad_x}")
    if bad_s:
        raise InputError(f"the model's output is NaN or Inf for image(s) {bad_s} "
                         "(check the weights and the input's range)")
    for (name, _), flag in zip(named, host[2 * b:]):
        if flag:
            raise InputError(PROBLEMS[name])


PROBLEMS = {
    "index": "a target class index lies outside the model's classes",
    "head": ("the model's logits are not fc(GAP(layer)): its head is not global-average-pool + linear on this "
             "layer. Use another layer, or a camkit.CAMHead"),
}


def as_4d(name: str, a: Tensor, reshape: Optional[Reshape]) -> Tensor:
    """Layer ``name``'s output ``a`` after ``reshape``, which must be ``(B, C, h, w)``."""
    if reshape is not None:
        a = reshape(a)
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
