"""Method options: one frozen dataclass per family, passed to a method's
constructor as keyword arguments (``camkit.GradCAM(model, layers, fusion="max")``).

Each method class names its ``Options``; a family's options extend its parent's,
so every option is declared once and checked once, in ``__post_init__``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, TypeVar, Union

from torch import Tensor

from ..errors import InputError, InputTypeError
from ..fusion import FUSIONS
from ..normalize import Normalizer
from .output import Output

Reshape = Callable[[Tensor], Tensor]
#: ``normalize=DEFAULT``: the method's registered default normalizer.
DEFAULT = "default"


def positive_int(name: str, value: object) -> int:
    """``value`` as a positive int, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise InputError(f"{name} must be a positive int, got {value}")
    return value


def non_negative(name: str, value: object) -> float:
    """``value`` as a float >= 0, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name} must be a number >= 0, got {value!r}")
    if not float(value) >= 0.0:
        raise InputError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _set(opts: Any, name: str, value: object) -> None:
    object.__setattr__(opts, name, value)


@dataclass(frozen=True)
class Options:
    """Options of every method.

    Attributes:
        fusion: how several layers' maps are fused: ``"max"`` (element-wise maximum, the
            LayerCAM paper) or ``"weighted"`` (``tanh(2 * sum_l w_l M_l)``, the study's).
        weights: one weight per layer for ``fusion="weighted"``.
        normalize: a normalizer name of :mod:`camkit.normalize`, a callable ``(..., h, w) -> (..., h, w)``,
            None (raw maps) or ``"default"`` (the method's registered one).
        reshape: applied to each hooked output (and its gradient) to give ``(B, C, h, w)``
            (e.g. a transformer's ``(B, N, C)`` tokens; the presets give it).
        channels_last: pass the input in channels-last memory format (the model is not converted).
        output: where the scores are in the model's output (see :func:`camkit.methods.select_output`).
        create_graph: the maps keep their autograd graph back to the model's parameters, so a loss on
            them can be differentiated (attention guidance, training with maps); CAM, Eigen-CAM and the
            gradient methods only (others refuse it).
    """

    fusion: str = "max"
    weights: Optional[Sequence[float]] = None
    normalize: Union[str, Normalizer, None] = DEFAULT
    reshape: Optional[Reshape] = None
    channels_last: bool = False
    output: Output = None
    create_graph: bool = False

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if self.reshape is not None and not callable(self.reshape):
            raise InputTypeError(f"reshape must be a function of a tensor, got {self.reshape!r}")
        if self.weights is not None and not isinstance(self.weights, Tensor):
            _set(self, "weights", tuple(self.weights) if isinstance(self.weights, (list, tuple)) else self.weights)
        _set(self, "channels_last", bool(self.channels_last))
        _set(self, "create_graph", bool(self.create_graph))


@dataclass(frozen=True)
class SmoothingOptions(Options):
    """Plus ``aug_smooth`` (average the maps over test-time augmentations, see
    :func:`camkit.methods.aug_smooth`) and ``eigen_smooth`` (reduce each layer's
    per-channel contributions by their first principal component instead of their sum)."""

    aug_smooth: bool = False
    eigen_smooth: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "aug_smooth", bool(self.aug_smooth))
        _set(self, "eigen_smooth", bool(self.eigen_smooth))


@dataclass(frozen=True)
class GradientOptions(SmoothingOptions):
    """Plus ``batched_backward``: True, one vmapped backward for K targets; False, K backward
    calls on the retained graph; None (default), whichever :func:`camkit.methods.base.prefer_batched`
    says is faster on the device (see :func:`camkit.methods.target_gradients`)."""

    batched_backward: Optional[bool] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "batched_backward", None if self.batched_backward is None else bool(self.batched_backward))


def check_noise(opts: Any) -> None:
    """Check an options object's ``num_samples`` (positive int), ``std`` (>= 0) and ``seed`` (int)."""
    _set(opts, "num_samples", positive_int("num_samples", opts.num_samples))
    _set(opts, "std", non_negative("std", opts.std))
    if isinstance(opts.seed, bool) or not isinstance(opts.seed, int):
        raise InputTypeError(f"seed must be an int, got {opts.seed!r}")


OptionsT = TypeVar("OptionsT", bound=Options)


def make_options(cls: Type[OptionsT], method: str, given: Dict[str, Any]) -> OptionsT:
    """``cls(**given)``, with an error naming ``method``'s options for an unknown one."""
    names = [f.name for f in fields(cls)]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise InputTypeError(f"{method} has no option {unknown[0]!r}; its options: {', '.join(names)}")
    return cls(**given)


def changed(opts: Options) -> Dict[str, Any]:
    """The options that differ from their defaults (for a method's repr)."""
    base = type(opts)()
    return {f.name: getattr(opts, f.name) for f in fields(opts) if getattr(opts, f.name) != getattr(base, f.name)}


def with_weights(opts: OptionsT, weights: Optional[Tuple[float, ...]]) -> OptionsT:
    """The same options with checked fusion weights."""
    return replace(opts, weights=weights)
