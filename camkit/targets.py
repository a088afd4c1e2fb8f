"""Targets: what to explain, as functions of the model's scores.

A target is any callable ``fn(scores) -> Tensor`` of shape ``(B,)`` (one map
per image) or ``(B, K)`` (K maps per image), where ``scores`` is what the
method's ``output=`` selected from the model's raw output: ``(B, C)`` logits,
``(B, C, H, W)`` per-pixel scores, ``(B,)`` a regression output... Each column
is one target; gradient methods differentiate all K columns with one
forward and one batched backward.

The classes here are such callables, with two extras camkit uses when they
exist: ``classes(scores)`` gives the class index of each column ``(B, K)``
(-1 where a column is not one class, e.g. padding), and ``valid(scores)``
marks real columns ``(B, K)`` bool. ``logit = True`` says a column is exactly
the logit of its class, which CAM and ReCAM need (they read the classifier's
weights instead of differentiating).

Integer targets, ``topk=k`` and ``"all"`` in a method call are
:class:`ClassScore`, :class:`TopK` and :class:`AllClasses`. Other heads:
:class:`BoxScore` and :class:`TopDetections` (detectors, on detections
``(B, N, 4 + C)`` from :mod:`camkit.detection`), :class:`Similarity`
(embeddings), :class:`BinaryScore` (one logit), :class:`Regression`.
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .detection import boxes_of, check_detections, match_boxes, matched_scores, reference_boxes, top_rows
from .detection import per_image as det_per_image
from .errors import InputError, InputTypeError

Indices = Union[int, Sequence[int], Sequence[Sequence[int]], Tensor]


def _check_scores(scores: Tensor, dims: Sequence[int], what: str) -> None:
    if not isinstance(scores, Tensor) or scores.dim() not in dims:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        want = " or ".join({2: "(B, C)", 4: "(B, C, H, W)"}[d] for d in dims)
        raise InputError(f"{what} needs scores of shape {want}, got {shape} (choose them with output=...)")


def _index_tensor(idx: Indices, what: str) -> Tensor:
    """Class indices as a long tensor; ints, numpy integers, sequences and 0-d/1-d/2-d tensors."""
    if isinstance(idx, bool) or (isinstance(idx, Tensor) and idx.dtype == torch.bool):
        raise InputTypeError(f"{what}: class indices must be integers, got a bool")
    if isinstance(idx, numbers.Integral):
        return torch.tensor(int(idx))
    if isinstance(idx, (list, tuple)) and _holds_bool(idx):
        raise InputTypeError(f"{what}: class indices must be integers, got a bool in {idx!r}")
    try:
        t = idx if isinstance(idx, Tensor) else torch.as_tensor(idx)
    except (TypeError, ValueError, RuntimeError):
        raise InputTypeError(f"{what}: class indices must be integers, got {idx!r}") from None
    if t.numel() == 0:
        raise InputError(f"{what}: the list of class indices is empty; give at least one class")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputTypeError(f"{what}: class indices must be integers, got dtype {t.dtype}")
    if t.dim() > 2:
        raise InputError(f"{what}: class indices must be an int, (B,) or (B, K), got shape {tuple(t.shape)}")
    return t.long()


def _holds_bool(seq: Sequence) -> bool:
    return any(_holds_bool(v) if isinstance(v, (list, tuple)) else isinstance(v, bool) for v in seq)


def _per_image(t: Tensor, batch: int, what: str) -> Tensor:
    """int -> (B, 1); (B,) -> (B, 1); (B, K) as is; anything else an InputError."""
    if t.dim() == 0:
        return t.reshape(1, 1).expand(batch, 1)
    if t.dim() == 1:
        t = t[:, None]
    if t.shape[0] != batch or t.shape[1] == 0:
        raise InputError(
            f"{what} must have shape ({batch},) (one class per image) or ({batch}, K), got {tuple(t.shape)[:1]}"
            if t.shape[1] == 1 else
            f"{what} must have shape ({batch},) (one class per image) or ({batch}, K), got {tuple(t.shape)}"
        )
    return t


def class_indices(idx: Indices, batch: int, what: str = "targets") -> Tensor:
    """Class indices as ``(B, K)`` long: an int (every image), ``(B,)`` (one per image) or ``(B, K)``.

    The one rule for class indices in camkit (methods' ``targets=``, the metrics' ``targets``):
    integers only (no bools, floats or strings), at least one.

    Args:
        idx: an int, a sequence, a numpy array or a tensor of integers.
        batch: ``B``.
        what: the argument's name, for messages.

    Returns:
        ``(B, K)`` long, on ``idx``'s device for a tensor.

    Raises:
        InputError: empty, not integers (an :class:`~camkit.errors.InputTypeError`), or another shape.
    """
    return _per_image(_index_tensor(idx, what), batch, what)


class Target:
    """Base class of camkit's targets: ``target(scores) -> (B,) or (B, K)``.

    Every method takes the ``scores`` the method's ``output=`` selected (e.g.
    ``(B, C)`` logits).
    """

    logit = False

    def __call__(self, scores: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The target values.

        Args:
            scores (Tensor): The model's selected output, ``(B, ...)``.

        Returns:
            *Tensor*: ``(B,)`` or ``(B, K)``, the scores' dtype.
        """
        raise NotImplementedError

    def classes(self, scores: Tensor) -> Optional[Tensor]:
        """Class index of each column.

        Args:
            scores (Tensor): The model's selected output, ``(B, ...)``.

        Returns:
            *Tensor or None*: ``(B, K)`` long, -1 where a column is not one
            class; ``None`` when the columns are not classes.
        """
        return None

    def valid(self, scores: Tensor) -> Optional[Tensor]:
        """Which columns are real targets.

        Args:
            scores (Tensor): The model's selected output, ``(B, ...)``.

        Returns:
            *Tensor or None*: ``(B, K)`` bool; ``None``: all.
        """
        return None

    def index_problem(self, scores: Tensor) -> Optional[Tensor]:
        """Whether a class index lies outside the scores' classes, checked on the
        scores' device without a host sync (camkit raises after the call).

        Args:
            scores (Tensor): The model's selected output, ``(B, C)``.

        Returns:
            *Tensor or None*: 0-d bool; ``None`` when already checked (or nothing to check).
        """
        return None


