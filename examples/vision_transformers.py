"""Explain vision transformers: a Hugging Face ViT and Swin, and torchvision's MaxViT, with no layer named by hand.

    python examples/vision_transformers.py          # tiny random models (no download), random images

``camkit.adapters.resolve(model)`` knows Hugging Face ``transformers`` classifiers (ViT, DeiT, BEiT, Swin,
ConvNeXt: ``output="logits"``, the token reshape and the default layers) and torchvision's ViT, Swin
(v1 and v2) and MaxViT. With pretrained weights, e.g.::

    from transformers import AutoImageProcessor, AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained("google/vit-base-patch16-224").eval()
    preset = dataclasses.replace(camkit.adapters.resolve(model),
                                 **camkit.adapters.processor_fields(AutoImageProcessor.from_pretrained(...)))
    x = preset.transform(photo)[None]

the preset's ``categories`` are the checkpoint's ``id2label`` names.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

import camkit
from camkit import adapters


def explain(model: nn.Module, x: torch.Tensor, method: str = "gradcam") -> torch.Tensor:
    """``method``'s maps ``(B, 1, H, W)`` of each image's top class, with the preset's layers and reshape."""
    preset = adapters.resolve(model)
    kwargs = preset.method_kwargs(method)
    print(f"{type(model).__name__} ({preset.family}): {method} on {kwargs['layers']}")
    with camkit.METHODS[method](model, **kwargs) as cam:
        return cam(x).maps


def tiny_models(size: int = 32) -> Dict[str, nn.Module]:
    """A ViT and a Swin from small transformers configs, and a small torchvision MaxViT (random weights)."""
    import torchvision
    import transformers as tr

    torch.manual_seed(0)
    vit = tr.ViTForImageClassification(tr.ViTConfig(image_size=size, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=5))
    swin = tr.SwinForImageClassification(tr.SwinConfig(image_size=size, patch_size=2, embed_dim=8, depths=[1, 1],
                                                       num_heads=[1, 1], window_size=4, num_labels=5))
    maxvit = torchvision.models.MaxVit(input_size=(size, size), stem_channels=8, partition_size=2,
                                       block_channels=[8, 16], block_layers=[1, 1], head_dim=4,
                                       stochastic_depth_prob=0.0, num_classes=5)
    return {"vit": vit.eval(), "swin": swin.eval(), "maxvit": maxvit.eval()}


def main(models: Optional[Dict[str, nn.Module]] = None, size: int = 32) -> Dict[str, torch.Tensor]:
    """Grad-CAM maps of two random images for each model (default: :func:`tiny_models`)."""
    models = tiny_models(size) if models is None else models
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, model in models.items():
        out[name] = explain(model, x)
        print(f"  maps {tuple(out[name].shape)}")
    return out


if __name__ == "__main__":
    main()
