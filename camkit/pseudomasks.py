"""Pseudo-masks from class maps, and their scores against ground-truth masks: pure functions.

The rule (the weakly-supervised segmentation one, as in IRN / ReCAM's
``eval_cam``): a pixel is background where every class map is below the
threshold ``t``, else it belongs to the class whose map is highest there.
Maps are ``(K, H, W)`` in [0, 1], one per class listed in ``keys`` ``(K,)``.

Masks hold the ground truth's label space: ``0`` background and ``1 + c`` for
class ``c`` (the PASCAL VOC convention, ReCAM's ``keys + 1``), as ``camkit
export`` writes them: a palette PNG while the classes fit in 8 bits (``1 + c
<= 254``; 255 is VOC's void), a 16-bit grayscale PNG beyond
(:func:`mask_png_mode`).

Scores come from a confusion matrix ``conf[gt, pred]`` ``(C, C)`` summed over
images, pixels whose ground truth is ``ignore`` left out: per class
IoU ``TP / (GT + P - TP)``, precision ``TP / P``, recall ``TP / GT``
(NaN where the denominator is 0) and mIoU, the mean IoU over the classes
that are not NaN.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .errors import InputError

#: Value of ground-truth pixels left out of the scores (VOC's object borders).
IGNORE = 255


def _maps3(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise InputError(f"expected class maps of shape (K, H, W), got {maps.shape}")
    return maps


def masks_from_maps(maps: np.ndarray, threshold: float, keys: Sequence[int]) -> np.ndarray:
    """The pseudo-mask of one image: 0 where every map is below ``threshold``,
    else ``1 + keys[argmax_k maps[k]]`` (the first class on ties).

    Compared in float64, so a mask is a deterministic function of the stored
    (e.g. float16) maps.

    Args:
        maps (np.ndarray): ``(K, H, W)`` class maps, any real dtype; ``K`` may be 0 (all background).
        threshold (float): The foreground threshold ``t``.
        keys (sequence of int): ``(K,)`` the class of each map (``>= 0``).

    Returns:
        *np.ndarray*: ``(H, W)`` int64 labels, ``0`` or ``1 + c``.

    Raises:
        InputError: ``maps`` is not 3-d, or ``keys`` does not give one class ``>= 0`` per map.
    """
    maps = _maps3(maps)
    K, H, W = maps.shape
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.size != K or (K and keys.min() < 0):
        raise InputError(f"keys must give one class >= 0 per map: {K} maps, keys {keys.tolist()}")
    if K == 0:
        return np.zeros((H, W), dtype=np.int64)
    m = maps.astype(np.float64, copy=False)
    fg = m.max(axis=0) >= float(threshold)
    return np.where(fg, keys[m.argmax(axis=0)] + 1, 0)


def mask_png_mode(num_classes: int) -> str:
    """How masks of ``num_classes`` classes are stored: ``"P"`` (8-bit palette, values ``0..254``)
    while ``1 + (num_classes - 1) <= 254``, else ``"I;16"`` (16-bit grayscale, up to 65534 classes)."""
    if num_classes > 65534:
        raise InputError(f"a 16-bit mask holds at most 65534 classes, got {num_classes}")
    return "P" if num_classes <= 254 else "I;16"


def class_labels(mask: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """Mask values ``0 / 1 + k`` -> ground-truth labels ``0 / 1 + keys[k]``.

    Args:
        mask (np.ndarray): ``(H, W)`` integer mask of values ``0 .. K``.
        keys (sequence of int): ``(K,)`` the class of each map.

    Returns:
        *np.ndarray*: ``(H, W)`` int64 labels.

    Raises:
        InputError: A mask value above ``K``.
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    lut = np.concatenate([[0], keys + 1])
    mask = np.asarray(mask)
    if mask.size and int(mask.max()) >= lut.size:
        raise InputError(f"mask value {int(mask.max())} but only {keys.size} classes in keys")
    return lut[mask.astype(np.int64)]


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise InputError(f"prediction of shape {pred.shape} but ground truth of shape {gt.shape}")


