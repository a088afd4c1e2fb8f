"""The ``detection`` preset: torchvision detectors (Faster R-CNN, Mask R-CNN, RetinaNet, FCOS, SSD, SSDlite).

* **Scores**: ``output=`` is :class:`camkit.detection.DetectorOutput`, which turns the eval-mode
  list of dicts into detections ``(B, N, 4 + C)``; explain them with
  :class:`camkit.targets.BoxScore` (reference boxes) or :class:`camkit.targets.TopDetections`.
* **Layers**: R-CNN / RetinaNet / FCOS: the FPN's output convolutions
  ``backbone.fpn.layer_blocks.*`` (LayerCAM, one per pyramid level, fine to coarse); Grad-CAM and
  Eigen-CAM use the backbone's last stage returned to the FPN (``backbone.body.layer4`` for
  ResNet), which every pyramid level depends on, so every box has a gradient there. SSDlite: the
  feature extractor's two blocks and its first extra block, Grad-CAM on the first block (every
  head reads through it); SSD300: ``backbone.features`` (VGG to conv4_3) and ``backbone.extra.0``,
  Grad-CAM on ``backbone.features``.
* **Input**: images in [0, 1] (the detector normalizes and resizes them itself). The detector
  pads its resized batch to a multiple of ``size_divisible`` (32); every method then maps over the
  image's part of the padded canvas only (``camkit.methods.canvas``: the detector's own transform
  reports the resized size), so maps line up with the input at any size. :func:`fit_size` (and the
  preset's ``transform``) resize the photo to the detector's working size first, where nothing is
  padded or resampled. SSD resizes to a fixed size with no padding: any input size is exact.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from camkit.detection import DetectorOutput
from camkit.errors import InputError


def _detection_types() -> Tuple[type, ...]:
    from torchvision.models import detection as tvd
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    return (GeneralizedRCNN, tvd.RetinaNet, tvd.FCOS, tvd.ssd.SSD)


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is a torchvision detector the preset knows."""
    return isinstance(model, _detection_types())


def detector_classes(model: nn.Module) -> int:
    """The class count ``C`` of a torchvision detector (background included, as torchvision counts)."""
    roi = getattr(model, "roi_heads", None)
    if roi is not None:
        return int(roi.box_predictor.cls_score.out_features)
    head = model.head.classification_head
    n = getattr(head, "num_classes", None) or getattr(head, "num_columns", None)
    if not n:
        raise InputError(f"cannot read the class count of {type(model).__name__}'s classification head")
    return int(n)


def _layers(model: nn.Module) -> Tuple[Tuple[str, ...], str]:
    """(LayerCAM's layers, Grad-CAM's layer) of a detector's backbone."""
    backbone = model.backbone
    fpn = getattr(backbone, "fpn", None)
    if fpn is not None:
        stages = tuple(f"backbone.fpn.layer_blocks.{i}" for i in range(len(fpn.layer_blocks)))
        last = list(backbone.body.return_layers)[-1]
        return stages, f"backbone.body.{last}"
    from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet

    # SSDlite's heads read each block of ``features``; SSD300's VGG ``features`` is one level
    feats = [f"backbone.features.{n}" for n, _ in backbone.features.named_children()] \
        if isinstance(backbone, SSDLiteFeatureExtractorMobileNet) else ["backbone.features"]
    extra = [f"backbone.extra.{n}" for n, _ in backbone.extra.named_children()]
    return tuple(feats + extra[:1]), feats[0]


def fit_size(model: nn.Module, hw: Tuple[int, int]) -> Tuple[int, int]:
    """The input size ``(H', W')`` near ``hw``'s aspect at which the detector's own resize is the
    identity and it pads nothing, so its maps and boxes are exact in the input's pixels.

    Args:
        model: a torchvision detector.
        hw: the photo's ``(H, W)``.

    Returns:
        ``hw`` itself for a fixed-size detector (SSD); else the short side at ``min_size`` and the
        long side a multiple of ``size_divisible`` within ``max_size``.
    """
    t = model.transform
    if getattr(t, "fixed_size", None):
        return int(hw[0]), int(hw[1])
    d, lo, hi = int(t.size_divisible), int(t.min_size[-1]), int(t.max_size)
    h, w = hw
    short, long_ = (h, w) if h <= w else (w, h)
    s = lo if lo % d == 0 else max(d, lo // d * d)
    top = hi // d * d
    along = min(top, max(s, int(round(long_ * s / short / d)) * d))
    if s > top or min(lo / s, hi / along) != 1.0:
        return int(hw[0]), int(hw[1])  # no exact size: the detector resizes (and may pad) itself
    return (s, along) if h <= w else (along, s)


def fit_input(model: nn.Module, x: Tensor) -> Tensor:
    """A batch ``(B, 3, H, W)`` resized (bilinear) to :func:`fit_size`, where the detector's maps and
    boxes are exact in the input's pixels; as is when already there."""
    size = fit_size(model, (int(x.shape[-2]), int(x.shape[-1])))
    if size == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FitTransform:
    """PIL image -> ``(3, H', W')`` in [0, 1] at :func:`fit_size` (bilinear)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, image: Any) -> Tensor:
        from torchvision.transforms import functional as TF

        h, w = image.height, image.width
        size = fit_size(self.model, (h, w))
        if size != (h, w):
            image = image.resize((size[1], size[0]), resample=2)  # PIL bilinear
        return TF.to_tensor(image)


def _coco(n: int) -> Optional[Tuple[str, ...]]:
    """torchvision's COCO class names (91, with ``__background__`` and ``N/A``) for a 91-class detector."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    cats = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return tuple(cats) if len(cats) == n else None


def detection_fields(model: nn.Module, categories: Optional[Tuple[str, ...]] = None) -> Dict[str, Any]:
    """The :class:`camkit.adapters.Preset` fields of a torchvision detector (``task="detection"``)."""
    stages, last = _layers(model)
    n = detector_classes(model)
    t = model.transform
    size = tuple(t.fixed_size) if getattr(t, "fixed_size", None) else (int(t.min_size[-1]), int(t.min_size[-1]))
    transform: Callable[[Any], Tensor] = FitTransform(model)
    return {
        "family": "tv-detection", "layers": stages, "gradcam_layer": last, "layer_sets": {"default": stages},
        "task": "detection", "output": DetectorOutput(n), "transform": transform,
        "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "input_size": (int(size[0]), int(size[1])),
        "categories": categories or _coco(n) or tuple(f"class {k}" for k in range(n)),
    }

