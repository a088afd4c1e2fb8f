"""Detections as one tensor, and the box matching of :class:`camkit.targets.BoxScore`.

camkit's methods differentiate *scores* of shape ``(B, ...)``. A detector's
output is turned into **detections** ``(B, N, 4 + C)``: per image ``N`` rows
(padded with all-zero rows), each a box ``x1, y1, x2, y2`` in input pixels
then ``C`` class scores. A torchvision detector's post-NMS detection of label
``c`` with score ``s`` is a row holding ``s`` in column ``4 + c`` and 0 in the
others (:func:`detections`; the ``detection`` preset's ``output=`` is
:class:`DetectorOutput`); a YOLO-style raw head ``(B, N, 4 + 1 + C)`` (centre,
size, objectness, class probabilities) is a row per anchor with
``objectness * p(c)`` in every class column (:func:`yolo_detections`).

The rows keep autograd history: a class score of a row is differentiable with
respect to the layers that produced it. The boxes are only matched (no
gradient through the IoU).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError, InputTypeError

DETECTION_KEYS = ("boxes", "scores", "labels")


def _describe(raw: object) -> str:
    if isinstance(raw, Tensor):
        return f"a tensor of shape {tuple(raw.shape)}"
    if isinstance(raw, dict):
        return f"a dict with keys {list(raw.keys())}"
    return f"a {type(raw).__name__}"


def _image_rows(i: int, det: object, num_classes: int) -> Tensor:
    """One image's ``{'boxes' (n, 4), 'scores' (n,), 'labels' (n,)}`` as rows ``(n, 4 + C)``."""
    if not isinstance(det, dict):
        raise InputError(f"the detector's output for image {i} is {_describe(det)}, not a dict with "
                         f"{list(DETECTION_KEYS)} (is the model a torchvision detector?)")
    missing = [k for k in DETECTION_KEYS if k not in det]
    if missing:
        raise InputError(f"the detector's output for image {i} has no {missing} (it has keys {list(det.keys())}); "
                         f"camkit needs {list(DETECTION_KEYS)}: a torchvision detector in eval mode returns them")
    boxes, scores, labels = (det[k] for k in DETECTION_KEYS)
    if not all(isinstance(t, Tensor) for t in (boxes, scores, labels)):
        raise InputTypeError(f"the detector's output for image {i}: boxes, scores and labels must be tensors")
    n = scores.shape[0] if scores.dim() == 1 else -1
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or n != boxes.shape[0] or tuple(labels.shape) != (n,):
        raise InputError(f"the detector's output for image {i}: boxes {tuple(boxes.shape)}, scores "
                         f"{tuple(scores.shape)}, labels {tuple(labels.shape)}; expected (n, 4), (n,), (n,)")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputTypeError(f"the detector's output for image {i}: labels must be integers, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise InputError(f"the detector's output for image {i} has label {int(labels.max())} outside "
                         f"0..{num_classes - 1} (num_classes={num_classes})")
    onehot = F.one_hot(labels.long(), num_classes).to(scores.dtype)
    return torch.cat([boxes.to(scores.dtype), onehot * scores[:, None]], dim=1)


