"""What the subcommands share: argparse with one-line errors, option value types, the
model options, and the checks that need no model."""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional, Sequence

from ..app import DEFAULT_MODEL, MethodSpec
from ..errors import DependencyError, InputError
from ..fusion import FUSIONS
from ..overlay import colormap


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``camkit: error: ...`` and exit status 2, like camkit's own."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``camkit: error: MESSAGE`` and exit with status 2."""
        self.exit(2, f"camkit: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (``what`` says what it counts)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer ({what}), got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} ({what}), got {v}")
        return v
    return parse


def unit_float(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return v


def model_args(sp: argparse.ArgumentParser, weights_default: str) -> None:
    """``--model``, ``--weights``, ``--head``."""
    sp.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"model name: {DEFAULT_MODEL} (offline ImageNet weights), a torchvision or timm "
                         "name (tv:NAME / timm:NAME to choose; torchvision segmentation models too); "
                         "default %(default)s")
    sp.add_argument("--weights", default=weights_default,
                    help="imagenet (download the default pretrained weights), none (random), or PATH of a "
                         "state dict; default %(default)s")
    sp.add_argument("--head", metavar="PATH", help="a CAM/ReCAM head saved by camkit.save_head, put on the "
                    "model's features + AdaptiveAvgPool2d(7) (needed for --method recam)")


def method_args(sp: argparse.ArgumentParser) -> None:
    """``--layers``, ``--fusion``, ``--layer-weights``, ``--scales``, ``--flip``."""
    sp.add_argument("--layers", nargs="+", metavar="LAYER",
                    help="layer names (see `camkit layers`) or a preset's layer set (vgg: pools, convs)")
    sp.add_argument("--fusion", choices=FUSIONS, default="max", help="multi-layer fusion: max (LayerCAM's), weighted "
                    "(the study's), mean (pytorch-grad-cam's), tanh_max (torchcam's); default max")
    sp.add_argument("--layer-weights", nargs="+", type=float, metavar="W",
                    help="one weight per layer for --fusion weighted (the study: 0.4 0.4 0.2)")
    sp.add_argument("--scales", nargs="+", type=float, metavar="S",
                    help="multi-scale inference as ReCAM's authors run it (camkit.MultiScale), e.g. 1.0 0.5 1.5 2.0")
    sp.add_argument("--flip", action="store_true", help="add each scale's horizontal flip (multi-scale inference)")


def method_specs(names: Sequence[str], args: argparse.Namespace) -> List[MethodSpec]:
    """One spec per method named (repeats dropped), with the command's layer, fusion and
    normalization options; every check that needs no model runs here."""
    out: List[MethodSpec] = []
    for name in names:
        norm: Optional[str] = getattr(args, "normalize", None)
        try:
            spec = MethodSpec(name, layers=args.layers, fusion=args.fusion, layer_weights=args.layer_weights,
                              normalize=norm, scales=getattr(args, "scales", None), flip=getattr(args, "flip", False))
        except InputError as e:
            raise InputError(_option_error(str(e))) from None
        if spec.name not in [s.name for s in out]:
            out.append(spec)
    return out


def _option_error(msg: str) -> str:
    """A spec's message in the command line's words."""
    if msg.startswith("unknown normalizer"):
        return f"--normalize: {msg}, or none (raw maps)"
    msg = msg.replace("scales is empty: give at least one scale, e.g. scales=[1.0]", "--scales: give at least one")
    msg = msg.replace("every scale must be", "--scales: every scale must be")
    return msg.replace("fusion and layer weights", "--fusion/--layer-weights")


def check_cmap(name: str) -> None:
    """Refuse an unknown colormap name (naming close ones) before any model is built."""
    try:
        colormap(name)
    except DependencyError as e:
        raise DependencyError(f"--cmap {name}: {e}") from None
    except InputError as e:
        raise InputError(f"--cmap: {e} (matplotlib's colormap names)") from None