class ClassScore(Target):
    """The logit of class ``idx``: ``scores[b, idx[b, k]]``, ``(B, K)``.

    Args:
        idx (int, sequence or Tensor): An int (every image), ``(B,)`` (one
            class per image) or ``(B, K)`` (K classes per image) integer
            indices; numpy integers and 0-d tensors count as ints. Indices
            given on the host are checked against ``(B, C)`` scores when
            called; on an accelerator, by :meth:`index_problem`.

    Raises:
        InputError: ``idx`` is not integer (bool or float included) or has
            more than 2 dims; when called: scores not ``(B, C)``, ``idx`` not
            matching the batch, or (host indices) a class outside ``0..C-1``.
    """

    logit = True

    def __init__(self, idx: Indices) -> None:
        self.idx = _index_tensor(idx, "targets")
        # Indices given on the host are checked against the class count with no
        # device work; a tensor on an accelerator is checked on that device.
        self._host = None
        if self.idx.device.type == "cpu":
            vals = self.idx.reshape(-1).tolist()
            self._host = (min(vals), max(vals)) if vals else (0, 0)

    def _idx(self, scores: Tensor) -> Tensor:
        _check_scores(scores, (2,), "a class-index target")
        idx = _per_image(self.idx.to(scores.device), scores.shape[0], "targets")
        if self._host is not None:
            lo, hi = self._host
            n = scores.shape[1]
            if lo < 0 or hi >= n:
                bad = lo if lo < 0 else hi
                raise InputError(f"target class {bad} out of range: classes are 0..{n - 1}")
            return idx
        return idx.clamp(0, scores.shape[1] - 1)  # gathered in range; index_problem reports it

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores -> ``(B, K)``, the scores' dtype."""
        return scores.gather(1, self._idx(scores))

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, K)`` long: the indices, per image."""
        return _per_image(self.idx.to(scores.device), scores.shape[0], "targets")

    def index_problem(self, scores: Tensor) -> Optional[Tensor]:
        """0-d bool on the scores' device for device indices; ``None`` for host ones (checked when called)."""
        if self._host is not None:
            return None
        idx = self.idx.to(scores.device)
        return ((idx < 0) | (idx >= scores.shape[1])).any()


