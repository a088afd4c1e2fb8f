"""``camkit explain`` on a detector: per image, the explained boxes drawn with their labels and
scores (``KEY_boxes.png``), and one overlay per method and box with that box drawn on it.

The detector sees the photo resized to its working size (:func:`camkit.adapters.detection.fit_size`,
where its own resize is the identity and it pads nothing); maps and boxes are scaled back to the
photo's pixels.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
import tqdm
from PIL import Image, ImageDraw

from .. import overlay as ov
from ..app import categories
from ..errors import InputError
from ..targets import TopDetections
from .explain_run import ExplainRun
from .outputs import file_base

COLOURS = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 200, 200))


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], captions: Sequence[str]) -> Image.Image:
    """A copy of ``image`` with each box ``(x1, y1, x2, y2)`` outlined and captioned."""
    out = image.convert("RGB")
    d = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    for i, (box, text) in enumerate(zip(boxes, captions)):
        colour = COLOURS[i % len(COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in box)
        d.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        tw, th = d.textbbox((0, 0), text)[2:]
        top = max(0.0, y1 - th - 4)
        d.rectangle([x1, top, x1 + tw + 4, top + th + 4], fill=colour)
        d.text((x1 + 2, top + 2), text, fill=(0, 0, 0))
    return out


def detection_call(k: int) -> Any:
    """``(method, x) -> CAMResult`` for each image's ``k`` best detections."""
    return lambda ex, x: ex(x, targets=TopDetections(k))


class DetectionRun(ExplainRun):
    """An :class:`ExplainRun` whose targets are boxes (the job's ``call`` gives TopDetections maps)."""

    def __init__(self, job: Any) -> None:
        super().__init__(job)
        self.figures = None  # grids and strips compare classes; a detector's are boxes

    def _batch(self, items: Sequence[Tuple[str, str]], photos: Sequence[Image.Image], x: torch.Tensor) -> None:
        job = self.job
        results = {m: job.call(ex, x) for m, ex in job.explainers.items()}
        first = next(iter(results.values()))
        if self.categories is None:
            self.categories = categories(job.preset.categories, int(first.logits.shape[-1]) - 4, job.args.classes)
        k = int(first.scores.shape[1])
        boxes = TopDetections(k).boxes(first.logits)  # (B, k, 4) in x's pixels
        for j, ((path, key), photo) in enumerate(zip(items, photos)):
            self._detections(j, path, key, photo, x, results, boxes[j])
            self.done.append(key)

    def _detections(self, j: int, path: str, key: str, photo: Image.Image, x: torch.Tensor,
                    results: Dict[str, Any], boxes: torch.Tensor) -> None:
        job, cats = self.job, self.categories
        assert cats is not None
        first = next(iter(results.values()))
        h, w = x.shape[-2:]
        scale = torch.tensor([photo.width / w, photo.height / h] * 2)
        valid = first.valid[j].tolist()
        shown = [(k, (boxes[k] * scale).tolist(), f"{cats[int(first.targets[j, k])]} {float(first.scores[j, k]):.2f}")
                 for k in range(len(valid)) if valid[k]]
        img = draw_boxes(photo, [b for _, b, _ in shown], [c for _, _, c in shown])
        job.outputs.write(job.outputs.reserve(f"{key}_boxes", ".png")[0], img.save)
        for m, res in results.items():
            maps = F.interpolate(res.maps[j:j + 1].detach().float(), size=(photo.height, photo.width),
                                 mode="bilinear", align_corners=False)[0]
            for n, (k, box, caption) in enumerate(shown):
                over = ov.overlay(photo, maps[k], **self.look)
                over = draw_boxes(over, [box], [caption])
                base = file_base(key, m, n, len(shown), cats[int(res.targets[j, k])], False)
                job.outputs.write(job.outputs.reserve(base, ".png")[0], over.save)
        line = ", ".join(f"{c} at [{', '.join(f'{v:.0f}' for v in b)}]" for _, b, c in shown) or "no detection"
        tqdm.tqdm.write(f"{path}: {line}", file=sys.stdout)


def detection_k(target: str, given: bool) -> int:
    """The number of boxes to explain: ``topK``'s K; 3 when ``--target`` is not given."""
    if not given:
        return 3
    if target.startswith("top") and target[3:].isdigit():
        return int(target[3:])
    raise InputError(f"for a detector --target is topK (the K best detections), got {target!r}")

