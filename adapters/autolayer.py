"""The automatic layer for a model camkit has no preset for: the last spatial layer before global pooling.

:func:`auto_fields` gives the :class:`camkit.adapters.Preset` fields (``presets.resolve`` builds the
preset from them and says which layer it chose with an :class:`AutoLayerWarning`), from one dry run of
the whole model (:func:`camkit.hooks.dry_run`: eval mode, no_grad, every flag restored; a private RNG):

* the modules' outputs are watched in the order they finish; the chosen layer is the **last** module
  whose output is a ``(B, C, h, w)`` map with more than one position (``h * w > 1``) that runs once,
  before the pooling reduces it (torchcam's ``locate_candidate_layer`` rule). A container finishes after
  its last child, so of modules returning the same map the outermost is named (``layer4``, not
  ``layer4.1.relu``). A channels-last ``(B, h, w, C)`` output (its last dimension the module's width)
  is skipped: read as ``(B, C, h, w)`` it would be wrong.
* the dry run's input is ``(1, C, 224, 224)`` (C the stem's channels); a model that refuses that size is
  tried at 64 and 32 pixels, and the size that ran becomes the preset's ``input_size``.
* every method kind uses that one layer (LayerCAM too). CAM applies when a linear layer ``fc`` of the
  model gives the logits from the layer's global average (``fc(GAP(A)) == logits`` in the dry run).
* ``output``: ``None`` for a tensor output, ``"logits"`` for an output with ``logits`` (a
  transformers ``ModelOutput``); the scores must be ``(B, num_classes)``.

No spatial layer (an MLP, a model of token sequences without a preset) or a model that runs on none
of the sizes: :func:`auto_fields` returns None with the reason, and ``resolve`` raises ``NoPresetError``.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn

from camkit.errors import InputError
from camkit.hooks import dry_run, dry_run_input
from camkit.methods import select_output

from .layouts import gap_linear

SIZES = ((224, 224), (64, 64), (32, 32))
KEEP = 32  # 4-D outputs kept from the dry run (their memory), the most recent


class AutoLayerWarning(UserWarning):
    """``camkit.adapters.resolve`` chose a layer automatically (a model camkit has no preset for)."""


def _watch(model: nn.Module, size: Tuple[int, int]) -> Tuple[List[Tuple[str, Tuple[int, ...]]], Dict[str, int],
                                                         Dict[str, Tensor], Any]:
    """One dry run: (name, output shape) in finishing order, calls per module, the 4-D outputs, the output."""
    order: List[Tuple[str, Tuple[int, ...]]] = []
    calls: Dict[str, int] = {}
    maps: Dict[str, Tensor] = {}
    mods = [(n, m) for n, m in model.named_modules() if n]

    def hook_for(name: str):
        def hook(m: nn.Module, i: object, o: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(o, Tensor) and calls[name] == 1:
                order.append((name, tuple(o.shape)))
                if o.dim() == 4:
                    maps[name] = o.detach()
                    if len(maps) > KEEP:  # the last KEEP maps only: the chosen layer is among the last
                        del maps[next(iter(maps))]
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in mods]
    try:
        _, raw = dry_run(model, dry_run_input(model, size), names=[])
    finally:
        for h in handles:
            h.remove()
    return order, calls, maps, raw


def _width(module: nn.Module) -> Optional[int]:
    for attr in ("out_features", "normalized_shape", "num_features", "out_channels"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
        if isinstance(v, (tuple, list)) and len(v) == 1:
            return int(v[0])
    return None


def last_spatial_layer(order: List[Tuple[str, Tuple[int, ...]]], calls: Dict[str, int],
                       modules: Dict[str, nn.Module]) -> Optional[str]:
    """The last module (in finishing order) whose output is ``(B, C, h, w)`` with ``h * w > 1``, that ran
    once and is not channels-last; None if there is none."""
    for name, shape in reversed(order):
        if len(shape) != 4 or shape[2] * shape[3] <= 1 or calls.get(name, 0) != 1:
            continue
        if shape[1] != shape[-1] and _width(modules[name]) == shape[-1]:
            continue  # channels-last (B, h, w, C)
        return name
    return None


def _scores_output(raw: Any) -> Tuple[Optional[str], Optional[Tensor]]:
    """(``output=``, the scores) for a tensor output or one with ``logits``; (None, None) otherwise."""
    for output in (None, "logits"):
        try:
            return output, select_output(raw, output)
        except InputError:
            continue
    return None, None


def auto_fields(model: nn.Module) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(fields, why)``: the preset's fields with the automatic layer (and an :class:`AutoLayerWarning`
    naming it), or ``(None, why not)``."""
    errors = []
    for size in SIZES:
        try:
            order, calls, maps, raw = _watch(model, size)
            break
        except Exception as e:  # the model's own refusal of this size: try a smaller one
            errors.append(f"{size[0]}x{size[1]}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    else:
        return None, "its dry run failed at every size tried (" + "; ".join(errors) + ")"
    output, scores = _scores_output(raw)
    if scores is None or scores.dim() != 2:
        got = "an output without logits" if scores is None else f"scores of shape {tuple(scores.shape)}"
        return None, f"the automatic layer needs class scores (B, num_classes), and the model gives {got}"
    mods = dict(model.named_modules())
    name = last_spatial_layer(order, calls, mods)
    if name is None:
        return None, f"no layer outputs a spatial map (B, C, h, w) in a dry run at {size[0]}x{size[1]}"
    fc = _fc_of(maps[name], scores, mods) if name in maps else None
    warnings.warn(
        f"camkit has no preset for {type(model).__module__}.{type(model).__name__}: using layer {name!r} "
        f"(output {dict(order)[name]} at input {size[0]}x{size[1]}), the last spatial layer before global "
        f"pooling{', with fc ' + repr(fc) + ' for CAM' if fc else ''}; choose others with layers=[...] "
        "(--layers on the command line)", AutoLayerWarning, stacklevel=4)
    return {"family": "auto", "layers": (name,), "gradcam_layer": name, "cam_layer": name if fc else None,
            "fc": fc, "layer_sets": {"default": (name,)}, "input_size": size, "output": output}, ""


def _fc_of(a: Tensor, logits: Tensor, modules: Dict[str, nn.Module]) -> Optional[str]:
    """The linear layer with ``fc(GAP(a)) == logits``, if one exists."""
    for n, m in modules.items():
        if isinstance(m, nn.Linear) and m.in_features == a.shape[1] and m.out_features == logits.shape[1]:
            if gap_linear(a, logits, m):
                return n
    return None
