"""Loss curves (the study's Figure 7) and the map comparison figure."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import torch

from .models import LAYERCAM_LAYERS, LAYERCAM_WEIGHTS, MODEL_LABELS, MODEL_NAMES
from .models import lr_label as lr_tag

FIG_SEED = 0
N_IMAGES = 12


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(res: dict, path: Path) -> Path:
    """Train and validation loss per (model, lr); the stop point (x) and the
    selected epoch (o) marked."""
    plt = _plt()
    lrs = sorted({r["lr"] for r in res["runs"]})
    models = [m for m in MODEL_NAMES if any(r["model"] == m for r in res["runs"])]
    fig, axes = plt.subplots(len(models), len(lrs), figsize=(3.2 * len(lrs), 2.5 * len(models)), squeeze=False,
                             sharex=True)
    by = {(r["model"], r["lr"]): r for r in res["runs"]}
    for i, m in enumerate(models):
        for j, lr in enumerate(lrs):
            ax = axes[i][j]
            r = by.get((m, lr))
            if not r or not r["history"]:
                ax.axis("off")
                continue
            ep = [h["epoch"] for h in r["history"]]
            ax.plot(ep, [h["train_loss"] for h in r["history"]], label="train", color="tab:blue")
            ax.plot(ep, [h["val_loss"] for h in r["history"]], label="validation", color="tab:orange")
            if r["stopped_at"]:
                h = r["history"][r["stopped_at"] - 1]
                ax.axvline(r["stopped_at"], color="red", ls="--", lw=0.8)
                ax.plot([r["stopped_at"]], [h["val_loss"]], "x", color="red", ms=8, label="stop")
            s = r["selected"]
            if s:
                ax.plot([s["epoch"]], [s["val_loss"]], "o", mfc="none", color="green", ms=8, label="selected")
                ax.set_title(f"{MODEL_LABELS[m]}, lr {lr_tag(lr)}\nselected ep {s['epoch']}: top-1 {100 * s['val_top1']:.1f}%",
                             fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(models) - 1:
                ax.set_xlabel("epoch", fontsize=8)
            if j == 0:
                ax.set_ylabel("cross-entropy", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="tab:blue", label="train"), Line2D([], [], color="tab:orange", label="validation"),
               Line2D([], [], color="red", marker="x", ls="--", lw=0.8, label="stop (val > 2 x train)"),
               Line2D([], [], color="green", marker="o", mfc="none", ls="none", label="selected epoch")]
    fig.legend(handles=handles, loc="lower center", fontsize=8, ncol=4)
    fig.suptitle(f"Flower-17, {res['backbone']}: train / validation loss (split {res['split']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def best_lr(res: dict, model: str) -> float:
    runs = [r for r in res["runs"] if r["model"] == model and r["selected"]]
    if not runs:
        raise ValueError(f"no trained run of {model}")
    return min(runs, key=lambda r: (-r["selected"]["val_top1"], r["selected"]["val_loss"], r["lr"]))["lr"]


def pick_images(n_val: int, n: int = N_IMAGES, seed: int = FIG_SEED) -> List[int]:
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_val, generator=g)[: min(n, n_val)].tolist())


def map_rows(args, res: dict, x: torch.Tensor):
    """[(row label, maps (B, H, W) numpy, predictions (B,))] for the 7 rows."""
    import camkit
    from camkit.normalize import postprocess

    from .models import load_trained

    rows = []
    lr = best_lr(res, "cam")
    cam_model = load_trained(args.backbone, "cam", lr, args.run_dir)
    for norm in ("minmax", "sigmoid", "relu_max"):
        r = camkit.CAM(cam_model, normalize=norm)(x)
        rows.append((f"CAM {norm}\n(lr {lr_tag(lr)})", r.maps[:, 0], r.logits.argmax(1)))
    for m in ("recam_minmax", "recam_sigmoid", "recam_relu"):
        if not any(rr["model"] == m and rr["selected"] for rr in res["runs"]):
            continue
        mlr = best_lr(res, m)
        model = load_trained(args.backbone, m, mlr, args.run_dir)
        r = camkit.ReCAM(model)(x)
        rows.append((f"{MODEL_LABELS[m]}\n(lr {lr_tag(mlr)})", r.maps[:, 0], r.logits.argmax(1)))
    r = camkit.LayerCAM(cam_model, layers=LAYERCAM_LAYERS[args.backbone], fusion="weighted",
                        weights=list(LAYERCAM_WEIGHTS))(x)
    rows.append(("LayerCAM\n0.4/0.4/0.2", r.maps[:, 0], r.logits.argmax(1)))
    return [(name, postprocess(mp).numpy(), pred.numpy()) for name, mp, pred in rows]


def map_figure(args, res: dict, path: Path) -> dict:
    plt = _plt()
    import matplotlib

    from .data import CLASSES, load_image, load_split, subset
    from .models import build_backbone

    split = load_split(args.data_root)
    val = split["val"] if not args.per_class else subset(split["val"], args.per_class)
    idx = pick_images(len(val), N_IMAGES, FIG_SEED)
    samples = [val[i] for i in idx]
    _, pre, _ = build_backbone(args.backbone)
    imgs = [load_image(p) for p, _ in samples]
    x = torch.stack([pre(im) for im in imgs])
    rows = map_rows(args, res, x)
    n = len(samples)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.45 * n + 1.2, 1.75 * len(rows)), squeeze=False)
    jet = matplotlib.colormaps["jet"]
    correct = {}
    for i, (name, maps, pred) in enumerate(rows):
        correct[name.split("\n")[0]] = int(sum(int(pred[j]) == samples[j][1] for j in range(n)))
        for j in range(n):
            ax = axes[i][j]
            base = np.asarray(imgs[j], dtype=np.float32) / 255.0
            heat = jet(maps[j])[..., :3]
            ax.imshow(0.5 * base + 0.5 * heat)
            ax.set_xticks([])
            ax.set_yticks([])
            t, p = samples[j][1], int(pred[j])
            ax.set_title(f"T: {CLASSES[t]}\nP: {CLASSES[p]}", fontsize=6, color="green" if t == p else "red")
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"Flower-17 validation images (seed {FIG_SEED}), {args.backbone}; maps after postprocess(0.3, 1.5); "
                 "T = truth, P = prediction", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return {"images": [Path(p).name for p, _ in samples], "correct_per_row": correct}


def figures(args) -> dict:
    res = json.loads((args.out / "results.json").read_text())
    out = {"loss_curves": loss_curves(res, args.out / "loss_curves.png").name}
    out["maps"] = map_figure(args, res, args.out / "maps.png")
    (args.out / "figures.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out / 'loss_curves.png'} and {args.out / 'maps.png'}")
    return out
