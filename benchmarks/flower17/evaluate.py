"""Evaluation of the trained heads, the float16 check, and the Markdown table."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import torch

from .data import REPO_ROOT
from .models import MODEL_LABELS, MODEL_NAMES, checkpoint_path, lr_label, lr_tag
from .train import StackedHeads, evaluate_stacked

#: The study's Table 2 (VGG16, validation top-1 %), for comparison.
STUDY_TOP1 = {
    "cam": {1e-5: 81.47, 5e-5: 92.65, 1e-4: 92.94, 2e-4: 92.06},
    "recam_minmax": {1e-5: 77.06, 5e-5: 87.65, 1e-4: 89.41, 2e-4: 90.29},
    "recam_sigmoid": {1e-5: 79.12, 5e-5: 90.59, 1e-4: 88.53, 2e-4: 88.24},
    "recam_relu": {1e-5: 75.88, 5e-5: 88.82, 1e-4: 90.00, 2e-4: 89.71},
}
N_TRAIN_FULL, N_VAL_FULL = 6800, 340


def _load_heads(run_dir: Path, runs, which: str = "selected"):
    from camkit.heads import load_head

    return [load_head(checkpoint_path(run_dir, r["model"], r["lr"], which)) for r in runs]


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
    assert torch.equal(ref["y"], y), "cache and split disagree on the validation labels"
    diff = (xc.float() - ref["x"]).abs()
    with torch.no_grad():
        pc = heads(xc.float()).argmax(-1)
        pr = heads(ref["x"]).argmax(-1)
    ec, er = evaluate_stacked(heads, xc, y, range(heads.num_models)), evaluate_stacked(heads, ref["x"], y, range(heads.num_models))
    return {
        "max_abs_feature_diff": float(diff.max()), "max_abs_feature": float(ref["x"].abs().max()),
        "mean_abs_feature_diff": float(diff.mean()),
        "prediction_changes": int((pc != pr).sum()), "predictions": int(pc.numel()),
        "max_top1_change": max(abs(a - b) for a, b in zip(ec["top1"], er["top1"])),
        "max_val_loss_change": max(abs(a - b) for a, b in zip(ec["loss"], er["loss"])),
    }


def recam_diagnostics(head, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Why a ReCAM head fails: the share of validation images whose mask for their
    own label (the training target) is all ~0 (max < 1e-3), which leaves every
    re-activated logit at ~0; and the classes the head never predicts."""
    with torch.no_grad():
        x = x.float()
        maps = head.maps(x)
        cams = torch.einsum("bn,bnhw->bhw", head.fc.weight[y], maps)
        dead = head.normalize(cams).amax(dim=(-2, -1)) < 1e-3
        pred = head(x).argmax(1)
    n = head.num_classes
    return {"dead_label_mask_share": float(dead.float().mean()),
            "classes_with_dead_label_mask": [c for c in range(n) if bool(dead[y == c].all()) and bool((y == c).any())],
            "classes_never_predicted": [c for c in range(n) if not bool((pred == c).any())],
            "val_top1_with_label_target": float((head(x, target=y).argmax(1) == y).float().mean())}


def evaluate(args) -> dict:
    from . import cache as cache_mod
    from .data import load_split

    res = json.loads((args.out / "results.json").read_text())
    split = load_split(args.data_root)
    blob = cache_mod.load_cache(cache_mod.cache_path(args.run_dir, split.name, args.seed, args.per_class))
    runs = [r for r in res["runs"] if r["selected"]]

    heads = StackedHeads(_load_heads(Path(res.get("checkpoint_root", args.run_dir)), runs))
    allm = range(len(runs))
    t0 = time.perf_counter()
    val = evaluate_stacked(heads, blob["val"]["x"], blob["val"]["y"], allm)
    test = evaluate_stacked(heads, blob["test"]["x"], blob["test"]["y"], allm)
    per_run = {}
    for j, r in enumerate(runs):
        key = f"{r['model']}@{r['lr_tag']}"
        per_run[key] = {"val_top1_from_checkpoint": val["top1"][j], "val_matches_history": abs(val["top1"][j] - r["selected"]["val_top1"]) < 1e-9,
                        "test_top1": test["top1"][j], "test_top3": test["top3"][j], "test_top5": test["top5"][j], "test_loss": test["loss"][j]}
    from camkit.heads import ReCAMHead

    loaded = _load_heads(Path(res.get("checkpoint_root", args.run_dir)), runs)
    for r, h in zip(runs, loaded):
        if isinstance(h, ReCAMHead):
            per_run[f"{r['model']}@{r['lr_tag']}"]["recam"] = recam_diagnostics(h, blob["val"]["x"], blob["val"]["y"])
    ev = {"split": split.name, "per_run": per_run, "fp16_check": fp16_check(args, blob, heads),
          "seconds": time.perf_counter() - t0}
    (args.out / "evaluation.json").write_text(json.dumps(ev, indent=1) + "\n")
    write_table(args)
    print(f"wrote {args.out / 'evaluation.json'} and {args.out / 'table.md'}; float16 check: {ev['fp16_check']}")
    return ev


