"""What to explain with: a typed spec of model + method + options, and its ``build()``.

>>> spec = ExplainSpec(ModelSpec("resnet50"), MethodSpec("gradcam", layers=("layer4",)))
>>> built = spec.build()            # built.model, built.preset, built.method

The command line and :func:`camkit.export.run` both build from these, so a
setting means the same everywhere, and every check that needs no model runs
when the spec is made, before any model is built.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import adapters
from ..adapters import OFFLINE_MODEL, Preset
from ..errors import InputError
from ..fusion import FUSIONS
from ..heads import CAMModel, load_head
from ..methods import MethodInfo, MultiScale, method_info
from ..methods.multiscale import check_scales
from ..normalize import get_normalizer

DEFAULT_MODEL = OFFLINE_MODEL
DEFAULT_METHOD = "layercam"


def state_sha256(model: nn.Module) -> str:
    """A hash of the model's weights: every state-dict entry's name, dtype, shape and bytes.

    Two models with this hash compute the same function (given the same code); a resumed export
    compares it with the one it resumes.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tuple(v: Optional[Sequence[Any]]) -> Optional[Tuple[Any, ...]]:
    return None if v is None else tuple(v)


@dataclass(frozen=True)
class ModelSpec:
    """Which model, and how its input is prepared.

    Attributes:
        name: a name for :func:`camkit.adapters.build` (``efficientnet_lite0``, ``tv:NAME``, ``timm:NAME``,
            ...) or an ``nn.Module`` (used as it is: on its own device, left as found).
        weights: ``"imagenet"``, ``"none"`` (random) or the path of a state dict (names only).
        head: the path of a head saved by :func:`camkit.save_head`, put on the model's ``features``
            and an ``AdaptiveAvgPool2d(7)`` (names only).
        transform: PIL image -> ``(3, H, W)`` input; None: the preset's.
    """

    name: Union[str, nn.Module] = DEFAULT_MODEL
    weights: str = "imagenet"
    head: Optional[str] = None
    transform: Optional[Callable[[Any], Any]] = None

    def __post_init__(self) -> None:
        if isinstance(self.name, nn.Module):
            if self.head is not None:
                raise InputError("head= applies to a model built by name; put the head on your module yourself "
                                 "(camkit.CAMModel)")
        elif not isinstance(self.name, str) or not self.name:
            raise InputError(f"model must be a model name or an nn.Module, got {self.name!r}")
        if self.head is not None and not os.path.isfile(self.head):
            raise InputError(f"head file not found: {self.head}")

    @property
    def label(self) -> str:
        """The model's name (its class name for a module)."""
        return type(self.name).__name__ if isinstance(self.name, nn.Module) else str(self.name)

    def build(self, device: Any = None) -> Tuple[nn.Module, Preset]:
        """The model (in eval mode; a module given as ``name`` is not moved) and its preset.

        Args:
            device: where a model built by name is put (None: the CPU).

        Raises:
            InputError: an unknown name, unusable weights or head, no preprocessing.
        """
        if isinstance(self.name, nn.Module):
            model, preset = self.name, adapters.resolve(self.name)
        else:
            model, preset = _with_head(self.name, self.weights, self.head) if self.head else \
                adapters.build(self.name, self.weights)
            if device is not None:
                model = model.to(device)
        if self.transform is not None:
            preset = replace(preset, transform=self.transform)
        return model, preset


def _with_head(name: str, weights: str, head_path: str) -> Tuple[nn.Module, Preset]:
    """``CAMModel(Sequential(model.features, AdaptiveAvgPool2d(7)), head)`` with the original model's
    preprocessing (ImageNet's for a model camkit has no preset for)."""
    try:
        with warnings.catch_warnings():  # only the backbone's preprocessing is used: no automatic-layer note
            warnings.simplefilter("ignore", adapters.AutoLayerWarning)
            model, preset = adapters.build(name, weights)
        prep = {"transform": preset.transform, "mean": preset.mean, "std": preset.std,
                "input_size": preset.input_size}
    except adapters.NoPresetError:
        model, prep = adapters.create(name, weights), {"transform": adapters.imagenet_transform()}
    feats = getattr(model, "features", None)
    if not isinstance(feats, nn.Sequential):
        raise InputError(f"--head needs a model with a 'features' Sequential (e.g. vgg16); {name} has none")
    head = load_head(head_path)
    cam_model = CAMModel(nn.Sequential(feats, nn.AdaptiveAvgPool2d(7)), head).eval()
    return cam_model, replace(adapters.resolve(cam_model), categories=None, **prep)


