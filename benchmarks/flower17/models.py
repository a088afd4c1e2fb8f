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
  ``blocks.0`` ... ``blocks.6``, ``conv_head``, ``bn2``, ``pool`` (output strides:
  ``blocks.0`` 2, ``blocks.1`` 4, ``blocks.2`` 8, ``blocks.3``-``blocks.4`` 16,
  ``blocks.5``-``blocks.6`` 32).
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
#: The supplementary head: ReCAM as Chen et al. (2022) define it (camkit.heads.PaperReCAMHead).
PAPER_MODEL = "paper_recam"
ALL_MODELS = MODEL_NAMES + (PAPER_MODEL,)
MODEL_LABELS = {"cam": "CAM", "recam_minmax": "ReCAM minmax", "recam_sigmoid": "ReCAM sigmoid", "recam_relu": "ReCAM relu",
                PAPER_MODEL: "Paper ReCAM (Chen et al.)"}
NORMALIZER_OF = {"recam_minmax": "minmax", "recam_sigmoid": "sigmoid", "recam_relu": "relu_max"}

#: LayerCAM's three levels as the study's code has them (``utils.py``, ``get_detail_cam``):
#: two backbone stages (VGG16 pool3 and pool4, the outputs of ``features.16`` and
#: ``features.23``; on Lite0 the ends of its stride-8 and stride-16 stages, ``blocks.2``
#: (40 x 32 x 32 at 256 px) and ``blocks.4`` (112 x 16 x 16)) and the head's 17 class
#: maps (``head.relu``), with the report's weights 0.4 / 0.4 / 0.2.
LAYERCAM_LAYERS = {
    "vgg16": ["backbone.features.16", "backbone.features.23", "head.relu"],
    "tf_efficientnet_lite0": ["backbone.blocks.2", "backbone.blocks.4", "head.relu"],
}
#: The earlier variant, kept as a supplement: three backbone stages, the last one the backbone's output.
LAYERCAM_BACKBONE_LAYERS = {
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


_BACKBONE_CACHE: Dict[str, Tuple[nn.Module, int]] = {}


def build_backbone(name: str) -> Tuple[nn.Module, Callable, int]:
    """``(feature extractor in eval mode, eval preprocessing, feature channels)``.

    The preprocessing takes a PIL image and gives the normalized ``(3, 256, 256)``
    tensor; the extractor maps a batch of those to ``(B, C, 7, 7)``. Built once per process and
    handed out as a deep copy (a copy is cheaper than a build), so no caller sees another's changes.
    """
    import copy

    if name not in _BACKBONE_CACHE:
        if name == "vgg16":
            net, channels = _vgg16(), 512
        else:
            net, channels = _lite0(), 1280
        for p in net.parameters():
            p.requires_grad_(False)
        _BACKBONE_CACHE[name] = (net.eval(), channels)
    net, channels = _BACKBONE_CACHE[name]
    return copy.deepcopy(net), preprocess_transform(*backbone_stats(name)), channels


def make_head(model_name: str, channels: int, num_classes: int = NUM_CLASSES, lam: float = 1.0):
    """A fresh CAMHead (``cam``), ReCAMHead (``recam_<normalizer>``) or PaperReCAMHead (``paper_recam``)."""
    from camkit.heads import CAMHead, PaperReCAMHead, ReCAMHead

    if model_name == "cam":
        return CAMHead(channels, num_classes)
    if model_name in NORMALIZER_OF:
        return ReCAMHead(channels, num_classes, normalize=NORMALIZER_OF[model_name])
    if model_name == PAPER_MODEL:
        return PaperReCAMHead(channels, num_classes, lam=lam)
    raise ValueError(f"unknown model {model_name!r}; choose one of {ALL_MODELS}")


def default_run_dir(backbone: str) -> Path:
    return REPO_ROOT / "runs" / "flower17" / backbone


def lr_tag(lr: float) -> str:
    """Learning rate as used in checkpoint folder names (``1e-05``, ``0.0001``)."""
    return f"{lr:g}"


def lr_label(lr: float) -> str:
    """Learning rate as printed in tables (``1e-5``, ``5e-5``, ``1e-4``, ``2e-4``)."""
    m, e = f"{lr:.0e}".split("e")
    return f"{m}e{int(e)}" if float(f"{lr:.0e}") == lr else f"{lr:g}"


CHECKPOINTS = ("study", "today", "best_val_loss")


def checkpoint_path(run_dir: Union[str, os.PathLike], model_name: str, lr: float, which: str = "study",
                    seed: int = 0) -> Path:
    """``<run_dir>/heads/<model>_lr<lr>_seed<seed>/<which>.pt``; ``which`` is ``study``
    (the epoch the study's rule reports), ``today`` (today's rule) or
    ``best_val_loss`` (the study's last saved file: the lowest validation loss)."""
    if which not in CHECKPOINTS:
        raise ValueError(f"which must be one of {CHECKPOINTS}, got {which!r}")
    return Path(run_dir) / "heads" / f"{model_name}_lr{lr_tag(lr)}_seed{seed}" / f"{which}.pt"


def load_trained(backbone: str, model_name: str, lr: float, run_dir: Optional[Union[str, os.PathLike]] = None,
                 which: str = "study", seed: int = 0):
    """Rebuild ``camkit.CAMModel(backbone, trained head)`` from a checkpoint of ``train``.

    ``model_name`` in :data:`ALL_MODELS`; ``run_dir`` defaults to
    ``runs/flower17/<backbone>``. The model is in eval mode; its input is the
    backbone's preprocessing of a 256 x 256 image (``build_backbone(backbone)[1]``).
    """
    from camkit.heads import CAMModel, load_head

    if model_name not in ALL_MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {ALL_MODELS}")
    path = checkpoint_path(run_dir or default_run_dir(backbone), model_name, lr, which, seed)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}; run `python -m benchmarks.flower17 train --backbone {backbone}` first")
    net = build_backbone(backbone)[0]
    head = load_head(path)
    return CAMModel(net, head, freeze=True).eval()
