"""Backbone adapters, installed as ``camkit.adapters``."""
from .pretrained import efficientnet_lite0

__all__ = ["efficientnet_lite0"]
