"""``camkit evaluate-masks``: an export's pseudo-masks scored against ground-truth PNGs."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..pseudomasks import IGNORE, best_threshold, confusion, scores, sweep_confusion
from .files import PathLike, output_paths, read_cams
from .manifest import read_manifest


def _ground_truth(path: Path, num_classes: int, ignore: int) -> np.ndarray:
    """A class-index PNG as ``(H, W)`` int64, its labels checked against the classes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise InputError(f"{path}: ground truth must be a class-index PNG (mode P, L or I;16), "
                                 f"got mode {im.mode}")
            g = np.asarray(im).astype(np.int64)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputError(f"cannot read ground truth {path}: {type(e).__name__}: {e}") from None
    bad = g[(g != ignore) & ((g < 0) | (g >= num_classes))]
    if bad.size:
        v = int(bad.max())
        raise InputError(f"{path} holds label {v}, outside 0..{num_classes - 1} (background and the export's "
                         f"{num_classes - 1} classes): pass --ignore {v} if it marks void pixels, or --num-classes")
    return g


def _prediction(out: Path, rec: Dict[str, Any], sweep: bool) -> Dict[str, np.ndarray]:
    """One image's mask as written (labels 0 / 1 + class), or its ``keys`` and ``high_res`` maps for a sweep."""
    from PIL import Image

    npz, png = output_paths(out, rec["rel"])
    path = npz if sweep else png
    if not path.is_file():
        raise InputError(f"{path} is missing though the manifest lists the image as done: rerun camkit export "
                         f"into {out} to redo it")
    try:
        if sweep:
            z = read_cams(out, rec["rel"])
            return {"keys": z["keys"], "high_res": z["high_res"]}
        with Image.open(png) as im:
            return {"mask": np.asarray(im).astype(np.int64)}
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, EOFError) as e:
        raise InputError(f"cannot read {path} ({type(e).__name__}: {e}): a damaged output; rerun camkit export "
                         f"into {out} to redo it") from None


def _confusions(pred: Dict[str, np.ndarray], g: np.ndarray, thresholds: Optional[Sequence[float]], C: int,
                ignore: int) -> np.ndarray:
    """``(T, C, C)``: the image's confusion matrix at each threshold (T = 1: the mask as written)."""
    if thresholds is None:
        return confusion(pred["mask"], g, C, ignore)[None]
    return sweep_confusion(pred["high_res"], pred["keys"], g, thresholds, C, ignore)


def _num_classes(out: Path, given: Optional[int]) -> int:
    """Classes including background: ``given``, else the export's classes + 1."""
    if given:
        return int(given)
    try:
        cats = json.loads((out / "export.json").read_text()).get("categories")
    except (OSError, json.JSONDecodeError):
        cats = None
    if not cats:
        raise InputError(f"{out}/export.json names no classes: pass --num-classes (classes including background)")
    return len(cats) + 1


def _check_thresholds(thresholds: Optional[Sequence[float]]) -> None:
    if thresholds is None:
        return
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or not t.size or not np.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise InputError(f"thresholds must be finite numbers in [0, 1], got {list(thresholds)}")


