"""``camkit evaluate-masks``: an export's pseudo-masks scored against ground-truth PNGs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..pseudomasks import IGNORE, best_threshold, class_labels, confusion, grow, scores, sweep_confusion
from .files import PathLike, output_paths, read_cams
from .manifest import read_manifest


def _ground_truth(path: Path) -> np.ndarray:
    """A class-index PNG as ``(H, W)`` int64."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise InputError(f"{path}: ground truth must be a class-index PNG (mode P or L), got mode {im.mode}")
        return np.asarray(im).astype(np.int64)


def _prediction(out: Path, rec: Dict[str, Any], sweep: bool) -> Dict[str, np.ndarray]:
    """One image's ``keys`` and its ``mask`` as written (or its ``high_res`` maps, for a sweep)."""
    from PIL import Image

    if sweep:
        z = read_cams(out, rec["rel"])
        return {"keys": z["keys"], "high_res": z["high_res"]}
    with Image.open(output_paths(out, rec["rel"])[1]) as im:
        mask = np.asarray(im)
    return {"keys": np.asarray(rec["keys"], dtype=np.int64), "mask": mask}


def _confusions(pred: Dict[str, np.ndarray], g: np.ndarray, thresholds: Optional[Sequence[float]], C: int,
                ignore: int) -> np.ndarray:
    """``(T, C, C)``: the image's confusion matrix at each threshold (T = 1: the mask as written)."""
    if thresholds is None:
        return confusion(class_labels(pred["mask"], pred["keys"]), g, C, ignore)[None]
    return sweep_confusion(pred["high_res"], pred["keys"], g, thresholds, C, ignore)


def evaluate(out: PathLike, gt: PathLike, *, ignore: int = IGNORE, thresholds: Optional[Sequence[float]] = None,
             num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Score an export's pseudo-masks against ground-truth PNGs ``gt/<rel>.png``.

    Args:
        out: the export folder.
        gt: a folder of class-index PNGs (0 background, 1 + c for class c, ``ignore`` left out).
        ignore: the ground-truth value left out of the scores.
        thresholds: None: the masks as written; else the masks of ``high_res`` at each threshold
            (increasing), the best by mIoU reported.
        num_classes: classes including background (default: from the data).

    Returns:
        ``thresholds``, ``miou`` (one per threshold), ``best`` {threshold, miou, iou, precision,
        recall (per class)}, ``images``, ``missing_gt``, ``num_classes``, ``class_names``, ``confusion``.
    """
    out_p, gt_p = Path(out), Path(gt)
    if not gt_p.is_dir():
        raise InputError(f"--gt {gt} is not a folder of ground-truth PNGs")
    recs = [r for r in read_manifest(out_p) if r.get("status") == "ok"]
    C = int(num_classes) if num_classes else 2
    acc = np.zeros((len(thresholds) if thresholds is not None else 1, C, C), dtype=np.int64)
    n, missing = 0, []
    for rec in recs:
        gpath = gt_p / f"{rec['rel']}.png"
        if not gpath.is_file():
            missing.append(rec["rel"])
            continue
        g = _ground_truth(gpath)
        pred = _prediction(out_p, rec, thresholds is not None)
        valid, keys = g[g != ignore], pred["keys"]
        need = max(int(valid.max()) + 1 if valid.size else 1, int(keys.max()) + 2 if keys.size else 1)
        if num_classes and need > C:
            raise InputError(f"{gpath} or its keys hold label {need - 1}, but --num-classes is {C}")
        C = max(C, need)
        acc = grow(acc, C)
        try:
            acc += _confusions(pred, g, thresholds, C, ignore)
        except InputError as e:
            raise InputError(f"{rec['rel']}: {e}") from None
        n += 1
    if n == 0:
        raise InputError(f"no ground-truth mask in {gt} matches an exported image (looked for {gt}/<rel>.png, "
                         f"e.g. {gt_p / (recs[0]['rel'] + '.png') if recs else 'none exported'})")
    return {**_scored(acc, thresholds, out_p), "images": n, "missing_gt": len(missing)}


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
    lines.append(f"{res['images']} images ({res['missing_gt']} without ground truth), {where}:")
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
