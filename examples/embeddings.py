"""Explain an embedding model: where does the image look like a concept?

    python examples/embeddings.py                     # a random timm embedding model, random images

``camkit.targets.Similarity(concept)`` is the cosine similarity of each image's embedding
``(B, D)`` to concept embeddings ``(D,)`` or ``(K, D)`` (e.g. the embeddings of reference images, or
of text from a CLIP text tower): one map per concept.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import camkit
from camkit import adapters
from camkit.targets import Similarity


def explain(model: nn.Module, x: torch.Tensor, references: torch.Tensor, method: str = "gradcam") -> dict:
    """Maps of each image in ``x`` for its similarity to the embedding of each reference image.

    Returns:
        {"maps": (B, K, H, W), "similarity": (B, K)} for K reference images.
    """
    with torch.no_grad():
        concept = model(references)  # (K, D)
    preset = adapters.resolve(model)
    res = camkit.METHODS[method](model, **preset.method_kwargs(method))(x, targets=Similarity(concept))
    return {"maps": res.maps, "similarity": res.scores}


def main(model: Optional[nn.Module] = None) -> dict:
    """Run on ``model`` (default: timm's tiny ``test_efficientnet`` with ``num_classes=0``, random weights)."""
    if model is None:
        import timm

        model = timm.create_model("test_efficientnet", num_classes=0).eval()
    g = torch.Generator().manual_seed(0)
    x, refs = torch.rand(2, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    got = explain(model, x, refs)
    print("cosine similarity of each image to each reference:", got["similarity"].round(decimals=3).tolist())
    print("maps:", tuple(got["maps"].shape))
    return got


if __name__ == "__main__":
    main()
