"""``camkit layers``: a model's hookable layers with their output shapes, the defaults marked."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Tuple

from torch import nn

from ..adapters import NoPresetError, Preset, create, default_marks, list_layers, resolve
from ..app import ModelSpec
from ..errors import InputError
from ..methods.volume import first_conv
from .common import int_at_least, model_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``camkit layers``."""
    lay = sub.add_parser("layers", help="list hookable layers with their output shapes, marking the defaults")
    model_args(lay, "none")
    lay.add_argument("--input-size", nargs=2, type=int_at_least(1, "pixels"), metavar=("H", "W"),
                     help="input size for the dry forward; default the model's")
    lay.add_argument("--defaults-only", action="store_true", help="only the layers the methods use by default")
    lay.set_defaults(func=cmd_layers)


def _fixed_input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The only input size a model takes, where it has one (ViTs with a fixed position embedding)."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is not None and getattr(pe, "strict_img_size", False) and not getattr(pe, "dynamic_img_pad", False) \
            and not getattr(model, "dynamic_img_size", False):
        return int(size[0]), int(size[1])
    from torchvision.models import VisionTransformer

    if isinstance(model, VisionTransformer):
        return int(model.image_size), int(model.image_size)
    return None


def _layers_at(model: nn.Module, size: Tuple[int, int], name: str, default: Tuple[int, int]):
    """``list_layers`` at a size the user asked for, the model's own refusal in one line."""
    fixed = _fixed_input_size(model)
    if fixed is not None and tuple(size) != fixed:
        raise InputError(f"--input-size {size[0]} {size[1]}: {name} takes only {fixed[0]}x{fixed[1]} inputs "
                         "(a fixed position embedding)")
    try:
        return list_layers(model, size)
    except InputError:
        raise
    except (RuntimeError, AssertionError) as e:  # the model's own refusal of this size
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--input-size {size[0]} {size[1]}: {name} cannot run on this size ({first}); "
                         f"its default is {default[0]} {default[1]}") from None


def _model(args: argparse.Namespace) -> Tuple[nn.Module, Optional[Preset]]:
    """The model and its preset; a model camkit has no preset for is listed all the same."""
    spec = ModelSpec(args.model, args.weights, args.head)
    if args.head:
        return spec.build()
    model = create(args.model, args.weights)
    try:
        return model, resolve(model)
    except NoPresetError as e:
        print(f"camkit: note: no defaults to mark: {str(e).split(';')[0]}", file=sys.stderr)
        return model, None


def cmd_layers(args: argparse.Namespace) -> int:
    """Run ``camkit layers``."""
    model, preset = _model(args)
    default = tuple(preset.input_size) if preset is not None else (_fixed_input_size(model) or (224, 224))
    size = tuple(args.input_size) if args.input_size else default
    infos = _layers_at(model, size, args.model, default) if args.input_size else list_layers(model, size)
    marks = default_marks(preset) if preset is not None else {}
    width = max(len(i.name) for i in infos)
    tw = max(len(i.type) for i in infos)
    family = preset.family if preset is not None else "no preset"
    conv = first_conv(model)
    frames = "16, " if conv is not None and conv[1] == 3 else ""  # a 3-D model: list_layers runs a 16-frame clip
    print(f"{args.model} ({family}), input (1, 3, {frames}{size[0]}, {size[1]}); * = default layer of the methods shown")
    for info in infos:
        if args.defaults_only and info.name not in marks:
            continue
        shape = "x".join(str(s) for s in info.shape) if info.shape else "-"
        mark = marks.get(info.name)
        tail = f"  * {', '.join(mark)}" if mark else ""
        print(f"{info.name:<{width}}  {info.type:<{tw}}  {shape}{tail}")
    return 0