def _read(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def write_table(args) -> Path:
    res = _read(args.out / "results.json")
    ev = _read(args.out / "evaluation.json") or {"per_run": {}}
    prep = _read(args.run_dir / "prepare.json") or {}
    timing = _read(args.out / "timing_all.json")
    lrs = sorted({r["lr"] for r in res["runs"]})
    by = {(r["model"], r["lr"]): r for r in res["runs"]}
    models = [m for m in MODEL_NAMES if any((m, lr) in by for lr in lrs)]
    cache_meta = res.get("cache", {})
    L = []
    L.append(f"# Flower-17 study, backbone `{res['backbone']}`" + (" (QUICK run: not the study)" if res.get("quick") else "")
             + (" - supplementary variant: joint loss (plain CAM + ReCAM cross-entropy), not the study's protocol"
                if res.get("loss") == "joint" else ""))
    L.append("")
    L.append(f"Split: **{res['split']}** ({res['split_source']}); {res['n_train']} training rows "
             f"(originals + 9 augmented copies, seed {res['seed']}), {res['n_val']} validation images. "
             f"Adam, batch {res['batch_size']}, up to {res['epochs']} epochs, stop when val loss > 2 x train loss. "
             "ReCAM heads train with the label as ReCAM target and are evaluated with the default target "
             "(the plain CAM head's top-1).")
    L.append("")
    L.append("## Validation top-1 % (selected epoch): this run vs the study (VGG16)")
    L.append("")
    L.append("| model | " + " | ".join(lr_label(lr) for lr in lrs) + " |")
    L.append("|---|" + "---|" * len(lrs))
    for m in models:
        cells = []
        for lr in lrs:
            r = by.get((m, lr))
            ours = f"{100 * r['selected']['val_top1']:.2f}" if r and r["selected"] else "-"
            st = STUDY_TOP1.get(m, {}).get(lr)
            cells.append(f"{ours} ({st:.2f})" if st is not None else ours)
        L.append(f"| {MODEL_LABELS[m]} | " + " | ".join(cells) + " |")
    L.append("")
    L.append(f"Cells: this run's `{res['backbone']}` top-1 (the study's VGG16 top-1 in parentheses).")
    L.append("")
    L.append("## Every (model, lr): selected epoch")
    L.append("")
    L.append("| model | lr | epoch | val top-1 | val top-3 | val top-5 | val loss | train loss | stopped at | epochs run | test top-1 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        for lr in lrs:
            r = by.get((m, lr))
            if not r:
                continue
            s = r["selected"]
            t = ev["per_run"].get(f"{m}@{lr_tag(lr)}", {})
            if not s:
                L.append(f"| {MODEL_LABELS[m]} | {lr_label(lr)} | - | - | - | - | - | - | {r['stopped_at']} | {r['epochs_run']} | - |")
                continue
            tt = f"{100 * t['test_top1']:.2f}" if t else "-"
            L.append(f"| {MODEL_LABELS[m]} | {lr_label(lr)} | {s['epoch']} | {100 * s['val_top1']:.2f} | {100 * s['val_top3']:.2f} | "
                     f"{100 * s['val_top5']:.2f} | {s['val_loss']:.4f} | {s['train_loss']:.4f} | {r['stopped_at'] or '-'} | "
                     f"{r['epochs_run']} | {tt} |")
    L.append("")
    L.append("Test top-1 is the selected checkpoint on the held-out test split (not part of the study's table).")
    L.append("")
    L.append("## Wall time")
    L.append("")
    feat_s = cache_meta.get("seconds")
    L.append(f"- Feature extraction (cache build, traced backbone, {cache_meta.get('dtype')}): "
             f"{feat_s:.1f} s" if feat_s is not None else "- Feature extraction: n/a")
    L.append(f"- Training all {len(res['runs'])} heads on the cache ({res['head_epochs']} head-epochs in total): "
             f"{res['train_seconds']:.1f} s")
    if timing:
        L.append(f"- `all` end to end: prepare {timing['prepare_seconds']:.1f} s, prepare + train "
                 f"{timing['prepare_plus_train_seconds']:.1f} s, through evaluate {timing['through_evaluate_seconds']:.1f} s, "
                 f"with figures {timing['all_seconds']:.1f} s; load average (1/5/15 min) at start "
                 f"{'/'.join(f'{v:.2f}' for v in timing['load_average_at_start'])}, at end "
                 f"{'/'.join(f'{v:.2f}' for v in timing['load_average_at_end'])} on {os.cpu_count()} cores (load average > 2 means other jobs shared them).")
    st = prep.get("study_way")
    if st:
        per_epoch = st["seconds_per_image"] * (N_TRAIN_FULL + N_VAL_FULL)
        total = per_epoch * res["head_epochs"]
        L.append(f"- The study's way (EXTRAPOLATION): the eager backbone on every image every epoch measured at "
                 f"{1e3 * st['seconds_per_image']:.1f} ms/image ({st['images']} augmented training images, batch "
                 f"{st['batch_size']}, read + augment + forward) -> about {per_epoch / 60:.1f} min per head-epoch "
                 f"({N_TRAIN_FULL} + {N_VAL_FULL} images), so about {total / 3600:.1f} h for the "
                 f"{res['head_epochs']} head-epochs this grid ran (backbone cost only).")
        head_epoch = res["train_seconds"] / max(res["head_epochs"], 1)
        L.append(f"- Per head-epoch: {head_epoch:.2f} s on the cache vs about {per_epoch:.0f} s the study's way "
                 f"(x{per_epoch / head_epoch:.0f}, extrapolated).")
        if timing:
            L.append(f"- Whole grid: {timing['prepare_plus_train_seconds'] / 60:.1f} min cached (extraction included) vs "
                     f"about {total / 3600:.1f} h the study's way (x{total / timing['prepare_plus_train_seconds']:.0f}, "
                     "extrapolated).")
    diag = [(k, v["recam"]) for k, v in ev["per_run"].items() if "recam" in v]
    if diag:
        L.append("")
        L.append("## ReCAM diagnostics (validation, selected heads)")
        L.append("")
        L.append("With relu_max, a class whose CAM is negative everywhere gets an all-zero mask: every re-activated "
                 "logit is then 0 (argmax falls on class 0) and no gradient reaches the head through that image. "
                 "Sigmoid masks are never all ~0 here, yet several classes are never predicted; that mechanism is not "
                 "diagnosed. Training also on the plain CAM logits (joint_loss/) removes both failures.")
        L.append("")
        L.append("| head | images with an all-~0 mask for their label | top-1 with the label as target | classes never predicted |")
        L.append("|---|---|---|---|")
        for k, d in diag:
            m, lr = k.split("@")
            L.append(f"| {MODEL_LABELS[m]} {lr_label(float(lr))} | {100 * d['dead_label_mask_share']:.1f}% | "
                     f"{100 * d['val_top1_with_label_target']:.2f} | {len(d['classes_never_predicted'])} |")
    fc = ev.get("fp16_check")
    if fc:
        L.append("")
        L.append("## Float16 cache check")
        L.append("")
        L.append(f"Validation features recomputed in float32 with the eager backbone: max |difference| to the float16 "
                 f"cache {fc['max_abs_feature_diff']:.2e} (features up to {fc['max_abs_feature']:.2f}); "
                 f"{fc['prediction_changes']} of {fc['predictions']} validation predictions of the selected heads change; "
                 f"largest top-1 change {100 * fc['max_top1_change']:.2f} points, largest val loss change "
                 f"{fc['max_val_loss_change']:.2e}.")
    L.append("")
    L.append("## Commands")
    L.append("")
    q = " --quick" if res.get("quick") else ""
    L.append("```")
    if res.get("loss") == "joint":
        L.append(f"python -m benchmarks.flower17 train --backbone {res['backbone']} --loss joint "
                 f"--models {','.join(models)} --out {args.out.relative_to(REPO_ROOT) if args.out.is_relative_to(REPO_ROOT) else args.out}")
        L.append(f"python -m benchmarks.flower17 evaluate --backbone {res['backbone']} --out "
                 f"{args.out.relative_to(REPO_ROOT) if args.out.is_relative_to(REPO_ROOT) else args.out}")
    else:
        L.append(f"python -m benchmarks.flower17 all --backbone {res['backbone']}{q}")
    L.append("```")
    L.append("")
    path = args.out / "table.md"
    path.write_text("\n".join(L) + "\n")
    return path
