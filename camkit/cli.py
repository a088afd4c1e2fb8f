"""The ``camkit`` command: ``camkit explain`` and ``camkit layers``.

    camkit explain --demo                      # bundled photos, offline EfficientNet-Lite0
    camkit explain cat.jpg dog.jpg --model resnet50 --method layercam gradcam --out out/
    camkit layers --model vgg16

Errors in the input (unreadable image, unknown model, layer or class, a
download that fails offline) print one line, ``camkit: error: ...``, and exit
with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import InputError

METHOD_NAMES = ("cam", "gradcam", "gradcampp", "layercam", "recam")
DEFAULT_MODEL = "efficientnet_lite0"


class CLIError(InputError):
    """Bad input: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- samples

def sample_images() -> List[Path]:
    """The bundled sample photos (see camkit/samples/README.md for their licences)."""
    from importlib.resources import files

    root = files("camkit") / "samples"
    names = [line.split("\t")[0] for line in (root / "labels.txt").read_text().splitlines() if line.strip()]
    return [Path(str(root / n)) for n in names]


def sample_labels() -> Path:
    from importlib.resources import files

    return Path(str(files("camkit") / "samples" / "labels.txt"))


def _read_labels(path: str) -> Dict[str, str]:
    """``file name<TAB>label`` per line -> {file name: label}."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CLIError(f"cannot read labels file {path}: {e.strerror or e}") from None
    out = {}
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise CLIError(f"{path}:{k}: expected 'file name<TAB>label'")
        out[parts[0].strip()] = parts[1].strip()
    return out


def _check_images(paths: Sequence[str]) -> None:
    """Fail early, before any model is built, on a missing file or one PIL cannot identify."""
    from PIL import Image, UnidentifiedImageError

    for p in paths:
        if not os.path.isfile(p):
            raise CLIError(f"no such image file: {p}")
        try:
            with Image.open(p):
                pass
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise CLIError(f"cannot read image {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _load_image(p: str) -> Any:
    from PIL import Image

    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:  # e.g. a truncated file
        raise CLIError(f"cannot read image {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


# --------------------------------------------------------------------------- model

def _build(args: argparse.Namespace):
    from .adapters import build, resolve

    model, preset = build(args.model, args.weights)
    head_path = getattr(args, "head", None)
    if head_path:
        from torch import nn

        from .heads import CAMModel, load_head

        feats = getattr(model, "features", None)
        if not isinstance(feats, nn.Sequential):
            raise CLIError(f"--head needs a model with a 'features' Sequential (e.g. vgg16); {args.model} has none")
        if not os.path.isfile(head_path):
            raise CLIError(f"head file not found: {head_path}")
        try:
            head = load_head(head_path)
        except Exception as e:
            raise CLIError(f"cannot read head file {head_path}: {type(e).__name__}: {e}") from None
        model = CAMModel(nn.Sequential(feats, nn.AdaptiveAvgPool2d(7)), head).eval()
        new = resolve(model)
        from dataclasses import replace

        preset = replace(new, transform=preset.transform, mean=preset.mean, std=preset.std,
                         input_size=preset.input_size, categories=None)
    return model, preset


def _categories(preset, num_classes: int, classes_file: Optional[str]) -> List[str]:
    if classes_file:
        try:
            names = [ln.strip() for ln in Path(classes_file).read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise CLIError(f"cannot read classes file {classes_file}: {e.strerror or e}") from None
        if len(names) != num_classes:
            raise CLIError(f"{classes_file} names {len(names)} classes, the model has {num_classes}")
        return names
    if preset.categories is not None and len(preset.categories) == num_classes:
        return list(preset.categories)
    return [f"class {k}" for k in range(num_classes)]


def _parse_target(spec: str, categories: List[str]) -> Tuple[Optional[int], Optional[int]]:
    """'top1' / 'top5' -> (None, k); 'CLASS' (index or name) -> (index, None)."""
    s = spec.strip()
    low = s.lower()
    if low.startswith("top") and low[3:].isdigit():
        k = int(low[3:])
        if not 1 <= k <= len(categories):
            raise CLIError(f"--target {spec}: k must lie in 1..{len(categories)}")
        return None, k
    if s.isdigit():
        c = int(s)
        if c >= len(categories):
            raise CLIError(f"--target {spec}: class index out of range 0..{len(categories) - 1}")
        return c, None
    matches = [i for i, n in enumerate(categories) if n.lower() == low]
    if not matches:
        import difflib

        close = difflib.get_close_matches(s, categories, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CLIError(f"--target {spec!r} is neither top1/topK, a class index nor a class name{hint}")
    return matches[0], None


def _explainer(method: str, model, preset, args: argparse.Namespace):
    from .methods import METHODS

    kwargs = preset.method_kwargs(method, args.layers)
    if method == "recam":
        if args.normalize:
            kwargs["normalize"] = args.normalize
    else:
        kwargs["normalize"] = args.normalize or "minmax"
    if method not in ("cam", "recam"):
        kwargs["fusion"] = args.fusion
        if args.layer_weights is not None:
            kwargs["weights"] = args.layer_weights
    elif args.fusion != "max" or args.layer_weights is not None:
        raise CLIError(f"--fusion/--layer-weights do not apply to {method} (one layer)")
    return METHODS[method](model, **kwargs)


# --------------------------------------------------------------------------- commands

def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from . import overlay as ov
    from .overlay import denormalize

    if args.threads:
        torch.set_num_threads(args.threads)
    labels_file = args.labels
    paths = list(args.images)
    if args.demo or not paths:
        if paths:
            raise CLIError("--demo runs on the bundled samples; give either images or --demo")
        paths = [str(p) for p in sample_images()]
        labels_file = labels_file or str(sample_labels())
        print(f"camkit demo: {len(paths)} bundled sample photos, model {args.model}", file=sys.stderr)
    _check_images(paths)
    truths = _read_labels(labels_file) if labels_file else {}
    methods = []
    for m in args.method:
        m = m.lower()
        if m not in METHOD_NAMES:
            raise CLIError(f"unknown method {m!r}; choose from {', '.join(METHOD_NAMES)}")
        if m not in methods:
            methods.append(m)

    model, preset = _build(args)
    for m in methods:
        if m not in preset.methods and not args.layers:
            preset.default_layers(m)  # raises the reason (no CAM layer / not a ReCAM model)
    explainers = {m: _explainer(m, model, preset, args) for m in methods}

    def prepare(p: str):
        try:
            return preset.transform(_load_image(p))
        except CLIError:
            raise
        except Exception as e:
            raise CLIError(f"preprocessing {p} failed: {type(e).__name__}: {e}") from None

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    written: List[Path] = []
    with torch.no_grad():
        probe = model(prepare(paths[0])[None])
    categories = _categories(preset, probe.shape[1], args.classes)
    target_class, topk = _parse_target(args.target, categories)

    stems = []
    seen: Dict[str, int] = {}
    for p in paths:
        s = Path(p).stem
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}-{seen[s]}")

    tiles: Dict[str, List[Any]] = {m: [] for m in methods}
    titles: List[str] = []
    inputs: List[Any] = []
    bar = tqdm(total=len(paths) * len(methods), desc="camkit", unit="map", disable=None, file=sys.stderr)
    bs = max(1, args.batch_size)
    for start in range(0, len(paths), bs):
        x = torch.stack([prepare(p) for p in paths[start:start + bs]])
        shown = [ov.to_uint8(denormalize(xi, preset.mean, preset.std)) for xi in x]
        inputs += shown
        for m in methods:
            if target_class is not None:
                res = explainers[m](x, targets=[target_class] * x.shape[0])
            else:
                res = explainers[m](x, topk=topk)
            probs = res.logits.softmax(dim=1)
            for b in range(x.shape[0]):
                i = start + b
                K = res.maps.shape[1]
                for k in range(K):
                    img = ov.overlay(shown[b], res.maps[b, k], alpha=args.alpha, cmap=args.cmap,
                                     postprocess=args.postprocess)
                    name = f"{stems[i]}_{m}.png" if K == 1 else f"{stems[i]}_{m}_top{k + 1}.png"
                    img.save(out / name)
                    written.append(out / name)
                    if k == 0:
                        tiles[m].append(img)
                if m == methods[0]:
                    top = probs[b].topk(min(3, probs.shape[1]))
                    preds = [(categories[c], float(v)) for v, c in zip(top.values, top.indices.tolist())]
                    truth = truths.get(Path(paths[i]).name)
                    t_idx = int(res.targets[b, 0])
                    title = ov.tile_title(preds, truth)
                    if target_class is not None:
                        title += f"\nmap: {categories[t_idx]}"
                    titles.append(title)
                    print(f"{paths[i]}: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in preds))
                bar.update(1)
    bar.close()

    for m in methods:
        try:
            f = out / f"grid_{m}.png"
            ov.save_labelled_grid(f, tiles[m], titles, cols=min(4, len(tiles[m])),
                                  suptitle=f"{m} on {args.model} ({preset.family})")
            written.append(f)
        except ImportError as e:
            print(f"camkit: note: {e}; writing the grid without labels", file=sys.stderr)
            f = out / f"grid_{m}.png"
            ov.grid(tiles[m], cols=4).save(f)
            written.append(f)
        for page, im in enumerate(ov.compact_grid(tiles[m], rows=3, cols=4), 1):
            f = out / (f"compact_{m}.png" if page == 1 else f"compact_{m}_{page}.png")
            im.save(f)
            written.append(f)
    for i, stem in enumerate(stems):
        f = out / f"strip_{stem}.png"
        ov.strip([inputs[i]] + [tiles[m][i] for m in methods], labels=["input"] + methods).save(f)
        written.append(f)
    print(f"wrote {len(written)} files to {out}/ (grid_{methods[0]}.png shows them all)")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from .adapters import default_marks, list_layers

    model, preset = _build(args)
    size = tuple(args.input_size) if args.input_size else preset.input_size
    infos = list_layers(model, size)
    marks = default_marks(preset)
    width = max(len(i.name) for i in infos)
    tw = max(len(i.type) for i in infos)
    print(f"{args.model} ({preset.family}), input (1, 3, {size[0]}, {size[1]}); * = default layer of the methods shown")
    for info in infos:
        if args.defaults_only and info.name not in marks:
            continue
        shape = "x".join(str(s) for s in info.shape) if info.shape else "-"
        mark = marks.get(info.name)
        tail = f"  * {', '.join(mark)}" if mark else ""
        print(f"{info.name:<{width}}  {info.type:<{tw}}  {shape}{tail}")
    return 0


# --------------------------------------------------------------------------- parser

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camkit", description="Class activation maps for PyTorch vision models.")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp: argparse.ArgumentParser, weights_default: str) -> None:
        sp.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model name: {DEFAULT_MODEL} (offline ImageNet weights), a torchvision or timm "
                             "name (tv:NAME / timm:NAME to choose); default %(default)s")
        sp.add_argument("--weights", default=weights_default,
                        help="imagenet (download the default pretrained weights), none (random), or PATH of a "
                             "state dict; default %(default)s")
        sp.add_argument("--head", metavar="PATH", help="a CAM/ReCAM head saved by camkit.save_head, put on the "
                        "model's features + AdaptiveAvgPool2d(7) (needed for --method recam)")

    e = sub.add_parser("explain", help="write CAM overlays for images",
                       description="Write one overlay per image and method, a labelled grid, a compact 3x4 grid "
                                   "and one strip per image comparing the methods. With no images (or --demo): "
                                   "the bundled sample photos.")
    e.add_argument("images", nargs="*", metavar="IMAGE")
    e.add_argument("--demo", action="store_true", help="run on the bundled sample photos")
    model_args(e, "imagenet")
    e.add_argument("--method", nargs="+", default=["layercam"], metavar="M",
                   help=f"one or more of {', '.join(METHOD_NAMES)}; default layercam")
    e.add_argument("--layers", nargs="+", metavar="LAYER",
                   help="layer names (see `camkit layers`) or a preset's layer set (vgg: pools, convs)")
    e.add_argument("--fusion", choices=["max", "weighted"], default="max", help="multi-layer fusion; default max")
    e.add_argument("--layer-weights", nargs="+", type=float, metavar="W",
                   help="one weight per layer for --fusion weighted (the study: 0.4 0.4 0.2)")
    e.add_argument("--target", default="top1", help="top1 (default), topK (e.g. top3), or a class index or name")
    e.add_argument("--normalize", help="minmax (default), sigmoid, relu_max, tanh_max")
    e.add_argument("--postprocess", action="store_true", help="the study's display post-process (0.3 cut, x1.5)")
    e.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity; default %(default)s")
    e.add_argument("--cmap", default="jet", help="matplotlib colormap; default %(default)s")
    e.add_argument("--labels", metavar="FILE", help="ground truth: 'file name<TAB>label' per line")
    e.add_argument("--classes", metavar="FILE", help="class names, one per line (for models not on ImageNet)")
    e.add_argument("--out", default="camkit_out", help="output directory; default %(default)s")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e.set_defaults(func=cmd_explain)

    lay = sub.add_parser("layers", help="list hookable layers with their output shapes, marking the defaults")
    model_args(lay, "none")
    lay.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                     help="input size for the dry forward; default the model's")
    lay.add_argument("--defaults-only", action="store_true", help="only the layers the methods use by default")
    lay.set_defaults(func=cmd_layers)

    from .export import add_parsers as add_export_parsers

    add_export_parsers(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "layer_weights", None) is not None and args.fusion != "weighted":
        args.fusion = "weighted"
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, ImportError, TypeError) as e:
        if os.environ.get("CAMKIT_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"camkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("camkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