class TopK(Target):
    """The logits of each image's ``k`` highest-scoring classes, best first, ``(B, k)``.

    Args:
        k (int, optional): How many classes per image. Default: 1.

    Raises:
        InputError: ``k`` is not a positive int; when called: scores not
            ``(B, C)``, or ``k > C``.
    """

    logit = True

    def __init__(self, k: int = 1) -> None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 1:
            raise InputError(f"topk must be a positive int, got {k!r}")
        self.k = int(k)

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores -> ``(B, k)`` long: the top classes, best first."""
        _check_scores(scores, (2,), f"topk={self.k}")
        if self.k > scores.shape[1]:
            raise InputError(f"topk={self.k} exceeds the number of classes ({scores.shape[1]})")
        if self.k == 1:
            return scores.detach().argmax(dim=1, keepdim=True)
        return scores.detach().topk(self.k, dim=1).indices

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores -> ``(B, k)``, the scores' dtype."""
        return scores.gather(1, self.classes(scores))


class AllClasses(Target):
    """Every class's logit, ``(B, C)``.

    Raises:
        InputError: When called, scores not ``(B, C)``.
    """

    logit = True

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores -> ``(B, C)`` long: ``0 .. C-1`` in every row."""
        _check_scores(scores, (2,), "targets='all'")
        return torch.arange(scores.shape[1], device=scores.device).expand(scores.shape[0], -1)

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores, returned as they are."""
        _check_scores(scores, (2,), "targets='all'")
        return scores


class Softmax(ClassScore):
    """The softmax probability of class ``idx`` (over dim 1 of ``(B, C)`` scores), ``(B, K)``.

    Args and errors: as :class:`ClassScore`.
    """

    logit = False

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores -> ``(B, K)`` probabilities, the scores' dtype."""
        return scores.softmax(dim=1).gather(1, self._idx(scores))


class MultiLabel(Target):
    """The logits of each image's positive classes: a variable number per image.

    ``labels``: a multi-hot ``(B, C)`` tensor (bool or 0/1), or a list of B
    lists of class indices. Column k of image b is its k-th positive class in
    increasing index order; images with fewer positives than the most are
    **padded**: a padded column's score is the constant 0, its class is -1,
    ``valid`` is False, and its maps are all zeros. Keep ``labels`` on the CPU
    (the padding width is data-dependent: on an accelerator it costs a sync).

    Args:
        labels (Tensor or sequence of sequences of int): ``(B, C)`` multi-hot
            (bool or 0/1), or B lists of class indices.

    Raises:
        InputError: Labels not ``(B, C)`` 0/1, non-integer indices, or no
            positive label at all; when called: scores not ``(B, C)``, another
            batch size, or classes outside ``0..C-1``.
    """

    logit = True

    def __init__(self, labels: Union[Tensor, Sequence[Sequence[int]]]) -> None:
        if isinstance(labels, Tensor):
            if labels.dim() != 2:
                raise InputError(f"MultiLabel needs multi-hot labels of shape (B, C), got {tuple(labels.shape)}")
            values = labels.detach().cpu().tolist()  # host data: no device work below
            if any(v not in (0, 1) for r in values for v in r):
                raise InputError("MultiLabel: multi-hot labels must be 0 or 1 (or bool)")
            rows: List[List[int]] = [[j for j, v in enumerate(r) if v] for r in values]
            self.num_classes: Optional[int] = labels.shape[1]
        else:
            rows = [sorted({int(_index_tensor(c, "MultiLabel")) for c in r}) for r in labels]
            self.num_classes = None
        width = max((len(r) for r in rows), default=0)
        if not rows or width == 0:
            raise InputError("MultiLabel: no image has a positive label")
        self._rows = rows
        self._idx = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)
        self._lo = min(min(r) for r in rows if r)
        self._hi = max(max(r) for r in rows if r)

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores -> ``(B, K)`` long: each image's positive classes, -1 padded."""
        _check_scores(scores, (2,), "MultiLabel")
        b, n = scores.shape
        if b != len(self._rows):
            raise InputError(f"MultiLabel has labels for {len(self._rows)} images, the batch has {b}")
        if (self.num_classes is not None and self.num_classes != n) or self._lo < 0 or self._hi >= n:
            raise InputError(f"MultiLabel: labels name classes outside 0..{n - 1}")
        return self._idx.to(scores.device)

    def valid(self, scores: Tensor) -> Tensor:
        """``(B, K)`` bool: False in the padded columns."""
        return self.classes(scores) >= 0

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, C)`` scores -> ``(B, K)``, the scores' dtype, 0 in the padded columns."""
        idx = self.classes(scores)
        got = scores.gather(1, idx.clamp(min=0))
        return torch.where(idx >= 0, got, torch.zeros_like(got))


