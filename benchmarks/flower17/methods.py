"""How the Flower-17 benchmark gets each method's maps from camkit.

- The method registry ``camkit.methods.METHODS`` (name -> class); every entry
  that is not one of the heads' own methods below runs on a layer of the model.
- The study's LayerCAM: three levels (``models.LAYERCAM_LAYERS``: two backbone
  stages and the head's class maps), each level ReLU / max (the study's code),
  fused with the report's weights 0.4 / 0.4 / 0.2 and tanh(2x) (camkit's
  ``fusion="weighted"``).
- ReCAM as Chen et al. (2022) define it: ``camkit.methods.METHODS["paper_recam"]``
  when camkit has it, else :func:`paper_recam_maps` (the same computation from
  ``PaperReCAMHead.recam_maps``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import LAYERCAM_LAYERS, LAYERCAM_WEIGHTS

#: Registry names whose maps need a trained head of their own kind, handled by the benchmark itself.
HEAD_METHODS = ("cam", "recam", "paper_recam")


def registry() -> dict:
    """``camkit.methods.METHODS``: every method camkit has, by name."""
    from camkit.methods import METHODS

    return dict(METHODS)


def study_layercam(cam_model: nn.Module, backbone: str, layers: Optional[Sequence[str]] = None):
    """camkit.LayerCAM with the study's levels, per-level ReLU / max and 0.4/0.4/0.2 fusion."""
    import camkit

    return camkit.LayerCAM(cam_model, layers=list(layers or LAYERCAM_LAYERS[backbone]), fusion="weighted",
                           weights=list(LAYERCAM_WEIGHTS), normalize="relu_max")


@torch.no_grad()
def paper_recam_maps(model: nn.Module, x: Tensor, targets: Optional[Tensor] = None) -> tuple:
    """Chen et al.'s ReCAM maps of a CAMModel with a PaperReCAMHead: ``(maps (B, K, H, W) in [0, 1], logits, targets)``.

    targets ``(B, K)`` (default: the plain top-1); each raw map
    ``head.recam_maps`` is divided by its max, then upsampled (bilinear) to the input.
    """
    from camkit.hooks import eval_mode
    from camkit.normalize import relu_max

    with eval_mode(model):
        feats = model.backbone(x)
        logits = model.head(feats)
    t = logits.argmax(1, keepdim=True) if targets is None else torch.as_tensor(targets).long().view(x.shape[0], -1)
    raw = model.head.recam_maps(feats, t)
    maps = F.interpolate(relu_max(raw), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False).clamp_(0, 1)
    return maps, logits, t


def paper_recam(model: nn.Module, x: Tensor, targets: Optional[Tensor] = None) -> tuple:
    """``(maps, logits, targets)`` from camkit's method class when it has one, else :func:`paper_recam_maps`."""
    cls = registry().get("paper_recam")
    if cls is None:
        return paper_recam_maps(model, x, targets)
    r = cls(model)(x, targets=targets)
    return r.maps, r.logits, r.targets