def detections(raw: Any, num_classes: int) -> Tensor:
    """A torchvision detector's eval output (a list of B dicts) as detections ``(B, N, 4 + C)``.

    Args:
        raw (list of dict): per image ``boxes (n, 4)`` (x1, y1, x2, y2 in input pixels),
            ``scores (n,)`` and integer ``labels (n,)``; other keys (``masks``) are ignored.
        num_classes (int): ``C``, the detector's class count (background included where the
            detector counts it, as torchvision does).

    Returns:
        *Tensor*: ``(B, N, 4 + C)``, N the most detections of an image (0 when none has one);
        shorter images padded with zero rows. The scores keep their autograd history.

    Raises:
        InputError: not a list of dicts, a missing key, shapes that do not fit, a label outside
            ``0..C-1``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise InputError(f"a detector's output is a list of dicts with {list(DETECTION_KEYS)}, one per image; "
                         f"got {_describe(raw)}")
    rows = [_image_rows(i, d, num_classes) for i, d in enumerate(raw)]
    n = max(r.shape[0] for r in rows)
    return torch.stack([F.pad(r, (0, 0, 0, n - r.shape[0])) for r in rows])


class DetectorOutput:
    """``output=`` for torchvision detectors: ``raw -> detections(raw, num_classes)``.

    Args:
        num_classes (int): The detector's class count.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)

    def __call__(self, raw: Any) -> Tensor:
        """Args: raw: the detector's list of dicts. Returns: ``(B, N, 4 + C)``."""
        return detections(raw, self.num_classes)

    def __repr__(self) -> str:
        return f"DetectorOutput(num_classes={self.num_classes})"


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Boxes ``(..., 4)`` as centre x, centre y, width, height -> ``x1, y1, x2, y2``."""
    c, wh = boxes[..., :2], boxes[..., 2:4]
    return torch.cat([c - wh / 2, c + wh / 2], dim=-1)


def yolo_detections(raw: Tensor, box_format: str = "cxcywh") -> Tensor:
    """A YOLO-style raw head ``(B, N, 4 + 1 + C)`` as detections ``(B, N, 4 + C)``.

    Column layout of ``raw`` (YOLOv5's ``Detect`` output in eval mode): box (centre x, centre y,
    width, height in input pixels), objectness, then C class probabilities (already through their
    sigmoid). A row's class score is ``objectness * p(c)``; no NMS (every anchor is a row).

    Args:
        raw (Tensor): ``(B, N, 4 + 1 + C)``.
        box_format (str): ``"cxcywh"`` (YOLO's) or ``"xyxy"``.

    Returns:
        *Tensor*: ``(B, N, 4 + C)``, boxes as x1, y1, x2, y2.

    Raises:
        InputError: another shape, or an unknown ``box_format``.
    """
    if not isinstance(raw, Tensor) or raw.dim() != 3 or raw.shape[-1] < 6:
        raise InputError(f"a YOLO-style output has shape (B, N, 4 + 1 + C) with C >= 1, got {_describe(raw)}")
    if box_format not in ("cxcywh", "xyxy"):
        raise InputError(f"box_format must be 'cxcywh' or 'xyxy', got {box_format!r}")
    boxes = cxcywh_to_xyxy(raw[..., :4]) if box_format == "cxcywh" else raw[..., :4]
    return torch.cat([boxes, raw[..., 4:5] * raw[..., 5:]], dim=-1)


# --------------------------------------------------------------------------- matching


def check_detections(dets: object, what: str) -> int:
    """``C`` of detections ``(B, N, 4 + C)``; else an InputError naming ``what``."""
    if not isinstance(dets, Tensor) or dets.dim() != 3 or dets.shape[-1] < 5 or not dets.is_floating_point():
        raise InputError(f"{what} needs detections of shape (B, N, 4 + C), floating point, got {_describe(dets)} "
                         "(a torchvision detector: the 'detection' preset's output=, camkit.detection.DetectorOutput; "
                         "a YOLO-style head: camkit.detection.yolo_detections)")
    return int(dets.shape[-1]) - 4


def reference_boxes(boxes: object, labels: object) -> Tuple[Tensor, Tensor]:
    """Reference boxes ``(K, 4)`` or ``(B, K, 4)`` and labels ``(K,)`` or ``(B, K)``, checked.

    Returns:
        *(Tensor, Tensor)*: the boxes (floating point; integers become float32) and the labels (long),
        each with their own leading dims.

    Raises:
        InputError: another shape, boxes not real numbers, labels not integers or negative, a box
            with ``x2 < x1`` or ``y2 < y1``, boxes and labels of different counts.
    """
    try:
        b = boxes if isinstance(boxes, Tensor) else torch.as_tensor(boxes)
        lab = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise InputTypeError("BoxScore: boxes must be numbers (K, 4) and labels integers (K,)") from None
    if b.dtype == torch.bool or b.is_complex():
        raise InputTypeError(f"BoxScore: boxes must be real numbers x1, y1, x2, y2, got dtype {b.dtype}")
    if b.dim() not in (2, 3) or b.shape[-1] != 4:
        raise InputError(f"BoxScore: boxes must have shape (K, 4) or (B, K, 4) (x1, y1, x2, y2), got {tuple(b.shape)}")
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise InputTypeError(f"BoxScore: labels must be integers, got dtype {lab.dtype}")
    if tuple(lab.shape) != tuple(b.shape[:-1]):
        raise InputError(f"BoxScore: {tuple(b.shape[:-1])} boxes need labels of that shape, got {tuple(lab.shape)}")
    if b.shape[-2] == 0:
        raise InputError("BoxScore: no reference box; give at least one")
    if not b.is_floating_point():
        b = b.float()
    if lab.numel() and int(lab.min()) < 0:
        raise InputError(f"BoxScore: label {int(lab.min())} is negative")
    host = b.detach().cpu()
    if not bool(torch.isfinite(host).all()) or bool((host[..., 2:] < host[..., :2]).any()):
        raise InputError("BoxScore: every box must be finite with x2 >= x1 and y2 >= y1 (x1, y1, x2, y2)")
    return b, lab.long()


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a (B, K, 4)`` with ``b (B, N, 4)`` (x1, y1, x2, y2): ``(B, K, N)``, 0 where the union is 0."""
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(dim=-1)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def match_boxes(dets: Tensor, boxes: Tensor, labels: Tensor, iou_threshold: float) -> Tuple[Tensor, Tensor]:
    """Each reference box's best match among the detections of its label.

    A detection row is of label ``c`` when its class-``c`` score is > 0; the match is the one of
    highest IoU above ``iou_threshold`` (the first such row on ties).

    Args:
        dets (Tensor): ``(B, N, 4 + C)`` detections.
        boxes (Tensor): ``(B, K, 4)`` reference boxes.
        labels (Tensor): ``(B, K)`` long, in ``0..C-1``.
        iou_threshold (float): the IoU a match must exceed.

    Returns:
        *(Tensor, Tensor)*: the matched row ``(B, K)`` long (0 where none) and whether one matched
        ``(B, K)`` bool.
    """
    cls = dets[..., 4:].detach()  # (B, N, C)
    iou = box_iou(boxes.to(cls.dtype), dets[..., :4].detach())  # (B, K, N)
    of_label = cls.transpose(1, 2).gather(1, labels[..., None].expand(-1, -1, cls.shape[1])) > 0  # (B, K, N)
    ok = of_label & (iou > iou_threshold)
    if ok.shape[-1] == 0:
        z = torch.zeros(ok.shape[:2], dtype=torch.long, device=ok.device)
        return z, z.bool()
    best = torch.where(ok, iou, torch.full_like(iou, -1.0)).argmax(dim=-1)
    return best, ok.any(dim=-1)


def matched_scores(dets: Tensor, rows: Tensor, labels: Tensor, matched: Tensor,
                   dtype: Optional[torch.dtype] = None) -> Tensor:
    """``dets[b, rows[b, k], 4 + labels[b, k]]`` where ``matched``, else 0: ``(B, K)``, differentiable.

    Args:
        dets (Tensor): ``(B, N, 4 + C)``.
        rows, labels (Tensor): ``(B, K)`` long.
        matched (Tensor): ``(B, K)`` bool.
        dtype (torch.dtype, optional): the result's dtype (default: the detections').

    Returns:
        *Tensor*: ``(B, K)`` on the detections' device; an empty detection set gives zeros that
        still depend on ``dets`` through autograd (their gradient is 0).
    """
    dtype = dtype or dets.dtype
    if dets.shape[1] == 0:
        return dets.sum(dim=(1, 2))[:, None].to(dtype) * 0 + torch.zeros(labels.shape, dtype=dtype, device=dets.device)
    cls = dets[..., 4:]
    picked = cls.gather(1, rows[..., None].expand(-1, -1, cls.shape[-1]))  # (B, K, C)
    got = picked.gather(2, labels[..., None]).squeeze(-1).to(dtype)
    return torch.where(matched, got, torch.zeros_like(got))


def top_rows(dets: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Each image's ``k`` highest-scoring detection rows (a row's score: its highest class score).

    Args:
        dets (Tensor): ``(B, N, 4 + C)``.
        k (int): how many rows.

    Returns:
        *(Tensor, Tensor, Tensor)*: rows ``(B, k)`` long, their labels ``(B, k)`` long, and
        ``valid (B, k)`` bool (False where the image has fewer than k detections of score > 0).
    """
    cls = dets[..., 4:].detach()
    n = cls.shape[1]
    if n == 0:
        z = torch.zeros(cls.shape[0], k, dtype=torch.long, device=cls.device)
        return z, z, z.bool()
    best, label = cls.max(dim=-1)  # (B, N)
    got = best.topk(min(k, n), dim=1)
    rows, vals = got.indices, got.values
    pad = k - rows.shape[1]
    rows = F.pad(rows, (0, pad))
    valid = F.pad(vals > 0, (0, pad), value=False)
    return rows, label.gather(1, rows), valid


def boxes_of(dets: Tensor, rows: Tensor) -> Tensor:
    """The boxes of ``rows (B, K)``: ``(B, K, 4)`` (zeros for an empty detection set)."""
    if dets.shape[1] == 0:
        return dets.new_zeros(*rows.shape, 4)
    return dets[..., :4].detach().gather(1, rows[..., None].expand(-1, -1, 4))


def per_image(t: Tensor, batch: int, what: str, dims: Sequence[int]) -> Tensor:
    """Reference data shared by the batch (``dims[0]`` dims) expanded to ``batch``, or checked per image."""
    if t.dim() == dims[0]:
        return t.unsqueeze(0).expand(batch, *t.shape)
    if t.shape[0] != batch:
        raise InputError(f"BoxScore: {what} are given for {t.shape[0]} images, the batch has {batch}")
    return t
