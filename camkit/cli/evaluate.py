"""``camkit evaluate``: can these maps be trusted? Sanity checks and faithfulness / complexity metrics
(:mod:`camkit.evaluation`) of chosen methods on a folder of images, with a model.

    camkit evaluate --demo                                   # bundled photos, sanity checks and ROAD
    camkit evaluate photos/ --model resnet50 --method gradcam layercam --metric sanity road sparseness
    camkit evaluate photos/ --labels labels.csv              # each image's labelled class, not its top-1
    camkit evaluate cams_out                                 # an export's folder: its model, method, images, classes

Each image is explained for its top-1 class, its first label (``--labels``), or, for an export's folder,
the class it was exported for (its first key) with the export's model (weights checked) and method
(other methods with ``--method``). Writes ``evaluation.md`` (one row per method: the mean of each
metric), ``evaluation.json`` (settings, means, per-image values, curves) and the curves as PNG
(``road.png``: MoRF / LeRF scores per percentile; ``sanity.png``: Spearman correlation of the maps as the
layers are randomized, top layer first), with a progress bar on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import tqdm
from torch import Tensor

from .. import evaluation as ev
from ..adapters import num_classes
from ..app import (
    DEFAULT_MODEL,
    MethodSpec,
    ModelSpec,
    categories,
    class_indices,
    collect_images,
    labels_of,
    load_image,
    read_labels,
    sample_images,
)
from ..errors import DependencyError, InputError
from ..evaluation._common import check_percentiles
from ..export.reopen import ExportedRun, check_same_model, is_export, read_export
from ..methods import cli_names
from .common import int_at_least, method_args, method_specs, model_args
from .outputs import output_dir

METRICS = ("sanity", "random_logit", "road", "faithfulness_correlation", "infidelity", "sparseness", "complexity")
DEFAULT_METRICS = ("sanity", "road")
Explain = Callable[[Any, Tensor, Tensor], Tensor]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``camkit evaluate``."""
    e = sub.add_parser("evaluate", help="sanity checks and faithfulness metrics of CAM methods on images",
                       description="Explain each image's top-1 class with each method and measure the maps: "
                                   "model randomization (sanity), random logit, ROAD, faithfulness correlation, "
                                   "infidelity, sparseness, complexity. Writes evaluation.md, evaluation.json and "
                                   "the curves as PNG. With no images (or --demo): the bundled sample photos.")
    e.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders, or one output folder of "
                   "camkit export (its model, method, images and classes)")
    e.add_argument("--demo", action="store_true", help="run on the bundled sample photos")
    model_args(e, "imagenet")
    e.add_argument("--method", nargs="+", metavar="M",
                   help=f"one or more of {', '.join(cli_names())}; default gradcam (an export's: its own)")
    e.add_argument("--labels", metavar="CSV", help="explain each image's first labelled class instead of its "
                   "top-1 (path,label rows, as for explain and export)")
    method_args(e)
    e.add_argument("--metric", nargs="+", default=list(DEFAULT_METRICS), choices=METRICS, metavar="METRIC",
                   help=f"one or more of {', '.join(METRICS)}; default {' '.join(DEFAULT_METRICS)}")
    e.add_argument("--randomize-layers", type=int_at_least(1, "layers randomized, top first"), default=4,
                   help="sanity: how many layers to randomize, top first (cascading); default %(default)s")
    e.add_argument("--percentiles", nargs="+", type=float, default=[10, 20, 30, 40, 50, 60, 70, 80, 90],
                   metavar="P", help="ROAD: %% of pixels removed, each in (0, 100); default 10 .. 90")
    e.add_argument("--runs", type=int_at_least(2, "random subsets per image"), default=20,
                   help="faithfulness correlation: subsets per image; default %(default)s")
    e.add_argument("--seed", type=int, default=0, help="seed of every random draw; default %(default)s")
    e.add_argument("--batch-size", type=int_at_least(1, "images per batch"), default=8)
    e.add_argument("--out", default="camkit_eval", help="output folder; default %(default)s")
    e.set_defaults(func=cmd_evaluate)


def _explainer(spec: MethodSpec, preset: Any) -> Explain:
    kw = spec.kwargs(preset)

    def explain(model: Any, x: Tensor, t: Tensor) -> Tensor:
        return spec.info.cls(model, **kw)(x, t.reshape(-1)).maps[:, 0].detach()

    return explain


