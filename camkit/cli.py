"""The ``camkit`` command: ``camkit explain`` and ``camkit layers``.

    camkit explain --demo                      # bundled photos, offline EfficientNet-Lite0
    camkit explain cat.jpg dog.jpg --model resnet50 --method layercam gradcam --out out/
    camkit explain photos/ --save-maps --no-figures --out maps/    # a folder, recursively
    camkit explain street.jpg --model tv:fcn_resnet50 --target-class car
    camkit layers --model vgg16

Overlays are drawn on the user's own photo, aligned: the map is put back
where the network saw it (resize and center crop undone,
:func:`camkit.geometry.to_original`). Mistakes in the input (an unreadable
image, an unknown model, layer, class or colormap, a bad option value, an
output folder that cannot be made) print one line, ``camkit: error: ...``,
and exit with status 2, before the model is built where they can be checked
without it. Anything else is a bug in camkit: it prints its traceback and
asks to be reported (exit status 1).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import InputError

METHOD_NAMES = ("cam", "gradcam", "gradcampp", "layercam", "recam", "hirescam", "xgradcam", "gradcamelementwise",
                "eigengradcam", "eigencam", "scorecam", "ablationcam", "smoothgradcampp", "fullgrad")
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
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read labels file {path}: {getattr(e, 'strerror', None) or e}") from None
    out = {}
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise CLIError(f"{path}:{k}: expected 'file name<TAB>label'")
        out[parts[0].strip()] = parts[1].strip()
    return out


# --------------------------------------------------------------------------- option values (checked up front)

def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer ({what}), got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} ({what}), got {v}")
        return v
    return parse


def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return v


def _check_cmap(name: str) -> None:
    try:
        import matplotlib
    except ImportError:
        if name != "jet":
            from .errors import DependencyError

            raise DependencyError(f"--cmap {name} needs matplotlib (pip install 'camkit[plot]'); "
                                  "without it only jet is built in") from None
        return
    if name not in matplotlib.colormaps:
        import difflib

        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; e.g. jet, viridis, magma, turbo"
        raise CLIError(f"unknown colormap {name!r} (--cmap takes matplotlib's colormap names){hint}")


def _check_normalize(name: Optional[str]) -> None:
    if name is None or name.lower() == "none":
        return
    from .normalize import get_normalizer

    try:
        get_normalizer(name)
    except InputError as e:
        raise CLIError(f"--normalize: {e}, or none (raw maps)") from None


def _methods(names: Sequence[str]) -> List[str]:
    out: List[str] = []
    for m in names:
        m = m.lower()
        if m not in METHOD_NAMES:
            raise CLIError(f"unknown method {m!r}; choose from {', '.join(METHOD_NAMES)}")
        if m not in out:
            out.append(m)
    return out


_TOPK = re.compile(r"top(\d+)$", re.IGNORECASE)


def _target_syntax(spec: str, flag: str = "--target", allow_topk: bool = True) -> None:
    """What can be refused before the model exists: topK forms, negative indices, an empty string."""
    s = spec.strip()
    m = _TOPK.match(s)
    if m and allow_topk:
        if int(m.group(1)) < 1:
            raise CLIError(f"{flag} {spec}: k must be at least 1 (top1, top3, ...)")
        return
    if not s:
        raise CLIError(f"{flag} is empty; give top1/topK, a class index or a class name")
    if re.fullmatch(r"[+-]?\d+", s) and int(s) < 0:
        raise CLIError(f"{flag} {spec}: a class index is >= 0")
    if (m or s.lower().startswith("top")) and not allow_topk:
        raise CLIError(f"{flag} takes one class (an index or a name), not {spec!r}; use --target topK for the best K")


def _parse_target(spec: str, categories: Optional[Sequence[str]]) -> Tuple[Optional[int], Optional[int]]:
    """'top1' / 'top5' -> (None, k); 'CLASS' (index or name) -> (index, None).

    ``categories``: the class names when known (None: only indices work).
    """
    s = spec.strip()
    m = _TOPK.match(s)
    if m:
        k = int(m.group(1))
        if k < 1 or (categories is not None and k > len(categories)):
            upper = len(categories) if categories is not None else "C"
            raise CLIError(f"--target {spec}: k must lie in 1..{upper}")
        return None, k
    if re.fullmatch(r"\+?\d+", s):
        c = int(s)
        if categories is not None and c >= len(categories):
            raise CLIError(f"--target {spec}: class index out of range 0..{len(categories) - 1}")
        return c, None
    if categories is None:
        raise CLIError(f"--target {spec!r}: this model's class names are not known; give a class index, "
                       "or the names with --classes FILE")
    low = s.lower()
    matches = [i for i, n in enumerate(categories) if n.lower() == low]
    if not matches:
        import difflib

        close = difflib.get_close_matches(s, list(categories), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CLIError(f"--target {spec!r} is neither top1/topK, a class index nor a class name{hint}")
    return matches[0], None


# --------------------------------------------------------------------------- images in

def image_extensions() -> Tuple[str, ...]:
    """File name endings of the images a folder is searched for (torchvision's list)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def _folder_images(folder: Path, exclude: Optional[Path]) -> List[Tuple[str, str]]:
    """``(path, key)`` of every image file under ``folder`` (recursive, sorted, hidden entries and the
    folder ``exclude`` skipped); key: the path relative to ``folder`` without its extension."""
    exts = image_extensions()
    skip = exclude.resolve() if exclude is not None else None
    found: List[Tuple[str, str]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
        for f in files:
            if not f.startswith(".") and f.lower().endswith(exts):
                full = Path(root) / f
                found.append((str(full), full.relative_to(folder).with_suffix("").as_posix()))
    return sorted(found, key=lambda pk: pk[1])


def _collect_images(specs: Sequence[str], out: Optional[str] = None) -> List[Tuple[str, str]]:
    """Image files and folders -> ``(path, output key)``; a file's key is its stem, a folder's images
    keep their relative path (so outputs mirror the folder)."""
    items: List[Tuple[str, str]] = []
    seen = set()
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found = _folder_images(p, Path(out) if out else None)
            if not found:
                raise CLIError(f"no image files in folder {s} (searched recursively for "
                               f"{', '.join(image_extensions())})")
        elif p.is_file():
            found = [(s, p.stem)]
        else:
            raise CLIError(f"no such image file or folder: {s}")
        for path, key in found:
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                items.append((path, key))
    return items


def _cannot_read(p: str, e: BaseException) -> CLIError:
    first = str(e).splitlines()[0] if str(e) else ""
    return CLIError(f"cannot read image {p}: {type(e).__name__}: {first}")


def _check_images(paths: Sequence[str]) -> None:
    """Fail early, before any model is built, on a file PIL cannot identify or will not decode."""
    from PIL import Image, UnidentifiedImageError

    for p in paths:
        if not os.path.isfile(p):
            raise CLIError(f"no such image file: {p}")
        try:
            with Image.open(p):
                pass
        except Image.DecompressionBombError as e:
            raise CLIError(f"cannot read image {p}: {e} Downscale it first") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise _cannot_read(p, e) from None


_HIGH_DEPTH = {"I": "32-bit integer", "F": "floating-point"}


def _load_image(p: str, note: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Any:
    """The image as 8-bit RGB, upright (EXIF orientation applied).

    16-bit, 32-bit integer and floating-point images are scaled to 0..255 by
    their own value range (lowest value -> 0, highest -> 255), with a note;
    ``convert("RGB")`` alone would clip them.
    """
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in _HIGH_DEPTH or im.mode.startswith("I;16"):
                a = np.asarray(im, dtype=np.float64)
                if not np.isfinite(a).all():
                    raise CLIError(f"cannot read image {p}: it holds NaN or infinite values")
                lo, hi = float(a.min()), float(a.max())
                scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
                depth = _HIGH_DEPTH.get(im.mode, "16-bit")
                note(f"camkit: note: {p} is a {depth} image (values {lo:g} to {hi:g}); "
                     "scaled to 8 bits by its value range")
                return Image.fromarray(np.round(scaled).astype(np.uint8)).convert("RGB")
            return im.convert("RGB")
    except CLIError:
        raise
    except Image.DecompressionBombError as e:
        raise CLIError(f"cannot read image {p}: {e} Downscale it first") from None
    except (OSError, ValueError, SyntaxError) as e:  # e.g. a truncated file
        raise _cannot_read(p, e) from None


# --------------------------------------------------------------------------- files out

def _output_dir(path: str) -> Path:
    """The output folder, made now (before the model is built) or refused in one line."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {path} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the output folder {path}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write in the output folder {path}: permission denied")
    return out


class Outputs:
    """The files one run writes: unique names and a true count.

    A name already used in this run (or an input image's path) gets ``-2``,
    ``-3``, ... before its extension, so nothing written in this run, and no
    input, is overwritten; files of earlier runs are replaced.
    """

    def __init__(self, root: Path, inputs: Sequence[str] = ()) -> None:
        self.root = root
        self.written: List[Path] = []
        self._taken = {self._key(Path(p)) for p in inputs}

    @staticmethod
    def _key(p: Path) -> str:
        return os.path.normcase(os.path.abspath(p)).lower()  # also safe on case-insensitive file systems

    def reserve(self, base: str, *exts: str) -> List[Path]:
        """One free path per extension, all with the same stem: ``root/base[-n]ext``."""
        n = 1
        while True:
            stem = base if n == 1 else f"{base}-{n}"
            paths = [self.root / f"{stem}{e}" for e in exts]
            if all(self._key(p) not in self._taken for p in paths):
                break
            n += 1
        self._taken.update(self._key(p) for p in paths)
        return paths

    def write(self, path: Path, save: Callable[[Path], Any]) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path)
        except OSError as e:  # a full disk, a folder made read-only meanwhile: not a bug in camkit
            raise CLIError(f"cannot write {path}: {e.strerror or e}") from None
        self.written.append(path)
        return path

    def save(self, base: str, ext: str, save: Callable[[Path], Any]) -> Path:
        return self.write(self.reserve(base, ext)[0], save)


def _prefixed(key: str, prefix: str) -> str:
    """``a/b`` -> ``a/PREFIXb`` (figures sit next to the image's overlays)."""
    p = PurePosixPath(key)
    return str(p.with_name(prefix + p.name))


def _slug(name: str, width: int = 40) -> str:
    """A class name as a file-name part: 'football helmet' -> 'football_helmet'."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
    return (s or "class")[:width]


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
        head = load_head(head_path)  # InputError for a file that is not a head
        model = CAMModel(nn.Sequential(feats, nn.AdaptiveAvgPool2d(7)), head).eval()
        new = resolve(model)
        from dataclasses import replace

        preset = replace(new, transform=preset.transform, mean=preset.mean, std=preset.std,
                         input_size=preset.input_size, categories=None)
    return model, preset


def _class_names_file(classes_file: str) -> List[str]:
    try:
        return [ln.strip() for ln in Path(classes_file).read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read classes file {classes_file}: {getattr(e, 'strerror', None) or e}") from None


def _categories(preset, num_classes: int, classes_file: Optional[str]) -> List[str]:
    if classes_file:
        names = _class_names_file(classes_file)
        if len(names) != num_classes:
            raise CLIError(f"{classes_file} names {len(names)} classes, the model has {num_classes}")
        return names
    if preset.categories is not None and len(preset.categories) == num_classes:
        return list(preset.categories)
    return [f"class {k}" for k in range(num_classes)]


def _explainer(method: str, model, preset, args: argparse.Namespace):
    """``args``: layers, normalize (None: the method's default; "none": raw maps), fusion, layer_weights."""
    from .methods import METHODS

    kwargs = preset.method_kwargs(method, args.layers)
    norm = args.normalize
    if norm is not None:
        kwargs["normalize"] = None if norm.lower() == "none" else norm
    elif method != "recam":
        kwargs["normalize"] = "minmax"
    if method not in ("cam", "recam", "fullgrad"):
        kwargs["fusion"] = args.fusion
        if args.layer_weights is not None:
            kwargs["weights"] = args.layer_weights
    elif args.fusion != "max" or args.layer_weights is not None:
        raise CLIError(f"--fusion/--layer-weights do not apply to {method} (one layer, or FullGrad's sum)")
    return METHODS[method](model, **kwargs)


# --------------------------------------------------------------------------- explain

def _display_range(m, raw: bool) -> Tuple[float, float]:
    """The values that span the colormap: [0, 1] for normalized maps, the map's own range for raw ones."""
    if not raw:
        return 0.0, 1.0
    lo, hi = float(m.min()), float(m.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _same_shape_runs(xs: Sequence[Any]) -> List[List[int]]:
    """Indices of consecutive inputs of one shape (a batch needs one shape; segmentation inputs vary)."""
    runs: List[List[int]] = []
    for i, x in enumerate(xs):
        if runs and xs[runs[-1][0]].shape == x.shape:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    # everything that can be checked without the model, first
    _check_cmap(args.cmap)
    _check_normalize(args.normalize)
    methods = _methods(args.method)
    if args.target is not None and args.target_class is not None:
        raise CLIError("give --target or --target-class, not both")
    spec, flag = (args.target_class, "--target-class") if args.target_class is not None else \
        ("top1" if args.target is None else args.target, "--target")
    _target_syntax(spec, flag, allow_topk=flag == "--target")
    labels_file = args.labels
    if args.demo or not args.images:
        if args.images:
            raise CLIError("--demo runs on the bundled samples; give either images or --demo")
        items = [(str(p), p.stem) for p in sample_images()]
        labels_file = labels_file or str(sample_labels())
        print(f"camkit demo: {len(items)} bundled sample photos, model {args.model}", file=sys.stderr)
    else:
        items = _collect_images(args.images, args.out)
    _check_images([p for p, _ in items])
    truths = _read_labels(labels_file) if labels_file else {}
    known_names = _class_names_file(args.classes) if args.classes else None
    out = _output_dir(args.out)
    outputs = Outputs(out, [p for p, _ in items])

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, preset = _build(args)
        if preset.transform is None:
            raise CLIError(f"{args.model} has no preprocessing in its preset; camkit explain cannot prepare images")
        for m in methods:
            if m not in preset.methods and not args.layers:
                preset.default_layers(m)  # raises the reason (no CAM layer / not a ReCAM model)
        explainers = {m: _explainer(m, model, preset, args) for m in methods}
        if known_names is None and preset.categories is not None:
            known_names = list(preset.categories)
        target_class, topk = _parse_target(spec, known_names)
        segmentation = getattr(preset, "task", "classification") == "segmentation"
        if segmentation:
            if target_class is None:
                names = ", ".join(f"{k} {n}" for k, n in enumerate((known_names or [])[:8]))
                raise CLIError(f"{args.model} is a segmentation model: give --target-class C, the class whose "
                               f"predicted region to explain (an index or a name{': ' + names + ', ...' if names else ''})")
            from .targets import SegmentationRegion

            def call(ex, x):
                return ex(x, targets=SegmentationRegion(target_class))
        elif target_class is not None:
            def call(ex, x):
                return ex(x, targets=[target_class] * x.shape[0])
        else:
            def call(ex, x):
                return ex(x, topk=topk)
        return _explain_all(args, items, truths, methods, explainers, call, preset, target_class, segmentation,
                            outputs)
    finally:
        torch.set_num_threads(threads)


def _file_base(key: str, method: str, k: int, K: int, name: str, one_class: bool) -> str:
    """``key_method`` for the top-1; ``key_method_2-football_helmet`` for target 2 of K; ``key_method_tabby``
    for a class asked for by name or index."""
    if K > 1:
        return f"{key}_{method}_{k + 1}-{_slug(name)}"
    return f"{key}_{method}_{_slug(name)}" if one_class else f"{key}_{method}"


def _shares(scores: Any, segmentation: bool) -> Any:
    """Per class: the probability (classification, scores (C,)) or the share of pixels predicted as
    that class (segmentation, scores (C, H, W))."""
    import torch

    if segmentation:
        pred = scores.argmax(0).flatten()
        return torch.bincount(pred, minlength=scores.shape[0]).double() / pred.numel()
    return scores.detach().float().softmax(0)


def _title(preds: Sequence[Tuple[str, float]], truth: Optional[str], name: str, value: float, k: int, K: int,
           segmentation: bool, one_class: bool) -> str:
    """A grid tile's title: the top-3 once per image, then the map's class where it is not the top-1."""
    from .overlay import tile_title

    short = name if len(name) <= 24 else name[:23] + "~"
    if segmentation:
        return "\n".join(([f"truth: {truth}"] if truth else []) + [f"map: {short} ({100 * value:.0f}% of pixels)"])
    title = tile_title(preds, truth) if k == 0 else ""
    if K > 1 or one_class:
        head = "map" if K == 1 else f"map {k + 1}"
        title += ("\n" if title else "") + f"{head}: {short} {100 * value:.0f}%"
    return title


def _explain_all(args: argparse.Namespace, items: Sequence[Tuple[str, str]], truths: Dict[str, str],
                 methods: Sequence[str], explainers: Dict[str, Any], call: Callable[[Any, Any], Any], preset: Any,
                 target_class: Optional[int], segmentation: bool, outputs: Outputs) -> int:
    """Explain every image in batches, write its overlays (and maps) as it comes, then the figures."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from . import overlay as ov
    from .geometry import to_original

    raw = args.normalize is not None and args.normalize.lower() == "none"
    figures = not args.no_figures
    one_class = target_class is not None
    tiles: Dict[str, List[List[Any]]] = {m: [] for m in methods}   # per method, per image: K tiles
    titles: Dict[str, List[List[str]]] = {m: [] for m in methods}
    labels: Dict[str, List[List[str]]] = {m: [] for m in methods}  # strip captions
    inputs: List[Any] = []
    categories: Optional[List[str]] = None
    bar = tqdm(total=len(items), desc="camkit", unit="image", disable=None, file=sys.stderr)

    def note(s: str) -> None:
        tqdm.write(s, file=sys.stderr)

    bs = args.batch_size
    for start in range(0, len(items), bs):
        chunk = items[start:start + bs]
        photos = [_load_image(p, note) for p, _ in chunk]
        xs = [preset.transform(ph) for ph in photos]
        for run in _same_shape_runs(xs):
            x = torch.stack([xs[i] for i in run])
            results = {m: call(explainers[m], x) for m in methods}
            if categories is None:
                num_classes = int(results[methods[0]].logits.shape[1])
                categories = _categories(preset, num_classes, args.classes)
                if target_class is not None and target_class >= num_classes:
                    raise CLIError(f"class index {target_class} out of range 0..{num_classes - 1}")
            for j, i in enumerate(run):
                path, key = chunk[i]
                photo = photos[i]
                shown = ov.to_uint8(ov.denormalize(x[j], preset.mean, preset.std))
                truth = truths.get(Path(path).name)
                for m in methods:
                    res = results[m]
                    K = int(res.maps.shape[1])
                    classes = [target_class] * K if one_class else res.targets[j].tolist()
                    share = _shares(res.logits[j], segmentation)
                    info = [float(share[c]) for c in classes]
                    top = share.topk(min(3, len(categories)))
                    preds = [(categories[c], float(v)) for v, c in zip(top.values, top.indices.tolist())]
                    back = to_original(res.maps[j].detach(), photo, preset.transform, fill=float("nan"))
                    row_tiles, row_titles, row_labels = [], [], []
                    for k in range(K):
                        name = categories[classes[k]]
                        lo, hi = _display_range(res.maps[j, k], raw)
                        kw = {"alpha": args.alpha, "cmap": args.cmap, "postprocess": args.postprocess,
                              "vmin": lo, "vmax": hi}
                        img = ov.overlay(photo, back[k], **kw)
                        if args.colorbar:
                            img = ov.with_colorbar(img, args.cmap, lo, hi)
                        paths = outputs.reserve(_file_base(key, m, k, K, name, one_class),
                                                *((".png", ".npy") if args.save_maps else (".png",)))
                        outputs.write(paths[0], img.save)
                        if args.save_maps:
                            arr = back[k].nan_to_num(0.0).cpu().numpy().astype(np.float32)
                            outputs.write(paths[1], lambda p, a=arr: np.save(p, a))
                        if figures:
                            tile = ov.overlay(shown, res.maps[j, k].detach(), **kw)
                            tile.thumbnail((224, 224))
                            row_tiles.append(tile)
                            row_titles.append(_title(preds, truth, name, info[k], k, K, segmentation, one_class))
                            row_labels.append(f"{m}: {name}")
                    if figures:
                        tiles[m].append(row_tiles)
                        titles[m].append(row_titles)
                        labels[m].append(row_labels)
                    if m == methods[0]:
                        if segmentation and info[0] == 0.0:
                            note(f"camkit: note: {categories[target_class]} is predicted at no pixel of {path}; "
                                 "its maps are empty")
                        if segmentation:
                            line = (f"{path}: {categories[target_class]} at {100 * info[0]:.1f}% of the pixels; "
                                    "most pixels: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in preds))
                        else:
                            line = f"{path}: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in preds)
                        tqdm.write(line, file=sys.stdout)
                if figures:
                    view = Image.fromarray(shown)
                    view.thumbnail((224, 224))
                    inputs.append(view)
                bar.update(1)
    bar.close()

    first_grid = None
    if figures:
        first_grid = _write_figures(args, items, methods, tiles, titles, labels, inputs, preset, raw, outputs, ov)
    shows = f" ({first_grid.relative_to(outputs.root).as_posix()} shows them all)" if first_grid else ""
    n = len(outputs.written)
    print(f"wrote {n} file{'' if n == 1 else 's'} to {outputs.root}/{shows}")
    return 0


def _write_figures(args, items, methods, tiles, titles, labels, inputs, preset, raw, outputs: Outputs, ov):
    """Per method a labelled grid (one row per image when K > 1) and compact 3 x 4 pages; per image a strip."""
    cbar = (args.cmap, None, None, "each map from its minimum to its maximum") if raw else \
        (args.cmap, 0.0, 1.0, "map value")
    first_grid = None
    for m in methods:
        flat = [t for row in tiles[m] for t in row]
        flat_titles = [t for row in titles[m] for t in row]
        K = len(tiles[m][0])
        cols = K if K > 1 else min(4, len(flat))
        (f,) = outputs.reserve(f"grid_{m}", ".png")
        try:
            kw = {"cols": cols, "suptitle": f"{m} on {args.model} ({preset.family})",
                  "colorbar": cbar if args.colorbar else None}
            outputs.write(f, lambda p, t=flat, n=flat_titles, kw=kw: ov.save_labelled_grid(p, t, n, **kw))
        except ImportError as e:  # no matplotlib: the grid without titles
            print(f"camkit: note: {e}; writing the grid without labels", file=sys.stderr)
            outputs.write(f, ov.grid(flat, cols=cols).save)
        first_grid = first_grid or f
        for page, im in enumerate(ov.compact_grid(flat, rows=3, cols=4 if K == 1 else K), 1):
            outputs.save(f"compact_{m}" if page == 1 else f"compact_{m}_{page}", ".png", im.save)
    for i, (_, key) in enumerate(items):
        col = [inputs[i]] + [t for m in methods for t in tiles[m][i]]
        caps = ["input"] + [c for m in methods for c in labels[m][i]]
        im = ov.strip(col, labels=caps)
        if args.colorbar:
            im = ov.with_colorbar(im, args.cmap, 0.0, 1.0, labels=("min", "max") if raw else None)
        outputs.save(_prefixed(key, "strip_"), ".png", im.save)
    return first_grid


# --------------------------------------------------------------------------- layers

def _fixed_input_size(model) -> Optional[Tuple[int, int]]:
    """The only input size a model takes, where it has one (ViTs with a fixed position embedding)."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is not None and getattr(pe, "strict_img_size", False) and not getattr(pe, "dynamic_img_pad", False) \
            and not getattr(model, "dynamic_img_size", False):
        return int(size[0]), int(size[1])
    try:
        from torchvision.models import VisionTransformer
    except ImportError:  # pragma: no cover
        return None
    if isinstance(model, VisionTransformer):
        return int(model.image_size), int(model.image_size)
    return None


def cmd_layers(args: argparse.Namespace) -> int:
    from .adapters import default_marks, list_layers

    model, preset = _build(args)
    size = tuple(args.input_size) if args.input_size else tuple(preset.input_size)
    if args.input_size:
        fixed = _fixed_input_size(model)
        if fixed is not None and tuple(size) != fixed:
            raise CLIError(f"--input-size {size[0]} {size[1]}: {args.model} takes only {fixed[0]}x{fixed[1]} inputs "
                           "(a fixed position embedding)")
        try:
            infos = list_layers(model, size)
        except InputError:
            raise
        except (RuntimeError, AssertionError) as e:  # the model's own refusal of this size
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CLIError(f"--input-size {size[0]} {size[1]}: {args.model} cannot run on this size ({first}); "
                           f"its default is {preset.input_size[0]} {preset.input_size[1]}") from None
    else:
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

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``camkit: error: ...`` and exit status 2, like camkit's own."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"camkit: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="camkit", description="Class activation maps for PyTorch vision models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_args(sp: argparse.ArgumentParser, weights_default: str) -> None:
        sp.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model name: {DEFAULT_MODEL} (offline ImageNet weights), a torchvision or timm "
                             "name (tv:NAME / timm:NAME to choose; torchvision segmentation models too); "
                             "default %(default)s")
        sp.add_argument("--weights", default=weights_default,
                        help="imagenet (download the default pretrained weights), none (random), or PATH of a "
                             "state dict; default %(default)s")
        sp.add_argument("--head", metavar="PATH", help="a CAM/ReCAM head saved by camkit.save_head, put on the "
                        "model's features + AdaptiveAvgPool2d(7) (needed for --method recam)")

    e = sub.add_parser("explain", help="write CAM overlays for images",
                       description="Write one overlay per image, method and target on the photo itself (aligned), "
                                   "a labelled grid, a compact 3x4 grid and one strip per image comparing the "
                                   "methods. IMAGE may be a folder (searched recursively; outputs mirror it). "
                                   "With no images (or --demo): the bundled sample photos.")
    e.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders")
    e.add_argument("--demo", action="store_true", help="run on the bundled sample photos")
    model_args(e, "imagenet")
    e.add_argument("--method", nargs="+", default=["layercam"], metavar="M",
                   help=f"one or more of {', '.join(METHOD_NAMES)}; default layercam")
    e.add_argument("--layers", nargs="+", metavar="LAYER",
                   help="layer names (see `camkit layers`) or a preset's layer set (vgg: pools, convs)")
    e.add_argument("--fusion", choices=["max", "weighted"], default="max", help="multi-layer fusion; default max")
    e.add_argument("--layer-weights", nargs="+", type=float, metavar="W",
                   help="one weight per layer for --fusion weighted (the study: 0.4 0.4 0.2)")
    e.add_argument("--target", help="top1 (default), topK (e.g. top3: one map per class, named after it), "
                                    "or a class index or name")
    e.add_argument("--target-class", metavar="C", help="one class (index or name); for a segmentation model "
                   "(e.g. tv:fcn_resnet50) the region predicted as C is explained")
    e.add_argument("--normalize", metavar="N", help="minmax (default), sigmoid, relu_max, tanh_max, or none "
                   "(raw maps: --save-maps keeps their values; overlays show each from its min to its max)")
    e.add_argument("--postprocess", action="store_true", help="the study's display post-process (0.3 cut, x1.5)")
    e.add_argument("--alpha", type=_unit_float, default=0.5, help="heatmap opacity in [0, 1]; default %(default)s")
    e.add_argument("--cmap", default="jet", help="matplotlib colormap; default %(default)s")
    e.add_argument("--colorbar", action="store_true", help="a colour bar with the value scale under each overlay, "
                   "strip and grid")
    e.add_argument("--labels", metavar="FILE", help="ground truth: 'file name<TAB>label' per line")
    e.add_argument("--classes", metavar="FILE", help="class names, one per line (for models not on ImageNet)")
    e.add_argument("--out", default="camkit_out", help="output folder; default %(default)s")
    e.add_argument("--save-maps", action="store_true", help="also write each map as .npy (float32, the original "
                   "image's size, 0 outside the network's field of view) next to its overlay")
    e.add_argument("--no-figures", action="store_true", help="overlays (and maps) only: no grids or strips "
                   "(for large folders)")
    e.add_argument("--batch-size", type=_int_at_least(1, "images per forward pass"), default=8)
    e.add_argument("--threads", type=_int_at_least(0, "0: torch's default"), default=0,
                   help="torch threads (0: torch's default)")
    e.set_defaults(func=cmd_explain)

    lay = sub.add_parser("layers", help="list hookable layers with their output shapes, marking the defaults")
    model_args(lay, "none")
    lay.add_argument("--input-size", nargs=2, type=_int_at_least(1, "pixels"), metavar=("H", "W"),
                     help="input size for the dry forward; default the model's")
    lay.add_argument("--defaults-only", action="store_true", help="only the layers the methods use by default")
    lay.set_defaults(func=cmd_layers)

    from .export import add_parsers as add_export_parsers

    add_export_parsers(sub)
    return p


REPORT = ("camkit: internal error: the traceback above is a bug in camkit, not a mistake in your input; "
          "please report it with the command you ran")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns its exit status (0 done, 1 a bug in camkit, 2 a mistake in the input)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or argparse's one-line error (_Parser.error)
        return e.code if isinstance(e.code, int) else 2
    if getattr(args, "layer_weights", None) is not None and args.fusion != "weighted":
        args.fusion = "weighted"
    try:
        return int(args.func(args) or 0)
    except InputError as e:  # the user's mistake: one line (CAMKIT_DEBUG=1 shows the traceback)
        if os.environ.get("CAMKIT_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"camkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("camkit: interrupted", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print(REPORT, file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
