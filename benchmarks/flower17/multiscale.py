"""Multi-scale and flip inference on the Flower-17 pseudo-masks (issue 22, item 3's measurement).

``python -m benchmarks.flower17 multiscale [--run-dir DIR] [--results FILE] [--limit N] ...``

With the trained heads (the ones ``quality`` and ``sanity`` use: per kind the learning rate with the best
mean validation top-1 under the study's rule, the first seed's study-rule checkpoint), on the validation
images at ``--size`` (256: the heads' training size), each method's map of the CAM model's top-1 class,

- single scale: ``camkit.MultiScale(method, scales=(1.0,), flip=False)``,
- multi-scale: ``camkit.MultiScale(method, scales=(1.0, 0.5, 1.5, 2.0), flip=True)`` (ReCAM's ``make_cam``:
  per scale the map plus its flip's flipped back, upsampled and summed),

both normalized by ReCAM's rule (``M / (max M + 1e-5)``), so the two differ only by the scales and flips.
Methods: CAM (the CAM head), the study's LayerCAM (``methods.study_layercam``: ``blocks.2``, ``blocks.4``
and the head's class maps, 0.4 / 0.4 / 0.2 then tanh(2x)) and ReCAM (each ``--recam`` head).
Pseudo-masks: ``camkit.pseudomasks.masks_from_maps`` with one class (the target), foreground where the map
is >= each of ``--thresholds`` (0.15: IRN / ReCAM's COCO; 0.21: ReCAM's VOC). No ground truth offline, so:

- the foreground share (mean over images of the share of foreground pixels), single vs multi-scale, and
  their paired difference;
- the agreement across methods: mask IoU between every pair of methods (mean over images; an image where
  both masks are empty counts 1), single vs multi-scale; and each method's IoU between its single- and
  multi-scale masks.

Writes ``multiscale.json`` and ``multiscale.md`` (default folder ``benchmarks/results/flower17/<backbone>``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from .data import REPO_ROOT, load_image, load_split, subset
from .models import NORMALIZER_OF, backbone_stats, load_trained, normalize_transform
from .quality import chosen_heads, mean_ci

MULTI = (1.0, 0.5, 1.5, 2.0)
LABELS = {"cam": "CAM", "layercam": "LayerCAM (study's levels)", "recam_minmax": "ReCAM minmax",
          "recam_sigmoid": "ReCAM sigmoid", "recam_relu": "ReCAM relu"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flower17 multiscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0", choices=("tf_efficientnet_lite0", "vgg16"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--run-dir", default=None, help="checkpoints (default runs/flower17/<backbone>)")
    p.add_argument("--results", default=None, help="train's results.json (default <out>/results.json)")
    p.add_argument("--lr", action="append", default=[], metavar="MODEL=LR", help="override a head's learning rate")
    p.add_argument("--seed", type=int, default=None, help="training seed of the checkpoints (default: the first)")
    p.add_argument("--out", default=None, help="default benchmarks/results/flower17/<backbone>")
    p.add_argument("--recam", default="recam_minmax,recam_sigmoid,recam_relu", help="ReCAM heads, comma-separated")
    p.add_argument("--no-layercam", action="store_true", help="leave out LayerCAM (the costliest: a backward per scale)")
    p.add_argument("--scales", default=",".join(str(s) for s in MULTI), help="the multi-scale scales")
    p.add_argument("--no-flip", action="store_true", help="multi-scale without the flips")
    p.add_argument("--thresholds", default="0.15,0.21")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--per-class", type=int, default=None, help="only the first N validation images of each class")
    p.add_argument("--limit", type=int, default=None, help="only the first N validation images (after --per-class)")
    p.add_argument("--batch", type=int, default=4, help="images per call (scale 2.0 is 4x the pixels)")
    p.add_argument("--threads", type=int, default=1)
    return p


def methods(args, heads_info: dict, run_dir: Path) -> tuple:
    """``({key: camkit method object}, CAM model)``; every model shares the CAM model's backbone."""
    import camkit

    from .methods import study_layercam

    def load(m):
        return load_trained(args.backbone, m, heads_info[m]["lr"], run_dir, "study", heads_info[m]["seed"])

    cam_model = load("cam")
    out = {"cam": camkit.CAM(cam_model)}
    if not args.no_layercam:
        out["layercam"] = study_layercam(cam_model, args.backbone)
    for m in [r for r in args.recam.split(",") if r]:
        if m not in NORMALIZER_OF:
            raise SystemExit(f"--recam: unknown head {m!r}; choose from {list(NORMALIZER_OF)}")
        model = load(m)
        model.backbone = cam_model.backbone  # identical frozen weights
        out[m] = camkit.ReCAM(model)
    return out, cam_model


def run_maps(meths: dict, cam_model, x: Tensor, scales, flip: bool, batch: int) -> tuple:
    """``({key: (single (B, H, W), multi (B, H, W))}, targets (B,), seconds per key and kind)``."""
    import camkit

    with torch.no_grad():
        t = torch.cat([cam_model(x[i:i + 16]).argmax(1) for i in range(0, len(x), 16)])
    out: Dict[str, tuple] = {}
    secs: Dict[str, float] = {}
    for k, m in meths.items():
        res = []
        for kind, (sc, fl) in {"single": ((1.0,), False), "multi": (scales, flip)}.items():
            ms = camkit.MultiScale(m, scales=sc, flip=fl, normalize="recam")
            t0 = time.perf_counter()
            res.append(torch.cat([ms(x[i:i + batch], targets=t[i:i + batch, None]).maps[:, 0].detach()
                                  for i in range(0, len(x), batch)]))
            secs[f"{k}_{kind}"] = time.perf_counter() - t0
            print(f"  {k} {kind}: {secs[f'{k}_{kind}']:.0f} s", flush=True)
        out[k] = tuple(res)
    return out, t, secs


