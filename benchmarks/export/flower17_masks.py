"""Pseudo-masks for all 1360 Flower-17 images with the trained Lite0 CAM head and the study's LayerCAM.

    python -m benchmarks.export masks                    # the head trained by benchmarks/flower17
    python -m benchmarks.export masks --head PATH        # any head saved by camkit.save_head

The model is ``camkit.CAMModel(Lite0 backbone, trained CAM head)`` as ``benchmarks/flower17`` builds
it (``models.build_backbone``: 256 x 256 input, aspect not kept); the maps are the study's LayerCAM
(``models.LAYERCAM_LAYERS``, ``LAYERCAM_WEIGHTS`` fused as tanh(2 sum w M), ``relu_max`` per level,
as ``benchmarks.flower17.methods.study_layercam``) for each image's true class, written by
``camkit.export.run`` (labels CSV: one class per image), and CAM on the same head for comparison.
Flower-17 has no segmentation masks offline, so the masks are not scored: the results give the
foreground share per class and a figure of 24 masks over their photos.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from benchmarks.harness import markdown_table, run_provenance, write_results

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "export"
BACKBONE = "tf_efficientnet_lite0"


def find_head(explicit: Optional[str]) -> Path:
    """The trained CAM head: ``explicit``, else the checkpoint of benchmarks/flower17's best CAM learning rate
    (seed 0, the study's checkpoint), else a ``cam*.pt`` under benchmarks/cache. Raises with the places looked at."""
    if explicit:
        if not Path(explicit).is_file():
            raise SystemExit(f"no head file {explicit}")
        return Path(explicit)
    looked: List[str] = []
    try:
        from benchmarks.flower17 import evaluate, models

        res = json.loads((REPO / "benchmarks/results/flower17" / BACKBONE / "results.json").read_text())
        lr = evaluate.best_lr(res, "cam")
        p = models.checkpoint_path(models.default_run_dir(BACKBONE), "cam", lr, "study", 0)
        looked.append(str(p))
        if p.is_file():
            return p
    except Exception as e:  # the flower17 code or results changed shape: fall through to the cache
        looked.append(f"benchmarks.flower17 checkpoint lookup ({type(e).__name__}: {e})")
    cache = sorted((REPO / "benchmarks" / "cache").rglob("cam*.pt")) if (REPO / "benchmarks/cache").is_dir() else []
    looked.append("benchmarks/cache/**/cam*.pt")
    if cache:
        return cache[0]
    raise SystemExit("no trained Lite0 CAM head found; looked at: " + "; ".join(looked)
                     + ". `python -m benchmarks.flower17 train --backbone tf_efficientnet_lite0 --models cam` saves one.")


def labels_csv(images: Sequence[Path], path: Path) -> None:
    """``path,label`` rows: image_0001..0080 are class 0, and so on (benchmarks.flower17.data.label_of)."""
    from benchmarks.flower17.data import label_of

    rows = ["path,labels"] + [f"{p},{label_of(int(p.stem.split('_')[1]))}" for p in images]
    path.write_text("\n".join(rows) + "\n")


def overlay_tile(photo, mask: np.ndarray, colour: Sequence[int], width: int = 220):
    """The photo with the mask's foreground tinted and outlined, scaled to ``width`` px wide."""
    from PIL import Image, ImageFilter

    fg = Image.fromarray(((mask > 0) * 255).astype(np.uint8))
    tint = Image.new("RGB", photo.size, tuple(colour))
    out = Image.composite(Image.blend(photo, tint, 0.45), photo, fg)
    edge = fg.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 0 else 0)
    out.paste(Image.new("RGB", photo.size, (255, 255, 255)), mask=edge)
    return out.resize((width, round(photo.height * width / photo.width)))


