"""Backbones, heads and trained models of the Flower-17 study.

``build_backbone(name)`` gives a frozen feature extractor mapping
``(B, 3, 256, 256)`` images to ``(B, C, 7, 7)`` features, its evaluation
preprocessing (PIL image -> normalized tensor at 256 x 256), and ``C``:

- ``vgg16``: torchvision VGG16 ``features`` (ImageNet weights, downloaded by
  torchvision; needs the internet once) + ``AdaptiveAvgPool2d(7)`` (8x8 -> 7x7
  at 256 input); ImageNet mean/std; C = 512. Layer names inside: ``features.N``.
- ``tf_efficientnet_lite0``: timm's Lite0 with the offline ImageNet weights of
  :func:`camkit.adapters.pretrained.efficientnet_lite0`, up to ``forward_features``
  (conv_stem, bn1, blocks, conv_head, bn2), then ``AdaptiveAvgPool2d(7)`` so that
  the head sees the same 7x7 grid as the study's VGG16 (Lite0 also gives 8x8 at
  256 input); mean = std = 0.5; C = 1280. Layer names: ``stem``, ``bn1``,
  ``blocks.0`` ... ``blocks.6``, ``conv_head``, ``bn2``, ``pool``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from torch import nn

from .data import IMAGE_SIZE, NUM_CLASSES, REPO_ROOT

BACKBONES = ("tf_efficientnet_lite0", "vgg16")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)

#: Model names of the study, in table order, and the normalizer of each ReCAM head.
MODEL_NAMES = ("cam", "recam_minmax", "recam_sigmoid", "recam_relu")
MODEL_LABELS = {"cam": "CAM", "recam_minmax": "ReCAM minmax", "recam_sigmoid": "ReCAM sigmoid", "recam_relu": "ReCAM relu"}
NORMALIZER_OF = {"recam_minmax": "minmax", "recam_sigmoid": "sigmoid", "recam_relu": "relu_max"}

#: Layers for LayerCAM on each backbone (names inside CAMModel) and the study's weights.
LAYERCAM_LAYERS = {
    "vgg16": ["backbone.features.15", "backbone.features.22", "backbone.features.29"],
    "tf_efficientnet_lite0": ["backbone.blocks.4", "backbone.blocks.5", "backbone.bn2"],
}
LAYERCAM_WEIGHTS = (0.4, 0.4, 0.2)


def preprocess_transform(mean, std, size: int = IMAGE_SIZE) -> Callable:
    """PIL image -> tensor ``(3, size, size)``: resize (aspect not kept), to [0, 1], normalize."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(mean, std)])


def normalize_transform(mean, std) -> Callable:
    """PIL image already at 256 x 256 -> normalized tensor."""
    from torchvision import transforms as T

    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def backbone_stats(name: str):
    if name == "vgg16":
        return IMAGENET_MEAN, IMAGENET_STD
    if name == "tf_efficientnet_lite0":
        return LITE0_MEAN, LITE0_STD
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def _vgg16() -> nn.Module:
    from torchvision.models import VGG16_Weights, vgg16

    try:
        net = vgg16(weights=VGG16_Weights.IMAGENET1K_V1)
    except Exception as e:
        raise RuntimeError(
            "could not get torchvision's VGG16 ImageNet weights (VGG16_Weights.IMAGENET1K_V1): "
            f"{type(e).__name__}: {e}. They download once from download.pytorch.org and need the "
            "internet; offline, use --backbone tf_efficientnet_lite0"
        ) from e
    return nn.Sequential(OrderedDict(features=net.features, pool=nn.AdaptiveAvgPool2d(7)))


def _lite0() -> nn.Module:
    from camkit.adapters.pretrained import efficientnet_lite0

    m = efficientnet_lite0(pretrained=True)
    return nn.Sequential(OrderedDict(
        stem=m.conv_stem, bn1=m.bn1, blocks=m.blocks, conv_head=m.conv_head, bn2=m.bn2,
        pool=nn.AdaptiveAvgPool2d(7),
    ))


def build_backbone(name: str) -> Tuple[nn.Module, Callable, int]:
    """``(feature extractor in eval mode, eval preprocessing, feature channels)``.

    The preprocessing takes a PIL image and gives the normalized ``(3, 256, 256)``
    tensor; the extractor maps a batch of those to ``(B, C, 7, 7)``.
    """
    mean, std = backbone_stats(name)
    if name == "vgg16":
        net, channels = _vgg16(), 512
    else:
        net, channels = _lite0(), 1280
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), preprocess_transform(mean, std), channels


def make_head(model_name: str, channels: int, num_classes: int = NUM_CLASSES):
    """A fresh CAMHead (``cam``) or ReCAMHead (``recam_<normalizer>``)."""
    from camkit.heads import CAMHead, ReCAMHead

    if model_name == "cam":
        return CAMHead(channels, num_classes)
    if model_name in NORMALIZER_OF:
        return ReCAMHead(channels, num_classes, normalize=NORMALIZER_OF[model_name])
    raise ValueError(f"unknown model {model_name!r}; choose one of {MODEL_NAMES}")


def default_run_dir(backbone: str) -> Path:
    return REPO_ROOT / "runs" / "flower17" / backbone


def lr_tag(lr: float) -> str:
    """Learning rate as used in checkpoint folder names (``1e-05``, ``0.0001``)."""
    return f"{lr:g}"


def lr_label(lr: float) -> str:
    """Learning rate as printed in tables (``1e-5``, ``5e-5``, ``1e-4``, ``2e-4``)."""
    m, e = f"{lr:.0e}".split("e")
    return f"{m}e{int(e)}" if float(f"{lr:.0e}") == lr else f"{lr:g}"


def checkpoint_path(run_dir: Union[str, os.PathLike], model_name: str, lr: float, which: str = "selected") -> Path:
    """``<run_dir>/heads/<model>_lr<lr>/<which>.pt``; ``which`` is ``selected`` (the
    epoch reported in the results: best val top-1 among eligible epochs) or
    ``best_val_loss`` (the study's checkpoint, rewritten at each epoch that
    improves the validation loss)."""
    if which not in ("selected", "best_val_loss"):
        raise ValueError(f"which must be 'selected' or 'best_val_loss', got {which!r}")
    return Path(run_dir) / "heads" / f"{model_name}_lr{lr_tag(lr)}" / f"{which}.pt"


_BACKBONE_CACHE: Dict[str, Tuple[nn.Module, Callable, int]] = {}


def load_trained(backbone: str, model_name: str, lr: float, run_dir: Optional[Union[str, os.PathLike]] = None,
                 which: str = "selected"):
    """Rebuild ``camkit.CAMModel(backbone, trained head)`` from a checkpoint of ``train``.

    ``model_name`` in :data:`MODEL_NAMES`; ``run_dir`` defaults to
    ``runs/flower17/<backbone>``. The model is in eval mode; its input is the
    backbone's preprocessing of a 256 x 256 image (``build_backbone(backbone)[1]``).
    """
    from camkit.heads import CAMModel, load_head

    if model_name not in MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {MODEL_NAMES}")
    path = checkpoint_path(run_dir or default_run_dir(backbone), model_name, lr, which)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}; run `python -m benchmarks.flower17 train --backbone {backbone}` first")
    if backbone not in _BACKBONE_CACHE:
        _BACKBONE_CACHE[backbone] = build_backbone(backbone)
    import copy

    net = copy.deepcopy(_BACKBONE_CACHE[backbone][0])
    head = load_head(path)
    return CAMModel(net, head, freeze=True).eval()