def _check_labels(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> None:
    """InputError for a predicted or ground-truth label outside ``0..num_classes-1``."""
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise InputError(f"{name} label {int(a.max() if a.max() >= num_classes else a.min())} "
                             f"outside 0..{num_classes - 1}")


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """``conf[g, p]`` = pixels with ground truth ``g`` predicted ``p``.

    Args:
        pred (np.ndarray): ``(H, W)`` integer labels.
        gt (np.ndarray): ``(H, W)`` integer labels; pixels equal to ``ignore``
            are left out.
        num_classes (int): ``C``.
        ignore (int, optional): The ground-truth value left out. Default: 255.

    Returns:
        *np.ndarray*: ``(C, C)`` int64.

    Raises:
        InputError: Shapes differ, or a label (other than ``ignore``) lies
            outside ``0..C-1``.
    """
    pred, gt = np.asarray(pred).astype(np.int64), np.asarray(gt).astype(np.int64)
    _check_pair(pred, gt)
    keep = gt != ignore
    p, g = pred[keep], gt[keep]
    _check_labels(p, g, num_classes)
    return np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def sweep_confusion(maps: np.ndarray, keys: Sequence[int], gt: np.ndarray, thresholds: Sequence[float],
                    num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """Confusion matrices of the masks at every threshold, in one pass.

    Equal to ``confusion(masks_from_maps(maps, t, keys), gt)``
    for each ``t`` of ``thresholds``. A pixel is foreground for the thresholds
    ``t <= max_k maps[k]``; counting each pixel once in the bucket of how many
    thresholds it passes and summing the buckets from the top gives all T
    matrices.

    Args:
        maps (np.ndarray): ``(K, H, W)`` class maps.
        keys (sequence of int): ``(K,)`` the class of each map.
        gt (np.ndarray): ``(H, W)`` integer labels.
        thresholds (sequence of float): ``(T,)``, strictly increasing.
        num_classes (int): ``C``.
        ignore (int, optional): The ground-truth value left out. Default: 255.

    Returns:
        *np.ndarray*: ``(T, C, C)`` int64.

    Raises:
        InputError: Bad shapes, thresholds not increasing, or labels outside
            ``0..C-1``.
    """
    maps = _maps3(maps)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or np.any(np.diff(t) <= 0):
        raise InputError(f"thresholds must be a non-empty increasing sequence, got {list(t)}")
    gt = np.asarray(gt).astype(np.int64)
    if maps.shape[1:] != gt.shape:
        raise InputError(f"maps of shape {maps.shape} but ground truth of shape {gt.shape}")
    C, T = num_classes, t.size
    if maps.shape[0] == 0:
        conf = confusion(np.zeros_like(gt), gt, C, ignore)
        return np.broadcast_to(conf, (T, C, C)).copy()
    m = maps.astype(np.float64, copy=False)
    fg_label = class_labels(m.argmax(axis=0) + 1, keys)
    passed = np.searchsorted(t, m.max(axis=0), side="right")   # thresholds t_j <= max
    keep = gt != ignore
    g, lab, n = gt[keep], fg_label[keep], passed[keep]
    _check_labels(lab, g, C)
    # fg[j] = pixels passing exactly j thresholds, by (gt, label); foreground at t_i iff j > i.
    fg = np.bincount((n * C + g) * C + lab, minlength=(T + 1) * C * C).reshape(T + 1, C, C)
    bg = np.bincount(n * C + g, minlength=(T + 1) * C).reshape(T + 1, C)
    fg_at = np.cumsum(fg[::-1], axis=0)[::-1][1:]     # sum over j > i, for i = 0..T-1
    bg_at = np.cumsum(bg, axis=0)[:T]                  # sum over j <= i
    out = fg_at.copy()
    out[:, :, 0] += bg_at
    return out


def scores(conf: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-class scores of a confusion matrix.

    Args:
        conf (np.ndarray): ``(C, C)`` confusion matrix ``conf[gt, pred]``.

    Returns:
        *dict*: ``iou``, ``precision``, ``recall``: ``(C,)`` float64, NaN where
        undefined; ``miou``: float64, the NaN-skipping mean of ``iou`` (NaN
        when every class is NaN).

    Raises:
        InputError: ``conf`` is not square.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise InputError(f"expected a square confusion matrix (C, C), got {conf.shape}")
    tp = np.diag(conf)
    gt, pred = conf.sum(axis=1), conf.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + pred - tp)
        precision = tp / pred
        recall = tp / gt
    miou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
    return {"iou": iou, "precision": precision, "recall": recall, "miou": np.float64(miou)}


def grow(conf: np.ndarray, num_classes: int) -> np.ndarray:
    """Pad a confusion matrix with zeros to ``num_classes`` classes.

    Args:
        conf (np.ndarray): ``(..., C, C)``.
        num_classes (int): ``N``; ``N <= C`` returns ``conf`` itself.

    Returns:
        *np.ndarray*: ``(..., max(N, C), max(N, C))``, ``conf``'s dtype.
    """
    C = conf.shape[-1]
    if num_classes <= C:
        return conf
    pad = [(0, 0)] * (conf.ndim - 2) + [(0, num_classes - C), (0, num_classes - C)]
    return np.pad(conf, pad)


#: At most this many thresholds in one sweep.
MAX_THRESHOLDS = 1000


def parse_sweep(spec: str) -> List[float]:
    """Thresholds from a ``START:STOP:STEP`` string, stop included.

    Args:
        spec (str): e.g. ``"0.05:0.95:0.05"``.

    Returns:
        *list of float*: ``START, START + STEP, ... <= STOP``, rounded to 1e-9.

    Raises:
        InputError: Not three finite numbers, values outside [0, 1], ``STEP <= 0``, ``STOP < START``
        or more than :data:`MAX_THRESHOLDS` thresholds.
    """
    try:
        start, stop, step = (float(v) for v in spec.split(":"))
    except ValueError:
        raise InputError(f"--sweep expects START:STOP:STEP, e.g. 0.05:0.95:0.05, got {spec!r}") from None
    if not all(np.isfinite([start, stop, step])):
        raise InputError(f"--sweep {spec}: START, STOP and STEP must be finite numbers")
    if not (0.0 <= start <= 1.0 and 0.0 <= stop <= 1.0):
        raise InputError(f"--sweep {spec}: thresholds lie in [0, 1] (the maps' range)")
    if step <= 0 or stop < start:
        raise InputError(f"--sweep {spec}: need STEP > 0 and STOP >= START")
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    if n > MAX_THRESHOLDS:
        raise InputError(f"--sweep {spec} gives {n} thresholds; at most {MAX_THRESHOLDS} (use a larger STEP)")
    return [round(start + i * step, 9) for i in range(n)]


def voc_palette() -> List[int]:
    """The PASCAL VOC colour map.

    Returns:
        *list of int*: 256 RGB triples, flattened (768 ints), for ``Image.putpalette``.
    """
    pal: List[int] = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def best_threshold(thresholds: Sequence[float], mious: Sequence[float]) -> Tuple[float, float]:
    """The threshold with the highest mIoU (the first, i.e. lowest, on ties), NaN skipped.

    Args:
        thresholds (sequence of float): ``(T,)``.
        mious (sequence of float): ``(T,)`` the mIoU at each threshold.

    Returns:
        *tuple of float*: ``(threshold, mIoU)``.

    Raises:
        InputError: No mIoU is defined (empty, or all NaN).
    """
    arr = np.asarray(mious, dtype=np.float64)
    if arr.size == 0 or np.all(np.isnan(arr)):
        raise InputError("no threshold has a defined mIoU")
    i = int(np.nanargmax(arr))
    return float(thresholds[i]), float(arr[i])
