"""Quantitative comparison of the maps on the Flower-17 validation images.

``python -m benchmarks.flower17 quality [--size 160] [--steps 4] [--curve-per-class 20] [--grids 200] ...``

Methods (all on the trained heads of ``python -m benchmarks.flower17 train``):

- CAM of the best-lr CAM head, normalized three ways (minmax, sigmoid, relu_max);
- ReCAM of each ReCAM head (best lr of each), with its own normalizer;
- LayerCAM on three backbone stages (``models.LAYERCAM_LAYERS``) with the study's
  weighted fusion (0.4/0.4/0.2, then tanh(2x)) and with max fusion;
- Grad-CAM and Grad-CAM++ on the last stage as the head sees it (the backbone's
  output: last stage + AdaptiveAvgPool2d(7), the head's input).

LayerCAM, Grad-CAM and Grad-CAM++ run on the CAMModel = frozen backbone + best
CAM head. Maps are bilinearly upsampled to the input size after normalization
(camkit's pipeline). Every map of an image explains the same target: the top-1
class of the scorer, the CAM model (frozen backbone + best CAM head), which
also scores every map in the metrics (:mod:`camkit.metrics`):

- deletion / insertion AUC (as RISE: deletion to zeros, which is mid-grey in
  the normalized input; insertion from the blurred image, kernel 11 / sigma 5),
  ``--steps`` equal steps, softmax probability of the target, on the first
  ``--curve-per-class`` validation images of each class;
- average drop / increase in confidence on ``image * map`` (normalized input
  space), all validation images;
- grid pointing game on ``--grids`` seeded 2x2 grids of ``--grid-size`` pixels
  (cells of half that size) of four distinct classes, built only from
  validation images the scorer classifies correctly with probability >=
  ``--min-prob`` when shown alone at the cell's size; maps for each of the
  four classes; score = the fraction of the map's positive mass in the class's
  cell.

Writes ``quality_table.md``, ``quality.json`` and ``quality_curves.png`` into the
results folder (default ``benchmarks/results/flower17/<backbone>``).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import REPO_ROOT, load_image, load_split, subset
from .models import (
    LAYERCAM_LAYERS,
    LAYERCAM_WEIGHTS,
    MODEL_NAMES,
    NORMALIZER_OF,
    backbone_stats,
    default_run_dir,
    load_trained,
    lr_tag,
    normalize_transform,
)

#: (key, label) of the table rows, in order.
METHOD_ROWS = [
    ("cam_minmax", "CAM minmax"),
    ("cam_sigmoid", "CAM sigmoid"),
    ("cam_relu", "CAM relu"),
    ("recam_minmax", "ReCAM minmax"),
    ("recam_sigmoid", "ReCAM sigmoid"),
    ("recam_relu", "ReCAM relu"),
    ("layercam_weighted", "LayerCAM 0.4/0.4/0.2"),
    ("layercam_max", "LayerCAM max"),
    ("gradcam", "Grad-CAM"),
    ("gradcampp", "Grad-CAM++"),
]
LABELS = dict(METHOD_ROWS)
CAM_NORMALIZERS = {"cam_minmax": "minmax", "cam_sigmoid": "sigmoid", "cam_relu": "relu_max"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flower17 quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0", choices=("tf_efficientnet_lite0", "vgg16"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--run-dir", default=None, help="checkpoints (default runs/flower17/<backbone>)")
    p.add_argument("--results", default=None, help="train's results.json for the best lr of each head "
                   "(default benchmarks/results/flower17/<backbone>/results.json)")
    p.add_argument("--lr", action="append", default=[], metavar="MODEL=LR",
                   help="override the learning rate of a head, e.g. --lr cam=1e-4 (repeatable)")
    p.add_argument("--which", default="selected", choices=("selected", "best_val_loss"), help="checkpoint of each head")
    p.add_argument("--out", default=None, help="default benchmarks/results/flower17/<backbone>")
    p.add_argument("--size", type=int, default=160, help="input resolution of the evaluation (images resized to size x size)")
    p.add_argument("--steps", type=int, default=4, help="deletion / insertion steps")
    p.add_argument("--curve-per-class", type=int, default=20,
                   help="deletion / insertion on the first N validation images of each class (20 = all)")
    p.add_argument("--deletion-baseline", default="zeros", choices=("blur", "mean", "zeros"),
                   help="what deleted pixels become (RISE: zeros; here 0 is mid-grey in the normalized input)")
    p.add_argument("--insertion-baseline", default="blur", choices=("blur", "mean", "zeros"),
                   help="the image insertion starts from (RISE: blurred image)")
    p.add_argument("--grids", type=int, default=200, help="number of 2x2 grids")
    p.add_argument("--grid-size", type=int, default=256, help="grid size in pixels (cells of half that size)")
    p.add_argument("--grid-seed", type=int, default=0)
    p.add_argument("--min-prob", type=float, default=0.9, help="confidence an image needs to enter a grid")
    p.add_argument("--per-class", type=int, default=None, help="only the first N validation images of each class")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call in the metrics")
    p.add_argument("--map-batch", type=int, default=16, help="images per gradient-method call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-fast", action="store_true", help="score with the eager backbone (no tracing)")
    return p


# --------------------------------------------------------------------------- heads


def best_lrs(results_path: Path, overrides: Sequence[str]) -> Dict[str, dict]:
    """``{model: {"lr", "val_top1", "epoch"}}``: for each head, the lr whose selected
    epoch has the best validation top-1 (ties: lower validation loss, then lower lr)."""
    out: Dict[str, dict] = {}
    if results_path.exists():
        res = json.loads(results_path.read_text())
        for name in MODEL_NAMES:
            runs = [r for r in res["runs"] if r["model"] == name and r.get("selected")]
            if runs:
                r = min(runs, key=lambda r: (-r["selected"]["val_top1"], r["selected"]["val_loss"], r["lr"]))
                out[name] = {"lr": r["lr"], "val_top1": r["selected"]["val_top1"], "epoch": r["selected"]["epoch"],
                             "source": str(results_path)}
    for o in overrides:
        name, _, v = o.partition("=")
        if name not in MODEL_NAMES or not v:
            raise SystemExit(f"--lr expects MODEL=LR with MODEL in {MODEL_NAMES}, got {o!r}")
        out[name] = {"lr": float(v), "val_top1": None, "epoch": None, "source": "--lr"}
    missing = [m for m in MODEL_NAMES if m not in out]
    if missing:
        raise SystemExit(f"no trained lr for {missing}: run `python -m benchmarks.flower17 train` first "
                         f"(looked in {results_path}) or pass --lr MODEL=LR")
    return out


def head_only(model) -> nn.Module:
    """The same head on an identity backbone: input = the backbone's features."""
    from camkit.heads import CAMModel

    return CAMModel(nn.Identity(), model.head, freeze=True).eval()


