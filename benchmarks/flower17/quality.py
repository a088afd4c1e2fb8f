"""Quantitative comparison of the maps on the Flower-17 validation images.

``python -m benchmarks.flower17 quality [--methods default|all|KEY,...] [--size 160] [--steps 4] ...``

Rows (``rows()``), all on the trained heads of ``python -m benchmarks.flower17 train``
(for each kind of head: the learning rate with the best mean validation top-1 over
seeds under the study's rule, the first seed's study-rule checkpoint):

- every method of camkit's registry (``camkit.methods.METHODS``), so that a new
  method joins the table without edits here:
  - ``cam``: CAM of the CAM head, normalized three ways (minmax, sigmoid, relu_max);
  - ``recam``: ReCAM of each of the study's ReCAM heads (with its normalizer);
  - ``paper_recam`` (when camkit has it; else the same maps from
    ``PaperReCAMHead.recam_maps``): ReCAM as Chen et al. (2022) define it;
  - ``layercam``: the study's LayerCAM (two backbone stages and the head's class
    maps, ReLU / max per level, 0.4/0.4/0.2 then tanh(2x)), and as supplements the
    earlier variant on three backbone stages (weighted with minmax per level, and
    max fusion);
  - any other method: on the last stage as the head sees it (``backbone``: the
    last stage + AdaptiveAvgPool2d(7), the head's input) of the CAM model.
    Gradient-based ones run on the head alone from the shared backbone features
    (the same maps, checked by ``MapMaker.check``); the others (perturbation,
    eigen: ``needs_grad`` False) on the whole model with the images, and only when
    asked for (``--methods all`` or by name), as they may cost many forward passes.

Every map of an image explains the same target, the top-1 class of the scorer (the
CAM model = frozen backbone + CAM head), which also scores every map
(:mod:`camkit.metrics`): deletion / insertion AUC (as RISE), average drop /
increase in confidence, and the grid pointing game on seeded 2x2 grids of
confidently classified validation images. Writes ``quality_table.md``,
``quality.json`` and ``quality_curves.png`` (default folder
``benchmarks/results/flower17/<backbone>``).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import REPO_ROOT, load_image, load_split, subset
from .models import (
    LAYERCAM_BACKBONE_LAYERS,
    LAYERCAM_LAYERS,
    LAYERCAM_WEIGHTS,
    MODEL_LABELS,
    MODEL_NAMES,
    NORMALIZER_OF,
    PAPER_MODEL,
    backbone_stats,
    default_run_dir,
    load_trained,
    lr_tag,
    normalize_transform,
)

CAM_NORMALIZERS = {"cam_minmax": "minmax", "cam_sigmoid": "sigmoid", "cam_relu": "relu_max"}
#: Registry names handled with rows of their own (the rest are generic layer methods).
SPECIAL = ("cam", "recam", "paper_recam", "layercam")
REFERENCE = "layercam_study"


@dataclass
class Row:
    """One table row: ``key``, ``label``, the registry ``method`` it comes from, and how
    its maps are made (``kind``: cam / recam / paper / layercam / generic_head /
    generic_full)."""

    key: str
    label: str
    method: str
    kind: str
    default: bool = True
    extra: dict = field(default_factory=dict)


def rows(registry: Dict[str, type]) -> List[Row]:
    """Every row the registry gives, in table order."""
    out: List[Row] = []
    if "cam" in registry:
        out += [Row(k, f"CAM {n.replace('_max', '')}", "cam", "cam", extra={"normalize": n}) for k, n in CAM_NORMALIZERS.items()]
    if "recam" in registry:
        out += [Row(m, MODEL_LABELS[m], "recam", "recam") for m in NORMALIZER_OF]
    out.append(Row(PAPER_MODEL, "Paper ReCAM (Chen et al.), supplement", "paper_recam", "paper"))
    if "layercam" in registry:
        out += [Row(REFERENCE, "LayerCAM study levels 0.4/0.4/0.2", "layercam", "layercam"),
                Row("layercam_backbone_weighted", "LayerCAM 3 backbone stages 0.4/0.4/0.2 (earlier variant)", "layercam",
                    "layercam"),
                Row("layercam_backbone_max", "LayerCAM 3 backbone stages, max (earlier variant)", "layercam", "layercam")]
    for name, cls in registry.items():
        if name in SPECIAL or getattr(cls, "needs_attention", False):  # LeGrad: vision transformers only
            continue
        grad = bool(getattr(cls, "needs_grad", False))
        out.append(Row(name, getattr(cls, "__name__", name), name, "generic_head" if grad else "generic_full", default=grad))
    return out


def choose(all_rows: List[Row], spec: str) -> List[Row]:
    """Rows for a comma-separated ``spec`` of ``default`` (every row except the
    gradient-free generic methods), ``all``, row keys and registry names (their union;
    the reference row is always kept), in table order."""
    want = [s.strip() for s in spec.split(",") if s.strip()]
    known = {r.key for r in all_rows} | {r.method for r in all_rows}
    bad = [w for w in want if w not in known | {"default", "all"}]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; choose from {sorted(known)}, 'default' or 'all'")
    return [r for r in all_rows if "all" in want or ("default" in want and r.default) or r.key in want
            or r.method in want or r.key == REFERENCE]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flower17 quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0", choices=("tf_efficientnet_lite0", "vgg16"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--run-dir", default=None, help="checkpoints (default runs/flower17/<backbone>)")
    p.add_argument("--results", default=None, help="train's results.json (default "
                   "benchmarks/results/flower17/<backbone>/results.json)")
    p.add_argument("--lr", action="append", default=[], metavar="MODEL=LR",
                   help="override the learning rate of a head, e.g. --lr cam=1e-4 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="training seed of the checkpoints (default: the first)")
    p.add_argument("--which", default="study", choices=("study", "today", "best_val_loss"), help="checkpoint of each head")
    p.add_argument("--methods", default="default",
                   help="rows, comma-separated: 'default' (all but the gradient-free methods, which may cost many "
                        "forward passes), 'all', row keys or registry names (see --list-methods), e.g. "
                        "default,eigencam,ablationcam")
    p.add_argument("--list-methods", action="store_true", help="print the rows the registry gives and exit")
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


def chosen_heads(results_path: Path, overrides: Sequence[str], seed: Optional[int]) -> Dict[str, dict]:
    """``{model: {"lr", "seed", "val_top1"}}``: for each kind of head, the lr with the best
    mean study-rule validation top-1 over seeds (``evaluate.best_lr``), at ``seed``
    (default the first seed)."""
    from .evaluate import best_lr

    out: Dict[str, dict] = {}
    names = MODEL_NAMES + (PAPER_MODEL,)
    if results_path.exists():
        res = json.loads(results_path.read_text())
        s = res.get("seeds", [0])[0] if seed is None else seed
        for name in names:
            if any(r["model"] == name and r["study"] for r in res["runs"]):
                lr = best_lr(res, name)
                run = next((r for r in res["runs"] if r["model"] == name and r["lr"] == lr and r["seed"] == s), None)
                out[name] = {"lr": lr, "seed": s, "val_top1": run["study"]["val_top1"] if run and run["study"] else None,
                             "source": str(results_path.relative_to(REPO_ROOT) if results_path.is_relative_to(REPO_ROOT)
                                           else results_path)}
    for o in overrides:
        name, _, v = o.partition("=")
        if name not in names or not v:
            raise SystemExit(f"--lr expects MODEL=LR with MODEL in {names}, got {o!r}")
        out[name] = {"lr": float(v), "seed": 0 if seed is None else seed, "val_top1": None, "source": "--lr"}
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
    """Every chosen row's maps for a batch of images and targets (B, K): ``{key: (B, K, S, S)}``.

    CAM, ReCAM, paper ReCAM and the gradient-based generic methods run on the
    backbone's features through the head alone (one backbone pass shared by all);
    LayerCAM runs once on the full CAMModel with every level of its variants, each
    variant fused from the same per-layer maps with camkit.normalize / camkit.fusion;
    gradient-free generic methods run on the full model. ``check`` compares every
    shortcut with the direct call of the method on the full model.
    """

    def __init__(self, chosen: List[Row], registry: Dict[str, type], cam_model, recam_models: Dict[str, nn.Module],
                 paper_model: Optional[nn.Module], backbone: str, map_batch: int):
        self.rows, self.registry, self.map_batch = chosen, registry, map_batch
        self.cam_model, self.recam_models, self.paper_model = cam_model, recam_models, paper_model
        h = head_only(cam_model)
        self.head_model = h
        self.study_layers = list(LAYERCAM_LAYERS[backbone])
        self.backbone_layers = list(LAYERCAM_BACKBONE_LAYERS[backbone])
        keys = {r.key for r in chosen}
        self.cams = {r.key: registry["cam"](h, normalize=r.extra["normalize"]) for r in chosen if r.kind == "cam"}
        self.recams = {r.key: registry["recam"](head_only(recam_models[r.key])) for r in chosen if r.kind == "recam"}
        self.generic: Dict[str, Callable] = {}
        self.on_features: Dict[str, bool] = {}  # generic row -> maps from the shared features (else the images)
        self.skipped: Dict[str, str] = {}
        for r in chosen:
            if r.kind.startswith("generic"):
                try:
                    self.generic[r.key] = registry[r.method](cam_model, layers=["backbone"])
                    if r.kind == "generic_head":
                        self.generic[r.key + "@features"] = registry[r.method](h, layers=["backbone"])
                        self.on_features[r.key] = True
                except Exception as e:  # a registry method with another constructor: reported, not fatal
                    self.skipped[r.key] = f"{type(e).__name__}: {e}"
        self.layercam_layers = []
        if REFERENCE in keys:
            self.layercam_layers += self.study_layers
        if keys & {"layercam_backbone_weighted", "layercam_backbone_max"}:
            self.layercam_layers += [n for n in self.backbone_layers if n not in self.layercam_layers]
        self.layercam = registry["layercam"](cam_model, layers=self.layercam_layers) if self.layercam_layers else None

    @property
    def keys(self) -> List[str]:
        return [r.key for r in self.rows if r.key not in self.skipped]

    def _layercam_variants(self, layer_maps: Dict[str, Tensor], size) -> Dict[str, Tensor]:
        from camkit.fusion import fuse_max, fuse_weighted
        from camkit.normalize import minmax, relu_max

        out = {}
        if all(n in layer_maps for n in self.study_layers):
            out[REFERENCE] = fuse_weighted([up(relu_max(layer_maps[n]), size) for n in self.study_layers],
                                           LAYERCAM_WEIGHTS).clamp_(0.0, 1.0)
        if all(n in layer_maps for n in self.backbone_layers):
            ups = [up(minmax(layer_maps[n]), size) for n in self.backbone_layers]
            out["layercam_backbone_weighted"] = fuse_weighted(ups, LAYERCAM_WEIGHTS).clamp_(0.0, 1.0)
            out["layercam_backbone_max"] = fuse_max(ups).clamp_(0.0, 1.0)
        return out

    def __call__(self, x: Tensor, targets: Tensor, feats: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """x (B, 3, S, S), targets (B, K), feats = backbone(x) (computed when not given)."""
        from .methods import paper_recam

        if feats is None:
            feats = features_of(self.cam_model.backbone, x, 64)
        size = x.shape[-2:]
        out: Dict[str, Tensor] = {}
        for k, m in self.cams.items():
            out[k] = up(m(feats, targets=targets).maps, size)
        for k, m in self.recams.items():
            out[k] = up(m(feats, targets=targets).maps, size)
        if PAPER_MODEL in self.keys:
            out[PAPER_MODEL] = up(paper_recam(head_only(self.paper_model), feats, targets)[0], size)
        for r in self.rows:
            if r.key in self.generic:
                if self.on_features.get(r.key):
                    out[r.key] = up(self.generic[r.key + "@features"](feats, targets=targets).maps, size)
                else:
                    m = self.generic[r.key]
                    out[r.key] = torch.cat([m(x[i:i + self.map_batch], targets=targets[i:i + self.map_batch]).maps
                                            for i in range(0, x.shape[0], self.map_batch)])
        if self.layercam is not None:
            parts: Dict[str, List[Tensor]] = {}
            for i in range(0, x.shape[0], self.map_batch):
                r = self.layercam(x[i:i + self.map_batch], targets=targets[i:i + self.map_batch])
                for k, v in self._layercam_variants(r.layer_maps, size).items():
                    parts.setdefault(k, []).append(v)
            out.update({k: torch.cat(v) for k, v in parts.items()})
        return {k: out[k] for k in self.keys}

    def check(self, x: Tensor, targets: Tensor) -> Dict[str, float]:
        """Max abs difference between each shortcut and the method called on the full model."""
        from .methods import paper_recam, study_layercam

        got = self(x, targets)
        direct: Dict[str, Tensor] = {}
        for r in self.rows:
            if r.key in self.cams:
                direct[r.key] = self.registry["cam"](self.cam_model, normalize=r.extra["normalize"])(x, targets=targets).maps
        for k in self.recams:
            direct[k] = self.registry["recam"](self.recam_models[k])(x, targets=targets).maps
        if PAPER_MODEL in got:
            direct[PAPER_MODEL] = paper_recam(self.paper_model, x, targets)[0]
        for r in self.rows:
            if self.on_features.get(r.key):
                direct[r.key] = self.generic[r.key](x, targets=targets).maps
        if REFERENCE in got:
            direct[REFERENCE] = study_layercam(self.cam_model, "", layers=self.study_layers)(x, targets=targets).maps
        lc = self.registry["layercam"]
        if "layercam_backbone_max" in got:
            direct["layercam_backbone_max"] = lc(self.cam_model, layers=self.backbone_layers, fusion="max")(
                x, targets=targets).maps
        if "layercam_backbone_weighted" in got:
            direct["layercam_backbone_weighted"] = lc(self.cam_model, layers=self.backbone_layers, fusion="weighted",
                                                      weights=list(LAYERCAM_WEIGHTS))(x, targets=targets).maps
        return {k: float((got[k] - direct[k]).abs().max()) for k in direct}

    def calibrate(self, x: Tensor, targets: Tensor, tol: float = 1e-4) -> Dict[str, float]:
        """:meth:`check`, then every generic method whose maps from the features differ from
        its maps on the whole model (it perturbs or smooths the input, say) runs on the
        images from then on. Returns the check's differences."""
        err = self.check(x, targets)
        for k, e in err.items():
            if self.on_features.get(k) and not e <= tol:
                self.on_features[k] = False
        return err


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