class SegmentationRegion(Target):
    """Sum of class ``class_index``'s per-pixel scores over a region: ``(B, K)``.

    ``scores``: ``(B, C, H, W)``. ``class_index``: an int or a sequence of K
    ints (one column each). ``mask``: bool ``(H, W)`` or ``(B, H, W)`` shared by
    the classes; ``None`` takes, for each class, the pixels the model predicts
    as that class (argmax over C). pytorch-grad-cam's
    ``SemanticSegmentationTarget`` is the same sum.

    Args:
        class_index (int or sequence of int): ``K`` classes, one column each.
        mask (Tensor, optional): ``(H, W)`` or ``(B, H, W)``, bool or 0/1.

    Raises:
        InputError: Non-integer classes, a mask of another rank or with values
            other than 0/1; when called: scores not ``(B, C, H, W)``, a class
            outside ``0..C-1``, or a mask of another size.
    """

    def __init__(self, class_index: Union[int, Sequence[int]], mask: Optional[Tensor] = None) -> None:
        idx = _index_tensor(class_index, "SegmentationRegion")
        if idx.dim() > 1:
            raise InputError("SegmentationRegion: class_index must be an int or a sequence of ints")
        self.idx = idx.reshape(-1)
        self._list = self.idx.tolist()
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dim() not in (2, 3):
                shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise InputError(f"SegmentationRegion: mask must be a bool tensor (H, W) or (B, H, W), got {shape}")
            if mask.is_floating_point() and not ((mask == 0) | (mask == 1)).all():
                raise InputError("SegmentationRegion: mask values must be 0/1 or bool")
        self.mask = mask

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, K)`` long: ``class_index`` in every row."""
        return self.idx.to(scores.device).expand(scores.shape[0], -1)

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, C, H, W)`` scores -> ``(B, K)``, the scores' dtype."""
        _check_scores(scores, (4,), "SegmentationRegion")
        b, n, h, w = scores.shape
        if min(self._list) < 0 or max(self._list) >= n:
            raise InputError(f"SegmentationRegion: class out of range: classes are 0..{n - 1}")
        idx = self.idx.to(scores.device)
        if self.mask is None:
            pred = scores.detach().argmax(dim=1, keepdim=True)  # (B, 1, H, W)
            region = pred == idx.view(1, -1, 1, 1)  # (B, K, H, W)
        else:
            m = self.mask.to(scores.device)
            if tuple(m.shape[-2:]) != (h, w) or (m.dim() == 3 and m.shape[0] != b):
                raise InputError(
                    f"SegmentationRegion: mask of shape {tuple(m.shape)} does not fit scores of shape "
                    f"{(b, n, h, w)}: expected ({h}, {w}) or ({b}, {h}, {w})"
                )
            region = m.bool().reshape(-1, 1, h, w)
        picked = scores[:, idx]  # (B, K, H, W)
        return (picked * region.to(picked.dtype)).sum(dim=(-2, -1))


