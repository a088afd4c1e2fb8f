"""The study's figures: loss curves (Figure 7), the map comparison (Figure 8,
``maps.png``) and the inference output per selected model (Figure 20).

Selected model of each kind: the learning rate with the best mean validation
top-1 over seeds under the study's rule (``evaluate.best_lr``), the first seed's
study-rule checkpoint. Images: 12 validation images drawn with
``numpy.random.default_rng(seed).choice(n_val, 12, replace=False)``, as the
study's ``inference.py`` (``get_random_batch``) draws them; seed 1090 is the one
of the study's Figure 20 command.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from .evaluate import best_lr
from .models import MODEL_LABELS, MODEL_NAMES, PAPER_MODEL
from .models import lr_label as lr_tag

FIG_SEED = 1090
N_IMAGES = 12
OVERLAYS = ("jet", "red")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- pure helpers


def red_overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The study's overlay: the map as the red channel of an otherwise black image,
    blended 50% with the image (``Image.blend(img, heat, 0.5)`` in its ``inference.py``).

    image ``(H, W, 3)`` uint8, cam ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3 or np.asarray(cam).shape != img.shape[:2]:
        raise ValueError(f"expected image (H, W, 3) and map (H, W), got {img.shape} and {np.asarray(cam).shape}")
    heat = np.zeros_like(img)
    heat[..., 0] = np.clip(np.asarray(cam, dtype=np.float32), 0, 1) * 255.0
    return np.clip(0.5 * img + 0.5 * heat + 0.5, 0, 255).astype(np.uint8)


def pick_images(n_val: int, n: int = N_IMAGES, seed: int = FIG_SEED) -> List[int]:
    """``n`` distinct indices into the validation set, drawn as the study's inference.py does."""
    return [int(i) for i in np.random.default_rng(seed).choice(n_val, size=min(n, n_val), replace=False)]


# --------------------------------------------------------------------------- loss curves


