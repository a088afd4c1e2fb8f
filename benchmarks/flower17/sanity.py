"""Can these maps be trusted? Sanity checks and faithfulness of camkit's methods on Flower-17 (issue 23, item 4).

``python -m benchmarks.flower17 sanity [--run-dir DIR] [--results FILE] [--limit N] [--parts ...] ...``

On the validation images, with the trained heads of ``python -m benchmarks.flower17 train`` on the frozen
backbone (for each kind of head the learning rate with the best mean validation top-1 under the study's rule,
:func:`benchmarks.flower17.evaluate.best_lr`, the first seed's study-rule checkpoint; the same heads as
``quality``). Every map explains the CAM model's top-1 class. Rows (``ROWS``):

- ``cam`` (the CAM head), ``recam_minmax|sigmoid|relu`` (each ReCAM head's ReCAM);
- Grad-CAM, Grad-CAM++, LayerCAM, XGrad-CAM, HiResCAM, Eigen-CAM and RandomCAM (the sanity baseline: random
  channel weights) of the CAM model at the head's input (``backbone``: the last stage + the 7 x 7 pooling);
- Score-CAM at the same layer, **scoring masked features through the head** (the backbone's features as the
  input, masked by each of their 1280 normalized channels): on the images it would cost 1280 Lite0 forwards
  per image and randomized model.

Every row's maps come from the backbone's features through the head alone (one backbone pass shared by all
rows; the same maps as the methods on the whole model, as ``quality.MapMaker.check`` verifies).

Parts (``--parts``, default all):

1. ``randomization``: model parameter randomization (Adebayo et al., NeurIPS 2018), cascading (top first: the
   heads, then the backbone block by block: ``conv_head+bn2``, ``blocks.6`` ... ``blocks.0``, ``stem+bn1``)
   and independent (one block at a time), each block's modules re-drawn by
   :func:`camkit.evaluation.reinitialize` from one seeded generator (the same draws in both orders, as
   :func:`camkit.evaluation.model_randomization`, on a copy); similarity of each randomized map with the
   original: Spearman rank correlation, SSIM and HOG similarity (:mod:`camkit.evaluation.similarity`) at
   ``--compare-size``. camkit's ``model_randomization`` randomizes one module per step and runs one method;
   here a step is a block (Adebayo et al.'s Figure 2 randomizes Inception v3 block by block) and every row
   shares each randomized backbone's forward, which starts at the randomized block from the original
   model's cached activations (``tests/test_flower17_sanity.py`` checks the result against
   ``model_randomization`` with one-module blocks). Figure ``sanity_cascading.png``: rows = methods,
   columns = the image, the original map and the maps as each block is randomized (Adebayo et al.'s Fig. 2).
2. ``data``: data randomization: the same heads (same architecture, learning rate, initial weights, batch order,
   Adam; ``train.StackedHeads`` / ``train.StackedAdam``, batch 8) trained on the cached training features with
   the labels permuted at the image level (:func:`camkit.evaluation.shuffled_labels` on the 680 training
   images; the 10 augmented copies of an image share its new label), for ``--shuffled-epochs`` (40, the study's maximum) epochs without
   the stop rule (the last epoch kept); the maps of the real and the shuffled-label heads compared as above.
3. ``faithfulness``: on the first ``--faith-per-class`` images of each class (default 2: 34 images; 20 for all
   340: each image costs 3.6 to 7 s per row on one loaded core, two thirds of it ROAD's imputation),
   scorer = the CAM model: ROAD MoRF / LeRF (noisy linear imputation,
   ``--road-percentiles``) and the combined score, faithfulness correlation, monotonicity, IROF (SLIC
   segments), infidelity, sufficiency, sparseness and complexity (:mod:`camkit.evaluation`); per-image means
   with 95% intervals and the rank of each row.
4. ``torchcam``: torchcam's published protocol shape (its README: average drop / increase in confidence of
   Grad-CAM, Grad-CAM++, Smooth Grad-CAM++ and LayerCAM, ImageNet ResNet18 and MobileNetV3-Large on Imagenette
   at 224 px): the ImageNet EfficientNet-Lite0 (``camkit.adapters.build("efficientnet_lite0")``, offline weights;
   ResNet18's and Imagenette need the internet) on the Flower-17 validation photos with the preset's 256 /
   center-crop 224 transform, each image's own ImageNet top-1, camkit's methods at the preset's layer (``bn2``)
   and, same model and images, torchcam 0.5.0's own methods and ``ClassificationMetric``.

Pass rules (stated, not Adebayo et al.'s, who judge by eye): a row passes model randomization when the mean
Spearman correlation with the original map is below ``--pass-below`` (0.5) both once the heads are randomized
(the trained part: the backbone is ImageNet's) and once every block is; it passes data randomization when the
mean Spearman correlation of the real and shuffled-label heads' maps is below the same bound. Spearman is
undefined (NaN) where a map is constant (a blank map); such images are left out of the mean and counted, and a
level where every randomized map is constant counts as changed (:func:`changed`). Non-finite maps are set to 0.

Writes ``sanity.json``, ``sanity.md``, ``sanity_cascading.png`` (default folder
``benchmarks/results/flower17/<backbone>``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import REPO_ROOT, load_image, load_split, subset
from .models import MODEL_NAMES, NORMALIZER_OF, backbone_stats, load_trained, lr_tag, make_head, normalize_transform
from .quality import chosen_heads, fast_backbone, first_per_class, head_only, mean_ci

#: row key -> (head it runs on, registry method, options); generic rows at the head's input ``backbone``.
ROWS: Dict[str, Tuple[str, str, dict]] = {
    "cam": ("cam", "cam", {}),
    **{m: (m, "recam", {}) for m in NORMALIZER_OF},
    "gradcam": ("cam", "gradcam", {}),
    "gradcampp": ("cam", "gradcampp", {}),
    "layercam": ("cam", "layercam", {}),
    "xgradcam": ("cam", "xgradcam", {}),
    "hirescam": ("cam", "hirescam", {}),
    "scorecam": ("cam", "scorecam", {"batch_size": 256}),
    "eigencam": ("cam", "eigencam", {}),
    "randomcam": ("cam", "randomcam", {"seed": 0}),
}
LABELS = {"cam": "CAM", "recam_minmax": "ReCAM minmax", "recam_sigmoid": "ReCAM sigmoid", "recam_relu": "ReCAM relu",
          "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "layercam": "LayerCAM", "xgradcam": "XGrad-CAM",
          "hirescam": "HiResCAM", "scorecam": "Score-CAM (features)", "eigencam": "Eigen-CAM",
          "randomcam": "RandomCAM (baseline)"}
PARTS = ("randomization", "data", "faithfulness", "torchcam")
SIMS = ("spearman", "ssim", "hog")
#: torchcam 0.5.0's README table (average drop, increase in confidence; fractions), Imagenette val, 224 px.
TORCHCAM_PUBLISHED = {
    "resnet18": {"gradcam": (0.2686, 0.2250), "gradcampp": (0.5271, 0.1962), "smoothgradcampp": (0.2088, 0.2499),
                 "layercam": (0.1712, 0.2819)},
    "mobilenet_v3_large": {"gradcam": (0.2678, 0.3483), "gradcampp": (0.3182, 0.2535),
                           "smoothgradcampp": (0.2681, 0.2678), "layercam": (0.2526, 0.2882)},
}
TORCHCAM_METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "smoothgradcampp": "SmoothGradCAMpp",
                    "layercam": "LayerCAM"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flower17 sanity", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0", choices=("tf_efficientnet_lite0", "vgg16"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--run-dir", default=None, help="checkpoints and feature cache (default runs/flower17/<backbone>)")
    p.add_argument("--results", default=None, help="train's results.json (default <out>/results.json)")
    p.add_argument("--lr", action="append", default=[], metavar="MODEL=LR", help="override a head's learning rate")
    p.add_argument("--seed", type=int, default=None, help="training seed of the checkpoints (default: the first)")
    p.add_argument("--out", default=None, help="default benchmarks/results/flower17/<backbone>")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    p.add_argument("--limit", type=int, default=None, help="only the first N validation images (after --per-class)")
    p.add_argument("--per-class", type=int, default=None, help="only the first N validation images of each class")
    p.add_argument("--size", type=int, default=160, help="input size of the images (quality.py's 160)")
    p.add_argument("--compare-size", type=int, default=64, help="maps compared at this size (from the 7 x 7 grid)")
    p.add_argument("--chunk", type=int, default=34, help="images per randomization pass")
    p.add_argument("--randomization-seed", type=int, default=0)
    p.add_argument("--pass-below", type=float, default=0.5, help="mean Spearman bound of the pass rules")
    p.add_argument("--fig-images", default="0", help="comma-separated image positions for the cascading figure")
    p.add_argument("--cache", default=None, help="training feature cache (default <run-dir>/features_<split>_seed0*.pt)")
    p.add_argument("--shuffled-epochs", type=int, default=40, help="epochs on the shuffled labels (the study's maximum)")
    p.add_argument("--shuffled-dir", default=None, help="where the shuffled-label heads are saved "
                   "(default runs/flower17/<backbone>/shuffled_labels)")
    p.add_argument("--label-seed", type=int, default=0, help="seed of the label permutation")
    p.add_argument("--shuffled-lr", type=float, default=None, help="learning rate of every shuffled-label head "
                   "(default: each head's own; a larger one fits the permuted labels in fewer epochs)")
    p.add_argument("--road-percentiles", default="20,40,60,80")
    p.add_argument("--faith-per-class", type=int, default=2, help="ROAD and the faithfulness metrics on the first N "
                   "images of each class (20: all 340; each image costs 3.6 to 7 s per row on one loaded core, "
                   "ROAD's imputation two thirds of it)")
    p.add_argument("--fc-runs", type=int, default=20, help="faithfulness correlation: random subsets per image")
    p.add_argument("--fc-subset", type=float, default=0.05, help="faithfulness correlation: share of the pixels")
    p.add_argument("--mono-steps", type=int, default=8, help="monotonicity steps")
    p.add_argument("--irof-segments", type=int, default=20, help="SLIC segments of IROF")
    p.add_argument("--infidelity-samples", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64, help="images per scorer call")
    p.add_argument("--torchcam-limit", type=int, default=None, help="images of the torchcam protocol (default all)")
    p.add_argument("--no-torchcam-peer", action="store_true", help="skip torchcam's own run in the torchcam part")
    p.add_argument("--merge", action="store_true", help="keep the parts of an earlier sanity.json in --out that this "
                   "run does not compute (same images and heads: each part records its own command)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on a loaded 2-core machine two threads "
                   "measured 6x slower than one for these many small operations)")
    p.add_argument("--no-fast", action="store_true", help="score with the eager backbone (no tracing)")
    return p


# --------------------------------------------------------------------------- maps from the features


class FeatureMaps:
    """Every row's maps from backbone features through its head: ``{row: (B, h, w)}`` for features
    ``(B, C, h, w)`` and targets ``(B,)``. ``heads``: ``{model name: camkit head}`` (changed in place by the
    randomization; the method objects keep them)."""

    def __init__(self, heads: Dict[str, nn.Module], rows: Sequence[str], registry: Dict[str, type]):
        self.models = {n: head_only(_Holder(h)) for n, h in heads.items()}
        self.rows = list(rows)
        self.makers = {}
        for r in self.rows:
            head, method, opts = ROWS[r]
            cls = registry[method]
            m = self.models[head]
            self.makers[r] = cls(m, **opts) if method in ("cam", "recam") else cls(m, layers=["backbone"], **opts)
        self.fast_scorecam = False
        self.scorecam_normalize = None

    def check_scorecam(self, feats: Tensor, targets: Tensor) -> Optional[float]:
        """Max |closed-form Score-CAM - camkit.ScoreCAM| on these features; the closed form is used from then on
        when it agrees to 1e-4 (the normalizer found among camkit's: the one that matches)."""
        if "scorecam" not in self.rows:
            return None
        from camkit import normalize as N

        ref = self.makers["scorecam"](feats, targets=targets.reshape(-1, 1)).maps[:, 0].detach().float()
        best = None
        for fn in (N.minmax, N.relu_max):
            d = float((scorecam_on_head(self.models["cam"].head, feats, targets.reshape(-1), fn) - ref).abs().max())
            if best is None or d < best:
                best, self.scorecam_normalize = d, fn
        self.fast_scorecam = best <= 1e-4
        return best

    def __call__(self, feats: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        import warnings

        t = targets.reshape(-1, 1)
        out = {}
        with warnings.catch_warnings():  # a randomized model's blank gradient maps are results here (NaN counts)
            warnings.filterwarnings("ignore", message=".*gradients are exactly zero.*")
            return self._maps(feats, targets, t, out)

    def _maps(self, feats: Tensor, targets: Tensor, t: Tensor, out: dict) -> Dict[str, Tensor]:
        for r in self.rows:
            if r == "scorecam" and self.fast_scorecam:
                m = scorecam_on_head(self.models["cam"].head, feats, targets.reshape(-1), self.scorecam_normalize)
            else:
                m = self.makers[r](feats, targets=t).maps[:, 0].detach().float()
            out[r] = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        return out


def scorecam_on_head(head: nn.Module, feats: Tensor, t: Tensor, normalize) -> Tensor:
    """camkit's Score-CAM at the head's input of a ``CAMHead`` (features ``(B, C, h, w)`` as the input), the
    C masked forwards in closed form: the mask M_k (channel k min-max normalized, camkit's ``score_masks`` at
    the features' own size) is one number per position, so the 1x1 convolution of ``F * M_k`` is
    ``M_k * (W F) + b``; then ReLU, mean, ``fc`` and the target's logit give ``S_k``, and
    ``camkit.methods.perturbation.scorecam_formula`` (softmax over the channels) and ``normalize`` the map.
    ``(B, h, w)``; equal to ``camkit.ScoreCAM(head model, layers=["backbone"])`` (checked on the first chunk,
    ``scorecam_check`` in the results)."""
    from camkit.methods.perturbation import score_masks, scorecam_formula

    with torch.no_grad():
        B, C, h, w = feats.shape
        masks = score_masks(feats.reshape(B * C, h, w), (h, w)).reshape(B, C, h, w)
        u = torch.einsum("nc,bchw->bnhw", head.conv.weight[:, :, 0, 0], feats)  # (B, N, h, w)
        S = []
        for b in range(B):
            z = torch.relu(masks[b][:, None] * u[b][None] + head.conv.bias[None, :, None, None])  # (C, N, h, w)
            S.append(head.fc(z.mean((-2, -1)))[:, t[b]])  # (C,)
        maps = scorecam_formula(feats, torch.stack(S)[:, None])  # (B, 1, h, w)
        return normalize(maps)[:, 0]


class _Holder:
    """What :func:`quality.head_only` reads of a model: its ``head``."""

    def __init__(self, head: nn.Module):
        self.head = head


def resize(maps: Tensor, size: int) -> Tensor:
    """(B, h, w) -> (B, size, size), bilinear, clamped to [0, 1] (the methods' maps lie in [0, 1])."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp_(0, 1)


def similarities(a: Tensor, b: Tensor) -> Dict[str, Tensor]:
    """Spearman, SSIM and HOG similarity (camkit.evaluation.SIMILARITIES) of two (B, S, S) batches: (B,) each."""
    from camkit.evaluation import SIMILARITIES

    return {s: SIMILARITIES[s](a, b).float() for s in SIMS}


# --------------------------------------------------------------------------- staged backbone and blocks


def stages(net: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The backbone as a list of ``(name, module)`` applied in order: its children, a Sequential child with
    parameters expanded one level (Lite0: ``stem, bn1, blocks.0 .. blocks.6, conv_head, bn2, pool``)."""
    out: List[Tuple[str, nn.Module]] = []
    for name, child in net.named_children():
        if isinstance(child, nn.Sequential) and any(True for _ in child.parameters()):
            out += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            out.append((name, child))
    return out


def _own_float(m: nn.Module) -> bool:
    return any(p.is_floating_point() for p in m.parameters(recurse=False))


def blocks(stage_list: Sequence[Tuple[str, nn.Module]]) -> List[dict]:
    """Randomization blocks of the backbone, input side first: ``{"name", "start" (first stage index),
    "modules": [modules with parameters of their own]}``. A stage whose parameters are all normalization
    layers' (Lite0's ``bn1``, ``bn2``), or that has none (``pool``), joins the block before it."""
    out: List[dict] = []
    for i, (name, st) in enumerate(stage_list):
        mods = [m for m in st.modules() if _own_float(m)]
        norm_only = all(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) for m in mods)
        if out and (not mods or norm_only):
            out[-1]["modules"] += mods
            out[-1]["name"] += f"+{name}" if mods else ""
            continue
        out.append({"name": name, "start": i, "modules": mods})
    return out


def head_modules(heads: Dict[str, nn.Module]) -> List[nn.Module]:
    return [m for n in sorted(heads) for m in heads[n].modules() if _own_float(m)]


class Randomizer:
    """The levels of a randomization, top first (``"heads"``, then the backbone's blocks output side first),
    each level's original and re-drawn parameters (:func:`camkit.evaluation.reinitialize`, one CPU generator
    seeded with ``seed``, levels in order: the same draws for both orders); :meth:`set` loads a choice of
    levels' random parameters, the others' original ones."""

    def __init__(self, stage_list, heads: Dict[str, nn.Module], seed: int = 0):
        from camkit.evaluation import reinitialize

        self.stage_list = list(stage_list)
        bl = blocks(self.stage_list)
        self.levels = [{"name": "heads", "start": len(self.stage_list), "modules": head_modules(heads)}]
        self.levels += [dict(b) for b in bl[::-1]]
        gen = torch.Generator().manual_seed(seed)
        for lv in self.levels:
            params = [p for m in lv["modules"] for p in m.parameters(recurse=False) if p.is_floating_point()]
            lv["params"] = params
            lv["original"] = [p.detach().clone() for p in params]
            for m in lv["modules"]:
                reinitialize(m, gen)
            lv["random"] = [p.detach().clone() for p in params]
        self.set(())

    @property
    def names(self) -> List[str]:
        return [lv["name"] for lv in self.levels]

    @torch.no_grad()
    def set(self, random_levels: Sequence[int]) -> None:
        on = set(random_levels)
        for j, lv in enumerate(self.levels):
            for p, o, r in zip(lv["params"], lv["original"], lv["random"]):
                p.copy_(r if j in on else o)

    def chosen(self, order: str, level: int) -> List[int]:
        return list(range(level + 1)) if order == "cascading" else [level]


def image_spread(f: Tensor) -> float:
    """How much features ``(b, C, h, w)`` differ between the images: the mean over channels and positions of
    their standard deviation across the images, over the mean absolute feature (0: the same for every image)."""
    if f.shape[0] < 2:
        return float("nan")
    return float(f.double().std(0).mean() / f.double().abs().mean().clamp_min(1e-300))


@torch.no_grad()
def staged_forward(stage_list, x: Tensor) -> List[Tensor]:
    """Inputs of every stage and the output: ``acts[i]`` = input of stage i, ``acts[-1]`` = features."""
    acts = [x]
    for _, st in stage_list:
        acts.append(st(acts[-1]))
    return acts


@torch.no_grad()
def forward_from(stage_list, acts: Sequence[Tensor], start: int) -> Tensor:
    """The features, running the stages from ``start`` on the cached input ``acts[start]``."""
    x = acts[start]
    for _, st in list(stage_list)[start:]:
        x = st(x)
    return x


def randomize_chunk(rz: Randomizer, fm: FeatureMaps, acts: Sequence[Tensor], orig: Dict[str, Tensor], t: Tensor,
                    size: int, orders: Sequence[str], keep: Sequence[int] = ()) -> dict:
    """One chunk of images: ``acts`` of :func:`staged_forward` (original model), the original maps ``orig``
    (row -> (b, h, w)) and targets ``t (b,)``; for each order and level the similarities of the randomized
    model's maps with the original ones. Returns ``{order: {row: {sim: (L, b)}}, "kept": {row: (L, k, S, S)}
    (the cascading maps of the chunk's images ``keep``)}``."""
    feats = acts[-1]
    orig_s = {r: resize(m, size) for r, m in orig.items()}
    out: dict = {"kept": {r: [] for r in orig}, "spread": {}}
    for order in orders:
        res = {r: {s: [] for s in SIMS} for r in orig}
        out["spread"][order] = []
        for L, lv in enumerate(rz.levels):
            rz.set(rz.chosen(order, L))
            start = lv["start"]  # both orders: the blocks below level L are the original ones
            f = feats if start >= len(rz.stage_list) else forward_from(rz.stage_list, acts, start)
            out["spread"][order].append(image_spread(f))
            maps = fm(f, t)
            for r, m in maps.items():
                ms = resize(m, size)
                for s, v in similarities(orig_s[r], ms).items():
                    res[r][s].append(v)
                if order == "cascading" and len(keep):
                    out["kept"][r].append(ms[list(keep)])
        out[order] = {r: {s: torch.stack(v) for s, v in d.items()} for r, d in res.items()}
    rz.set(())
    out["kept"] = {r: torch.stack(v) if v else None for r, v in out["kept"].items()}
    return out


# --------------------------------------------------------------------------- data randomization


def image_level_shuffle(y: Tensor, index: Tensor, seed: int) -> Tensor:
    """Training labels ``(N,)`` permuted at the image level: the images (``index``: each row's image) get
    :func:`camkit.evaluation.shuffled_labels` of their labels; every row of an image takes its new label."""
    from camkit.evaluation import shuffled_labels

    uniq, inv = torch.unique(index, return_inverse=True)
    per_image = torch.zeros(len(uniq), dtype=torch.long)
    per_image[inv] = y.long()
    return shuffled_labels(per_image, seed)[inv]


def train_shuffled(cache: dict, lrs: Dict[str, float], epochs: int, seed: int = 0, label_seed: int = 0,
                   batch_size: int = 8) -> Tuple[Dict[str, nn.Module], dict]:
    """The heads ``lrs`` (model -> lr) trained as ``train.train_grid`` trains them (initial weights from
    ``torch.manual_seed(seed)`` per head, the seeded batch order, batch 8, ``StackedAdam``, the study's loss
    with the plain top-1 mask) on the cached training features with labels permuted by
    :func:`image_level_shuffle`; no stop rule, the last epoch's heads. Returns ``(heads, history)``; the
    history has per epoch the training loss and top-1 on the shuffled labels and the validation top-1 on
    the true ones."""
    import math

    from .train import StackedAdam, StackedHeads, evaluate_stacked

    xtr, idx = cache["train"]["x"], cache["train"]["index"]
    ytr = image_level_shuffle(cache["train"]["y"], idx, label_seed)
    names = list(lrs)
    channels = xtr.shape[1]
    fresh = []
    for m in names:
        torch.manual_seed(seed)
        fresh.append(make_head(m, channels))
    heads = StackedHeads(fresh)
    opt = StackedAdam([heads.weight, heads.bias, heads.fc, heads.pred], [lrs[m] for m in names])
    active = list(range(len(names)))
    g = torch.Generator().manual_seed(seed)
    n = xtr.shape[0]
    hist: Dict[str, list] = {m: [] for m in names}
    t0 = time.perf_counter()
    for ep in range(1, epochs + 1):
        perm = torch.randperm(n, generator=g)
        run_loss, run_hit = torch.zeros(len(names)), torch.zeros(len(names))
        for s in range(math.ceil(n / batch_size)):
            bi = perm[s * batch_size:(s + 1) * batch_size]
            per, lo = heads.losses(xtr[bi].float(), ytr[bi], active, mask="top1", loss="recam")
            per.sum().backward()
            opt.step(active)
            run_loss += per.detach() * len(bi)
            run_hit += (lo.detach().argmax(-1) == ytr[bi].view(-1, 1)).sum(0)
        ev = evaluate_stacked(heads, cache["val"]["x"], cache["val"]["y"], active)
        for j, m in enumerate(names):
            hist[m].append({"epoch": ep, "train_loss": float(run_loss[j] / n), "train_top1_shuffled": float(run_hit[j] / n),
                            "val_top1_true": ev["top1"][j]})
        print(f"  shuffled labels epoch {ep}/{epochs}: train top-1 on the shuffled labels "
              f"{[round(100 * h[-1]['train_top1_shuffled'], 1) for h in hist.values()]} %, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    out = {m: heads.export(i, make_head(m, channels)).eval() for i, m in enumerate(names)}
    info = {"history": hist, "seconds": time.perf_counter() - t0, "epochs": epochs, "seed": seed,
            "label_seed": label_seed, "n_train_rows": int(n), "n_train_images": int(torch.unique(idx).numel()),
            "labels_changed": float((ytr != cache["train"]["y"]).float().mean())}
    return out, info


def find_cache(run_dir: Path, split: str, explicit: Optional[str]) -> Path:
    """The training feature cache: ``explicit``, else ``<run_dir>/features_<split>_seed0.pt``, else the one
    ``features_<split>_seed0_quick*.pt`` there."""
    if explicit:
        return Path(explicit)
    exact = run_dir / f"features_{split}_seed0.pt"
    if exact.exists():
        return exact
    found = sorted(run_dir.glob(f"features_{split}_seed0_quick*.pt"))
    if not found:
        raise SystemExit(f"no feature cache {exact}: run `python -m benchmarks.flower17 prepare` or pass --cache")
    return found[0]


# --------------------------------------------------------------------------- faithfulness on the images


def faithfulness(scorer: nn.Module, x: Tensor, maps: Tensor, t: Tensor, sub: Tensor, args, segments: Optional[Tensor]
                 ) -> Dict[str, Tensor]:
    """One row's per-image values on the images ``sub`` of ``x (B, C, S, S)``, ``maps (B, S, S)`` in [0, 1],
    ``t (B,)``. Scores: the target's softmax probability."""
    from camkit import evaluation as ev

    pct = [float(p) for p in args.road_percentiles.split(",")]
    bs = args.batch_size
    xs, ms, ts = x[sub], maps[sub], t[sub]
    r = ev.road(scorer, xs, ms, ts, pct, score="softmax", batch_size=bs)
    out = {"road_morf": r["morf"].mean(1), "road_lerf": r["lerf"].mean(1), "road_combined": r["combined"],
           "road_morf_curve": r["morf"], "road_lerf_curve": r["lerf"]}
    hw = x.shape[-1] * x.shape[-2]
    fc = ev.faithfulness_correlation(scorer, xs, ms, ts, subset_size=max(1, int(args.fc_subset * hw)),
                                     runs=args.fc_runs, score="softmax", batch_size=bs)
    out["faithfulness_correlation"] = fc["correlation"]
    mono = ev.monotonicity(scorer, xs, ms, ts, features_in_step=-(-hw // args.mono_steps), score="softmax",
                           batch_size=bs)
    out["monotonic"] = mono["monotonic"].double()
    if segments is not None:
        out["irof"] = ev.irof(scorer, xs, ms, ts, segments, batch_size=bs)["aoc"]
    out["infidelity"] = ev.infidelity(scorer, xs, ms, ts, samples=args.infidelity_samples, normalize=True, batch_size=bs)
    out["sufficiency"] = ev.sufficiency(scorer, xs, ms, batch_size=bs)
    out["sparseness"] = ev.sparseness(ms)
    out["complexity"] = ev.complexity(ms)
    return {k: v.detach().double().cpu() for k, v in out.items()}


#: metric key, label, higher is better (None: descriptive, not ranked)
FAITH_METRICS = [
    ("road_morf", "ROAD MoRF (lower better)", False), ("road_lerf", "ROAD LeRF (higher better)", True),
    ("road_combined", "ROAD combined (higher better)", True),
    ("faithfulness_correlation", "faithfulness correlation (higher better)", True),
    ("monotonic", "monotonic share (higher better)", True), ("irof", "IROF AOC (higher better)", True),
    ("infidelity", "infidelity, normalized (lower better)", False),
    ("sufficiency", "sufficiency (higher better)", True),
    ("sparseness", "sparseness (Gini)", None), ("complexity", "complexity (entropy)", None),
]


# --------------------------------------------------------------------------- torchcam's protocol


def torchcam_part(samples: Sequence[Tuple[str, int]], args) -> dict:
    """Average drop / increase in confidence (torchcam's ``ClassificationMetric``: the input times the
    min-max-normalized map, softmax of the image's own top-1) on the ImageNet Lite0, camkit's methods at the
    preset's layer and, same model and images, torchcam's own."""
    from PIL import Image

    import camkit.adapters as adapters
    from camkit.methods import METHODS
    from camkit.metrics import average_drop_increase

    model, preset = adapters.build("efficientnet_lite0")
    layer = preset.gradcam_layer
    x = torch.stack([preset.transform(Image.open(p).convert("RGB")) for p, _ in samples])
    with torch.no_grad():
        t = torch.cat([model(x[i:i + 32]).argmax(1) for i in range(0, len(x), 32)])
    res: dict = {"layer": layer, "n_images": len(x), "input": tuple(x.shape[1:]), "camkit": {}, "torchcam": {},
                 "seconds": {}}
    for key in TORCHCAM_METHODS:
        t0 = time.perf_counter()
        m = METHODS[key](model, layers=[layer], normalize="minmax")
        maps = torch.cat([m(x[i:i + 16], targets=t[i:i + 16, None]).maps[:, 0].detach() for i in range(0, len(x), 16)])
        ad = average_drop_increase(model, x, maps.clamp(0, 1), t, score="softmax")
        res["camkit"][key] = {"avg_drop": float(ad["drop"]) / 100, "conf_increase": float(ad["increase"]) / 100}
        res["seconds"][f"camkit_{key}"] = time.perf_counter() - t0
        print(f"  torchcam protocol, camkit {key}: {res['camkit'][key]} ({res['seconds'][f'camkit_{key}']:.0f} s)",
              flush=True)
        if not args.no_torchcam_peer:
            res["torchcam"][key] = torchcam_peer(model, x, layer, TORCHCAM_METHODS[key])
            print(f"  torchcam protocol, torchcam {key}: {res['torchcam'][key]}", flush=True)
    return res


def torchcam_peer(model: nn.Module, x: Tensor, layer: str, cls_name: str) -> dict:
    """torchcam 0.5.0's ``ClassificationMetric`` with its own method, as its ``scripts/eval_perf.py`` runs it."""
    from functools import partial

    import torchcam.methods as tm
    from torchcam.metrics import ClassificationMetric

    t0 = time.perf_counter()
    with getattr(tm, cls_name)(model, [layer]) as ext:
        metric = ClassificationMetric(ext, partial(torch.softmax, dim=-1))
        for i in range(0, len(x), 16):
            model.zero_grad()
            metric.update(x[i:i + 16].clone().requires_grad_(True))
        out = metric.summary()
    model.zero_grad(set_to_none=True)
    return {"avg_drop": float(out["avg_drop"]), "conf_increase": float(out["conf_increase"]),
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- statistics and verdicts


def level_stats(v: Tensor) -> dict:
    """``v (L, B)``: per level the mean over the images with a defined value, the 95% half-width and the
    count of undefined ones (NaN: a constant map)."""
    out = {"mean": [], "ci95": [], "undefined": []}
    for row in v.double():
        ok = row[torch.isfinite(row)]
        mu, ci = mean_ci(ok) if ok.numel() else (float("nan"), float("nan"))
        out["mean"].append(mu)
        out["ci95"].append(ci)
        out["undefined"].append(int(row.numel() - ok.numel()))
    return out


def changed(mean_spearman: float, bound: float) -> bool:
    """The maps moved: mean Spearman below ``bound``, or undefined on every image (NaN: every randomized
    map constant, e.g. blank, where the original maps were not)."""
    return bool(mean_spearman != mean_spearman or mean_spearman < bound)


def verdicts(rand: Optional[dict], data: Optional[dict], bound: float) -> Dict[str, dict]:
    """Per row: ``heads`` / ``full`` (mean Spearman once the heads / every block are randomized, cascading),
    ``data`` (real vs shuffled-label heads) and whether each is below ``bound``."""
    rows = list((rand or {}).get("cascading", {}) or (data or {}).get("rows", {}))
    out: Dict[str, dict] = {}
    for r in rows:
        v: dict = {}
        if rand:
            sp = rand["cascading"][r]["spearman"]["mean"]
            v.update(heads=sp[0], full=sp[-1], model_pass=bool(changed(sp[0], bound) and changed(sp[-1], bound)))
        if data:
            d = data["rows"][r]["spearman"]["mean"][0]
            v.update(data=d, data_pass=changed(d, bound))
        v["pass"] = bool(v.get("model_pass", True) and v.get("data_pass", True))
        out[r] = v
    return out


def summarize_faith(per_image: Dict[str, Dict[str, Tensor]]) -> Dict[str, dict]:
    out: Dict[str, dict] = {r: {} for r in per_image}
    for key, _, hb in FAITH_METRICS:
        vals = {}
        for r, d in per_image.items():
            if key in d:
                v = d[key][torch.isfinite(d[key])]
                mu, ci = mean_ci(v) if v.numel() else (float("nan"), float("nan"))
                out[r][key] = {"mean": mu, "ci95": ci, "n": int(v.numel()), "undefined": int(d[key].numel() - v.numel())}
                vals[r] = mu
        if hb is not None and vals:
            order = sorted(vals, key=lambda k: -vals[k] if hb else vals[k])
            for i, r in enumerate(order):
                out[r][key]["rank"] = i + 1
    for r, d in per_image.items():
        for c in ("road_morf_curve", "road_lerf_curve"):
            out[r][c] = d[c].mean(0).tolist()
    return out


# --------------------------------------------------------------------------- report


def _f(x: float, d: int = 2) -> str:
    return "n/a" if x is None or x != x else f"{x:.{d}f}"


def md_randomization(L: List[str], rand: dict, labels: Dict[str, str]) -> None:
    names = rand["levels"]
    for order in ("cascading", "independent"):
        if order not in rand:
            continue
        for sim in (SIMS if order == "cascading" else ("spearman",)):
            L += [f"### {order.capitalize()} randomization, {sim} (mean over images; 1 = unchanged)", "",
                  "| method | " + " | ".join(f"{'+' if order == 'cascading' and i else ''}{n}" for i, n in enumerate(names))
                  + " |", "|---|" + "---|" * len(names)]
            for r, d in rand[order].items():
                s = d[sim]
                L.append(f"| {labels[r]} | " + " | ".join(
                    _f(m) + (f" ({u} NaN)" if u else "") for m, u in zip(s["mean"], s["undefined"])) + " |")
            L.append("")
    L.append("Cascading columns: the blocks randomized so far, top first (`+name`: this block too).")
    L.append("")


def md_data(L: List[str], data: dict, labels: Dict[str, str]) -> None:
    info = data["training"]
    L += ["### Data randomization: real heads vs heads trained on shuffled labels", "",
          f"Shuffled-label training: {info['n_train_images']} training images ({info['n_train_rows']} rows with the "
          f"augmented copies), labels permuted at the image level (seed {info['label_seed']}; "
          f"{100 * info['labels_changed']:.1f}% of the rows changed label), {info['epochs']} epochs, no stop rule, "
          f"last epoch kept; {info['seconds']:.0f} s.", "",
          "| head | lr | train top-1 on shuffled labels (last epoch) | val top-1 on true labels |", "|---|---|---|---|"]
    for m, h in info["history"].items():
        last = h[-1]
        L.append(f"| {m} | {data['lrs'][m]:g} | {100 * last['train_top1_shuffled']:.1f}% | "
                 f"{100 * last['val_top1_true']:.1f}% |")
    L += ["", "| method | Spearman | SSIM | HOG |", "|---|---|---|---|"]
    for r, d in data["rows"].items():
        L.append(f"| {labels[r]} | " + " | ".join(f"{_f(d[s]['mean'][0])} ± {_f(d[s]['ci95'][0])}" for s in SIMS) + " |")
    L.append("")


def md_verdicts(L: List[str], ver: Dict[str, dict], labels: Dict[str, str], bound: float) -> None:
    L += [f"### Which methods pass (mean Spearman < {bound})", "",
          "| method | heads randomized | all blocks randomized | shuffled labels | passes |", "|---|---|---|---|---|"]
    for r, v in ver.items():
        L.append(f"| {labels[r]} | {_f(v.get('heads'))} | {_f(v.get('full'))} | {_f(v.get('data'))} | "
                 f"{'**yes**' if v['pass'] else 'no'} |")
    L.append("")


def md_faith(L: List[str], faith: dict, labels: Dict[str, str]) -> None:
    keys = [k for k, _, _ in FAITH_METRICS if any(k in d for d in faith["summary"].values())]
    lab = {k: c for k, c, _ in FAITH_METRICS}
    L += ["### ROAD and faithfulness (mean ± 95% half-width; rank in brackets)", "",
          f"On {faith['n_sub']} of the {faith['n_images']} images (the first of each class). ROAD: percentiles "
          f"{faith['percentiles']}, MoRF / LeRF = the mean over them of the target's softmax probability after noisy "
          "linear imputation (camkit's defaults: noise 0.01, tol 1e-4), combined = (LeRF - MoRF) / 2; faithfulness "
          f"correlation: {faith['fc_runs']} random subsets of {faith['fc_subset']:.0%} of the pixels set to 0 (mid-grey); "
          f"monotonicity: {faith['mono_steps']} steps revealed from 0; IROF: {faith['irof_segments']} SLIC segments "
          f"replaced by the image mean; infidelity: {faith['infidelity_samples']} Gaussian perturbations (std 0.003, "
          "captum's definition, normalized); sufficiency: threshold 0.6 among these images. Scorer: the CAM model "
          f"(traced backbone; it agrees with the targets on {100 * faith['scorer_agrees_with_targets']:.1f}% of the images).", "",
          "| method | " + " | ".join(lab[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for r, d in faith["summary"].items():
        cells = [f"{_f(d[k]['mean'], 3)} ± {_f(d[k]['ci95'], 3)}" + (f" [{d[k]['rank']}]" if "rank" in d[k] else "")
                 for k in keys]
        L.append(f"| {labels[r]} | " + " | ".join(cells) + " |")
    L.append("")


def md_torchcam(L: List[str], tc: dict) -> None:
    L += ["### torchcam's protocol: average drop / increase in confidence", "",
          f"ImageNet EfficientNet-Lite0 (camkit's offline weights), layer `{tc['layer']}`, {tc['n_images']} Flower-17 "
          "validation photos (resize 256, center crop 224), each image's own ImageNet top-1; maps min-max "
          "normalized; input x map; softmax. Published: torchcam 0.5.0 README (Imagenette val, 224 px).", "",
          "| method | published ResNet18 | published MobileNetV3-L | camkit, Lite0, Flower-17 | torchcam, Lite0, Flower-17 |",
          "|---|---|---|---|---|"]
    for k in TORCHCAM_METHODS:
        cells = [TORCHCAM_PUBLISHED["resnet18"][k], TORCHCAM_PUBLISHED["mobilenet_v3_large"][k]]
        cells += [(d[k]["avg_drop"], d[k]["conf_increase"]) if k in d else None for d in (tc["camkit"], tc["torchcam"])]
        L.append(f"| {k} | " + " | ".join("n/a" if c is None else f"{100 * c[0]:.2f}% / {100 * c[1]:.2f}%"
                                          for c in cells) + " |")
    L += ["", "Cells: average drop (lower better) / increase in confidence (higher better).", ""]


def write_markdown(res: dict, path: Path) -> None:
    from benchmarks.provenance import markdown_header

    info = res["info"]
    labels = dict(LABELS)
    heads = ", ".join(f"{m} lr {h['lr']:g} seed {h['seed']}" for m, h in info["heads"].items())
    L = ["# Flower-17: sanity checks, ROAD and faithfulness of camkit's methods", "", markdown_header(info["provenance"]),
         f"Backbone `{info['backbone']}`, split `{info['split']}`, {info['n_images']} validation images at "
         f"{info['size']} px; heads {heads} "
         f"(study-rule checkpoints); targets: the CAM model's top-1 (top-1 {100 * info['top1']:.2f}% at this size). "
         f"Maps compared at {info['compare_size']} px. Seconds per part: "
         + ", ".join(f"{k} {v:.0f}" for k, v in info["seconds"].items()) + ".", ""]
    L += ["Parts and their runs:", ""] + [f"- {p}: `{r.get('command')}` ({r.get('date')}, commit "
                                          f"`{str(r.get('git_commit'))[:12]}`{' dirty' if r.get('git_dirty') else ''}, "
                                          f"load {r.get('load_avg_1min_at_start')})"
                                          for p, r in info.get("part_runs", {}).items()] + [""]
    if res.get("verdicts"):
        md_verdicts(L, res["verdicts"], labels, info["pass_below"])
    if res.get("randomization"):
        L += ["![cascading randomization](sanity_cascading.png)", ""]
        md_randomization(L, res["randomization"], labels)
    if res.get("data"):
        md_data(L, res["data"], labels)
    if res.get("faithfulness"):
        md_faith(L, res["faithfulness"], labels)
    if res.get("torchcam"):
        md_torchcam(L, res["torchcam"])
    path.write_text("\n".join(L) + "\n")


def figure(photo: Tensor, orig: Dict[str, Tensor], kept: Dict[str, Tensor], levels: Sequence[str], path: Path,
           title: str) -> None:
    """Rows = methods, columns = the photo, the original map, the maps as each block is randomized (cascading,
    top first), as Adebayo et al.'s Figure 2. photo (3, H, W) in [0, 1]; orig[row] (S, S); kept[row] (L, S, S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(orig)
    cols = 2 + len(levels)
    fig, ax = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.15 * len(rows) + 0.4), squeeze=False)
    for i, r in enumerate(rows):
        ims = [photo.permute(1, 2, 0).numpy(), orig[r].numpy()] + [m.numpy() for m in kept[r]]
        for j, im in enumerate(ims):
            a = ax[i][j]
            a.imshow(im, cmap=None if j == 0 else "jet", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(["image", "original"][j] if j < 2 else f"+{levels[j - 2]}", fontsize=6, rotation=30)
        ax[i][0].set_ylabel(LABELS.get(r, r), fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def load_images(args) -> Tuple[list, Tensor, Tensor, str]:
    """``(samples, images (B, 3, S, S) normalized, labels (B,), split name)``: the validation images, the
    first ``--per-class`` of each class, then the first ``--limit``."""
    split = load_split(args.data_root)
    samples = split["val"] if args.per_class is None else subset(split["val"], args.per_class)
    samples = samples[: args.limit] if args.limit else samples
    norm = normalize_transform(*backbone_stats(args.backbone))
    x = torch.stack([norm(load_image(p, args.size)) for p, _ in samples])
    return samples, x, torch.tensor([y for _, y in samples]), split.name


def maps_and_randomization(args, parts, heads: Dict[str, nn.Module], backbone: nn.Module, fm: FeatureMaps,
                           x: Tensor, fig: Sequence[int]) -> dict:
    """Chunks of images: the original features, targets and maps; with ``randomization`` also the
    randomization similarities and the cascading maps of the figure's images."""
    st = stages(backbone)
    rz = Randomizer(st, heads, args.randomization_seed) if "randomization" in parts else None
    feats, targets, maps = [], [], {r: [] for r in fm.rows}
    sims: dict = {o: {r: {s: [] for s in SIMS} for r in fm.rows} for o in ("cascading", "independent")}
    kept: Dict[int, dict] = {}
    spread: Dict[str, list] = {"original": [], "cascading": [], "independent": []}
    check = None
    t0 = time.perf_counter()
    for c in range(0, x.shape[0], args.chunk):
        acts = staged_forward(st, x[c:c + args.chunk])
        with torch.no_grad():
            t = heads["cam"](acts[-1]).argmax(1)
        if c == 0:
            check = fm.check_scorecam(acts[-1][:4], t[:4])
            print(f"  closed-form Score-CAM vs camkit.ScoreCAM: max |diff| {check}", flush=True)
        orig = fm(acts[-1], t)
        feats.append(acts[-1])
        targets.append(t)
        for r, m in orig.items():
            maps[r].append(m)
        if rz is not None:
            keep = [p - c for p in fig if c <= p < c + len(t)]
            res = randomize_chunk(rz, fm, acts, orig, t, args.compare_size, ("cascading", "independent"), keep)
            for o in ("cascading", "independent"):
                for r in fm.rows:
                    for s in SIMS:
                        sims[o][r][s].append(res[o][r][s])
            for o in ("cascading", "independent"):
                spread[o].append(res["spread"][o])
            spread["original"].append(image_spread(acts[-1]))
            for j, p in enumerate(keep):
                kept[c + p] = {r: res["kept"][r][:, j] for r in fm.rows}
        done = min(c + args.chunk, x.shape[0])
        el = time.perf_counter() - t0
        print(f"  maps{' + randomization' if rz else ''}: {done}/{x.shape[0]} images, {el:.0f} s "
              f"(eta {el / done * (x.shape[0] - done):.0f} s)", flush=True)
    out = {"feats": torch.cat(feats), "targets": torch.cat(targets), "maps": {r: torch.cat(v) for r, v in maps.items()},
           "kept": kept, "scorecam_check": check, "fast_scorecam": fm.fast_scorecam}
    if rz is not None:
        out["randomization"] = {"levels": rz.names, "level_modules": [len(lv["modules"]) for lv in rz.levels],
                                "feature_spread": {o: torch.tensor(v).mean(0).tolist() for o, v in spread.items()},
                                **{o: {r: {s: level_stats(torch.cat(v, 1)) for s, v in d.items()} for r, d in sims[o].items()}
                                   for o in sims}}
    return out


def data_part(args, heads_info: dict, need: Sequence[str], fm_rows: Sequence[str], reg, feats: Tensor,
              targets: Tensor, maps: Dict[str, Tensor], labels: Tensor, run_dir: Path, split: str,
              fast_scorecam: tuple) -> dict:
    from camkit.heads import save_head

    from .cache import load_cache

    path = find_cache(run_dir, split, args.cache)
    cache = load_cache(path)
    lrs = {m: args.shuffled_lr or heads_info[m]["lr"] for m in need}
    seed = heads_info["cam"]["seed"]
    shuffled, info = train_shuffled(cache, lrs, args.shuffled_epochs, seed=seed, label_seed=args.label_seed)
    sdir = Path(args.shuffled_dir) if args.shuffled_dir else REPO_ROOT / "runs" / "flower17" / args.backbone / "shuffled_labels"
    for m, h in shuffled.items():
        p = sdir / f"{m}_lr{lr_tag(lrs[m])}_seed{seed}_labelseed{args.label_seed}_ep{args.shuffled_epochs}.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_head(h, p)
    fm_s = FeatureMaps(shuffled, fm_rows, reg)
    fm_s.fast_scorecam, fm_s.scorecam_normalize = fast_scorecam  # the closed form holds for any CAM head
    sims: dict = {r: {s: [] for s in SIMS} for r in fm_rows}
    with torch.no_grad():
        pred = torch.cat([shuffled["cam"](feats[i:i + 64]).argmax(1) for i in range(0, len(feats), 64)])
    for c in range(0, feats.shape[0], args.chunk):
        ms = fm_s(feats[c:c + args.chunk], targets[c:c + args.chunk])
        for r, m in ms.items():
            for s, v in similarities(resize(maps[r][c:c + args.chunk], args.compare_size),
                                     resize(m, args.compare_size)).items():
                sims[r][s].append(v)
    return {"cache": str(path), "lrs": lrs, "saved_to": str(sdir), "training": info,
            "shuffled_cam_top1_true_labels": float((pred == labels).float().mean()),
            "shuffled_cam_agrees_with_real_top1": float((pred == targets).float().mean()),
            "rows": {r: {s: level_stats(torch.cat(v)[None]) for s, v in d.items()} for r, d in sims.items()}}


def faith_part(args, cam_model, x: Tensor, maps: Dict[str, Tensor], t: Tensor, labels: Tensor) -> dict:
    from camkit.evaluation import slic_segments

    scorer = nn.Sequential(fast_backbone(copy.deepcopy(cam_model.backbone), args.size, args.batch_size,
                                         not args.no_fast), cam_model.head).eval()
    sub = first_per_class(labels, args.faith_per_class)
    segments = slic_segments(x[sub], n_segments=args.irof_segments) if args.irof_segments else None
    with torch.no_grad():
        agree = float((torch.cat([scorer(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)]) == t).float().mean())
    per_image, secs = {}, {}
    for r, m in maps.items():
        t0 = time.perf_counter()
        per_image[r] = faithfulness(scorer, x, resize(m, args.size), t, sub, args, segments)
        secs[r] = time.perf_counter() - t0
        print(f"  faithfulness {r}: {secs[r]:.0f} s; ROAD combined {float(per_image[r]['road_combined'].mean()):.4f}",
              flush=True)
    return {"n_images": len(x), "n_sub": len(sub), "percentiles": args.road_percentiles, "scorer_agrees_with_targets": agree,
            "fc_runs": args.fc_runs, "fc_subset": args.fc_subset, "mono_steps": args.mono_steps,
            "irof_segments": args.irof_segments, "infidelity_samples": args.infidelity_samples,
            "seconds_per_row": secs, "summary": summarize_faith(per_image),
            "per_image": {r: {k: v.tolist() for k, v in d.items() if not k.endswith("curve")} for r, d in per_image.items()}}


PART_KEYS = {"randomization": ("randomization",), "data": ("data",), "faithfulness": ("faithfulness",),
             "torchcam": ("torchcam",)}


def merged(path: Path, res: dict, runs: dict, parts: Sequence[str]) -> Tuple[dict, dict]:
    """``res`` plus the parts of the results file ``path`` that this run did not compute, and their runs."""
    if not path.exists():
        return res, runs
    old = json.loads(path.read_text())
    old_runs = old.get("info", {}).get("part_runs", {})
    for part, keys in PART_KEYS.items():
        if part not in parts and old.get(keys[0]) is not None:
            for k in keys:
                res[k] = old[k]
            runs[part] = old_runs.get(part, {"command": old.get("info", {}).get("provenance", {}).get("command")})
    if "randomization" not in parts and "scorecam_closed_form_max_abs_diff" in old:
        res["scorecam_closed_form_max_abs_diff"] = old["scorecam_closed_form_max_abs_diff"]
    return res, runs


def write_figures(args, base: dict, x: Tensor, samples, rows: Sequence[str], rand: Optional[dict], out: Path) -> None:
    """``sanity_cascading.png`` (the first ``--fig-images`` image), ``sanity_cascading_<i>.png`` (the others)."""
    mean, std = backbone_stats(args.backbone)
    for n, (p, k) in enumerate(sorted(base["kept"].items())):
        photo = (x[p] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
        name = "sanity_cascading.png" if n == 0 else f"sanity_cascading_{p}.png"
        orig = {r: resize(base["maps"][r][p:p + 1], args.compare_size)[0] for r in rows}
        figure(photo, orig, k, rand["levels"], out / name,
               f"Cascading randomization (Adebayo et al. Fig. 2), validation image {p} ({Path(samples[p][0]).name})")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    from benchmarks.provenance import provenance

    from .methods import registry

    parts = [p for p in args.parts.split(",") if p]
    rows = [r for r in args.rows.split(",") if r]
    bad = [p for p in parts if p not in PARTS] + [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown parts or rows {bad}; parts: {PARTS}, rows: {list(ROWS)}")
    torch.set_num_threads(args.threads)
    prov = provenance(["sanity"] + argv, module="benchmarks.flower17")
    t_start, secs = time.perf_counter(), {}
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / "flower17" / args.backbone
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / "runs" / "flower17" / args.backbone
    heads_info = chosen_heads(Path(args.results) if args.results else out / "results.json", args.lr, args.seed)
    need = sorted({ROWS[r][0] for r in rows} | {"cam"}, key=lambda m: MODEL_NAMES.index(m))
    models = {m: load_trained(args.backbone, m, heads_info[m]["lr"], run_dir, "study", heads_info[m]["seed"]) for m in need}
    heads = {m: copy.deepcopy(mod.head).eval() for m, mod in models.items()}
    samples, x, labels, split = load_images(args)
    reg = registry()
    fm = FeatureMaps(heads, rows, reg)
    fig = [int(v) for v in args.fig_images.split(",") if v != "" and int(v) < len(x)]
    t0 = time.perf_counter()
    base = maps_and_randomization(args, parts, heads, copy.deepcopy(models["cam"].backbone).eval(), fm, x, fig)
    secs["maps_and_randomization"] = time.perf_counter() - t0
    res: dict = {"randomization": base.get("randomization"), "scorecam_closed_form_max_abs_diff": base["scorecam_check"],
                 "scorecam_closed_form_used": base["fast_scorecam"]}
    top1 = float((base["targets"] == labels).float().mean())
    print(f"{len(x)} images at {args.size} px; CAM model top-1 {100 * top1:.2f}%", flush=True)
    jobs = {"data": lambda: data_part(args, heads_info, need, rows, reg, base["feats"], base["targets"], base["maps"],
                                      labels, run_dir, split, (fm.fast_scorecam, fm.scorecam_normalize)),
            "faithfulness": lambda: faith_part(args, models["cam"], x, base["maps"], base["targets"], labels),
            "torchcam": lambda: torchcam_part(samples[: args.torchcam_limit] if args.torchcam_limit else samples, args)}
    for part, job in jobs.items():
        if part in parts:
            t0 = time.perf_counter()
            res[part] = job()
            secs[part] = time.perf_counter() - t0
    runs = {part: {"command": prov["command"], "date": prov["date"], "git_commit": prov["git_commit"],
                   "git_dirty": prov["git_dirty"], "load_avg_1min_at_start": prov["load_avg_1min_at_start"]}
            for part in parts}
    if args.merge:
        res, runs = merged(out / "sanity.json", res, runs, parts)
    res["verdicts"] = verdicts(res.get("randomization"), res.get("data"), args.pass_below)
    secs["total"] = time.perf_counter() - t_start
    res["info"] = {"provenance": prov, "backbone": args.backbone, "split": split, "n_images": len(x), "size": args.size,
                   "compare_size": args.compare_size, "rows": rows, "parts": parts, "heads": heads_info, "top1": top1,
                   "pass_below": args.pass_below, "args": vars(args), "seconds": secs, "part_runs": runs,
                   "load_average_end": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    tmp = out / f".sanity.json.{os.getpid()}"
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(out / "sanity.json")
    write_markdown(res, out / "sanity.md")
    write_figures(args, base, x, samples, rows, res["randomization"], out)
    print(f"wrote {out / 'sanity.md'}, {out / 'sanity.json'} in {secs['total']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