def figure(out_png: Path, export_dir: Path, rels: Sequence[str], images: Dict[str, Path], names: Sequence[str],
           keys: Dict[str, List[int]], title: str, cols: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from camkit.pseudomasks import voc_palette

    pal = voc_palette()
    rows = -(-len(rels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.55 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, rel in zip(axes.flat, rels):
        photo = Image.open(images[rel]).convert("RGB")
        mask = np.asarray(Image.open(export_dir / "masks" / f"{rel}.png"))
        c = keys[rel][0]
        ax.imshow(overlay_tile(photo, mask, pal[3 * (c + 1):3 * (c + 2)]))
        ax.set_title(f"{names[c]}  fg {100 * (mask > 0).mean():.0f}%", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100, pil_kwargs={"quality": 85})
    plt.close(fig)


def foreground(export_dir: Path, rels: Sequence[str], labels: Dict[str, int], classes: Sequence[str]) -> Dict[str, Any]:
    from PIL import Image

    share = {rel: float((np.asarray(Image.open(export_dir / "masks" / f"{rel}.png")) > 0).mean()) for rel in rels}
    per_class = {classes[c]: float(np.mean([share[r] for r in rels if labels[r] == c]))
                 for c in sorted(set(labels[r] for r in rels))}
    vals = np.array(list(share.values()))
    return {"mean": float(vals.mean()), "median": float(np.median(vals)), "p10": float(np.percentile(vals, 10)),
            "p90": float(np.percentile(vals, 90)), "empty": int((vals == 0).sum()), "full": int((vals == 1).sum()),
            "per_class": per_class, "per_image": share}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.export masks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", help="a CAM head saved by camkit.save_head (default: benchmarks/flower17's)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "flower17" / "jpg"))
    p.add_argument("--bg-threshold", type=float, default=0.15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scratch", default="/tmp/camkit-flower17-masks", help="export folders (kept: resumable)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--figure-seed", type=int, default=0)
    p.add_argument("--images", type=int, default=0, help="first N images only (a quick look; 0: all)")
    args = p.parse_args(argv)
    prov = run_provenance(["masks", *argv], module="benchmarks.export")

    from benchmarks.flower17 import models
    from benchmarks.flower17.data import CLASSES, label_of
    from camkit.app import ExplainSpec, MethodSpec, ModelSpec
    from camkit.export import run
    from camkit.heads import CAMModel, load_head

    head_path = find_head(args.head)
    backbone, preprocess, _ = models.build_backbone(BACKBONE)
    model = CAMModel(backbone, load_head(head_path), freeze=True).eval()
    images = sorted(Path(args.data).glob("image_*.jpg"))[:args.images or None]
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    lst = scratch / "labels.csv"
    labels_csv(images, lst)
    runs = {
        "layercam": MethodSpec("layercam", layers=models.LAYERCAM_LAYERS[BACKBONE],
                               layer_weights=models.LAYERCAM_WEIGHTS, normalize="relu_max"),
        "cam": MethodSpec("cam"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rels = [q.stem for q in images]
    paths = {q.stem: q for q in images}
    truth = {q.stem: label_of(int(q.stem.split("_")[1])) for q in images}
    rng = np.random.default_rng(args.figure_seed)
    shown = [rels[i] for i in sorted(rng.choice(len(rels), size=24, replace=False))]
    import hashlib

    data: Dict[str, Any] = {"head": str(head_path), "head_sha256": hashlib.sha256(head_path.read_bytes()).hexdigest(),
                            "images": len(images), "bg_threshold": args.bg_threshold,
                            "figure_images": shown, "runs": {}}
    rows = []
    for name, method in runs.items():
        d = scratch / name
        spec = ExplainSpec(ModelSpec(model, transform=preprocess), method)
        s = run(lst, d, spec, labels=lst, bg_threshold=args.bg_threshold, batch_size=args.batch_size, workers=1,
                threads=args.threads, progress=False)
        recs = [json.loads(line) for line in (d / "manifest.jsonl").read_text().splitlines()]
        keys = {r["rel"]: r["keys"] for r in recs}
        assert all(keys[r] == [truth[r]] for r in rels), "every image's key is its true class"
        fg = foreground(d, rels, truth, CLASSES)
        png = out / f"flower17_masks_{name}.jpg"
        title = (f"Flower-17 pseudo-masks: {'the study LayerCAM (0.4/0.4/0.2)' if name == 'layercam' else 'CAM'} of the "
                 f"trained Lite0 CAM head, true class, background below {args.bg_threshold:g}")
        figure(png, d, shown, paths, CLASSES, keys, title)
        data["runs"][name] = {"settings": s.settings, "ok": s.ok, "failed": s.failed, "computed": s.computed,
                              "skipped": s.skipped, "seconds": s.seconds, "images_per_s": s.images_per_s,
                              "foreground": fg, "figure": png.name}
        rows.append([name, s.ok, s.failed, f"{s.images_per_s:.2f}" if s.computed else "(resumed)",
                     f"{100 * fg['mean']:.1f}", f"{100 * fg['median']:.1f}",
                     f"{100 * fg['p10']:.1f} - {100 * fg['p90']:.1f}", fg["empty"], fg["full"]])
        print(f"{name}: {s.line()}", file=sys.stderr)
    per_class = [[c] + [f"{100 * data['runs'][n]['foreground']['per_class'][c]:.1f}" for n in runs]
                 for c in CLASSES if c in data["runs"]["cam"]["foreground"]["per_class"]]
    body = "\n".join([
        f"All {len(images)} Flower-17 images, `camkit.export.run` with the model `CAMModel(Lite0 backbone, trained "
        f"CAM head)` (head `{head_path.relative_to(REPO) if head_path.is_relative_to(REPO) else head_path}`), the "
        "benchmark's preprocessing (256 x 256, aspect not kept; maps put back on the photo by camkit.geometry), each "
        f"image's true class as its label, background where the map is below {args.bg_threshold:g}, one torch "
        f"thread. `layercam`: the study's LayerCAM ({', '.join(models.LAYERCAM_LAYERS[BACKBONE])}, weights "
        f"{'/'.join(str(w) for w in models.LAYERCAM_WEIGHTS)}, relu_max, tanh(2x)); `cam`: CAM of the same head.",
        "",
        "Flower-17 has no segmentation masks offline, so these masks are not scored (`camkit evaluate-masks` scores "
        "them where ground truth exists); the foreground share says how much of each photo a mask keeps.",
        "",
        markdown_table(["maps", "ok", "failed", "images/s", "foreground % mean", "median", "10th-90th pct",
                        "empty masks", "full masks"], rows),
        "",
        "Foreground share per class (%):",
        "",
        markdown_table(["class", *runs], per_class),
        "",
        f"Figures: {', '.join(f'`flower17_masks_{n}.jpg`' for n in runs)} (24 images drawn with "
        f"`numpy.random.default_rng({args.figure_seed})`; the foreground tinted in the class's VOC-palette "
        "colour and outlined).",
    ])
    md, js = write_results(out / "flower17_masks.md", prov, "Flower-17 pseudo-masks", body, data)
    print(f"wrote {md}, {js}", file=sys.stderr)
    return 0