@dataclass(frozen=True)
class MethodSpec:
    """Which method, on which layers, fused and normalized how.

    Attributes:
        name: a registered method (:data:`camkit.METHODS`, case-insensitive).
        layers: layer names or a preset's layer-set names; None: the preset's defaults.
        fusion: ``"max"`` or ``"weighted"`` (implied by ``layer_weights``).
        layer_weights: one weight per layer for weighted fusion.
        normalize: a normalizer name, ``"none"`` (raw maps), or None (the method's default; with
            ``scales`` / ``flip``: ReCAM's max normalization).
        scales: input scales for multi-scale inference (:class:`camkit.MultiScale`), e.g.
            ``(1.0, 0.5, 1.5, 2.0)`` (ReCAM's); None: one scale.
        flip: add each scale's horizontal flip (multi-scale inference).
    """

    name: str = DEFAULT_METHOD
    layers: Optional[Tuple[str, ...]] = None
    fusion: str = "max"
    layer_weights: Optional[Tuple[float, ...]] = None
    normalize: Optional[str] = None
    scales: Optional[Tuple[float, ...]] = None
    flip: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "name", method_info(self.name).name)
        set_(self, "layers", _tuple(self.layers) or None)
        set_(self, "layer_weights", _tuple(self.layer_weights))
        if self.layer_weights is not None and self.fusion == "max":
            set_(self, "fusion", "weighted")
        if self.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if not self.info.fuses and (self.fusion != "max" or self.layer_weights is not None):
            raise InputError(f"fusion and layer weights do not apply to {self.name} (one layer, or FullGrad's sum)")
        if self.normalize is not None:
            set_(self, "normalize", self.normalize.lower())
            if self.normalize != "none":
                get_normalizer(self.normalize)
        if self.scales is not None:
            set_(self, "scales", check_scales(self.scales))
        set_(self, "flip", bool(self.flip))

    @property
    def multiscale(self) -> bool:
        """Whether the maps come from multi-scale / flip inference (:class:`camkit.MultiScale`)."""
        return self.scales is not None or self.flip

    @property
    def info(self) -> MethodInfo:
        """The method's registry entry."""
        return method_info(self.name)

    @property
    def raw(self) -> bool:
        """Whether the maps are raw (``normalize="none"``)."""
        return self.normalize == "none"

    def kwargs(self, preset: Preset) -> Dict[str, Any]:
        """The method's keyword arguments for this preset."""
        kw = preset.method_kwargs(self.name, self.layers)
        if self.normalize is not None:
            kw["normalize"] = None if self.raw else self.normalize
        if self.info.fuses:
            kw["fusion"] = self.fusion
            if self.layer_weights is not None:
                kw["weights"] = list(self.layer_weights)
        return kw

    def build(self, model: nn.Module, preset: Preset) -> Any:
        """The method object on ``model`` (its hooks attach for one call or a ``with`` block); with
        ``scales`` / ``flip`` wrapped in :class:`camkit.MultiScale` (the method's raw maps summed, then
        normalized with ``normalize`` or ReCAM's rule)."""
        if not self.multiscale:
            return self.info.cls(model, **self.kwargs(preset))
        kw = self.kwargs(preset)
        kw["normalize"] = None
        norm = "recam" if self.normalize is None else (None if self.raw else self.normalize)
        return MultiScale(self.info.cls(model, **kw), scales=self.scales or (1.0,), flip=self.flip, normalize=norm)


class Built(NamedTuple):
    """What :meth:`ExplainSpec.build` returns."""

    model: nn.Module
    preset: Preset
    method: Any


@dataclass(frozen=True)
class ExplainSpec:
    """A model and a method: everything ``camkit explain`` and ``camkit export`` build from."""

    model: ModelSpec = field(default_factory=ModelSpec)
    method: MethodSpec = field(default_factory=MethodSpec)

    def build(self, device: Any = None) -> Built:
        """Build the model (see :meth:`ModelSpec.build`) and the method on it."""
        model, preset = self.model.build(device)
        return Built(model, preset, self.method.build(model, preset))