def fast_backbone(net: nn.Module, size: int, batch: int, fast: bool) -> nn.Module:
    if not fast:
        return net
    from .cache import fast_extractor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fast_extractor(net, batch, size=size)


@torch.no_grad()
def features_of(backbone: nn.Module, x: Tensor, batch: int) -> Tensor:
    return torch.cat([backbone(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def up(m: Tensor, size) -> Tensor:
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- maps


class MapMaker:
    """All methods' maps for a batch of images and targets (B, K): ``{key: (B, K, S, S)}``.

    CAM, ReCAM and Grad-CAM / Grad-CAM++ (on the head's input) run on the
    backbone's features through the head alone (one backbone pass shared by
    all); LayerCAM runs on the full CAMModel (its layers are inside the
    backbone), once with max fusion; the study's weighted fusion is formed from
    the same per-layer maps with camkit.normalize / camkit.fusion. ``check``
    compares every shortcut with the direct call of the method on the full model.
    """

    def __init__(self, cam_model, recam_models: Dict[str, nn.Module], layers: List[str], map_batch: int):
        import camkit

        self.map_batch = map_batch
        self.cam_model = cam_model
        self.recam_models = recam_models
        h = head_only(cam_model)
        self.cams = {k: camkit.CAM(h, normalize=n) for k, n in CAM_NORMALIZERS.items()}
        self.recams = {k: camkit.ReCAM(head_only(m)) for k, m in recam_models.items()}
        self.gradcam = camkit.GradCAM(h, layers=["backbone"])
        self.gradcampp = camkit.GradCAMpp(h, layers=["backbone"])
        self.layers = layers
        self.layercam = camkit.LayerCAM(cam_model, layers=layers, fusion="max")

    def weighted_from_layers(self, layer_maps: Dict[str, Tensor], size) -> Tensor:
        from camkit.fusion import fuse_weighted
        from camkit.normalize import minmax

        ups = [up(minmax(layer_maps[n]), size) for n in self.layers]
        return fuse_weighted(ups, LAYERCAM_WEIGHTS).clamp_(0.0, 1.0)

    def __call__(self, x: Tensor, targets: Tensor, feats: Optional[Tensor] = None,
                 keys: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        """x (B, 3, S, S), targets (B, K), feats = backbone(x) (computed when not given)."""
        keys = list(keys or LABELS)
        if feats is None:
            feats = features_of(self.cam_model.backbone, x, 64)
        size = x.shape[-2:]
        out: Dict[str, Tensor] = {}
        for k, m in self.cams.items():
            if k in keys:
                out[k] = up(m(feats, targets=targets).maps, size)
        for k, m in self.recams.items():
            if k in keys:
                out[k] = up(m(feats, targets=targets).maps, size)
        if "gradcam" in keys:
            out["gradcam"] = up(self.gradcam(feats, targets=targets).maps, size)
        if "gradcampp" in keys:
            out["gradcampp"] = up(self.gradcampp(feats, targets=targets).maps, size)
        if "layercam_max" in keys or "layercam_weighted" in keys:
            mx, wt = [], []
            for i in range(0, x.shape[0], self.map_batch):
                r = self.layercam(x[i:i + self.map_batch], targets=targets[i:i + self.map_batch])
                mx.append(r.maps)
                wt.append(self.weighted_from_layers(r.layer_maps, size))
            out["layercam_max"], out["layercam_weighted"] = torch.cat(mx), torch.cat(wt)
        return {k: out[k] for k in keys}

    def check(self, x: Tensor, targets: Tensor) -> Dict[str, float]:
        """Max abs difference between each shortcut and the method called on the full model."""
        import camkit

        got = self(x, targets)
        direct = {k: camkit.CAM(self.cam_model, normalize=n)(x, targets=targets).maps for k, n in CAM_NORMALIZERS.items()}
        for k, m in self.recam_models.items():
            direct[k] = camkit.ReCAM(m)(x, targets=targets).maps
        direct["gradcam"] = camkit.GradCAM(self.cam_model, layers=["backbone"])(x, targets=targets).maps
        direct["gradcampp"] = camkit.GradCAMpp(self.cam_model, layers=["backbone"])(x, targets=targets).maps
        direct["layercam_max"] = camkit.LayerCAM(self.cam_model, layers=self.layers, fusion="max")(x, targets=targets).maps
        direct["layercam_weighted"] = camkit.LayerCAM(self.cam_model, layers=self.layers, fusion="weighted",
                                                      weights=list(LAYERCAM_WEIGHTS))(x, targets=targets).maps
        return {k: float((got[k] - direct[k]).abs().max()) for k in direct}


# --------------------------------------------------------------------------- statistics


def mean_ci(v: Tensor) -> Tuple[float, float]:
    """Mean and the half-width of its normal 95% interval (1.96 standard errors)."""
    v = v.double().flatten()
    n = v.numel()
    sd = float(v.std(unbiased=True)) if n > 1 else float("nan")
    return float(v.mean()), 1.96 * sd / math.sqrt(n) if n > 1 else float("nan")


def ranks_of(values: Dict[str, float], higher_better: bool) -> Dict[str, int]:
    order = sorted(values, key=lambda k: -values[k] if higher_better else values[k])
    return {k: i + 1 for i, k in enumerate(order)}


METRICS = [  # key, column label, higher is better
    ("deletion_auc", "deletion AUC (lower better)", False),
    ("insertion_auc", "insertion AUC (higher better)", True),
    ("average_drop", "average drop % (lower better)", False),
    ("increase", "increase in confidence % (higher better)", True),
    ("grid_score", "grid pointing game (higher better)", True),
]


def verdict(summary: Dict[str, Dict[str, dict]], per_image: Dict[str, Dict[str, Tensor]]) -> List[str]:
    """Plain sentences on the study's conclusion (LayerCAM best, ReCAM worst), from the numbers.

    "Tied with" lists the methods whose paired difference to the best (worst)
    method has a 95% interval containing 0 (same images / grids)."""
    lines = []
    keys = [k for k, _ in METHOD_ROWS]
    n = len(keys)
    lc, rc = ["layercam_weighted", "layercam_max"], ["recam_minmax", "recam_sigmoid", "recam_relu"]
    holds_best, holds_worst = [], []

    def tied(a: str, mk: str) -> List[str]:
        out = []
        for k in keys:
            if k != a:
                mu, ci = mean_ci(per_image[k][mk] - per_image[a][mk])
                if abs(mu) <= ci:
                    out.append(k)
        return out

    for mk, label, hb in METRICS:
        vals = {k: summary[k][mk]["mean"] for k in keys}
        rk = ranks_of(vals, hb)
        best = min(keys, key=lambda k: rk[k])
        worst = max(keys, key=lambda k: rk[k])
        tb, tw = tied(best, mk), tied(worst, mk)
        lc_r = ", ".join(f"{LABELS[k]} {rk[k]}" for k in lc)
        rc_r = ", ".join(f"{LABELS[k]} {rk[k]}" for k in rc)
        lc_best = any(rk[k] == 1 for k in lc)
        rc_worst = any(rk[k] == n for k in rc)
        holds_best.append(lc_best)
        holds_worst.append(rc_worst)
        lines.append(
            f"- {label}: best {LABELS[best]} ({vals[best]:.4g}; not separable from it: "
            f"{', '.join(LABELS[k] for k in tb) or 'none'}), worst {LABELS[worst]} ({vals[worst]:.4g}; not separable: "
            f"{', '.join(LABELS[k] for k in tw) or 'none'}). Ranks of {n}: {lc_r}; {rc_r}. "
            f"LayerCAM best: {'yes' if lc_best else 'no'}; a ReCAM worst: {'yes' if rc_worst else 'no'}."
        )
    lines.append(
        f"- Count: a LayerCAM variant has the best mean on {sum(holds_best)} of {len(METRICS)} metrics and a ReCAM "
        f"head the worst mean on {sum(holds_worst)} of {len(METRICS)}."
    )
    return lines


# --------------------------------------------------------------------------- figure


def plot_curves(summary: Dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"cam": ("tab:blue", ["-", "--", ":"]), "recam": ("tab:red", ["-", "--", ":"]),
              "layercam": ("tab:green", ["-", "--"]), "gradcam": ("tab:purple", ["-"]), "gradcampp": ("tab:orange", ["-"])}
    used: Dict[str, int] = {}
    for k, label in METHOD_ROWS:
        fam = "gradcampp" if k == "gradcampp" else "gradcam" if k == "gradcam" else k.split("_")[0]
        color, ls = styles[fam]
        i = used.get(fam, 0)
        used[fam] = i + 1
        for ax, mode in zip(axes, ("deletion", "insertion")):
            c = summary[k][f"mean_{mode}_curve"]
            x = [j / (len(c) - 1) for j in range(len(c))]
            a = summary[k][f"{mode}_auc"]["mean"]
            ax.plot(x, c, color=color, ls=ls[i % len(ls)], marker=".", label=f"{label} ({a:.3f})")
    for ax, mode in zip(axes, ("deletion", "insertion")):
        ax.set_xlabel(f"fraction of pixels {'removed' if mode == 'deletion' else 'revealed'}")
        ax.set_ylabel("mean softmax probability of the target")
        ax.set_title(f"{mode} ({'lower' if mode == 'deletion' else 'higher'} AUC is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="method (AUC)", title_fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- table


def fmt(m: dict, digits: int = 3) -> str:
    return f"{m['mean']:.{digits}f} ± {m['ci95']:.{digits}f}"


HAND_WRITTEN = "## Reading of these numbers (written by hand"


def keep_hand_written(new: str, old: str) -> str:
    """``new`` followed by the hand-written section of ``old`` (from HAND_WRITTEN on), if it has one."""
    at = old.find(HAND_WRITTEN)
    return new if at < 0 else new + "\n" + old[at:]


def write_table(info: dict, summary: Dict[str, Dict[str, dict]], per_image, path: Path) -> None:
    a = info["args"]
    L = []
    L.append(f"# Flower-17 map quality: {info['backbone']} ({info['split']} split, {info['n_images']} validation images)")
    L.append("")
    L.append("Command (this run):")
    L.append("")
    L.append(f"    {info['command']}")
    L.append("")
    L.append(f"Run: {info['seconds']['total']:.0f} s on {a['threads']} threads ({info['date_utc']}; load average "
             f"{info['load_average_start'][0]:.1f} at start, {info['load_average_end'][0]:.1f} at end).")
    L.append("")
    L.append("Setup:")
    L.append("")
    hs = info["heads"]
    L.append("- Heads (best lr by validation top-1 of train's selected epochs): " + "; ".join(
        f"{m} lr {lr_tag(h['lr'])} (val top-1 {100 * h['val_top1']:.2f}%)" if h.get("val_top1") is not None
        else f"{m} lr {lr_tag(h['lr'])}" for m, h in hs.items()) + f"; checkpoint `{a['which']}.pt`.")
    L.append(f"- Evaluation input: images resized to {a['size']} x {a['size']}; scorer = CAM model (frozen backbone + "
             f"best CAM head), validation top-1 {100 * info['scorer_top1']:.2f}% at {a['size']} px versus "
             f"{100 * info['scorer_top1_grid_size']:.2f}% at {a['grid_size']} px (the heads were trained on 256 x 256 "
             "images). Target of every map: the scorer's top-1 class at the evaluation size.")
    L.append(f"- Why {a['size']} px and {a['steps']} steps: the run has to fit in about 15 minutes on 2 shared cores. "
             f"In this run a backbone forward pass at {a['grid_size']} px cost {info['cost_ratio']:.2f} x one at "
             f"{a['size']} px (traced backbone, all validation images, timed in this run), and deletion + insertion of "
             f"10 maps take 10 x 2 x {a['steps'] - 1} = {20 * (a['steps'] - 1)} forward passes per image (the two end "
             "points are shared), so full resolution or more steps would multiply the "
             f"{info['seconds']['deletion_insertion']:.0f} s the curves took here.")
    L.append(f"- Maps: CAM of the CAM head (three normalizers); ReCAM of each ReCAM head with its normalizer; "
             f"LayerCAM on `{'`, `'.join(info['layercam_layers'])}` (weighted: minmax per layer, 0.4/0.4/0.2, tanh(2x); "
             f"max: element-wise max); Grad-CAM and Grad-CAM++ on `backbone` (the last stage after "
             "AdaptiveAvgPool2d(7): the head's input). All maps bilinearly upsampled to the input after normalization.")
    which = ("all validation images" if info["n_curve_images"] == info["n_images"] else
             f"{info['n_curve_images']} of the {info['n_images']} images (the first {a['curve_per_class']} validation "
             "images of each class; `--curve-per-class 20` for all)")
    L.append(f"- Deletion / insertion: on {which}, {a['steps']} steps of {100 / a['steps']:.1f}% of the pixels, order of decreasing "
             f"map value (ties in raster order); as in RISE, deleted pixels become the {a['deletion_baseline']} baseline"
             f"{' (0 in the normalized input = mid-grey)' if a['deletion_baseline'] == 'zeros' else ''} and insertion "
             f"starts from the {a['insertion_baseline']} baseline"
             f"{' (Gaussian blur, kernel 11, sigma 5)' if a['insertion_baseline'] == 'blur' else ''}; softmax "
             "probability of the target; trapezoid AUC over [0, 1].")
    L.append(f"- Average drop / increase in confidence: all {info['n_images']} images; the scorer on image x map "
             "(normalized input space, 0 = mid-grey).")
    g = info["grid"]
    L.append(f"- Grid pointing game: {g['n_grids']} 2x2 grids of {a['grid_size']} x {a['grid_size']} px (seed "
             f"{a['grid_seed']}; cells {a['grid_size'] // 2} px) of four distinct classes, drawn from the {g['eligible']} of "
             f"{info['n_images']} validation images that the scorer classifies correctly with probability >= "
             f"{a['min_prob']} when shown alone at the cell's size and pixels ({g['eligible_classes']} classes); "
             f"a map for each of the four classes; score = share of the map's positive mass in that class's cell "
             "(0.25 = uniform map). On the grids themselves the scorer's top-4 "
             f"holds {g['top4_mean_count']:.2f} of the four classes on average.")
    L.append("- Every value: mean over images (grid: over grids x 4 classes) ± half-width of the normal 95% interval.")
    L.append("")
    cols = [c for _, c, _ in METRICS]
    L.append("| method | " + " | ".join(cols) + " |")
    L.append("|---|" + "---|" * len(cols))
    keys = [k for k, _ in METHOD_ROWS]
    best = {}
    for mk, _, hb in METRICS:
        vals = {k: summary[k][mk]["mean"] for k in keys}
        best[mk] = max(vals, key=vals.get) if hb else min(vals, key=vals.get)
    for k, label in METHOD_ROWS:
        cells = []
        for mk, _, _ in METRICS:
            d = 2 if mk in ("average_drop", "increase") else 3
            s = fmt(summary[k][mk], d)
            cells.append(f"**{s}**" if best[mk] == k else s)
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Best value of each column in bold.")
    L.append("")
    L.append("Paired differences to LayerCAM 0.4/0.4/0.2 (method minus LayerCAM on the same images / grids; "
             "mean ± 95% half-width; `*` where the interval excludes 0):")
    L.append("")
    L.append("| method | " + " | ".join(c.split(" (")[0] for c in cols) + " |")
    L.append("|---|" + "---|" * len(cols))
    for k, label in METHOD_ROWS:
        if k == "layercam_weighted":
            continue
        cells = []
        for mk, _, _ in METRICS:
            d = 2 if mk in ("average_drop", "increase") else 3
            mu, ci = summary[k][mk]["minus_layercam_weighted"], summary[k][mk]["minus_layercam_weighted_ci95"]
            cells.append(f"{mu:+.{d}f} ± {ci:.{d}f}{' *' if abs(mu) > ci else ''}")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Does the study's conclusion (LayerCAM best, ReCAM worst, judged by eye) hold?")
    L.append("")
    L.append("Computed from the table above:")
    L.append("")
    L.extend(verdict(summary, per_image))
    L.append("")
    L.append("![deletion and insertion curves](quality_curves.png)")
    L.append("")
    path.write_text(keep_hand_written("\n".join(L) + "\n", path.read_text() if path.exists() else ""))


# --------------------------------------------------------------------------- main


def first_per_class(labels: Tensor, n: Optional[int]) -> Tensor:
    """Indices of the first ``n`` images of each class (all when n is None), in order."""
    if n is None:
        return torch.arange(len(labels))
    seen: Dict[int, int] = {}
    keep = []
    for i, y in enumerate(labels.tolist()):
        if seen.get(y, 0) < n:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return torch.tensor(keep)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    import camkit  # noqa: F401  (fails early if the core is missing)
    from camkit import metrics as M

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    secs: Dict[str, float] = {}
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.backbone)
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / "flower17" / args.backbone
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else REPO_ROOT / "benchmarks" / "results" / "flower17" / args.backbone / "results.json"
    heads = best_lrs(results, args.lr)
    print("heads:", {m: lr_tag(h["lr"]) for m, h in heads.items()}, flush=True)

    # ---- data
    t = time.perf_counter()
    split = load_split(args.data_root)
    samples = split["val"] if args.per_class is None else subset(split["val"], args.per_class)
    norm = normalize_transform(*backbone_stats(args.backbone))
    images = torch.stack([norm(load_image(p, args.size)) for p, _ in samples])
    labels = torch.tensor([y for _, y in samples])
    gimages = images if args.grid_size == args.size else torch.stack([norm(load_image(p, args.grid_size)) for p, _ in samples])
    secs["load_images"] = time.perf_counter() - t
    print(f"{len(samples)} validation images at {args.size} px (and {args.grid_size} px for grids; {split.name}) "
          f"in {secs['load_images']:.1f} s", flush=True)

    # ---- models
    t = time.perf_counter()
    cam_model = load_trained(args.backbone, "cam", heads["cam"]["lr"], run_dir, args.which)
    recam_models = {m: load_trained(args.backbone, m, heads[m]["lr"], run_dir, args.which) for m in NORMALIZER_OF}
    for m in recam_models.values():  # one backbone for all (identical frozen weights)
        m.backbone = cam_model.backbone
    fast = fast_backbone(copy.deepcopy(cam_model.backbone), args.size, args.batch_size, not args.no_fast)
    scorer = nn.Sequential(fast, cam_model.head).eval()
    layers = LAYERCAM_LAYERS[args.backbone]
    maker = MapMaker(cam_model, recam_models, layers, args.map_batch)
    with torch.no_grad():
        chk = images[: min(8, len(images))]
        scorer_err = float((scorer(chk) - cam_model(chk)).abs().max())
    secs["models"] = time.perf_counter() - t
    print(f"models ready in {secs['models']:.1f} s; traced scorer vs eager: max |logit diff| {scorer_err:.2e}", flush=True)

    # ---- validation features, predictions (targets), maps
    t = time.perf_counter()
    feats = features_of(fast, images, args.batch_size)
    with torch.no_grad():
        logits = cam_model.head(feats)
    targets = logits.argmax(1)
    top1 = float((targets == labels).float().mean())
    shortcut_err = maker.check(images[:4], targets[:4, None])
    print(f"scorer top-1 at {args.size} px: {100 * top1:.2f}%; shortcut vs direct max |diff|: "
          f"{max(shortcut_err.values()):.2e}", flush=True)
    maps = maker(images, targets[:, None], feats)  # {key: (B, 1, S, S)}
    keys = [k for k, _ in METHOD_ROWS]
    stack = torch.cat([maps[k] for k in keys], dim=1)  # (B, 10, S, S)
    del maps
    secs["maps"] = time.perf_counter() - t
    print(f"maps of {len(keys)} methods in {secs['maps']:.1f} s", flush=True)

    # ---- average drop / increase (every image)
    t = time.perf_counter()
    ad = M.average_drop_increase(scorer, images, stack, targets, batch_size=args.batch_size, reduce=False)
    secs["average_drop"] = time.perf_counter() - t
    print(f"average drop / increase in {secs['average_drop']:.1f} s", flush=True)

    # ---- deletion / insertion (the first --curve-per-class images of each class), in chunks (progress)
    t = time.perf_counter()
    cidx = first_per_class(labels, args.curve_per_class)
    curves = {"deletion": [], "insertion": []}
    chunk = 17
    for i in range(0, len(cidx), chunk):
        sel = cidx[i:i + chunk]
        for mode in curves:
            base = args.deletion_baseline if mode == "deletion" else args.insertion_baseline
            r = M.deletion_insertion(scorer, images[sel], stack[sel], targets[sel], steps=args.steps, baseline=base,
                                     batch_size=args.batch_size, modes=(mode,))
            curves[mode].append(r[mode])
        done = min(i + chunk, len(cidx))
        el = time.perf_counter() - t
        print(f"  deletion/insertion {done}/{len(cidx)} images, {el:.0f} s (eta {el / done * (len(cidx) - done):.0f} s)",
              flush=True)
    curves = {mode: torch.cat(v) for mode, v in curves.items()}  # (n, 10, steps + 1)
    secs["deletion_insertion"] = time.perf_counter() - t
    del stack

    # ---- grid pointing game
    t = time.perf_counter()
    cell = args.grid_size // 2
    cells_alone = F.interpolate(gimages, size=(cell, cell), mode="bilinear", align_corners=False, antialias=True)
    conf = M.confident_mask(cam_model, cells_alone, labels, min_prob=args.min_prob, batch_size=args.batch_size)
    eligible = conf["mask"]
    grids = M.make_grids(gimages, labels, args.grids, seed=args.grid_seed, eligible=eligible)
    gx, gy = grids["grids"], grids["labels"]  # (G, 3, S, S), (G, 4)
    gfast = fast if args.grid_size == args.size else fast_backbone(copy.deepcopy(cam_model.backbone), args.grid_size,
                                                                   args.map_batch, not args.no_fast)
    gfeats = features_of(gfast, gx, args.batch_size)
    # validation top-1 at the grid size, and the cost of a forward pass there relative to the evaluation size
    features_of(gfast, gimages[: args.batch_size], args.batch_size)  # warm-up
    tg = time.perf_counter()
    fg = features_of(gfast, gimages, args.batch_size)
    tg = time.perf_counter() - tg
    features_of(fast, images[: args.batch_size], args.batch_size)
    ts = time.perf_counter()
    features_of(fast, images, args.batch_size)
    ts = time.perf_counter() - ts
    with torch.no_grad():
        top1_grid_size = float((cam_model.head(fg).argmax(1) == labels).float().mean())
    del fg
    with torch.no_grad():
        glog = cam_model.head(gfeats)
    top4 = glog.topk(4, dim=1).indices
    top4_count = float(torch.stack([torch.isin(gy[i], top4[i]).sum() for i in range(len(gy))]).float().mean())
    grid_scores: Dict[str, list] = {}
    for i in range(0, len(gx), args.map_batch):
        gm = maker(gx[i:i + args.map_batch], gy[i:i + args.map_batch], gfeats[i:i + args.map_batch])
        for k in keys:
            s = M.grid_pointing_game(gm[k], torch.arange(4))  # (g, 4): map j's target is cell j's class
            grid_scores.setdefault(k, []).append(s)
    grid_scores = {k: torch.cat(v) for k, v in grid_scores.items()}  # (G, 4)
    secs["grid"] = time.perf_counter() - t
    print(f"grid pointing game on {len(gx)} grids ({int(eligible.sum())} eligible images) in {secs['grid']:.1f} s", flush=True)

    # ---- summary
    d_auc, i_auc = M.auc(curves["deletion"]), M.auc(curves["insertion"])
    per_image = {k: {"deletion_auc": d_auc[:, j], "insertion_auc": i_auc[:, j], "average_drop": ad["drop"][:, j],
                     "increase": ad["increase"][:, j], "grid_score": grid_scores[k].flatten()}
                 for j, k in enumerate(keys)}
    summary: Dict[str, Dict[str, dict]] = {}
    ref = "layercam_weighted"
    for j, k in enumerate(keys):
        summary[k] = {}
        for mk, v in per_image[k].items():
            mu, ci = mean_ci(v)
            dmu, dci = mean_ci(v - per_image[ref][mk])  # paired: same images / grids
            summary[k][mk] = {"mean": mu, "ci95": ci, "n": int(v.numel()), "minus_layercam_weighted": dmu,
                              "minus_layercam_weighted_ci95": dci}
        summary[k]["mean_deletion_curve"] = curves["deletion"][:, j].mean(0).tolist()
        summary[k]["mean_insertion_curve"] = curves["insertion"][:, j].mean(0).tolist()
    secs["total"] = time.perf_counter() - t_start
    info = {
        "command": ("python -m benchmarks.flower17 quality " + " ".join(argv)).strip(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "backbone": args.backbone, "split": split.name, "n_images": len(samples), "n_curve_images": len(cidx),
        "args": vars(args), "heads": heads, "scorer_top1": top1, "scorer_top1_grid_size": top1_grid_size,
        "cost_ratio": tg / ts, "cost_seconds": {"grid_size": tg, "size": ts}, "scorer_traced_max_logit_diff": scorer_err,
        "shortcut_max_abs_diff": shortcut_err, "layercam_layers": layers, "layercam_weights": list(LAYERCAM_WEIGHTS),
        "grid": {"n_grids": len(gx), "eligible": int(eligible.sum()),
                 "eligible_classes": int(labels[eligible].unique().numel()), "top4_mean_count": top4_count,
                 "seed": args.grid_seed, "min_prob": args.min_prob, "index": grids["index"].tolist()},
        "seconds": secs, "load_average_start": load0, "load_average_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(), "methods": METHOD_ROWS,
    }
    (out / "quality.json").write_text(json.dumps({"info": info, "summary": summary}, indent=1) + "\n")
    title = (f"Flower-17 {args.backbone}: {len(cidx)} val images at {args.size} px, {args.steps} steps, deletion to "
             f"{args.deletion_baseline}, insertion from {args.insertion_baseline}; scorer: CAM model; mean curves")
    plot_curves(summary, out / "quality_curves.png", title)
    write_table(info, summary, per_image, out / "quality_table.md")
    print((out / "quality_table.md").read_text())
    print(f"wrote {out / 'quality_table.md'}, {out / 'quality.json'}, {out / 'quality_curves.png'} "
          f"in {secs['total']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