class BoxScore(Target):
    """Per reference box: the score of the best-matching detection of its label, ``(B, K)``.

    ``scores``: detections ``(B, N, 4 + C)`` (:mod:`camkit.detection`; the ``detection`` preset's
    ``output=`` makes them from a torchvision detector). For reference box k of label c, the match
    is the detection of label c (class-c score > 0) of highest IoU above ``iou_threshold``; the
    column is its class-c score, 0 when nothing matches (on the detections' device and dtype).
    K boxes give K maps from one forward and one batched backward. pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` instead sums ``IoU + score`` over the boxes into one value.

    Args:
        boxes (Tensor or sequence): ``(K, 4)`` (every image) or ``(B, K, 4)``, x1, y1, x2, y2 in input pixels.
        labels (Tensor or sequence of int): ``(K,)`` or ``(B, K)``.
        iou_threshold (float): the IoU a match must exceed. Default: 0.5.

    Raises:
        InputError: boxes not ``(K, 4)`` / ``(B, K, 4)`` real numbers, labels of another shape, not
            integers or negative, a threshold outside [0, 1); when called: scores that are not detections,
            another batch, or a label outside ``0..C-1``.
    """

    def __init__(self, boxes: object, labels: object, iou_threshold: float = 0.5) -> None:
        self.boxes, self.labels = reference_boxes(boxes, labels)
        if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real) \
                or not 0.0 <= float(iou_threshold) < 1.0:
            raise InputError(f"BoxScore: iou_threshold must be a number in [0, 1), got {iou_threshold!r}")
        self.iou_threshold = float(iou_threshold)
        self._max_label = int(self.labels.max())

    def _ref(self, scores: Tensor) -> Tuple[Tensor, Tensor]:
        c = check_detections(scores, "BoxScore")
        if self._max_label >= c:
            raise InputError(f"BoxScore: label {self._max_label} out of range: the detector has classes 0..{c - 1}")
        b = scores.shape[0]
        boxes = det_per_image(self.boxes.to(scores.device), b, "boxes", (2, 3))
        return boxes, det_per_image(self.labels.to(scores.device), b, "labels", (1, 2))

    def matched(self, scores: Tensor) -> Tensor:
        """``(B, K)`` bool: whether reference box k found a detection."""
        boxes, labels = self._ref(scores)
        return match_boxes(scores, boxes, labels, self.iou_threshold)[1]

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, K)`` long: the reference labels."""
        return self._ref(scores)[1]

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, N, 4 + C)`` detections -> ``(B, K)``, the detections' dtype."""
        boxes, labels = self._ref(scores)
        rows, ok = match_boxes(scores, boxes, labels, self.iou_threshold)
        return matched_scores(scores, rows, labels, ok)


class TopDetections(Target):
    """Each image's ``k`` highest-scoring detections (a detection's score: its best class score), ``(B, k)``.

    ``scores``: detections ``(B, N, 4 + C)``. Columns beyond an image's detections are padding
    (``valid`` False, score 0, class -1). :meth:`boxes` gives the explained boxes.

    Args:
        k (int): how many detections per image. Default: 1.
    """

    def __init__(self, k: int = 1) -> None:
        self.k = TopK(k).k

    def _rows(self, scores: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        check_detections(scores, "TopDetections")
        return top_rows(scores, self.k)

    def boxes(self, scores: Tensor) -> Tensor:
        """``(B, k, 4)``: the explained detections' boxes (x1, y1, x2, y2)."""
        return boxes_of(scores, self._rows(scores)[0])

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, k)`` long: the detections' labels, -1 in padding."""
        _, labels, valid = self._rows(scores)
        return torch.where(valid, labels, torch.full_like(labels, -1))

    def valid(self, scores: Tensor) -> Tensor:
        """``(B, k)`` bool: False in the padding."""
        return self._rows(scores)[2]

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, N, 4 + C)`` detections -> ``(B, k)``, the detections' dtype."""
        rows, labels, valid = self._rows(scores)
        return matched_scores(scores, rows, labels, valid)


