"""Maps that show themselves: a :class:`~camkit.methods.CAMResult`'s picture in Jupyter
(``_repr_png_``), ``res.show(...)`` for matplotlib, and the short descriptions of results.

The picture needs no matplotlib: one column per image (at most :data:`MAX_IMAGES`), one overlay per
target (at most :data:`MAX_TARGETS`), each labelled with its class (``res.categories`` names them;
set it, e.g. ``res.categories = preset.categories``) and probability. The input is shown as the
network saw it, each image min-max scaled to [0, 1] (its normalization is not known); give the photo
to :func:`show_result` to see the maps on it, aligned with ``transform``. matplotlib's pyplot is
imported by :func:`show_result` when called, never when camkit is imported.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from . import overlay as ov
from .errors import DependencyError, InputError

MAX_IMAGES = 8
MAX_TARGETS = 4
TILE = 160


def _frame(m: torch.Tensor) -> torch.Tensor:
    """A 2-D map from a map of a video or volume ``(T, H, W)``: its middle frame."""
    return m[m.shape[0] // 2] if m.dim() == 3 else m


def input_view(x: torch.Tensor) -> np.ndarray:
    """A network input ``(C, H, W)`` (or ``(C, T, H, W)``: its middle frame) as a displayable
    ``(H, W, 3)`` uint8 image, min-max scaled (its first 3 channels; 1 channel as gray)."""
    t = x.detach().float().cpu()
    if t.dim() == 4:
        t = t[:, t.shape[1] // 2]
    t = t[:3] if t.shape[0] >= 3 else t[:1].expand(3, -1, -1)
    lo, hi = float(t.min()), float(t.max())
    t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    return (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _short(v: Any, max_items: int = 4) -> str:
    """A value in a repr: functions and classes by name; a long sequence as its first items, ``...``, its
    last and its length; other long values cut at 60 characters, on one line."""
    if callable(v) and hasattr(v, "__name__"):
        return v.__name__
    if isinstance(v, (list, tuple)) and len(v) > max_items:
        ends = ", ".join(_short(x) for x in v[:2]) + f", ..., {_short(v[-1])}"
        return f"[{ends}] ({len(v)} items)" if isinstance(v, list) else f"({ends}) ({len(v)} items)"
    text = " ".join(repr(v).split())
    return text if len(text) <= 60 else text[:57] + "..."


def dataclass_repr(obj: Any) -> str:
    """A dataclass's short repr: the fields that differ from their defaults, long values shortened
    (``Preset(family='resnet', ..., categories=('tench', 'goldfish', ..., 'toilet tissue') (1000 items))``)."""
    parts = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        try:
            if f.default is not dataclasses.MISSING and bool(v == f.default):
                continue
            if f.default_factory is not dataclasses.MISSING and bool(v == f.default_factory()):  # type: ignore[misc]
                continue
        except (RuntimeError, ValueError, TypeError):  # e.g. a tensor: shown
            pass
        parts.append(f"{f.name}={_short(v)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def method_repr(cls_name: str, layers: Sequence[str], options: Dict[str, Any], max_layers: int = 4) -> str:
    """A method object's short repr: ``GradCAM(layers=['layer4'], aug_smooth=True)``; many layers as the
    first and last with their count (``FullGrad(layers=['bn1', ..., 'layer4.1.bn2'] (21 layers))``)."""
    names = [repr(n) for n in layers]
    if len(names) > max_layers:
        shown = f"[{', '.join(names[:2])}, ..., {names[-1]}] ({len(names)} layers)"
    else:
        shown = f"[{', '.join(names)}]"
    opts = "".join(f", {k}={_short(v)}" for k, v in options.items())
    return f"{cls_name}(layers={shown}{opts})"


def target_label(res: Any, b: int, k: int, categories: Optional[Sequence[str]] = None) -> str:
    """``"tabby 38.6%"``: map ``(b, k)``'s class (named by ``categories`` or ``res.categories``) and its
    probability; ``"class 281"`` without names; ``"target k"`` where the target is not one class."""
    names = categories if categories is not None else getattr(res, "categories", None)
    c = int(res.targets[b, k]) if res.targets is not None else -1
    if c < 0:
        return f"target {k}"
    name = str(names[c]) if names is not None and c < len(names) else f"class {c}"
    try:
        p = float(res.target_probs[b, k])
    except (InputError, RuntimeError, IndexError, TypeError):
        p = math.nan
    return name if math.isnan(p) else f"{name} {100 * p:.1f}%"


def _picture_maps(res: Any) -> torch.Tensor:
    """The maps to draw: ``res.maps`` when computed, else the maps at tile size (a result for 1000 classes
    is not upsampled to the input's size for a picture of four of them)."""
    size = getattr(res, "_size", None)
    if getattr(res, "_maps", None) is None and size is not None and len(size) == 2:
        try:
            return res.maps_at((min(int(size[0]), TILE), min(int(size[1]), TILE)))
        except InputError:
            pass
    return res.maps


def result_picture(res: Any, categories: Optional[Sequence[str]] = None, images: int = MAX_IMAGES,
                   targets: int = MAX_TARGETS, cmap: Any = "jet", alpha: float = 0.5) -> Image.Image:
    """The result's overlays on its inputs: one labelled column per image, one tile per target.

    Args:
        res: a :class:`~camkit.methods.CAMResult` (``res.inputs``, set by the method's call, are
            drawn under the maps; a result without them shows the maps alone).
        categories: class names (default ``res.categories``).
        images, targets: at most this many columns and rows.
        cmap, alpha: as :func:`camkit.overlay.overlay` takes them.

    Returns:
        *PIL.Image.Image*: RGB.
    """
    maps = _picture_maps(res).detach().float().cpu()
    B, K = int(maps.shape[0]), int(maps.shape[1])
    x = getattr(res, "inputs", None)
    columns: List[Image.Image] = []
    for b in range(min(B, images)):
        m0 = _frame(maps[b, 0])
        base = input_view(x[b]) if x is not None else np.zeros((*m0.shape, 3), np.uint8)
        tiles, labels = [], []
        for k in range(min(K, targets)):
            m = _frame(maps[b, k])
            lo, hi = float(torch.nan_to_num(m).min()), float(torch.nan_to_num(m).max())
            lo, hi = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi if hi > lo else lo + 1.0)
            tile = ov.overlay(base, m, alpha=alpha, cmap=cmap, vmin=lo, vmax=hi)
            scale = TILE / max(tile.size)  # small inputs are enlarged, large ones reduced
            tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                               Image.NEAREST if scale > 1 else Image.BILINEAR)
            tiles.append(tile)
            labels.append(target_label(res, b, k, categories))
        columns.append(ov.strip(tiles, labels))
    more = []
    if B > images:
        more.append(f"{B - images} more images")
    if K > targets:
        more.append(f"{K - targets} more targets")
    pic = ov.grid(columns, cols=len(columns))
    return ov.strip([pic], [f"CAMResult: {B} x {K} maps" + (f" ({', '.join(more)} not shown)" if more else "")])


