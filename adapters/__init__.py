"""Backbone adapters, installed as ``camkit.adapters``.

``resolve(model)`` gives a :class:`Preset` (default layers per method, the CAM
layer and linear head, token reshape for vision transformers, preprocessing);
``build(name, weights)`` creates a torchvision / timm model or the offline
``efficientnet_lite0`` with its preset; ``list_layers`` shows hookable layers.
Hugging Face ``transformers`` classifiers have presets too (``transformers_hf``); a model of no known
family gets the automatic layer (``autolayer``: the last spatial layer before global pooling).
"""
from .autolayer import AutoLayerWarning
from .build import OFFLINE_MODEL, LayerInfo, ModelError, build, create, default_marks, known_models, list_layers
from .layouts import TokenGrids
from .presets import NoPresetError, Preset, TokenReshape, imagenet_categories, imagenet_transform, num_classes, resolve
from .pretrained import efficientnet_lite0, lite0_weights_path
from .transformers_hf import is_transformers, processor_fields

__all__ = [
    "Preset", "TokenReshape", "resolve", "imagenet_categories", "imagenet_transform", "num_classes", "NoPresetError",
    "build", "create", "ModelError", "OFFLINE_MODEL", "known_models", "list_layers", "LayerInfo", "default_marks",
    "efficientnet_lite0", "lite0_weights_path", "AutoLayerWarning", "TokenGrids", "is_transformers", "processor_fields",
]