class Similarity(Target):
    """The similarity of each image's embedding to K concept embeddings, ``(B, K)``.

    ``scores``: embeddings ``(B, D)`` (e.g. timm with ``num_classes=0``, a CLIP image tower).
    ``metric``: ``"cosine"`` (pytorch-grad-cam's ``SimilarityToConceptTarget``) or ``"dot"``.

    Args:
        concept (Tensor): ``(D,)`` (one concept) or ``(K, D)``.
        metric (str): ``"cosine"`` or ``"dot"``. Default: ``"cosine"``.

    Raises:
        InputError: a concept of another rank, not floating point or not finite, an unknown metric; when
            called: embeddings not ``(B, D)``, or a concept of another size D.
    """

    METRICS = ("cosine", "dot")

    def __init__(self, concept: Tensor, metric: str = "cosine") -> None:
        if not isinstance(concept, Tensor) or concept.dim() not in (1, 2) or concept.shape[-1] == 0 \
                or (concept.dim() == 2 and concept.shape[0] == 0):
            shape = tuple(concept.shape) if isinstance(concept, Tensor) else type(concept).__name__
            raise InputError(f"Similarity: the concept must be an embedding (D,) or (K, D), got {shape}")
        if not concept.is_floating_point():
            raise InputTypeError(f"Similarity: the concept must be floating point, got {concept.dtype}")
        if metric not in self.METRICS:
            raise InputError(f"Similarity: metric must be one of {', '.join(self.METRICS)}, got {metric!r}")
        self.concept = concept.detach().reshape(-1, concept.shape[-1])
        self.metric = metric

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B, D)`` embeddings -> ``(B, K)``, the embeddings' dtype."""
        if not isinstance(scores, Tensor) or scores.dim() != 2:
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise InputError(f"Similarity needs embeddings of shape (B, D), got {shape} (choose them with output=...)")
        if scores.shape[1] != self.concept.shape[1]:
            raise InputError(f"Similarity: the concept has {self.concept.shape[1]} features, the model's embeddings "
                             f"have {scores.shape[1]}")
        c = self.concept.to(device=scores.device, dtype=scores.dtype)
        if self.metric == "cosine":
            return F.normalize(scores, dim=1) @ F.normalize(c, dim=1).T
        return scores @ c.T


class BinaryScore(Target):
    """A binary classifier's single logit: ``+logit`` for class 1, ``-logit`` for class 0, ``(B, 1)``.

    ``scores``: ``(B,)`` or ``(B, 1)``. As pytorch-grad-cam's ``BinaryClassifierOutputTarget``.
    ``classes`` gives the class (0 or 1) of the column.

    Args:
        category (int): 1 (the positive class) or 0 (the negative class). Default: 1.
    """

    def __init__(self, category: int = 1) -> None:
        if isinstance(category, bool) or category not in (0, 1):
            raise InputError(f"BinaryScore: category must be 0 or 1, got {category!r}")
        self.category = int(category)

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B,)`` or ``(B, 1)`` logits -> ``(B, 1)``."""
        if not isinstance(scores, Tensor) or not (scores.dim() == 1 or (scores.dim() == 2 and scores.shape[1] == 1)):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise InputError(f"BinaryScore needs one logit per image, (B,) or (B, 1), got {shape}")
        logit = scores.reshape(-1, 1)
        return logit if self.category == 1 else -logit

    def classes(self, scores: Tensor) -> Tensor:
        """``(B, 1)`` long: the category."""
        return torch.full((scores.shape[0], 1), self.category, dtype=torch.long, device=scores.device)


class Regression(Target):
    """Named columns of a regression output ``(B,)`` or ``(B, R)``, one map each: ``(B, K)``.

    Args:
        outputs (int, str or sequence): the columns to explain, by index or by name in ``names``.
        names (sequence of str, optional): the names of the R outputs (e.g. ``["age", "bmi"]``).
        sign (int): +1 (what raises the value) or -1 (what lowers it). Default: +1.

    Raises:
        InputError: an unknown name, a column outside ``0..R-1``, a sign other than +-1; when called:
            scores not ``(B,)`` / ``(B, R)`` or another R than ``names``.
    """

    def __init__(self, outputs: Union[int, str, Sequence[Union[int, str]]] = 0,
                 names: Optional[Sequence[str]] = None, sign: int = 1) -> None:
        self.names = None if names is None else [str(n) for n in names]
        items = [outputs] if isinstance(outputs, (int, str)) else list(outputs)
        cols: List[int] = []
        for o in items:
            if isinstance(o, str):
                if self.names is None or o not in self.names:
                    raise InputError(f"Regression: unknown output {o!r}; the names are {self.names}")
                cols.append(self.names.index(o))
            else:
                cols.append(int(_index_tensor(o, "Regression")))
        if not cols:
            raise InputError("Regression: give at least one output")
        if sign not in (1, -1) or isinstance(sign, bool):
            raise InputError(f"Regression: sign must be +1 or -1, got {sign!r}")
        self.columns, self.sign = cols, int(sign)

    def labels(self) -> List[str]:
        """The explained outputs' names (``"output j"`` without ``names``)."""
        return [self.names[c] if self.names else f"output {c}" for c in self.columns]

    def __call__(self, scores: Tensor) -> Tensor:
        """``(B,)`` or ``(B, R)`` -> ``(B, K)``."""
        if not isinstance(scores, Tensor) or scores.dim() not in (1, 2):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise InputError(f"Regression needs outputs of shape (B,) or (B, R), got {shape}")
        s = scores.reshape(scores.shape[0], -1)
        r = s.shape[1]
        if (self.names is not None and len(self.names) != r) or min(self.columns) < 0 or max(self.columns) >= r:
            raise InputError(f"Regression: the model has {r} outputs; columns {self.columns}"
                             + (f" of names {self.names}" if self.names else "") + " do not fit")
        return s[:, self.columns] * self.sign


