"""``python -m benchmarks.flower17 prepare|train|evaluate|figures|all|quality|sanity|multiscale [options]``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from .data import REPO_ROOT

COMMANDS = ("prepare", "train", "evaluate", "figures", "all", "quality")
QUICK = {"per_class": 2, "epochs": 3, "lrs": (1e-4, 1e-3)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flower17", description=__doc__)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--backbone", default="tf_efficientnet_lite0", choices=("tf_efficientnet_lite0", "vgg16"))
    p.add_argument("--data-root", default=None, help="folder with jpg/image_0001.jpg ... (default ../shared/flower17 when present)")
    p.add_argument("--download", action="store_true", help="download the official archive and datasplits.mat (needs the internet)")
    p.add_argument("--epochs", type=int, default=None, help="default 40 (3 with --quick)")
    p.add_argument("--lrs", default=None, help="comma-separated, default 1e-5,5e-5,1e-4,2e-4")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of cam,recam_minmax,recam_sigmoid,recam_relu,paper_recam (default all)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/flower17/<backbone>[/<variant>]; "
                   "<run-dir>/results with --quick)")
    p.add_argument("--run-dir", default=None, help="feature cache (default runs/flower17/<backbone>, "
                   "runs/flower17/<backbone>/quick with --quick); checkpoints under it, in <variant>/ for a supplement")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed of the feature cache")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (initial weights, batch order); "
                   "default 0,1,2 (0 with --quick)")
    p.add_argument("--mask", default="top1", choices=("top1", "label"),
                   help="class whose CAM masks a ReCAM head's maps in training: top1 = the plain head's top-1 (the "
                        "study's code; default), label = the label (supplementary variant)")
    p.add_argument("--lam", type=float, default=1.0, help="paper ReCAM: weight of the predictor's loss (Chen et al.: 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--loss", default="recam", choices=("recam", "joint"),
                   help="recam: the study's (cross-entropy of each head's output); joint: supplementary variant adding "
                        "the plain CAM logits' cross-entropy for ReCAM heads")
    p.add_argument("--threads", type=int, default=2, help="torch threads for feature extraction (big convolutions)")
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads for head training (small matrix products: on a shared 2-core machine one "
                        "thread measured about 4x faster than two)")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each (--train-threads "
                   "threads each)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['per_class']} images per class, {QUICK['epochs']} epochs")
    p.add_argument("--per-class", type=int, default=None, help=f"images per class and split part with --quick (default {QUICK['per_class']})")
    p.add_argument("--force", action="store_true", help="rebuild the feature cache")
    p.add_argument("--no-fast", action="store_true", help="extract features with the eager backbone (no tracing)")
    p.add_argument("--float32", action="store_true", help="cache float32 features instead of float16")
    p.add_argument("--fig-images", type=int, default=12, help="validation images in the figures (the study's: 12)")
    p.add_argument("--fig-seed", type=int, default=1090, help="seed that draws the 12 validation images of the figures "
                   "(1090: the study's Figure 20 command)")
    p.add_argument("--overlays", default="jet,red", help="Figure 20 overlay styles: jet (colormap), red (the study's "
                   "red channel blended 50%%), comma-separated")
    p.add_argument("--study-images", type=int, default=48, help="images timed for the study's-way extrapolation")
    return p


def variant(mask: str, loss: str) -> str:
    """Folder name of a supplementary training variant ("" for the study's protocol)."""
    return "_".join(([f"{mask}_mask"] if mask != "top1" else []) + ([f"{loss}_loss"] if loss != "recam" else []))


def resolve(args) -> argparse.Namespace:
    from .models import default_run_dir
    from .train import DEFAULT_LRS, DEFAULT_SEEDS

    # --quick runs keep their cache, checkpoints and results apart from the study's.
    args.run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.backbone) / ("quick" if args.quick else "")
    args.variant = variant(args.mask, args.loss)
    args.ckpt_dir = args.run_dir / args.variant if args.variant else args.run_dir
    if args.out:
        args.out = Path(args.out)
    elif args.quick:
        args.out = args.run_dir / "results" / args.variant
    else:
        args.out = REPO_ROOT / "benchmarks" / "results" / "flower17" / args.backbone / args.variant
    args.epochs = args.epochs if args.epochs is not None else (QUICK["epochs"] if args.quick else 40)
    args.lrs = [float(v) for v in args.lrs.split(",")] if args.lrs else list(QUICK["lrs"] if args.quick else DEFAULT_LRS)
    args.seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else ([0] if args.quick else list(DEFAULT_SEEDS))
    args.models = args.models.split(",") if args.models else None
    args.overlays = tuple(args.overlays.split(","))
    if not set(args.overlays) <= {"jet", "red"}:
        raise SystemExit(f"--overlays takes jet and/or red, got {args.overlays}")
    if args.per_class is not None and not args.quick:
        raise SystemExit("--per-class goes with --quick")
    args.per_class = (args.per_class or QUICK["per_class"]) if args.quick else None
    return args