def _sanity(model: Any, explain: Explain, x: Tensor, maps: Tensor, t: Tensor, a: argparse.Namespace) -> Dict[str, Tensor]:
    layers = ev.randomizable_layers(model)[::-1][:a.randomize_layers]
    out = ev.model_randomization(model, explain, x, t, layers=layers, similarity=("spearman", "ssim"), seed=a.seed)
    vals = {"sanity_spearman": out["spearman"][-1], "sanity_ssim": out["ssim"][-1]}
    vals.update({f"sanity_spearman@{n}": v for n, v in zip(layers, out["spearman"])})
    return vals


def _road(model: Any, explain: Explain, x: Tensor, maps: Tensor, t: Tensor, a: argparse.Namespace) -> Dict[str, Tensor]:
    out = ev.road(model, x, maps, t, a.percentiles, seed=a.seed, batch_size=max(a.batch_size, 16))
    vals = {"road": out["combined"]}
    for j, p in enumerate(out["percentiles"].tolist()):
        vals[f"road_morf@{p:g}"], vals[f"road_lerf@{p:g}"] = out["morf"][:, j], out["lerf"][:, j]
    return vals


def _other(name: str) -> Callable[..., Dict[str, Tensor]]:
    def run(model: Any, explain: Explain, x: Tensor, maps: Tensor, t: Tensor, a: argparse.Namespace) -> Dict[str, Tensor]:
        if name == "random_logit":
            with torch.no_grad():
                classes = model(x[:1]).shape[1]
            return {name: ev.random_logit(model, explain, x, t, classes, seed=a.seed)["similarity"]}
        if name == "faithfulness_correlation":
            size = max(1, min(224, maps[0].numel() // 10))
            return {name: ev.faithfulness_correlation(model, x, maps, t, size, a.runs, seed=a.seed)["correlation"]}
        if name == "infidelity":
            return {name: ev.infidelity(model, x, maps, t, seed=a.seed)}
        return {name: getattr(ev, name)(maps)}
    return run


RUNNERS: Dict[str, Callable[..., Dict[str, Tensor]]] = {"sanity": _sanity, "road": _road,
                                                        **{n: _other(n) for n in METRICS if n not in ("sanity", "road")}}


def _export_source(args: argparse.Namespace) -> Optional[ExportedRun]:
    """The export named as the only input, or None; options it fixes itself are refused."""
    if len(args.images) != 1 or not is_export(args.images[0]):
        return None
    given = [o for o, v in (("--model", args.model != DEFAULT_MODEL), ("--weights", args.weights != "imagenet"),
                            ("--head", args.head is not None), ("--labels", args.labels is not None)) if v]
    if given:
        raise InputError(f"{args.images[0]} is an export's folder, evaluated with the export's own model and "
                         f"classes: leave {', '.join(given)} out")
    if args.method is None and (args.layers or args.layer_weights or args.scales or args.flip or args.fusion != "max"):
        raise InputError("--layers, --fusion, --layer-weights, --scales and --flip apply to the methods named with "
                         "--method; the export's own method keeps its settings")
    return read_export(args.images[0])


def _check(args: argparse.Namespace) -> Tuple[List[MethodSpec], List[str], Optional[ExportedRun]]:
    """Everything that needs no model: methods, percentiles, images (an export's: also its classes)."""
    if "road" in args.metric:
        check_percentiles(args.percentiles)
    if args.demo and args.images:
        raise InputError("--demo runs on the bundled samples; give either images or --demo")
    run = _export_source(args)
    if run is not None:
        return (method_specs(args.method, args) if args.method else [run.spec.method]), list(run.images), run
    specs = method_specs(args.method or ["gradcam"], args)
    if args.demo or not args.images:
        return specs, [str(p) for p in sample_images()], None
    return specs, [p for p, _ in collect_images(args.images, args.out)], None


def _label_targets(path: str, paths: Sequence[str], model: Any, preset: Any) -> List[int]:
    """Each image's first labelled class (index into the model's classes)."""
    names = categories(preset.categories, num_classes(model, preset.input_size, preset.output))
    targets = []
    for p, row in zip(paths, labels_of(paths, read_labels(path), path)):
        classes = class_indices(row, names, f"{path} ({p})")
        if not classes:
            raise InputError(f"{path}: {p} has no label; camkit evaluate explains one class per image")
        targets.append(classes[0])
    return targets


def _batches(paths: List[str], targets: Optional[List[int]], preset: Any, size: int):
    for i in range(0, len(paths), size):
        chunk = paths[i:i + size]
        t = None if targets is None else torch.tensor(targets[i:i + size])
        yield chunk, torch.stack([preset.transform(load_image(p)) for p in chunk]), t


def _evaluate(model: Any, preset: Any, specs: List[MethodSpec], paths: List[str], targets: Optional[List[int]],
              args: argparse.Namespace):
    """Per method, the running means and the per-image rows (``targets``: None for each top-1)."""
    explainers = {s.name: _explainer(s, preset) for s in specs}
    aggs = {n: ev.RunningMetrics() for n in explainers}
    rows: List[Dict[str, Any]] = []
    bar = tqdm.tqdm(total=len(paths) * len(specs), desc="camkit evaluate", unit="map", disable=None, file=sys.stderr)
    with bar:
        for chunk, x, t in _batches(paths, targets, preset, args.batch_size):
            if t is None:
                with torch.no_grad():
                    t = model(x).argmax(1)
            for name, explain in explainers.items():
                maps = explain(model, x, t)
                vals: Dict[str, Tensor] = {}
                for metric in args.metric:
                    vals.update(RUNNERS[metric](model, explain, x, maps, t, args))
                aggs[name].update(**vals)
                rows += [{"image": p, "method": name, "class": int(t[i]),
                          **{k: float(v[i]) for k, v in vals.items() if "@" not in k}} for i, p in enumerate(chunk)]
                bar.update(len(chunk))
    return aggs, rows


def _plot(summary: Dict[str, Dict[str, float]], out: Path, prefix: str, xlabel: str, ylabel: str) -> List[Path]:
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figure state, a lighter import
    except ImportError as e:  # pragma: no cover - matplotlib is in the test environment
        raise DependencyError("camkit evaluate draws its curves with matplotlib: pip install matplotlib") from e

    curves = {m: {k: v for k, v in s.items() if k.startswith(prefix) and "@" in k} for m, s in summary.items()}
    if not any(curves.values()):
        return []
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, c in curves.items():
        kinds = sorted({k.split("@")[0] for k in c})
        for kind in kinds:
            keys = [k for k in c if k.split("@")[0] == kind]
            ax.plot([k.split("@")[1] for k in keys], [c[k] for k in keys], marker="o",
                    label=f"{method} {kind.replace(prefix, '').strip('_') or ''}".strip())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.subplots_adjust(left=0.14, bottom=0.2, right=0.92, top=0.96)
    path = out / f"{prefix.rstrip('_')}.png"
    fig.savefig(path, dpi=80)
    return [path]


def _write(out: Path, aggs: Dict[str, Any], rows: List[Dict[str, Any]], args: argparse.Namespace,
           run: Optional[ExportedRun]) -> List[Path]:
    summary = {m: a.summary() for m, a in aggs.items()}
    cols = [k for k in next(iter(summary.values())) if "@" not in k]
    lines = ["| method | images | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for m, s in summary.items():
        n = sum(r["method"] == m for r in rows)
        lines.append(f"| {m} | {n} | " + " | ".join(f"{s[c]:.4g}" for c in cols) + " |")
    target = "the export's class (first key)" if run else ("first label" if args.labels else "top-1 class")
    model = run.settings["model"] if run else args.model
    md = out / "evaluation.md"
    md.write_text(f"# camkit evaluate: {model}\n\nMetrics: {', '.join(args.metric)}; seed {args.seed}; "
                  f"means over the images ({target}).\n\n" + "\n".join(lines) + "\n")
    js = out / "evaluation.json"
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings.update(target=target, methods=list(summary))
    if run is not None:
        settings["export"] = {"folder": str(Path(args.images[0]).resolve()), "settings": run.settings}
    js.write_text(json.dumps({"settings": settings, "summary": summary, "per_image": rows}, indent=1) + "\n")
    pngs = _plot(summary, out, "road_", "% of pixels removed", "target logit") + \
        _plot(summary, out, "sanity_spearman", "layers randomized down to", "Spearman correlation with the map")
    return [md, js, *pngs]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``camkit evaluate``; returns the exit status."""
    specs, paths, run = _check(args)
    out = output_dir(args.out)
    model, preset = (run.spec.model if run else ModelSpec(args.model, args.weights, args.head)).build()
    if run is not None:
        check_same_model(run, model, preset)
    if preset.transform is None:
        raise InputError(f"{args.model} has no preprocessing in its preset; camkit evaluate cannot prepare images")
    if preset.task not in (None, "classification"):
        raise InputError(f"camkit evaluate measures classifiers; {args.model} is a {preset.task} model")
    targets = list(run.targets) if run else (_label_targets(args.labels, paths, model, preset) if args.labels else None)
    aggs, rows = _evaluate(model, preset, specs, paths, targets, args)
    for path in _write(Path(out), aggs, rows, args, run):
        print(f"wrote {path}")
    return 0