def loss_curves(res: dict, path: Path) -> Path:
    """Train and validation loss per (model, lr), one colour per seed; the stop point
    (x) and the study-rule epoch (o) marked."""
    plt = _plt()
    lrs = sorted({r["lr"] for r in res["runs"]})
    present = {r["model"] for r in res["runs"]}
    models = [m for m in MODEL_NAMES + (PAPER_MODEL,) if m in present]
    fig, axes = plt.subplots(len(models), len(lrs), figsize=(3.2 * len(lrs), 2.5 * len(models)), squeeze=False,
                             sharex=True)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    seeds = sorted({r["seed"] for r in res["runs"]})
    for i, m in enumerate(models):
        for j, lr in enumerate(lrs):
            ax = axes[i][j]
            runs = [r for r in res["runs"] if r["model"] == m and r["lr"] == lr and r["history"]]
            if not runs:
                ax.axis("off")
                continue
            tops = []
            for r in runs:
                c = colors[seeds.index(r["seed"]) % len(colors)]
                ep = [h["epoch"] for h in r["history"]]
                ax.plot(ep, [h["train_loss"] for h in r["history"]], color=c, lw=1.0)
                ax.plot(ep, [h["val_loss"] for h in r["history"]], color=c, lw=1.0, ls="--")
                if r["stopped_at"]:
                    ax.plot([r["stopped_at"]], [r["history"][r["stopped_at"] - 1]["val_loss"]], "x", color=c, ms=7)
                s = r["study"]
                if s:
                    ax.plot([s["epoch"]], [s["val_loss"]], "o", mfc="none", color=c, ms=7)
                    tops.append(f"{100 * s['val_top1']:.1f}")
            ax.set_title(f"{MODEL_LABELS[m]}, lr {lr_tag(lr)}\nstudy-rule top-1 {'/'.join(tops)}%", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(models) - 1:
                ax.set_xlabel("epoch", fontsize=8)
            if j == 0:
                ax.set_ylabel("loss", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="k", label="train"), Line2D([], [], color="k", ls="--", label="validation"),
               Line2D([], [], color="k", marker="x", ls="none", label="stop (val > 2 x train)"),
               Line2D([], [], color="k", marker="o", mfc="none", ls="none", label="study-rule epoch")]
    handles += [Line2D([], [], color=colors[k % len(colors)], label=f"seed {s}") for k, s in enumerate(seeds)]
    fig.legend(handles=handles, loc="lower center", fontsize=8, ncol=len(handles))
    fig.suptitle(f"Flower-17, {res['backbone']}: train / validation loss (split {res['split']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- maps


def selected(res: dict) -> Dict[str, dict]:
    """``{model: {"lr", "seed"}}`` for each kind of head trained in ``res``."""
    present = {r["model"] for r in res["runs"] if r["study"]}
    seed = res.get("seeds", [0])[0]
    return {m: {"lr": best_lr(res, m), "seed": seed} for m in MODEL_NAMES + (PAPER_MODEL,) if m in present}


def _up(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear, clipped to [0, 1]."""
    import torch.nn.functional as F

    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0].clamp_(0, 1)


def map_rows(args, res: dict, x: torch.Tensor) -> List[dict]:
    """One dict per row: key, label, maps (B, H, W) in [0, 1], logits (B, N) of the row's
    model (captions), shown (B,) the class each map shows (the plain top-1).

    The frozen backbone runs once; the heads' own methods run on its features (the
    same maps as on the whole model, up to the upsampling, which is the same
    bilinear resize to the input)."""
    import camkit
    from camkit.heads import CAMModel
    from camkit.hooks import eval_mode

    from .methods import paper_recam, study_layercam
    from .models import load_trained

    def on_features(model):
        return CAMModel(torch.nn.Identity(), model.head, freeze=True).eval()

    sel = selected(res)
    rows = []
    c = sel["cam"]
    cam_model = load_trained(args.backbone, "cam", c["lr"], args.run_dir, "study", c["seed"])
    size = x.shape[-2:]
    with torch.no_grad(), eval_mode(cam_model):
        feats = cam_model.backbone(x)
    head = on_features(cam_model)
    for norm in ("minmax", "sigmoid", "relu_max"):
        r = camkit.CAM(head, normalize=norm)(feats)
        rows.append({"key": f"cam_{norm}", "label": f"CAM {norm} (lr {lr_tag(c['lr'])})", "maps": _up(r.maps[:, 0], size),
                     "logits": r.logits, "shown": r.targets[:, 0]})
    for m in MODEL_NAMES[1:]:
        if m not in sel:
            continue
        s = sel[m]
        model = on_features(load_trained(args.backbone, m, s["lr"], args.run_dir, "study", s["seed"]))
        with torch.no_grad():
            top1 = model.head.plain_logits(feats).argmax(1)
        r = camkit.ReCAM(model)(feats, targets=top1[:, None])  # the map of the plain top-1 class, as get_recam
        rows.append({"key": m, "label": f"{MODEL_LABELS[m]} (lr {lr_tag(s['lr'])})", "maps": _up(r.maps[:, 0], size),
                     "logits": r.logits, "shown": top1})
    r = study_layercam(cam_model, args.backbone)(x)
    rows.append({"key": "layercam", "label": "LayerCAM 0.4/0.4/0.2", "maps": r.maps[:, 0], "logits": r.logits,
                 "shown": r.targets[:, 0]})
    if PAPER_MODEL in sel:
        s = sel[PAPER_MODEL]
        model = on_features(load_trained(args.backbone, PAPER_MODEL, s["lr"], args.run_dir, "study", s["seed"]))
        maps, logits, t = paper_recam(model, feats)
        rows.append({"key": PAPER_MODEL, "label": f"Paper ReCAM (lr {lr_tag(s['lr'])}), supplement",
                     "maps": _up(maps[:, 0], size), "logits": logits, "shown": t[:, 0]})
    return rows


def _samples(args):
    from .data import load_image, load_split, subset
    from .models import backbone_stats, preprocess_transform

    split = load_split(args.data_root)
    val = split["val"] if not args.per_class else subset(split["val"], args.per_class)
    idx = pick_images(len(val), getattr(args, "fig_images", N_IMAGES), getattr(args, "fig_seed", FIG_SEED))
    samples = [val[i] for i in idx]
    pre = preprocess_transform(*backbone_stats(args.backbone))
    imgs = [load_image(p) for p, _ in samples]
    return samples, imgs, torch.stack([pre(im) for im in imgs])


def map_figure(rows: List[dict], samples, imgs, path: Path, title: str) -> dict:
    """Figure 8: one row per method, one column per image; maps after postprocess(0.3, 1.5)."""
    plt = _plt()
    import matplotlib

    from camkit.normalize import postprocess

    from .data import CLASSES

    n = len(samples)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.45 * n + 1.2, 1.75 * len(rows)), squeeze=False)
    jet = matplotlib.colormaps["jet"]
    correct = {}
    for i, row in enumerate(rows):
        maps = postprocess(row["maps"]).numpy()
        pred = row["logits"].argmax(1)
        correct[row["key"]] = int(sum(int(pred[j]) == samples[j][1] for j in range(n)))
        for j in range(n):
            ax = axes[i][j]
            base = np.asarray(imgs[j], dtype=np.float32) / 255.0
            ax.imshow(0.5 * base + 0.5 * jet(maps[j])[..., :3])
            ax.set_xticks([])
            ax.set_yticks([])
            t, s, p = samples[j][1], int(row["shown"][j]), int(pred[j])
            extra = "" if p == s else f"\n(predicts {CLASSES[p]})"
            ax.set_title(f"T: {CLASSES[t]}\nmap: {CLASSES[s]}{extra}", fontsize=6, color="green" if t == s else "red")
            if j == 0:
                ax.set_ylabel(row["label"].replace(" (", "\n("), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return {"images": [Path(p).name for p, _ in samples], "correct_per_row": correct}


FIG20_ROWS = ("cam_minmax", "recam_minmax", "recam_sigmoid", "recam_relu", "layercam", PAPER_MODEL)


def figure20(rows: List[dict], samples, imgs, out: Path, overlays=OVERLAYS, tile: int = 128,
             seed: int = FIG_SEED) -> List[str]:
    """Per selected model: the labelled 3x4 grid (truth, top-3 of that model), the
    compact 3x4 grid and the strip, for each overlay style ("jet": camkit's colormap
    overlay; "red": the study's red-channel blend); maps after postprocess(0.3, 1.5)."""
    from PIL import Image

    from camkit import overlay as ov
    from camkit.normalize import postprocess

    from .data import CLASSES

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rows:
        if row["key"] not in FIG20_ROWS:
            continue
        maps = postprocess(row["maps"]).numpy()
        probs = row["logits"].softmax(1)
        titles = []
        for j, (_, y) in enumerate(samples):
            top = probs[j].topk(3)
            titles.append(ov.tile_title([(CLASSES[int(k)], float(p)) for p, k in zip(top.values, top.indices)],
                                        truth=CLASSES[y]))
        for style in overlays:
            tiles = []
            for j, im in enumerate(imgs):
                a = np.asarray(im, dtype=np.uint8)
                t = ov.overlay(a, maps[j], alpha=0.5) if style == "jet" else Image.fromarray(red_overlay(a, maps[j]))
                tiles.append(t.resize((tile, tile), Image.BILINEAR))
            stem = f"{row['key']}_{style}"
            fig = ov.labelled_grid(tiles, titles, cols=4, tile_inches=2.0,
                                   suptitle=f"{row['label']}: validation images, seed {seed}")
            fig.savefig(out / f"{stem}_labelled.jpg", dpi=72, bbox_inches="tight", pad_inches=0.05)
            ov.compact_grid(tiles, rows=-(-len(tiles) // 4), cols=4)[0].save(out / f"{stem}_compact.jpg", quality=85)
            ov.grid(tiles, cols=len(tiles)).save(out / f"{stem}_strip.jpg", quality=85)
            written += [f"{stem}_labelled.jpg", f"{stem}_compact.jpg", f"{stem}_strip.jpg"]
    return written


def figures(args) -> dict:
    from benchmarks.provenance import provenance

    prov = provenance(args.argv, module="benchmarks.flower17")
    res = json.loads((args.out / "results.json").read_text())
    out = {"provenance": prov, "loss_curves": loss_curves(res, args.out / "loss_curves.png").name,
           "selected": selected(res)}
    seed = getattr(args, "fig_seed", FIG_SEED)
    out["fig_seed"] = seed
    samples, imgs, x = _samples(args)
    rows = map_rows(args, res, x)
    title = (f"Flower-17 validation images (seed {seed}), {args.backbone}; maps after postprocess(0.3, 1.5); "
             "T = truth, map = the class shown (the plain top-1)")
    out["maps"] = map_figure(rows, samples, imgs, args.out / "maps.png", title)
    out["figure20"] = figure20(rows, samples, imgs, args.out / "figure20", overlays=getattr(args, "overlays", OVERLAYS),
                               seed=seed)
    (args.out / "figures.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out / 'loss_curves.png'}, {args.out / 'maps.png'} and {len(out['figure20'])} files in "
          f"{args.out / 'figure20'}")
    return out