def cmd_prepare(args) -> dict:
    import torch

    from . import cache, data

    if args.download:
        data.download(args.data_root)
    data.check_images(data.resolve_root(args.data_root))
    t0 = time.perf_counter()
    path = cache.prepare(args.backbone, args.run_dir, args.data_root, args.seed, args.per_class,
                         dtype=torch.float32 if args.float32 else torch.float16, fast=not args.no_fast, force=args.force)
    info = {"cache": str(path), "prepare_seconds": time.perf_counter() - t0}
    if not args.quick:
        st = cache.time_study_way(args.backbone, args.data_root, n_images=args.study_images, seed=args.seed)
        info["study_way"] = st
        print(f"study's way: {st['seconds_per_image'] * 1e3:.1f} ms per image (eager backbone, batch 8, "
              f"{st['images']} images timed)")
    (args.run_dir / "prepare.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def cmd_train(args) -> dict:
    import torch

    from benchmarks.provenance import provenance

    from . import cache, data
    from .models import ALL_MODELS, MODEL_NAMES
    from .train import save_results, train_seeds

    prov = provenance(args.argv, module="benchmarks.flower17")
    split = data.load_split(args.data_root)
    path = cache.cache_path(args.run_dir, split.name, args.seed, args.per_class)
    torch.set_num_threads(args.train_threads)
    if not path.exists():
        raise SystemExit(f"no feature cache at {path}; run `python -m benchmarks.flower17 prepare` first")
    blob = cache.load_cache(path)
    models = args.models or (ALL_MODELS if not args.variant else MODEL_NAMES[1:])
    t0 = time.perf_counter()
    res = train_seeds(blob if args.jobs <= 1 else {"meta": blob["meta"]}, args.ckpt_dir, args.seeds, jobs=args.jobs,
                      cache_path=path, threads=args.train_threads, models=models, lrs=args.lrs, epochs=args.epochs,
                      batch_size=args.batch_size, mask=args.mask, loss=args.loss, lam=args.lam)
    res["train_wall_seconds"] = time.perf_counter() - t0
    res["jobs"] = args.jobs
    res.update({"provenance": prov, "backbone": args.backbone, "split": split.name, "split_source": split.source,
                "cache": {k: v for k, v in blob["meta"].items()}, "cache_seed": args.seed, "quick": args.quick,
                "variant": args.variant, "checkpoint_root": str(args.ckpt_dir.relative_to(args.run_dir)),
                "threads": args.threads, "train_threads": args.train_threads, "load_average_at_end": os.getloadavg()})
    torch.set_num_threads(args.threads)
    save_results(res, args.out / "results.json")
    print(f"trained {len(res['runs'])} heads ({res['head_epochs']} head-epochs) in {res['train_seconds']:.1f} s; "
          f"wrote {args.out / 'results.json'}")
    for r in res["runs"]:
        s = r["study"]
        if s:
            print(f"  {r['model']:14s} lr {r['lr_tag']:>7s} seed {r['seed']}: study rule epoch {s['epoch']:2d} top-1 "
                  f"{100 * s['val_top1']:.2f}; today's rule "
                  f"{100 * r['today']['val_top1'] if r['today'] else float('nan'):.2f} (stopped at {r['stopped_at']})")
    return res


def cmd_evaluate(args) -> dict:
    from .evaluate import evaluate

    return evaluate(args)


def cmd_figures(args) -> dict:
    from .figures import figures

    return figures(args)


def cmd_all(args) -> dict:
    from benchmarks.provenance import provenance

    prov = provenance(args.argv, module="benchmarks.flower17")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    prep = cmd_prepare(args)
    t_prep = time.perf_counter() - t0
    cmd_train(args)
    t_grid = time.perf_counter() - t0
    cmd_evaluate(args)
    t_eval = time.perf_counter() - t0
    cmd_figures(args)
    t_all = time.perf_counter() - t0
    timing = {"provenance": prov, "prepare_seconds": t_prep, "prepare_plus_train_seconds": t_grid, "through_evaluate_seconds": t_eval,
              "all_seconds": t_all, "load_average_at_start": load0, "load_average_at_end": os.getloadavg(),
              "cache_reused": "prepare_seconds" in prep and prep["prepare_seconds"] < 30}
    (args.out / "timing_all.json").write_text(json.dumps(timing, indent=1) + "\n")
    from .evaluate import write_table

    write_table(args)  # again, now with the end-to-end timing
    print(json.dumps(timing, indent=1))
    return timing


def run_quality(argv: List[str]) -> int:
    """Dispatch to ``benchmarks.flower17.quality:main(argv)`` (issue 5) when that module exists."""
    try:
        from . import quality  # type: ignore[attr-defined]
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.quality":
            raise
        print(f"{__package__}.quality is not available (issue 5 adds it)", file=sys.stderr)
        return 2

    rc = quality.main(argv)
    return int(rc or 0)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "quality":
        return run_quality(argv[1:])
    if argv and argv[0] in ("sanity", "multiscale"):  # their own options: sanity.py, multiscale.py
        import importlib

        return int(importlib.import_module(f"{__package__}.{argv[0]}").main(argv[1:]) or 0)
    args = resolve(parser().parse_args(argv))
    args.argv = argv
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate, "figures": cmd_figures, "all": cmd_all}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
