"""Explain a torchvision detector: one map per detected box, from one forward and one backward.

    python examples/detection.py photo.jpg            # Faster R-CNN with COCO weights (downloads them)
    python examples/detection.py --random             # random weights, a random image: no download

The ``detection`` preset (camkit.adapters.resolve) gives the layers and ``output=``
(the list of dicts becomes detections ``(B, N, 4 + C)``); ``TopDetections(k)`` explains the k
best detections, ``BoxScore(boxes, labels)`` any reference boxes (e.g. ground truth).
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch
from torch import nn

import camkit
from camkit import adapters
from camkit.targets import BoxScore, TopDetections


def explain(model: nn.Module, x: torch.Tensor, k: int = 3, method: str = "gradcam") -> dict:
    """Maps of the k best detections of each image ``x (B, 3, H, W)`` in [0, 1], and the same
    boxes explained again as reference boxes (BoxScore) to show that both agree.

    Returns:
        {"maps": (B, k, H, W), "boxes": (B, k, 4), "labels": (B, k), "scores": (B, k),
         "ref_scores": (B, k) BoxScore's values for the same boxes}.
    """
    preset = adapters.resolve(model)
    explainer = camkit.METHODS[method](model, **preset.method_kwargs(method))
    top = TopDetections(k)
    res = explainer(x, targets=top)
    boxes = top.boxes(res.logits)  # (B, k, 4): res.logits holds the detections (B, N, 4 + C)
    again = explainer(x, targets=BoxScore(boxes, res.targets.clamp(min=0)))
    return {"maps": res.maps, "boxes": boxes, "labels": res.targets, "scores": res.scores,
            "ref_scores": again.scores}


def main(argv: Optional[list] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", nargs="?")
    ap.add_argument("--random", action="store_true", help="random weights and a random image (offline)")
    ap.add_argument("--out", default="detection.png")
    a = ap.parse_args(argv)
    from torchvision.models import detection as tvd

    if a.random or a.image is None:
        model = tvd.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5,
                                                          box_score_thresh=0.0).eval()
        x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
        photo = None
    else:
        weights = tvd.FasterRCNN_ResNet50_FPN_Weights.DEFAULT
        model = tvd.fasterrcnn_resnet50_fpn(weights=weights).eval()
        photo = camkit.load_image(a.image)
        x = adapters.resolve(model).transform(photo)[None]
    got = explain(model, x)
    for k in range(got["maps"].shape[1]):
        print(f"box {got['boxes'][0, k].round().tolist()} label {int(got['labels'][0, k])} "
              f"score {float(got['scores'][0, k]):.3f} (BoxScore: {float(got['ref_scores'][0, k]):.3f})")
    if photo is not None:
        from camkit import overlay

        overlay.overlay(x[0], got["maps"][0, 0]).save(a.out)
        print(f"wrote {a.out}")
    return got


if __name__ == "__main__":
    main()