def masks(maps: Tensor, threshold: float, t: Tensor) -> np.ndarray:
    """Pseudo-masks ``(B, H, W)`` bool: camkit.pseudomasks.masks_from_maps with the target as the one class."""
    from camkit.pseudomasks import masks_from_maps

    m = maps.double().cpu().numpy()
    return np.stack([masks_from_maps(m[i][None], threshold, [int(t[i])]) > 0 for i in range(len(m))])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image IoU of two mask batches ``(B, H, W)``; 1 where both are empty."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def stat(v) -> dict:
    mu, ci = mean_ci(torch.as_tensor(np.asarray(v), dtype=torch.float64))
    return {"mean": mu, "ci95": ci}


def summarize(maps: Dict[str, tuple], t: Tensor, thresholds: List[float]) -> dict:
    """Per threshold: foreground shares, single-vs-multi IoU per method, IoU between every pair of methods."""
    out: dict = {}
    keys = list(maps)
    for th in thresholds:
        mk = {k: (masks(s, th, t), masks(m, th, t)) for k, (s, m) in maps.items()}
        d: dict = {"foreground": {}, "self_iou": {}, "pair_iou": {}}
        for k, (s, m) in mk.items():
            fs, fm = s.reshape(len(s), -1).mean(1), m.reshape(len(m), -1).mean(1)
            d["foreground"][k] = {"single": stat(fs), "multi": stat(fm), "multi_minus_single": stat(fm - fs)}
            d["self_iou"][k] = stat(iou(s, m))
        for a, b in itertools.combinations(keys, 2):
            si, mi = iou(mk[a][0], mk[b][0]), iou(mk[a][1], mk[b][1])
            d["pair_iou"][f"{a}|{b}"] = {"single": stat(si), "multi": stat(mi), "multi_minus_single": stat(mi - si)}
        out[str(th)] = d
    return out


def _c(s: dict, d: int = 3) -> str:
    return f"{s['mean']:.{d}f} ± {s['ci95']:.{d}f}"


def write_markdown(res: dict, path: Path) -> None:
    from benchmarks.provenance import markdown_header

    info = res["info"]
    L = ["# Flower-17: multi-scale and flip pseudo-masks (ReCAM's inference) vs single scale", "",
         markdown_header(info["provenance"]),
         f"{info['n_images']} validation images at {info['size']} px (split `{info['split']}`); targets: the CAM model's "
         f"top-1 (top-1 {100 * info['top1']:.2f}%). Multi-scale: scales {info['scales']}, flip {info['flip']}; both "
         "normalized M / (max M + 1e-5). Mean over images ± 95% half-width. Seconds: "
         + ", ".join(f"{k} {v:.0f}" for k, v in info["seconds"].items()) + ".", ""]
    for th, d in res["summary"].items():
        L += [f"## Threshold {th}", "", "| method | foreground single | foreground multi | multi - single | "
              "IoU single vs multi |", "|---|---|---|---|---|"]
        for k, f in d["foreground"].items():
            L.append(f"| {LABELS[k]} | {_c(f['single'])} | {_c(f['multi'])} | {_c(f['multi_minus_single'])} | "
                     f"{_c(d['self_iou'][k])} |")
        L += ["", "| methods | mask IoU single | mask IoU multi | multi - single |", "|---|---|---|---|"]
        for pair, p in d["pair_iou"].items():
            a, b = pair.split("|")
            L.append(f"| {LABELS[a]} / {LABELS[b]} | {_c(p['single'])} | {_c(p['multi'])} | {_c(p['multi_minus_single'])} |")
        L.append("")
    path.write_text("\n".join(L) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    from benchmarks.provenance import provenance
    from camkit.methods.multiscale import check_scales

    scales = check_scales([float(s) for s in args.scales.split(",")])
    thresholds = [float(v) for v in args.thresholds.split(",")]
    torch.set_num_threads(args.threads)
    prov = provenance(["multiscale"] + argv, module="benchmarks.flower17")
    t_start = time.perf_counter()
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / "flower17" / args.backbone
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / "runs" / "flower17" / args.backbone
    heads_info = chosen_heads(Path(args.results) if args.results else out / "results.json", args.lr, args.seed)
    meths, cam_model = methods(args, heads_info, run_dir)
    split = load_split(args.data_root)
    samples = split["val"] if args.per_class is None else subset(split["val"], args.per_class)
    samples = samples[: args.limit] if args.limit else samples
    norm = normalize_transform(*backbone_stats(args.backbone))
    x = torch.stack([norm(load_image(p, args.size)) for p, _ in samples])
    labels = torch.tensor([y for _, y in samples])
    maps, t, secs = run_maps(meths, cam_model, x, scales, not args.no_flip, args.batch)
    summary = summarize(maps, t, thresholds)
    secs["total"] = time.perf_counter() - t_start
    res = {"info": {"provenance": prov, "backbone": args.backbone, "split": split.name, "n_images": len(x),
                    "size": args.size, "scales": list(scales), "flip": not args.no_flip, "thresholds": thresholds,
                    "methods": list(meths), "heads": heads_info, "top1": float((t == labels).float().mean()),
                    "args": vars(args), "seconds": secs, "load_average_end": os.getloadavg(),
                    "torch_threads": torch.get_num_threads()},
           "summary": summary}
    (out / "multiscale.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, out / "multiscale.md")
    print((out / "multiscale.md").read_text())
    print(f"wrote {out / 'multiscale.md'}, {out / 'multiscale.json'} in {secs['total']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
