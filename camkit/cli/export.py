"""``camkit export`` and ``camkit evaluate-masks`` (see :mod:`camkit.export`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..app import ExplainSpec, ModelSpec
from ..errors import InputError
from ..export import DEFAULT_THRESHOLD, evaluate, format_evaluation, run
from ..methods import cli_names
from ..pseudomasks import IGNORE, parse_sweep
from .common import int_at_least, method_args, method_specs, model_args, unit_float


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``camkit export``; returns 1 when some images failed."""
    (method,) = method_specs([args.method], args)
    spec = ExplainSpec(ModelSpec(args.model, args.weights, args.head), method)
    summary = run(args.src, args.out, spec, labels=args.labels, classes=args.classes, topk=args.topk,
                  batch_size=args.batch_size, workers=args.workers, bg_threshold=args.bg_threshold,
                  device=args.device, threads=args.threads, overwrite=args.overwrite, progress=not args.no_progress)
    if summary.rank == 0:
        print(summary.line())
    return 1 if summary.failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``camkit evaluate-masks``."""
    if args.sweep and args.threshold is not None:
        raise InputError("give --sweep or --threshold, not both")
    ts = parse_sweep(args.sweep) if args.sweep else ([args.threshold] if args.threshold is not None else None)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise InputError(f"--json {args.json}: its folder {Path(args.json).resolve().parent} does not exist")
    res = evaluate(args.dir, args.gt, ignore=args.ignore, thresholds=ts, num_classes=args.num_classes)
    print(format_evaluation(res))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(res, indent=1))
        except OSError as e:
            raise InputError(f"cannot write --json {args.json}: {e.strerror or e}") from None
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``camkit export`` and ``camkit evaluate-masks``."""
    e = sub.add_parser(
        "export", help="maps and pseudo-masks for a whole folder or list of images (resumable, torchrun-ready)",
        description="Per image: cams/<rel>.npz (keys, cam, high_res), masks/<rel>.png and a manifest.jsonl line. "
                    "A rerun skips finished images. Several processes or machines: "
                    "torchrun --nproc_per_node=N -m camkit export ... (same arguments).")
    e.add_argument("src", metavar="SRC", help="a folder (recursive) or a text/CSV file listing image paths")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder (shared by all ranks)")
    model_args(e, "imagenet")
    e.add_argument("--method", default="layercam", choices=cli_names(), help="default %(default)s")
    method_args(e)
    e.add_argument("--normalize", help="minmax (default), sigmoid, relu_max, tanh_max")
    e.add_argument("--labels", metavar="FILE", help="CSV path,labels: one or more class indices or names per image "
                   "(';' between several; the weakly-supervised case); without it the model's top-K classes")
    e.add_argument("--classes", metavar="FILE", help="class names, one per line (to read names in --labels)")
    e.add_argument("--topk", type=int_at_least(1, "classes per image"), default=1,
                   help="classes per image without --labels; default 1")
    e.add_argument("--batch-size", type=int_at_least(1, "images per forward pass"), default=16,
                   help="default %(default)s")
    e.add_argument("--workers", type=int_at_least(0, "decoding processes"), default=1,
                   help="DataLoader decoding processes per rank (at most the cores); default 1")
    e.add_argument("--bg-threshold", type=unit_float, default=DEFAULT_THRESHOLD,
                   help="background where every map is below it; default %(default)s (IRN's; ReCAM uses 0.21 "
                        "on VOC)")
    e.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if there is a GPU), cpu, cuda")
    e.add_argument("--threads", type=int_at_least(0, "0: torch's default"), default=0,
                   help="torch threads per process (0: torch's default)")
    e.add_argument("--overwrite", action="store_true", help="recompute every image (also with other settings)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("evaluate-masks", help="IoU / precision / recall of exported pseudo-masks against ground truth",
                       description="Per-class IoU, mIoU, precision and recall of DIR's masks against PNG masks "
                                   "(0 background, 1 + class index, --ignore left out), as ReCAM's eval_cam; "
                                   "--sweep recomputes the masks from high_res at each background threshold.")
    v.add_argument("dir", metavar="DIR", help="the --out folder of camkit export")
    v.add_argument("--gt", required=True, metavar="MASKS", help="folder of ground-truth PNGs, MASKS/<rel>.png")
    v.add_argument("--ignore", type=int_at_least(0, "a label value"), default=IGNORE,
                   help="ground-truth value left out; default %(default)s")
    v.add_argument("--sweep", metavar="START:STOP:STEP", help="background thresholds to try, e.g. 0.05:0.95:0.05")
    v.add_argument("--threshold", type=unit_float, help="one background threshold in [0, 1] (default: the masks "
                   "as written)")
    v.add_argument("--num-classes", type=int_at_least(2, "classes including background"),
                   help="classes including background (default: the export's classes + 1)")
    v.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    v.set_defaults(func=cmd_evaluate)
