"""Evaluation of the trained heads, the diagnostics, the float16 check, and the Markdown table."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .data import CLASSES
from .models import ALL_MODELS, MODEL_LABELS, MODEL_NAMES, checkpoint_path, lr_label
from .train import RULES, StackedHeads, evaluate_stacked

#: The study's Table 2 (VGG16, validation top-1 %), for comparison.
STUDY_TOP1 = {
    "cam": {1e-5: 81.47, 5e-5: 92.65, 1e-4: 92.94, 2e-4: 92.06},
    "recam_minmax": {1e-5: 77.06, 5e-5: 87.65, 1e-4: 89.41, 2e-4: 90.29},
    "recam_sigmoid": {1e-5: 79.12, 5e-5: 90.59, 1e-4: 88.53, 2e-4: 88.24},
    "recam_relu": {1e-5: 75.88, 5e-5: 88.82, 1e-4: 90.00, 2e-4: 89.71},
}
N_TRAIN_FULL, N_VAL_FULL = 6800, 340
RULE_TEXT = {
    "study": "the study's rule: checkpoints kept only when the validation loss improved; the best top-1 among "
             "those not overfitted (train loss >= val loss / 2), before the stop",
    "today": "today's rule: the best top-1 among all epochs not overfitted",
}
#: z = mean(a * sigmoid(a)) over a map is smallest at a = -1.278 (d/da a sigmoid(a) = 0 there): a sigmoid-masked
#: ReCAM logit of a class whose CAM lies below it rises when the CAM is pushed further down.
SIGMOID_TRAP = -1.278


def run_key(r: dict) -> str:
    return f"{r['model']}@{r['lr_tag']}@seed{r['seed']}"


def _load_heads(ckpt_root: Path, runs: Sequence[dict], which: str):
    from camkit.heads import load_head

    return [load_head(checkpoint_path(ckpt_root, r["model"], r["lr"], which, r["seed"])) for r in runs]


# --------------------------------------------------------------------------- diagnostics


def round_trip(mask: torch.Tensor, size: int = 256) -> torch.Tensor:
    """The study's resize of a (B, h, w) mask to size x size and back (bilinear, as ``recam_features``)."""
    h, w = mask.shape[-2:]
    up = F.interpolate(mask[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def recam_diagnostics(head, x: torch.Tensor, y: torch.Tensor, dead: float = 1e-3) -> dict:
    """What a ReCAM head's masks look like on features x (B, C, h, w) with labels y (B,).

    Per class (by true label): images whose mask is all ~0 (max < ``dead``) for the
    plain top-1's CAM (the study's mask) and for the label's CAM; images whose CAM
    lies below -1.278 at every position (the sigmoid trap) and the share of such
    positions, for both targets; classes the head never predicts; how often the
    re-activated top-1 differs from the plain top-1; and what the study's 7 -> 256
    -> 7 resize of the mask (left out by camkit) changes.
    """
    x = x.float()
    n = head.num_classes
    cams = head.cam(x)  # (B, N, h, w)
    plain = head.plain_logits(x)
    top1 = plain.argmax(1)
    idx = torch.arange(len(y))
    out: Dict[str, object] = {}
    for name, t in (("top1", top1), ("label", y)):
        c = cams[idx, t]  # (B, h, w)
        is_dead = head.normalize(c).amax(dim=(-2, -1)) < dead
        below = c < SIGMOID_TRAP
        out[f"dead_{name}_mask_per_class"] = [int(is_dead[y == k].sum()) for k in range(n)]
        out[f"dead_{name}_mask_share"] = float(is_dead.float().mean())
        out[f"{name}_cam_below_trap_share"] = float(below.flatten(1).all(1).float().mean())
        out[f"{name}_cam_positions_below_trap_share"] = float(below.float().mean())
    pred = head(x).argmax(1)
    out["classes_never_predicted"] = [k for k in range(n) if not bool((pred == k).any())]
    out["val_top1"] = float((pred == y).float().mean())
    out["recam_top1_differs_from_plain_top1"] = float((pred != top1).float().mean())
    maps = head.maps(x)
    mask = head.normalize(cams[idx, top1])
    rt = round_trip(mask)
    logits_rt = head.fc((maps * rt[:, None]).mean(dim=(-2, -1)))
    out["round_trip_max_abs_mask_change"] = float((rt - mask).abs().max())
    out["round_trip_prediction_changes"] = int((logits_rt.argmax(1) != pred).sum())
    return out


# --------------------------------------------------------------------------- evaluation


def fp16_check(args, cache: dict, heads: StackedHeads) -> dict:
    """Validation features recomputed in float32 with the eager backbone versus the
    float16 cache (built by the traced backbone): feature error and whether any
    head's validation prediction or top-1 changes."""
    from . import cache as cache_mod
    from .data import load_split, subset
    from .models import backbone_stats, build_backbone, normalize_transform

    split = load_split(args.data_root)
    samples = split["val"] if not args.per_class else subset(split["val"], args.per_class)
    net, _, channels = build_backbone(args.backbone)
    norm = normalize_transform(*backbone_stats(args.backbone))
    ref = cache_mod.extract_features(net, norm, samples, channels, None, batch_size=32, dtype=torch.float32,
                                     desc="val float32 (eager)")
    xc, y = cache["val"]["x"], cache["val"]["y"]
    if not torch.equal(ref["y"], y):
        raise RuntimeError("cache and split disagree on the validation labels")
    diff = (xc.float() - ref["x"]).abs()
    with torch.no_grad():
        pc = heads(xc.float()).argmax(-1)
        pr = heads(ref["x"]).argmax(-1)
    allm = range(heads.num_models)
    ec, er = evaluate_stacked(heads, xc, y, allm), evaluate_stacked(heads, ref["x"], y, allm)
    return {
        "max_abs_feature_diff": float(diff.max()), "max_abs_feature": float(ref["x"].abs().max()),
        "mean_abs_feature_diff": float(diff.mean()),
        "prediction_changes": int((pc != pr).sum()), "predictions": int(pc.numel()),
        "max_top1_change": max(abs(a - b) for a, b in zip(ec["top1"], er["top1"])),
        "max_val_loss_change": max(abs(a - b) for a, b in zip(ec["loss"], er["loss"])),
    }


def evaluate(args) -> dict:
    from benchmarks.provenance import provenance
    from camkit.heads import ReCAMHead

    from . import cache as cache_mod
    from .data import load_split

    prov = provenance(args.argv, module="benchmarks.flower17")
    res = json.loads((args.out / "results.json").read_text())
    split = load_split(args.data_root)
    blob = cache_mod.load_cache(cache_mod.cache_path(args.run_dir, split.name, res.get("cache_seed", 0), args.per_class))
    ckpt_root = args.run_dir / res.get("checkpoint_root", "")
    t0 = time.perf_counter()
    per_run: Dict[str, dict] = {}
    loss = res.get("loss", "recam")
    study_heads = None
    for rule in RULES:
        runs = [r for r in res["runs"] if r[rule]]
        loaded = _load_heads(ckpt_root, runs, rule)
        heads = StackedHeads(loaded)
        allm = range(len(runs))
        val = evaluate_stacked(heads, blob["val"]["x"], blob["val"]["y"], allm, loss=loss)
        test = evaluate_stacked(heads, blob["test"]["x"], blob["test"]["y"], allm, loss=loss)
        for j, r in enumerate(runs):
            d = per_run.setdefault(run_key(r), {})
            d[rule] = {"val_top1_from_checkpoint": val["top1"][j],
                       "val_matches_history": abs(val["top1"][j] - r[rule]["val_top1"]) < 1e-9,
                       "test_top1": test["top1"][j], "test_top3": test["top3"][j], "test_top5": test["top5"][j],
                       "test_loss": test["loss"][j]}
            if rule == "study" and isinstance(loaded[j], ReCAMHead):
                d["recam"] = recam_diagnostics(loaded[j], blob["val"]["x"], blob["val"]["y"])
        if rule == "study":
            study_heads = heads
    ev = {"provenance": prov, "split": split.name, "per_run": per_run,
          "fp16_check": fp16_check(args, blob, study_heads) if study_heads is not None else None,
          "seconds": time.perf_counter() - t0}
    (args.out / "evaluation.json").write_text(json.dumps(ev, indent=1) + "\n")
    write_table(args)
    print(f"wrote {args.out / 'evaluation.json'} and {args.out / 'table.md'}; float16 check: {ev['fp16_check']}")
    return ev


# --------------------------------------------------------------------------- summaries


def cell_stats(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation, min and max of top-1 fractions (in %)."""
    v = [100 * x for x in values]
    return {"n": len(v), "mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else float("nan"),
            "min": min(v), "max": max(v), "values": v}


def study_mark(study: Optional[float], st: dict) -> str:
    """Where the study's number lies against the seeds' range: in, above or below it."""
    if study is None:
        return ""
    if study > st["max"]:
        return f"study {study:.2f} above (+{study - st['max']:.2f})"
    if study < st["min"]:
        return f"study {study:.2f} below ({study - st['min']:.2f})"
    return f"study {study:.2f} in range"


def summarize(res: dict, rule: str) -> Dict[str, Dict[float, dict]]:
    """``{model: {lr: cell_stats of the rule's val top-1 over seeds}}``."""
    out: Dict[str, Dict[float, dict]] = {}
    for r in res["runs"]:
        if r[rule]:
            out.setdefault(r["model"], {}).setdefault(r["lr"], []).append(r[rule]["val_top1"])
    return {m: {lr: cell_stats(v) for lr, v in d.items()} for m, d in out.items()}


def best_lr(res: dict, model: str, rule: str = "study") -> float:
    """The learning rate with the best mean validation top-1 over seeds under ``rule``
    (ties: lower mean validation loss, then lower lr)."""
    cells: Dict[float, List[dict]] = {}
    for r in res["runs"]:
        if r["model"] == model and r[rule]:
            cells.setdefault(r["lr"], []).append(r[rule])
    if not cells:
        raise ValueError(f"no trained run of {model}")
    return min(cells, key=lambda lr: (-statistics.fmean(h["val_top1"] for h in cells[lr]),
                                      statistics.fmean(h["val_loss"] for h in cells[lr]), lr))


def _read(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(st: dict) -> str:
    sd = f" ± {st['sd']:.2f}" if st["n"] > 1 else ""
    return f"{st['mean']:.2f}{sd} [{st['min']:.2f}-{st['max']:.2f}]"


def _grid_table(L: List[str], summ: Dict[str, Dict[float, dict]], models: Sequence[str], lrs: Sequence[float],
                with_study: bool) -> None:
    L.append("| model | " + " | ".join(lr_label(lr) for lr in lrs) + " |")
    L.append("|---|" + "---|" * len(lrs))
    for m in models:
        cells = []
        for lr in lrs:
            st = summ.get(m, {}).get(lr)
            if st is None:
                cells.append("-")
                continue
            s = STUDY_TOP1.get(m, {}).get(lr)
            cells.append(_fmt(st) + (f"; {study_mark(s, st)}" if with_study and s is not None else ""))
        L.append(f"| {MODEL_LABELS[m]} | " + " | ".join(cells) + " |")


def variant_title(res: dict) -> str:
    if res.get("quick"):
        return "QUICK run: not the study"
    v = res.get("variant") or ""
    if not v:
        return "the study's protocol (plain top-1 mask)"
    parts = []
    if res.get("mask") == "label":
        parts.append("ReCAM mask = the label's CAM in training")
    if res.get("loss") == "joint":
        parts.append("joint loss (plain CAM + ReCAM cross-entropy)")
    return "SUPPLEMENT, not the study's protocol: " + "; ".join(parts)


def write_table(args) -> Path:
    from benchmarks.provenance import markdown_header

    res = _read(args.out / "results.json")
    ev = _read(args.out / "evaluation.json") or {"per_run": {}}
    prep = _read(args.run_dir / "prepare.json") or {}
    timing = _read(args.out / "timing_all.json")
    lrs = sorted({r["lr"] for r in res["runs"]})
    seeds = res.get("seeds", [res.get("seed", 0)])
    present = {r["model"] for r in res["runs"]}
    models = [m for m in MODEL_NAMES if m in present]
    supp = [m for m in ALL_MODELS if m in present and m not in MODEL_NAMES]
    cache_meta = res.get("cache", {})
    L: List[str] = []
    L.append(f"# Flower-17 study, backbone `{res['backbone']}`: {variant_title(res)}")
    L.append("")
    if res.get("provenance"):
        L.append("Training: " + markdown_header(res["provenance"]))
    if ev.get("provenance"):
        L.append("Evaluation: " + markdown_header(ev["provenance"]))
    L.append(f"Split: **{res['split']}** ({res['split_source']}); {res['n_train']} training rows (originals + 9 "
             f"augmented copies, augmentation seed {res.get('cache_seed', 0)}), {res['n_val']} validation images. "
             f"Adam, batch {res['batch_size']}, up to {res['epochs']} epochs, stop when val loss > 2 x train loss; "
             f"training seeds {', '.join(map(str, seeds))} (initial weights and batch order). ReCAM heads: the maps "
             f"masked by the normalized CAM of "
             + ("the **label** in training and of the plain top-1 class in evaluation"
                if res.get("mask") == "label" else "the **plain head's top-1 class**, in training and evaluation, "
                "gradients through the mask (the study's code)")
             + (", loss = ReCAM cross-entropy + plain CAM cross-entropy" if res.get("loss") == "joint" else "")
             + ".")
    L.append("")
    for rule in RULES:
        summ = summarize(res, rule)
        L.append(f"## Validation top-1 %, {RULE_TEXT[rule]}")
        L.append("")
        L.append(f"Cells: mean ± sample standard deviation over {len(seeds)} seeds [min-max]; the study's VGG16 "
                 "number and where it lies against this range.")
        L.append("")
        _grid_table(L, summ, models, lrs, with_study=True)
        if supp:
            L.append("")
            L.append("Supplement (not in the study): ReCAM as Chen et al. (2022) define it, `camkit.heads.PaperReCAMHead` "
                     f"(lambda = {res.get('lam', 1.0):g}); it classifies with the plain CAM logits.")
            L.append("")
            _grid_table(L, summ, supp, lrs, with_study=False)
        L.append("")
    L.append("## Every run")
    L.append("")
    L.append("Study's rule (S) and today's rule (T): epoch, val top-1/3/5 %, val loss; test top-1 % of the S checkpoint "
             "on the held-out test split (not part of the study's table).")
    L.append("")
    L.append("| model | lr | seed | S epoch | S top-1 | S top-3 | S top-5 | S val loss | T epoch | T top-1 | stopped at | "
             "epochs run | S test top-1 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in models + supp:
        for lr in lrs:
            for r in [r for r in res["runs"] if r["model"] == m and r["lr"] == lr]:
                s, t = r["study"], r["today"]
                te = ev["per_run"].get(run_key(r), {}).get("study", {})
                sc = (f"{s['epoch']} | {100 * s['val_top1']:.2f} | {100 * s['val_top3']:.2f} | {100 * s['val_top5']:.2f} | "
                      f"{s['val_loss']:.4f}") if s else "- | - | - | - | -"
                tc = f"{t['epoch']} | {100 * t['val_top1']:.2f}" if t else "- | -"
                tt = f"{100 * te['test_top1']:.2f}" if te else "-"
                L.append(f"| {MODEL_LABELS[m]} | {lr_label(lr)} | {r['seed']} | {sc} | {tc} | {r['stopped_at'] or '-'} | "
                         f"{r['epochs_run']} | {tt} |")
    L.append("")
    diag_rows = [(r, ev["per_run"][run_key(r)]["recam"]) for r in res["runs"]
                 if "recam" in ev["per_run"].get(run_key(r), {})]
    if diag_rows:
        write_diagnostics(L, res, diag_rows, lrs)
    fc = ev.get("fp16_check")
    if fc:
        L.append("## Float16 cache check")
        L.append("")
        L.append(f"Validation features recomputed in float32 with the eager backbone: max |difference| to the float16 "
                 f"cache {fc['max_abs_feature_diff']:.2e} (features up to {fc['max_abs_feature']:.2f}); "
                 f"{fc['prediction_changes']} of {fc['predictions']} validation predictions of the study-rule heads "
                 f"change; largest top-1 change {100 * fc['max_top1_change']:.2f} points, largest val loss change "
                 f"{fc['max_val_loss_change']:.2e}.")
        L.append("")
    write_timing(L, res, prep, timing, cache_meta)
    L.append("## Commands")
    L.append("")
    L.append("```")
    L.append(res["provenance"]["command"] if res.get("provenance") else "python -m benchmarks.flower17 train")
    if ev.get("provenance"):
        L.append(ev["provenance"]["command"])
    L.append("```")
    L.append("")
    path = args.out / "table.md"
    path.write_text("\n".join(L) + "\n")
    return path


def write_diagnostics(L: List[str], res: dict, rows: List[tuple], lrs: Sequence[float]) -> None:
    train_t = "label" if res.get("mask") == "label" else "top1"
    L.append("## ReCAM diagnostics (validation, study-rule checkpoints; computed by `evaluate.recam_diagnostics`)")
    L.append("")
    L.append("Per head: images whose mask is all ~0 (max < 1e-3) for the plain top-1's CAM (the mask the study's code "
             "uses) and for the label's CAM; images whose CAM of that class lies below -1.278 at every position (where "
             "a sigmoid-masked logit mean(a * sigmoid(a)) rises as the CAM falls further: a trap for sigmoid heads "
             f"trained towards that class; the training mask here is the **{'label' if train_t == 'label' else 'top-1'}**); "
             "classes never predicted; the share of images whose re-activated top-1 differs from the plain top-1; the "
             "largest change of a mask by the study's 7 -> 256 -> 7 bilinear resize (left out by camkit) and the "
             "predictions it changes. Values per seed, separated by /.")
    L.append("")
    L.append("| head | lr | dead top-1 masks | dead label masks | top-1 CAM below -1.278 | label CAM below -1.278 | "
             "classes never predicted | ReCAM top-1 != plain top-1 | resize: max mask change / predictions changed |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    by: Dict[tuple, List[tuple]] = {}
    for r, d in rows:
        by.setdefault((r["model"], r["lr"]), []).append((r, d))
    n_val = res["n_val"]

    def per_seed(items, f):
        return " / ".join(f(d) for _, d in items)

    for m in MODEL_NAMES:
        for lr in lrs:
            items = by.get((m, lr))
            if not items:
                continue
            L.append(
                f"| {MODEL_LABELS[m]} | {lr_label(lr)} | "
                + per_seed(items, lambda d: str(round(d["dead_top1_mask_share"] * n_val))) + " | "
                + per_seed(items, lambda d: str(round(d["dead_label_mask_share"] * n_val))) + " | "
                + per_seed(items, lambda d: f"{100 * d['top1_cam_below_trap_share']:.1f}%") + " | "
                + per_seed(items, lambda d: f"{100 * d['label_cam_below_trap_share']:.1f}%") + " | "
                + per_seed(items, lambda d: str(len(d["classes_never_predicted"]))) + " | "
                + per_seed(items, lambda d: f"{100 * d['recam_top1_differs_from_plain_top1']:.1f}%") + " | "
                + per_seed(items, lambda d: f"{d['round_trip_max_abs_mask_change']:.3f}/{d['round_trip_prediction_changes']}")
                + " |")
    L.append("")
    # per class, at each head's best learning rate
    L.append("Dead masks per class (validation images of that class, summed over seeds) at each head's best learning "
             "rate (study rule, mean over seeds); never-predicted classes listed by name:")
    L.append("")
    L.append("| head (lr) | mask | " + " | ".join(CLASSES) + " | never predicted |")
    L.append("|---|---|" + "---|" * len(CLASSES) + "---|")
    for m in MODEL_NAMES[1:]:
        if not any(k[0] == m for k in by):
            continue
        lr = best_lr(res, m)
        items = by.get((m, lr), [])
        never = sorted({c for _, d in items for c in d["classes_never_predicted"]})
        for which in ("top1", "label"):
            counts = [sum(d[f"dead_{which}_mask_per_class"][k] for _, d in items) for k in range(len(CLASSES))]
            L.append(f"| {MODEL_LABELS[m]} ({lr_label(lr)}) | {which} | " + " | ".join(map(str, counts)) + " | "
                     + (", ".join(CLASSES[c] for c in never) or "none") + " |")
    L.append("")


def write_timing(L: List[str], res: dict, prep: dict, timing: Optional[dict], cache_meta: dict) -> None:
    L.append("## Wall time")
    L.append("")
    feat_s = cache_meta.get("seconds")
    if feat_s is not None:
        L.append(f"- Feature extraction (cache build, traced backbone, {cache_meta.get('dtype')}): {feat_s:.1f} s "
                 f"({cache_meta.get('threads')} threads).")
    per_seed = res.get("train_seconds_per_seed")
    load = res.get("provenance", {}).get("load_avg_1min_at_start")
    wall = res.get("train_wall_seconds")
    L.append(f"- Training all {len(res['runs'])} heads on the cache ({res['head_epochs']} head-epochs): "
             + (f"{wall:.0f} s wall (seeds in parallel processes when the command says --jobs), " if wall else "")
             + f"{res['train_seconds']:.1f} s summed over seeds"
             + (f" ({', '.join(f'{s:.0f}' for s in per_seed)} s per seed)" if per_seed else "")
             + (f"; load average {load:.1f} at start, {res['load_average_at_end'][0]:.1f} at end on "
                f"{res['provenance']['cpu_cores']} cores"
                + (" (a load above the core count means the cores were shared)"
                   if max(load, res['load_average_at_end'][0]) > res['provenance']['cpu_cores'] else "")
                if load is not None and res.get("load_average_at_end") else "") + ".")
    if timing:
        L.append(f"- `all` end to end: prepare {timing['prepare_seconds']:.1f} s, prepare + train "
                 f"{timing['prepare_plus_train_seconds']:.1f} s, through evaluate {timing['through_evaluate_seconds']:.1f} s, "
                 f"with figures {timing['all_seconds']:.1f} s; load average (1/5/15 min) at start "
                 f"{'/'.join(f'{v:.2f}' for v in timing['load_average_at_start'])}, at end "
                 f"{'/'.join(f'{v:.2f}' for v in timing['load_average_at_end'])}.")
    st = prep.get("study_way")
    if st and res["head_epochs"]:
        per_epoch = st["seconds_per_image"] * (N_TRAIN_FULL + N_VAL_FULL)
        total = per_epoch * res["head_epochs"]
        head_epoch = res["train_seconds"] / res["head_epochs"]  # per process
        L.append(f"- The study's way (EXTRAPOLATION): the eager backbone on every image every epoch measured at "
                 f"{1e3 * st['seconds_per_image']:.1f} ms/image ({st['images']} augmented training images, batch "
                 f"{st['batch_size']}) -> about {per_epoch / 60:.1f} min per head-epoch, about {total / 3600:.1f} h for "
                 f"the {res['head_epochs']} head-epochs here; {head_epoch:.2f} s per head-epoch on the cache "
                 f"(x{per_epoch / head_epoch:.0f}).")
    L.append("")