def evaluate(out: PathLike, gt: PathLike, *, ignore: int = IGNORE, thresholds: Optional[Sequence[float]] = None,
             num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Score an export's pseudo-masks against ground-truth PNGs ``gt/<rel>.png``.

    Args:
        out: the export folder.
        gt: a folder of class-index PNGs (0 background, 1 + c for class c, ``ignore`` left out).
        ignore: the ground-truth value left out of the scores.
        thresholds: None: the masks as written; else the masks of ``high_res`` at each threshold
            (increasing, in [0, 1]), the best by mIoU reported.
        num_classes: classes including background (default: the export's classes + 1); a ground-truth
            label outside them is an error.

    Returns:
        ``thresholds``, ``miou`` (one per threshold), ``best`` {threshold, miou, iou, precision,
        recall (per class)}, ``images`` (scored), ``missing_gt`` (exported, no ground truth),
        ``failed`` (failed in the export: not scored), ``num_classes``, ``class_names``, ``confusion``.
    """
    out_p, gt_p = Path(out), Path(gt)
    if not gt_p.is_dir():
        raise InputError(f"--gt {gt} is not a folder of ground-truth PNGs")
    _check_thresholds(thresholds)
    recs = read_manifest(out_p)
    ok = [r for r in recs if r.get("status") == "ok"]
    C = _num_classes(out_p, num_classes)
    acc = np.zeros((len(thresholds) if thresholds is not None else 1, C, C), dtype=np.int64)
    n, missing = 0, []
    for rec in ok:
        gpath = gt_p / f"{rec['rel']}.png"
        if not gpath.is_file():
            missing.append(rec["rel"])
            continue
        g = _ground_truth(gpath, C, ignore)
        try:
            acc += _confusions(_prediction(out_p, rec, thresholds is not None), g, thresholds, C, ignore)
        except InputError as e:
            raise InputError(f"{rec['rel']}: {e}") from None
        n += 1
    if n == 0:
        raise InputError(f"no ground-truth mask in {gt} matches an exported image (looked for {gt}/<rel>.png, "
                         f"e.g. {gt_p / (ok[0]['rel'] + '.png') if ok else 'none exported'})")
    return {**_scored(acc, thresholds, out_p), "images": n, "missing_gt": len(missing),
            "failed": len(recs) - len(ok)}


def _scored(acc: np.ndarray, thresholds: Optional[Sequence[float]], out: Path) -> Dict[str, Any]:
    """The scores of the summed ``(T, C, C)`` confusion matrices, at the best threshold."""
    per = [scores(c) for c in acc]
    mious = [float(s["miou"]) for s in per]
    ts = list(thresholds) if thresholds is not None else [None]
    best_i = 0 if thresholds is None else ts.index(best_threshold(ts, mious)[0])
    s, C = per[best_i], acc.shape[-1]
    return {
        "thresholds": ts, "miou": mious,
        "best": {"threshold": ts[best_i], "miou": mious[best_i], "iou": _nan_list(s["iou"]),
                 "precision": _nan_list(s["precision"]), "recall": _nan_list(s["recall"])},
        "num_classes": C, "class_names": ["background"] + _class_names(out, C - 1),
        "confusion": acc[best_i].tolist(),
    }


def _nan_list(a: np.ndarray) -> List[Optional[float]]:
    return [None if np.isnan(v) else float(v) for v in a]


def _class_names(out: Path, n: int) -> List[str]:
    try:
        cats = json.loads((out / "export.json").read_text()).get("categories") or []
    except (OSError, json.JSONDecodeError):
        cats = []
    return [cats[c] if c < len(cats) else f"class {c}" for c in range(n)]


def format_evaluation(res: Dict[str, Any]) -> str:
    """A plain-text report: the sweep (if any), then per class IoU / precision / recall."""
    lines = []
    if len(res["thresholds"]) > 1:
        lines.append("threshold  mIoU")
        lines += [f"{t:9.3f}  {m:.4f}" for t, m in zip(res["thresholds"], res["miou"])]
        lines.append("")
    b = res["best"]
    where = "masks as written" if b["threshold"] is None else f"threshold {b['threshold']:g}"
    lines.append(f"{res['images']} images scored ({res['missing_gt']} exported without ground truth; "
                 f"{res.get('failed', 0)} failed in the export, not scored), {where}:")
    width = max(len(n) for n in res["class_names"])
    lines.append(f"{'class':<{width}}  IoU     precision  recall")
    fmt = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731
    conf = np.asarray(res["confusion"])
    for c, name in enumerate(res["class_names"]):
        if conf[c].sum() + conf[:, c].sum() == 0:
            continue
        lines.append(f"{name:<{width}}  {fmt(b['iou'][c])}  {fmt(b['precision'][c])}     {fmt(b['recall'][c])}")
    lines.append(f"mIoU {b['miou']:.4f}" + ("" if b["threshold"] is None else f" at threshold {b['threshold']:g}"))
    return "\n".join(lines)