def result_png(res: Any) -> Optional[bytes]:
    """Jupyter's ``_repr_png_``: :func:`result_picture` as PNG bytes (None where it cannot be drawn,
    so that Jupyter falls back to the text repr)."""
    try:
        pic = result_picture(res)
    except (InputError, RuntimeError, ValueError, IndexError, TypeError):
        return None
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()


def show_result(res: Any, image: Any = None, *, transform: Any = None, b: int = 0,
                categories: Optional[Sequence[str]] = None, targets: int = MAX_TARGETS, axes: Any = None,
                **overlay_kw: Any) -> Any:
    """Image ``b``'s maps in a matplotlib figure, one panel per target, titled with its class.

    Args:
        res: a :class:`~camkit.methods.CAMResult`.
        image: the photo (PIL image or array) to draw the maps on; default the network input itself.
        transform: the transform that made the input from ``image`` (e.g. ``preset.transform``): the maps
            are put back on the photo's pixels, aligned (:func:`camkit.overlay.overlay`).
        b: which image of the batch.
        categories: class names (default ``res.categories``).
        targets: at most this many panels.
        axes: matplotlib Axes to draw into (one per panel); default a new figure (pyplot).
        **overlay_kw: ``alpha``, ``cmap`` (a name or a matplotlib ``Colormap``), ``postprocess``, ...

    Returns:
        *matplotlib.figure.Figure*: the figure drawn.

    Raises:
        InputError: ``b`` out of range; :class:`~camkit.errors.DependencyError` without matplotlib.
    """
    maps = res.maps.detach().float().cpu()
    if not 0 <= b < maps.shape[0]:
        raise InputError(f"b={b} out of range: the result holds {maps.shape[0]} images")
    K = min(int(maps.shape[1]), targets)
    x = getattr(res, "inputs", None)
    base = image if image is not None else (input_view(x[b]) if x is not None else None)
    if base is None:
        base = np.zeros((*_frame(maps[b, 0]).shape, 3), np.uint8)
    if axes is None:
        try:
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - matplotlib is a test dependency
            raise DependencyError("show() needs matplotlib: pip install 'camkit[plot]'") from None
        _, axes = plt.subplots(1, K, figsize=(3.2 * K, 3.4), squeeze=False)
        axes = axes[0]
    axes = list(np.atleast_1d(axes))
    if len(axes) < K:
        raise InputError(f"got {len(axes)} axes for {K} maps")
    for k in range(K):
        img = ov.overlay(base, _frame(maps[b, k]), transform=transform if image is not None else None, **overlay_kw)
        axes[k].imshow(img)
        axes[k].set_title(target_label(res, b, k, categories), fontsize=10)
        axes[k].set_axis_off()
    return axes[0].figure