def verdict(summary: Dict[str, Dict[str, dict]], per_image: Dict[str, Dict[str, Tensor]], labels: Dict[str, str]) -> List[str]:
    """Plain sentences on the study's conclusion (LayerCAM best, ReCAM worst), from the numbers.

    "LayerCAM" = the study's LayerCAM (and, separately, any LayerCAM row); "ReCAM" =
    the study's ReCAM heads; the paper's ReCAM is ranked on its own. "Not separable"
    lists the rows whose paired difference to the best (worst) row has a 95% interval
    containing 0 (same images / grids)."""
    keys = list(summary)
    n = len(keys)
    lc_all = [k for k in keys if k.startswith("layercam")]
    rc = [k for k in keys if k in NORMALIZER_OF]
    lines = []
    best_study, best_any, worst_rc, ranks_paper = [], [], [], []

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
        lc_best = REFERENCE in keys and (rk[REFERENCE] == 1 or REFERENCE in tb)
        any_lc = any(rk[k] == 1 or k in tb for k in lc_all)
        rc_worst = any(rk[k] == n or k in tw for k in rc)
        best_study.append(lc_best)
        best_any.append(any_lc)
        worst_rc.append(rc_worst)
        rank_txt = "; ".join(f"{labels[k]} {rk[k]}" for k in lc_all + rc + ([PAPER_MODEL] if PAPER_MODEL in keys else []))
        if PAPER_MODEL in keys:
            ranks_paper.append(rk[PAPER_MODEL])
        lines.append(
            f"- {label}: best {labels[best]} ({vals[best]:.4g}; not separable from it: "
            f"{', '.join(labels[k] for k in tb) or 'none'}), worst {labels[worst]} ({vals[worst]:.4g}; not separable: "
            f"{', '.join(labels[k] for k in tw) or 'none'}). Ranks of {n}: {rank_txt}. "
            f"Study's LayerCAM best or tied with the best: {'yes' if lc_best else 'no'}; a study ReCAM head worst or "
            f"tied with the worst: {'yes' if rc_worst else 'no'}."
        )
    lines.append(
        f"- Count: the study's LayerCAM is best (or not separable from the best) on {sum(best_study)} of {len(METRICS)} "
        f"metrics (any LayerCAM row: {sum(best_any)}); a study ReCAM head is worst (or not separable from the worst) "
        f"on {sum(worst_rc)} of {len(METRICS)}."
        + (f" The paper's ReCAM ranks {', '.join(map(str, ranks_paper))} of {n} (same metric order)." if ranks_paper else "")
    )
    holds_best = sum(best_study) > len(METRICS) / 2
    holds_worst = sum(worst_rc) > len(METRICS) / 2
    answer = "Yes" if holds_best and holds_worst else "No" if not holds_best and not holds_worst else "Partly"
    lines.insert(0, f"**{answer}** (LayerCAM best on a majority of the metrics: {'yes' if holds_best else 'no'}; a "
                    f"ReCAM head worst on a majority: {'yes' if holds_worst else 'no'}).")
    lines.insert(1, "")
    return lines