class _Function(Target):
    """A plain callable as a target (its columns are not known classes)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, scores: Tensor) -> Tensor:
        return self.fn(scores)


TargetSpec = Union[None, int, str, Sequence[int], Tensor, Target]


def as_target(targets: TargetSpec, topk: Optional[int] = None) -> Target:
    """What a method call's ``targets=`` / ``topk=`` mean, as a :class:`Target`.

    Args:
        targets (None, int, str, sequence, Tensor, Target or callable):
            ``None`` (top-1), class indices (:class:`ClassScore`), ``"all"``
            (:class:`AllClasses`), a :class:`Target`, or any callable
            ``scores -> (B,) or (B, K)``.
        topk (int, optional): :class:`TopK`; only with ``targets=None``.

    Returns:
        *Target*: ``targets`` itself when it is one.

    Raises:
        InputError: Both ``targets`` and ``topk``, another string than
            ``"all"``, or what :class:`ClassScore` / :class:`TopK` refuse.
    """
    if topk is not None:
        if targets is not None:
            raise InputError("give either targets or topk, not both")
        return TopK(topk)
    if targets is None:
        return TopK(1)
    if isinstance(targets, str):
        if targets == "all":
            return AllClasses()
        raise InputTypeError(f"targets must be class indices, 'all', a callable or None, got {targets!r}")
    if isinstance(targets, Target):
        return targets
    if callable(targets) and not isinstance(targets, Tensor):
        return _Function(targets)
    return ClassScore(targets)


def check_values(values: object, batch: int) -> Tensor:
    """A target's output as ``(B, K)``: ``(B,)`` gets K = 1.

    Args:
        values (Tensor): The target function's output, ``(B,)`` or ``(B, K)``, ``K >= 1``.
        batch (int): ``B``.

    Returns:
        *Tensor*: ``(B, K)``, ``values``' dtype.

    Raises:
        InputError: Not a tensor, another shape, or not floating point.
    """
    if not isinstance(values, Tensor):
        raise InputTypeError(f"the target function must return a tensor of shape (B,) or (B, K), "
                             f"got {type(values).__name__}")
    shape = tuple(values.shape)
    if values.dim() == 1:
        values = values[:, None]
    if values.dim() != 2 or values.shape[0] != batch or values.shape[1] == 0:
        raise InputError(f"the target function must return shape ({batch},) or ({batch}, K), got {shape}")
    if not values.is_floating_point():
        raise InputTypeError(f"the target function must return floating-point scores, got {values.dtype}")
    return values
