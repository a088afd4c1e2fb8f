"""``camkit explain``: overlays, grids and strips for images, on the photos themselves.

    camkit explain --demo                      # bundled photos, offline EfficientNet-Lite0
    camkit explain cat.jpg dog.jpg --model resnet50 --method layercam gradcam --out out/
    camkit explain photos/ --save-maps --no-figures --out maps/    # a folder, recursively
    camkit explain street.jpg --model tv:fcn_resnet50 --target-class car

Overlays are drawn on the user's own photo, aligned: the map is put back
where the network saw it (resize and center crop undone,
:func:`camkit.geometry.to_original`).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..app import (
    ModelSpec,
    check_image,
    collect_images,
    labels_of,
    read_class_names,
    read_labels,
    sample_images,
    sample_labels,
)
from ..errors import InputError
from ..methods import cli_names
from ..targets import SegmentationRegion
from .common import check_cmap, int_at_least, method_args, method_specs, model_args, unit_float
from .explain_detect import DetectionRun, detection_call, detection_k
from .explain_run import ExplainRun, Job
from .outputs import Outputs, output_dir
from .target_option import check_target_syntax, parse_target


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``camkit explain``."""
    e = sub.add_parser("explain", help="write CAM overlays for images",
                       description="Write one overlay per image, method and target on the photo itself (aligned), "
                                   "a labelled grid, a compact 3x4 grid and one strip per image comparing the "
                                   "methods. IMAGE may be a folder (searched recursively; outputs mirror it). "
                                   "With no images (or --demo): the bundled sample photos.")
    e.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders")
    e.add_argument("--demo", action="store_true", help="run on the bundled sample photos")
    model_args(e, "imagenet")
    e.add_argument("--method", nargs="+", default=["layercam"], metavar="M",
                   help=f"one or more of {', '.join(cli_names())}; default layercam")
    method_args(e)
    e.add_argument("--target", help="top1 (default), topK (e.g. top3: one map per class, named after it), "
                                    "or a class index or name")
    e.add_argument("--target-class", metavar="C", help="one class (index or name); for a segmentation model "
                   "(e.g. tv:fcn_resnet50) the region predicted as C is explained")
    e.add_argument("--normalize", metavar="N", help="minmax (default), sigmoid, relu_max, tanh_max, or none "
                   "(raw maps: --save-maps keeps their values; overlays show each from its min to its max)")
    e.add_argument("--postprocess", action="store_true", help="the study's display post-process (0.3 cut, x1.5)")
    e.add_argument("--alpha", type=unit_float, default=0.5, help="heatmap opacity in [0, 1]; default %(default)s")
    e.add_argument("--cmap", default="jet", help="matplotlib colormap; default %(default)s")
    e.add_argument("--colorbar", action="store_true", help="a colour bar with the value scale under each overlay, "
                   "strip and grid")
    e.add_argument("--labels", metavar="FILE", help="ground truth shown on the grid: a CSV 'path,label' per image "
                   "(paths relative to the file's folder)")
    e.add_argument("--classes", metavar="FILE", help="class names, one per line (for models not on ImageNet)")
    e.add_argument("--out", default="camkit_out", help="output folder; default %(default)s")
    e.add_argument("--save-maps", action="store_true", help="also write each map as .npy (float32, the original "
                   "image's size, 0 outside the network's field of view) next to its overlay")
    e.add_argument("--no-figures", action="store_true", help="overlays (and maps) only: no grids or strips "
                   "(for large folders)")
    e.add_argument("--batch-size", type=int_at_least(1, "images per forward pass"), default=8)
    e.add_argument("--threads", type=int_at_least(0, "0: torch's default"), default=0,
                   help="torch threads (0: torch's default)")
    e.set_defaults(func=cmd_explain)


def _items(args: argparse.Namespace) -> Tuple[List[Tuple[str, str]], Optional[str]]:
    """The images (path, output key) and the labels file to use."""
    if args.demo or not args.images:
        if args.images:
            raise InputError("--demo runs on the bundled samples; give either images or --demo")
        items = [(str(p), p.stem) for p in sample_images()]
        print(f"camkit demo: {len(items)} bundled sample photos, model {args.model}", file=sys.stderr)
        return items, args.labels or str(sample_labels())
    return collect_images(args.images, args.out), args.labels


def _target(args: argparse.Namespace) -> Tuple[str, str]:
    if args.target is not None and args.target_class is not None:
        raise InputError("give --target or --target-class, not both")
    if args.target_class is not None:
        spec, flag = args.target_class, "--target-class"
    else:
        spec, flag = ("top1" if args.target is None else args.target), "--target"
    check_target_syntax(spec, flag, allow_topk=flag == "--target")
    return spec, flag


def _call(model_name: str, segmentation: bool, target_class: Optional[int], topk: Optional[int],
          names: Optional[List[str]]) -> Any:
    """``(method, x) -> CAMResult`` for the chosen target."""
    if segmentation:
        if target_class is None:
            shown = ", ".join(f"{k} {n}" for k, n in enumerate((names or [])[:8]))
            raise InputError(f"{model_name} is a segmentation model: give --target-class C, the class whose "
                             f"predicted region to explain (an index or a name{': ' + shown + ', ...' if shown else ''})")
        return lambda ex, x: ex(x, targets=SegmentationRegion(target_class))
    if target_class is not None:
        return lambda ex, x: ex(x, targets=[target_class] * x.shape[0])
    return lambda ex, x: ex(x, topk=topk)


def cmd_explain(args: argparse.Namespace) -> int:
    """Run ``camkit explain``; returns the exit status (1 when some images could not be read)."""
    # everything that can be checked without the model, first
    check_cmap(args.cmap)
    specs = method_specs(args.method, args)
    spec, _ = _target(args)
    items, labels_file = _items(args)
    for p in args.images:  # an image named on the command line must read; a folder's are read as they come
        if not os.path.isdir(p):
            check_image(p)
    truths: Dict[str, str] = {}
    if labels_file:
        rows = labels_of([p for p, _ in items], read_labels(labels_file), labels_file)
        truths = {p: "; ".join(row) for (p, _), row in zip(items, rows)}
    known_names = read_class_names(args.classes) if args.classes else None
    model_spec = ModelSpec(args.model, args.weights, args.head)
    outputs = Outputs(output_dir(args.out), [p for p, _ in items])
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, preset = model_spec.build()
        if preset.task == "video":
            raise InputError(f"camkit explain takes images; {args.model} is a video model (clips (B, C, T, H, W)): "
                             "explain clips in Python (camkit.adapters.resolve(model), examples/video.py)")
        if preset.transform is None:
            raise InputError(f"{args.model} has no preprocessing in its preset; camkit explain cannot prepare images")
        explainers = {s.name: s.build(model, preset) for s in specs}
        if known_names is None and preset.categories is not None:
            known_names = list(preset.categories)
        if preset.task == "detection":  # boxes drawn, one map per box (camkit/cli/explain_detect.py)
            if args.target_class is not None:
                raise InputError(f"{args.model} is a detector: --target topK explains its K best boxes")
            call = detection_call(detection_k(spec, args.target is not None))
            job = Job(args, items, truths, explainers, call, preset, None, False, outputs, raw=specs[0].raw)
            return DetectionRun(job).run()
        target_class, topk = parse_target(spec, known_names)
        segmentation = preset.task == "segmentation"
        call = _call(args.model, segmentation, target_class, topk, known_names)
        job = Job(args, items, truths, explainers, call, preset, target_class, segmentation, outputs,
                  raw=specs[0].raw)
        return ExplainRun(job).run()
    finally:
        torch.set_num_threads(threads)