# --------------------------------------------------------------------------- figure


def plot_curves(summary: Dict[str, dict], labels: Dict[str, str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    fams = {"cam": "tab:blue", "recam": "tab:red", "paper": "tab:brown", "layercam": "tab:green"}
    other = iter(["tab:purple", "tab:orange", "tab:olive", "tab:cyan", "tab:pink", "tab:gray", "black"] * 4)
    styles = ["-", "--", ":", "-."]
    used: Dict[str, int] = {}
    for k in summary:
        fam = "paper" if k == PAPER_MODEL else k.split("_")[0] if k.split("_")[0] in fams else k
        color = fams.get(fam) or fams.setdefault(fam, next(other))
        i = used.get(fam, 0)
        used[fam] = i + 1
        for ax, mode in zip(axes, ("deletion", "insertion")):
            c = summary[k][f"mean_{mode}_curve"]
            x = [j / (len(c) - 1) for j in range(len(c))]
            a = summary[k][f"{mode}_auc"]["mean"]
            ax.plot(x, c, color=color, ls=styles[i % len(styles)], marker=".", label=f"{labels[k]} ({a:.3f})")
    for ax, mode in zip(axes, ("deletion", "insertion")):
        ax.set_xlabel(f"fraction of pixels {'removed' if mode == 'deletion' else 'revealed'}")
        ax.set_ylabel("mean softmax probability of the target")
        ax.set_title(f"{mode} ({'lower' if mode == 'deletion' else 'higher'} AUC is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="method (AUC)", title_fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    from benchmarks.provenance import markdown_header

    a = info["args"]
    labels = dict(info["labels"])
    keys = list(summary)
    L = []
    L.append(f"# Flower-17 map quality: {info['backbone']} ({info['split']} split, {info['n_images']} validation images)")
    L.append("")
    L.append(markdown_header(info["provenance"]))
    L.append(f"Run: {info['seconds']['total']:.0f} s on {a['threads']} threads; load average "
             f"{info['load_average_start'][0]:.1f} at start, {info['load_average_end'][0]:.1f} at end on "
             f"{info['provenance']['cpu_cores']} cores" + (" (a load above the core count means the cores were shared)"
             if max(info['load_average_start'][0], info['load_average_end'][0]) > info['provenance']['cpu_cores']
             else "") + ".")
    L.append("")
    L.append("Setup:")
    L.append("")
    hs = info["heads"]
    L.append("- Heads (for each kind, the lr with the best mean validation top-1 over seeds under the study's rule; "
             f"seed {next(iter(hs.values()))['seed']}'s `{a['which']}.pt`): " + "; ".join(
                 f"{MODEL_LABELS[m]} lr {lr_tag(h['lr'])}" + (f" (val top-1 {100 * h['val_top1']:.2f}%)"
                                                              if h.get("val_top1") is not None else "")
                 for m, h in hs.items()) + ".")
    L.append(f"- Rows from camkit's method registry: {', '.join(info['registry'])}; chosen with `--methods "
             f"{a['methods']}`" + (f"; not run (constructor failed): {info['skipped']}" if info["skipped"] else "")
             + (f"; not chosen: {', '.join(info['not_chosen'])} (gradient-free: add them with `--methods all`)"
                if info["not_chosen"] else "") + ".")
    L.append(f"- Evaluation input: images resized to {a['size']} x {a['size']}; scorer = CAM model (frozen backbone + "
             f"CAM head), validation top-1 {100 * info['scorer_top1']:.2f}% at {a['size']} px versus "
             f"{100 * info['scorer_top1_grid_size']:.2f}% at {a['grid_size']} px (the heads were trained on 256 x 256 "
             "images). Target of every map: the scorer's top-1 class at the evaluation size.")
    L.append(f"- Why {a['size']} px and {a['steps']} steps: the run has to stay short on 2 shared cores. In this run a "
             f"backbone forward pass at {a['grid_size']} px cost {info['cost_ratio']:.2f} x one at {a['size']} px, and "
             f"deletion + insertion of {len(keys)} maps take {len(keys)} x 2 x {a['steps'] - 1} = "
             f"{2 * len(keys) * (a['steps'] - 1)} forward passes per image (the two end points are shared); the curves "
             f"took {info['seconds']['deletion_insertion']:.0f} s here.")
    L.append(f"- Maps: LayerCAM study levels = `{'`, `'.join(info['layercam_layers'])}` (ReLU / max per level, "
             f"0.4/0.4/0.2, tanh(2x)); earlier variant = `{'`, `'.join(info['layercam_backbone_layers'])}` (weighted: "
             "minmax per level, 0.4/0.4/0.2, tanh(2x); max: element-wise max); other registry methods on `backbone` "
             "(the last stage after AdaptiveAvgPool2d(7): the head's input), from the shared features, except "
             f"{', '.join(info['generic_on_images']) or 'none'} (their maps from the features differed from the whole "
             "model's, so they ran on the images). All maps bilinearly upsampled to the input after normalization; "
             "shortcuts vs direct calls on 4 images: max |difference| "
             + ", ".join(f"{labels.get(k, k)} {v:.1e}" for k, v in info["shortcut_max_abs_diff"].items()
                         if k not in info["generic_on_images"]) + ".")
    which = ("all validation images" if info["n_curve_images"] == info["n_images"] else
             f"{info['n_curve_images']} of the {info['n_images']} images (the first {a['curve_per_class']} validation "
             "images of each class; `--curve-per-class 20` for all)")
    L.append(f"- Deletion / insertion: on {which}, {a['steps']} steps of {100 / a['steps']:.1f}% of the pixels, order of "
             f"decreasing map value (ties in raster order); deleted pixels become the {a['deletion_baseline']} baseline"
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
             f"{a['min_prob']} when shown alone at the cell's size ({g['eligible_classes']} classes); a map for each of "
             "the four classes; score = share of the map's positive mass in that class's cell (0.25 = uniform map). "
             f"On the grids the scorer's top-4 holds {g['top4_mean_count']:.2f} of the four classes on average.")
    L.append("- Every value: mean over images (grid: over grids x 4 classes) ± half-width of the normal 95% interval.")
    L.append("")
    cols = [c for _, c, _ in METRICS]
    L.append("| method | " + " | ".join(cols) + " |")
    L.append("|---|" + "---|" * len(cols))
    best = {}
    for mk, _, hb in METRICS:
        vals = {k: summary[k][mk]["mean"] for k in keys}
        best[mk] = max(vals, key=vals.get) if hb else min(vals, key=vals.get)
    for k in keys:
        cells = []
        for mk, _, _ in METRICS:
            d = 2 if mk in ("average_drop", "increase") else 3
            s = fmt(summary[k][mk], d)
            cells.append(f"**{s}**" if best[mk] == k else s)
        L.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Best value of each column in bold.")
    L.append("")
    ref = labels.get(REFERENCE, REFERENCE)
    L.append(f"Paired differences to {ref} (method minus it on the same images / grids; mean ± 95% half-width; `*` "
             "where the interval excludes 0):")
    L.append("")
    L.append("| method | " + " | ".join(c.split(" (")[0] for c in cols) + " |")
    L.append("|---|" + "---|" * len(cols))
    for k in keys:
        if k == REFERENCE:
            continue
        cells = []
        for mk, _, _ in METRICS:
            d = 2 if mk in ("average_drop", "increase") else 3
            mu, ci = summary[k][mk]["minus_reference"], summary[k][mk]["minus_reference_ci95"]
            cells.append(f"{mu:+.{d}f} ± {ci:.{d}f}{' *' if abs(mu) > ci else ''}")
        L.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Does the study's conclusion (LayerCAM best, ReCAM worst, judged by eye) hold?")
    L.append("")
    L.append("Computed from the table above (`quality.verdict`):")
    L.append("")
    L.extend(verdict(summary, per_image, labels))
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
    from benchmarks.provenance import provenance

    from .methods import registry

    reg = registry()
    all_rows = rows(reg)
    if args.list_methods:
        for r in all_rows:
            print(f"{r.key:30s} {r.label:60s} {'default' if r.default else 'opt-in (gradient-free)'}")
        return 0
    chosen = choose(all_rows, args.methods)
    torch.set_num_threads(args.threads)
    prov = provenance(["quality"] + argv, module="benchmarks.flower17")
    from camkit import metrics as M

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    secs: Dict[str, float] = {}
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.backbone)
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / "flower17" / args.backbone
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else REPO_ROOT / "benchmarks" / "results" / "flower17" / args.backbone / "results.json"
    heads = chosen_heads(results, args.lr, args.seed)
    if PAPER_MODEL not in heads:
        chosen = [r for r in chosen if r.key != PAPER_MODEL]
    print("heads:", {m: (lr_tag(h["lr"]), h["seed"]) for m, h in heads.items()}, flush=True)
    print("rows:", [r.key for r in chosen], flush=True)

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

    def load(m):
        return load_trained(args.backbone, m, heads[m]["lr"], run_dir, args.which, heads[m]["seed"])

    cam_model = load("cam")
    recam_models = {m: load(m) for m in NORMALIZER_OF}
    paper_model = load(PAPER_MODEL) if PAPER_MODEL in heads else None
    for m in list(recam_models.values()) + ([paper_model] if paper_model is not None else []):
        m.backbone = cam_model.backbone  # one backbone for all (identical frozen weights)
    fast = fast_backbone(copy.deepcopy(cam_model.backbone), args.size, args.batch_size, not args.no_fast)
    scorer = nn.Sequential(fast, cam_model.head).eval()
    maker = MapMaker(chosen, reg, cam_model, recam_models, paper_model, args.backbone, args.map_batch)
    keys = maker.keys
    labels_of = {r.key: r.label for r in chosen}
    with torch.no_grad():
        chk = images[: min(8, len(images))]
        scorer_err = float((scorer(chk) - cam_model(chk)).abs().max())
    secs["models"] = time.perf_counter() - t
    print(f"models ready in {secs['models']:.1f} s; traced scorer vs eager: max |logit diff| {scorer_err:.2e}; "
          f"skipped: {maker.skipped or 'none'}", flush=True)

    # ---- validation features, predictions (targets), maps
    t = time.perf_counter()
    feats = features_of(fast, images, args.batch_size)
    with torch.no_grad():
        logits = cam_model.head(feats)
    targets = logits.argmax(1)
    top1 = float((targets == labels).float().mean())
    shortcut_err = maker.calibrate(images[:4], targets[:4, None])
    print(f"scorer top-1 at {args.size} px: {100 * top1:.2f}%; shortcut vs direct max |diff|: "
          f"{max(shortcut_err.values()):.2e}", flush=True)
    maps = maker(images, targets[:, None], feats)  # {key: (B, 1, S, S)}
    stack = torch.cat([maps[k] for k in keys], dim=1)  # (B, rows, S, S)
    del maps
    secs["maps"] = time.perf_counter() - t
    print(f"maps of {len(keys)} rows in {secs['maps']:.1f} s", flush=True)

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
    curves = {mode: torch.cat(v) for mode, v in curves.items()}  # (n, rows, steps + 1)
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
        glog = cam_model.head(gfeats)
    del fg
    top4 = glog.topk(4, dim=1).indices
    top4_count = float(torch.stack([torch.isin(gy[i], top4[i]).sum() for i in range(len(gy))]).float().mean())
    grid_scores: Dict[str, list] = {}
    for i in range(0, len(gx), args.map_batch):
        gm = maker(gx[i:i + args.map_batch], gy[i:i + args.map_batch], gfeats[i:i + args.map_batch])
        for k in keys:
            grid_scores.setdefault(k, []).append(M.grid_pointing_game(gm[k], torch.arange(4)))
    grid_scores = {k: torch.cat(v) for k, v in grid_scores.items()}  # (G, 4)
    secs["grid"] = time.perf_counter() - t
    print(f"grid pointing game on {len(gx)} grids ({int(eligible.sum())} eligible images) in {secs['grid']:.1f} s", flush=True)

    # ---- summary
    d_auc, i_auc = M.auc(curves["deletion"]), M.auc(curves["insertion"])
    per_image = {k: {"deletion_auc": d_auc[:, j], "insertion_auc": i_auc[:, j], "average_drop": ad["drop"][:, j],
                     "increase": ad["increase"][:, j], "grid_score": grid_scores[k].flatten()}
                 for j, k in enumerate(keys)}
    ref = REFERENCE if REFERENCE in keys else keys[0]
    summary: Dict[str, Dict[str, dict]] = {}
    for j, k in enumerate(keys):
        summary[k] = {}
        for mk, v in per_image[k].items():
            mu, ci = mean_ci(v)
            dmu, dci = mean_ci(v - per_image[ref][mk])  # paired: same images / grids
            summary[k][mk] = {"mean": mu, "ci95": ci, "n": int(v.numel()), "minus_reference": dmu,
                              "minus_reference_ci95": dci}
        summary[k]["mean_deletion_curve"] = curves["deletion"][:, j].mean(0).tolist()
        summary[k]["mean_insertion_curve"] = curves["insertion"][:, j].mean(0).tolist()
    secs["total"] = time.perf_counter() - t_start
    info = {
        "provenance": prov, "backbone": args.backbone, "split": split.name, "n_images": len(samples),
        "n_curve_images": len(cidx), "args": vars(args), "heads": heads, "scorer_top1": top1,
        "scorer_top1_grid_size": top1_grid_size, "cost_ratio": tg / ts, "cost_seconds": {"grid_size": tg, "size": ts},
        "scorer_traced_max_logit_diff": scorer_err, "shortcut_max_abs_diff": shortcut_err, "reference": ref,
        "registry": list(reg), "rows": [[r.key, r.label, r.method, r.kind] for r in chosen], "labels": labels_of,
        "skipped": maker.skipped, "not_chosen": [r.key for r in all_rows if r not in chosen],
        "generic_on_images": [k for k, v in maker.on_features.items() if not v],
        "layercam_layers": LAYERCAM_LAYERS[args.backbone], "layercam_backbone_layers": LAYERCAM_BACKBONE_LAYERS[args.backbone],
        "layercam_weights": list(LAYERCAM_WEIGHTS),
        "grid": {"n_grids": len(gx), "eligible": int(eligible.sum()),
                 "eligible_classes": int(labels[eligible].unique().numel()), "top4_mean_count": top4_count,
                 "seed": args.grid_seed, "min_prob": args.min_prob, "index": grids["index"].tolist()},
        "seconds": secs, "load_average_start": load0, "load_average_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "quality.json").write_text(json.dumps({"info": info, "summary": summary}, indent=1) + "\n")
    title = (f"Flower-17 {args.backbone}: {len(cidx)} val images at {args.size} px, {args.steps} steps, deletion to "
             f"{args.deletion_baseline}, insertion from {args.insertion_baseline}; scorer: CAM model; mean curves")
    plot_curves(summary, labels_of, out / "quality_curves.png", title)
    write_table(info, summary, per_image, out / "quality_table.md")
    print((out / "quality_table.md").read_text())
    print(f"wrote {out / 'quality_table.md'}, {out / 'quality.json'}, {out / 'quality_curves.png'} "
          f"in {secs['total']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
