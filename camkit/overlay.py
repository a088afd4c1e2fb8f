"""Heatmap overlays and the figures built from them.

Plain images (one overlay, the compact grid, the strip) use PIL and numpy
only; colormaps come from matplotlib when it is installed (``pip install
'camkit[plot]'``) and otherwise from a built-in ``jet``. The labelled grid
(one title per tile) needs matplotlib.

Images are accepted as PIL images, ``(H, W, 3)`` uint8 arrays or ``(3, H, W)``
float tensors in [0, 1]; maps as ``(H, W)`` tensors or arrays in [0, 1].

On the user's own photo, pass the preset's transform: ``overlay(photo, map,
transform=preset.transform)`` puts the map back where the network saw it
(:func:`to_original`, from :mod:`camkit.geometry`: resize and center crop
undone), so the overlay is aligned; outside the crop the photo shows through.
Without a transform, a map of another size than the image is stretched over
it (bilinear): right for the network input itself, wrong for a cropped photo.
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import Tensor

from .errors import DependencyError, InputError, InputTypeError
from .geometry import crop_box, to_original

ImageLike = Union[Image.Image, np.ndarray, Tensor]
MapLike = Union[np.ndarray, Tensor]

__all__ = ["to_original", "crop_box", "overlay", "colorize", "denormalize", "to_uint8", "grid",
           "compact_grid", "strip", "colorbar", "with_colorbar", "tile_title", "labelled_grid", "save_labelled_grid"]


# --------------------------------------------------------------------------- conversion

def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize(mean, std)``: ``x * std + mean``, clamped to [0, 1].

    Args:
        x (Tensor): ``(3, H, W)`` or ``(B, 3, H, W)`` floating point.
        mean (sequence of float): Per channel.
        std (sequence of float): Per channel.

    Returns:
        *Tensor*: ``x``'s shape, dtype and device, in [0, 1].
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


def to_uint8(image: ImageLike) -> np.ndarray:
    """Any accepted image as an RGB uint8 array.

    Args:
        image (PIL image, np.ndarray or Tensor): A PIL image; an ``(H, W)``,
            ``(H, W, 3)`` or ``(H, W, 4)`` array (uint8, or floats in [0, 1];
            alpha dropped); a ``(1, H, W)`` or ``(3, H, W)`` tensor in [0, 1].

    Returns:
        *np.ndarray*: ``(H, W, 3)`` uint8.

    Raises:
        InputError: Another shape, or float values outside [0, 1] (a normalized network input:
            un-normalize it first with :func:`denormalize`).
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, Tensor):
        t = image.detach().float().cpu()
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"expected an image tensor of shape (3, H, W) in [0, 1], got {tuple(t.shape)}")
        _check_unit_range(t.numpy())
        t = t.expand(3, -1, -1).clamp(0, 1)
        return (t.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"expected an image array of shape (H, W, 3), got {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if a.dtype.kind == "f":
            _check_unit_range(a)
        a = (np.clip(a.astype(np.float64), 0, 1) * 255.0 + 0.5).astype(np.uint8)
    return a


def _check_unit_range(a: np.ndarray, tol: float = 1e-3) -> None:
    """Float images must lie in [0, 1]: a normalized network input would be clipped into a dark picture."""
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < -tol or hi > 1 + tol or not np.isfinite([lo, hi]).all():
        raise InputError(f"the image has values in [{lo:.3g}, {hi:.3g}], not [0, 1]: it looks like a normalized "
                         "network input. Pass the photo itself, or camkit.overlay.denormalize(x, preset.mean, "
                         "preset.std)")


def _squeeze2d(cam: MapLike) -> Tensor:
    """A map as a float32 ``(H, W)`` tensor (leading dims of size 1 dropped)."""
    t = torch.as_tensor(np.asarray(cam.detach().cpu() if isinstance(cam, Tensor) else cam), dtype=torch.float32)
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise InputError(f"expected a map of shape (H, W), got {tuple(t.shape)}")
    return t


def _map2d(cam: MapLike, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    t = _squeeze2d(cam)
    if size is not None and tuple(t.shape) != tuple(size):
        t = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return torch.nan_to_num(t, nan=0.0).clamp(0, 1).numpy()


# --------------------------------------------------------------------------- colormaps

# The 'jet' ramp as piecewise-linear anchor points (position, value) per channel.
_JET = {
    "r": ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    "g": ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    "b": ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
}


def _jet(v: np.ndarray) -> np.ndarray:
    """'jet' (dark blue, blue, cyan, yellow, red, dark red) on [0, 1], used when matplotlib is absent."""
    v = np.clip(np.asarray(v, dtype=np.float64), 0, 1)
    return np.stack([np.interp(v, *_JET[c]) for c in "rgb"], axis=-1)


def colorize(cam: MapLike, cmap: Any = "jet") -> np.ndarray:
    """A map as a colour image.

    Args:
        cam (Tensor or np.ndarray): ``(H, W)`` in [0, 1] (leading dims of size
            1 dropped; NaN counts as 0, values clipped).
        cmap (str or Colormap, optional): A matplotlib colormap name or ``Colormap``
            object; without matplotlib only ``"jet"`` (built in). Default: ``"jet"``.

    Returns:
        *np.ndarray*: ``(H, W, 3)`` uint8.

    Raises:
        InputError: ``cam`` is not 2-d; a :class:`~camkit.errors.DependencyError`
            for another colormap than ``"jet"`` without matplotlib.
    """
    v = _map2d(cam)
    rgb = np.asarray(colormap(cmap)(v))[..., :3]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def colormap(cmap: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A colormap name (matplotlib's; ``"jet"`` built in) or a matplotlib ``Colormap`` object, as a function
    of values in [0, 1] (``(...) -> (..., 3 or 4)``).

    Raises:
        InputError: an unknown name (with close ones), or a name other than ``"jet"`` without matplotlib.
    """
    if not isinstance(cmap, str):
        if not callable(cmap):
            raise InputTypeError(f"cmap must be a colormap name or a matplotlib Colormap, got {cmap!r}")
        return cmap
    try:
        import matplotlib
    except ImportError:
        if cmap != "jet":
            raise DependencyError(f"colormap {cmap!r} needs matplotlib: pip install 'camkit[plot]'") from None
        return _jet
    if cmap not in matplotlib.colormaps:
        import difflib

        close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=3, cutoff=0.6)
        raise InputError(f"unknown colormap {cmap!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                         "; e.g. jet, viridis, magma, turbo"))
    return matplotlib.colormaps[cmap]


def overlay(image: ImageLike, cam: MapLike, alpha: float = 0.5, cmap: Any = "jet",
            postprocess: bool = False, transform: Any = None, vmin: float = 0.0, vmax: float = 1.0) -> Image.Image:
    """Blend the colourized map over the image: ``(1 - alpha) * image + alpha * colour``.

    Args:
        image (PIL image, np.ndarray or Tensor): As :func:`to_uint8` accepts.
        cam (Tensor or np.ndarray): ``(H, W)`` (leading dims of size 1 are
            dropped); NaN pixels are left uncoloured (the image shows through).
        alpha (float, optional): In [0, 1]. Default: 0.5.
        cmap (str, optional): See :func:`colorize`. Default: ``"jet"``.
        postprocess (bool, optional): Apply the seed study's display
            post-process first (:func:`camkit.normalize.postprocess`: values
            below 0.3 become 0, the rest are multiplied by 1.5 and clipped to
            1). Default: False.
        transform (optional): The transform that made the network input from
            ``image`` (e.g. ``preset.transform``): the map is put back on the
            image's own pixel grid with :func:`to_original` (aligned; pixels
            outside the network's field of view stay uncoloured). Without it,
            a map of another size is stretched to the image (bilinear).
        vmin (float, optional): The map value at the colormap's start. Default: 0.0.
        vmax (float, optional): The value at its end (clipped outside). Default: 1.0.

    Returns:
        *PIL.Image.Image*: RGB, the image's size.

    Raises:
        InputError: ``alpha`` outside [0, 1], ``vmax <= vmin``, a bad image or
            map, or a transform :func:`to_original` refuses.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InputTypeError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    if not vmax > vmin:
        raise InputError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    img = to_uint8(image)
    hw = (img.shape[0], img.shape[1])
    t = _squeeze2d(cam)
    if transform is not None:
        t = to_original(t, hw, transform, fill=float("nan"))
    elif tuple(t.shape) != hw:
        t = F.interpolate(t[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]
    seen = ~torch.isnan(t)
    m = ((torch.nan_to_num(t, nan=vmin) - vmin) / (vmax - vmin)).clamp(0, 1)
    if postprocess:
        from .normalize import postprocess as _pp

        m = _pp(m)
    heat = colorize(m, cmap).astype(np.float32)
    a = np.where(seen.numpy(), np.float32(alpha), np.float32(0.0))[..., None]
    out = (1.0 - a) * img.astype(np.float32) + a * heat
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def show(image: ImageLike, cam: MapLike, ax: Any = None, title: Optional[str] = None, **kwargs: Any) -> Any:
    """:func:`overlay` drawn on a matplotlib Axes (a new pyplot figure without ``ax``; pyplot is imported
    here, not with camkit). ``kwargs`` go to :func:`overlay` (``transform=``, ``cmap=`` a name or a
    ``Colormap``, ...). Returns the Axes. For a whole result: ``res.show(photo, transform=...)``."""
    img = overlay(image, cam, **kwargs)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(img)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def colorbar(width: int, cmap: Any = "jet", vmin: float = 0.0, vmax: float = 1.0, height: int = 12,
             labels: Optional[Tuple[str, str]] = None) -> Image.Image:
    """A horizontal colour bar: the colormap from ``vmin`` (left) to ``vmax`` (right),
    with the two end values (or ``labels``) written under it.

    Args:
        width (int): In pixels, >= 2.
        cmap (str, optional): See :func:`colorize`. Default: ``"jet"``.
        vmin (float, optional): The left label's value. Default: 0.0.
        vmax (float, optional): The right label's value. Default: 1.0.
        height (int, optional): The bar's height in pixels, >= 1. Default: 12.
        labels (tuple of str, optional): ``(left, right)`` instead of the values.

    Returns:
        *PIL.Image.Image*: RGB, ``width`` wide, the bar and a band for the labels.

    Raises:
        InputError: ``width < 2`` or ``height < 1``.
    """
    if width < 2 or height < 1:
        raise InputError(f"colour bar size must be at least 2 x 1, got {width} x {height}")
    ramp = colorize(torch.linspace(0, 1, width).expand(height, width), cmap)
    font_size = max(9, min(14, width // 14))
    font = _font(font_size)
    out = Image.new("RGB", (width, height + font_size + 6), (255, 255, 255))
    out.paste(Image.fromarray(ramp), (0, 0))
    draw = ImageDraw.Draw(out)
    left, right = labels or (_fmt(vmin), _fmt(vmax))
    draw.text((1, height + 2), left, fill=(0, 0, 0), font=font)
    tw = draw.textlength(right, font=font)
    draw.text((max(0, width - tw - 1), height + 2), right, fill=(0, 0, 0), font=font)
    return out


def with_colorbar(image: Image.Image, cmap: Any = "jet", vmin: float = 0.0, vmax: float = 1.0,
                  labels: Optional[Tuple[str, str]] = None) -> Image.Image:
    """``image`` with a :func:`colorbar` of its width below it (the image's pixels are unchanged).

    Args:
        image (PIL.Image.Image): The image.
        cmap, vmin, vmax, labels: As in :func:`colorbar`.

    Returns:
        *PIL.Image.Image*: RGB, as wide as ``image``.
    """
    bar = colorbar(image.width, cmap, vmin, vmax, height=max(8, min(image.size) // 16), labels=labels)
    out = Image.new("RGB", (image.width, image.height + bar.height + 2), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, 0))
    out.paste(bar, (0, image.height + 2))
    return out


# --------------------------------------------------------------------------- plain layouts

def _tiles_as_images(tiles: Sequence[ImageLike]) -> List[Image.Image]:
    if len(tiles) == 0:
        raise InputError("no tiles to lay out")
    return [t if isinstance(t, Image.Image) else Image.fromarray(to_uint8(t)) for t in tiles]


def _fit(im: Image.Image, size: Tuple[int, int], background: Tuple[int, int, int]) -> Image.Image:
    """``im`` resized to fit ``size`` (W, H) with its aspect ratio kept, centred on ``background``."""
    im = im.convert("RGB")
    if im.size == tuple(size):
        return im
    return ImageOps.pad(im, size, method=Image.BILINEAR, color=background)


def grid(tiles: Sequence[ImageLike], cols: int, pad: int = 2, background: Tuple[int, int, int] = (255, 255, 255),
         tile_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Tiles laid out row by row, ``cols`` per row, ``pad`` pixels apart (plain, no labels).

    Args:
        tiles (sequence of images): At least one, as :func:`to_uint8` accepts.
        cols (int): Tiles per row, >= 1.
        pad (int, optional): Pixels between and around tiles. Default: 2.
        background (tuple of int, optional): RGB. Default: white.
        tile_size (tuple of int, optional): ``(W, H)`` every tile is fitted
            into, its aspect ratio kept; default the first tile's size.

    Returns:
        *PIL.Image.Image*: RGB.

    Raises:
        InputError: No tiles, or ``cols < 1``.
    """
    imgs = _tiles_as_images(tiles)
    if cols < 1:
        raise InputError(f"cols must be >= 1, got {cols}")
    w, h = tile_size or imgs[0].size
    cols = min(cols, len(imgs))
    rows = (len(imgs) + cols - 1) // cols
    out = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), background)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        out.paste(_fit(im, (w, h), background), (pad + c * (w + pad), pad + r * (h + pad)))
    return out


def compact_grid(tiles: Sequence[ImageLike], rows: int = 3, cols: int = 4, pad: int = 2,
                 tile_size: Optional[Tuple[int, int]] = None) -> List[Image.Image]:
    """The study's compact figure: pages of ``rows`` x ``cols`` tiles without labels.

    Args:
        tiles (sequence of images): At least one.
        rows (int, optional): Rows per page. Default: 3.
        cols (int, optional): Tiles per row. Default: 4.
        pad (int, optional): See :func:`grid`. Default: 2.
        tile_size (tuple of int, optional): See :func:`grid`.

    Returns:
        *list of PIL.Image.Image*: One image per page (the last page holds the
        remaining tiles, in as many rows as they need).

    Raises:
        InputError: No tiles, or ``cols < 1``.
    """
    per_page = rows * cols
    imgs = _tiles_as_images(tiles)
    size = tile_size or imgs[0].size
    return [grid(imgs[i:i + per_page], cols=cols, pad=pad, tile_size=size) for i in range(0, len(imgs), per_page)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def strip(tiles: Sequence[ImageLike], labels: Optional[Sequence[str]] = None, pad: int = 2,
          tile_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """One column of tiles (e.g. the input, then one overlay per method).

    Args:
        tiles (sequence of images): At least one.
        labels (sequence of str, optional): One per tile, written in a band above it.
        pad (int, optional): Pixels between and around tiles. Default: 2.
        tile_size (tuple of int, optional): See :func:`grid`.

    Returns:
        *PIL.Image.Image*: RGB.

    Raises:
        InputError: No tiles, or another number of labels than tiles.
    """
    imgs = _tiles_as_images(tiles)
    if labels is not None and len(labels) != len(imgs):
        raise InputError(f"{len(labels)} labels for {len(imgs)} tiles")
    w, h = tile_size or imgs[0].size
    band = 0
    font = None
    if labels is not None:
        font_size = max(10, w // 16)
        font = _font(font_size)
        band = font_size + 6
    out = Image.new("RGB", (w + 2 * pad, len(imgs) * (h + band + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    y = pad
    for k, im in enumerate(imgs):
        if labels is not None:
            draw.text((pad + 2, y + 2), labels[k], fill=(0, 0, 0), font=font)
            y += band
        out.paste(_fit(im, (w, h), (255, 255, 255)), (pad, y))
        y += h + pad
    return out


# --------------------------------------------------------------------------- labelled figure

def tile_title(top: Sequence[Tuple[str, float]], truth: Optional[str] = None, width: int = 28) -> str:
    """A tile's title: ``truth: NAME`` (when known) then the top predictions with probabilities.

    Args:
        top (sequence of tuple): ``(class name, probability in [0, 1])``, best first.
        truth (str, optional): The true class's name.
        width (int, optional): Names longer than this are cut (ending in ``~``). Default: 28.

    Returns:
        *str*: One line each, e.g. ``"1. daisy 87%"``.
    """
    def short(s: str) -> str:
        return s if len(s) <= width else s[: width - 1] + "~"

    lines = [f"truth: {short(truth)}"] if truth else []
    lines += [f"{k + 1}. {short(name)} {100 * p:.0f}%" for k, (name, p) in enumerate(top)]
    return "\n".join(lines)


ColorBarSpec = Tuple[str, Optional[float], Optional[float], str]


def labelled_grid(tiles: Sequence[ImageLike], titles: Sequence[str], cols: int = 4, tile_inches: float = 2.4,
                  suptitle: Optional[str] = None, colorbar: Optional[ColorBarSpec] = None) -> Any:
    """A matplotlib figure: the tiles in a grid, each with its title (see :func:`tile_title`).

    ``colorbar=(cmap, vmin, vmax, label)`` adds a horizontal colour bar under
    the grid (``vmin = vmax = None``: ticks "min" and "max", for maps each
    shown from its own minimum to its maximum).

    Needs matplotlib (``pip install 'camkit[plot]'``). Save it with
    ``fig.savefig(path)`` or use :func:`save_labelled_grid`.

    Args:
        tiles (sequence of images): At least one.
        titles (sequence of str): One per tile.
        cols (int, optional): Tiles per row. Default: 4.
        tile_inches (float, optional): A tile's width in inches. Default: 2.4.
        suptitle (str, optional): The figure's title.
        colorbar (tuple, optional): ``(cmap, vmin, vmax, label)``.

    Returns:
        *matplotlib.figure.Figure*: Made without pyplot.

    Raises:
        InputError: No tiles, or another number of titles than tiles; a
            :class:`~camkit.errors.DependencyError` without matplotlib.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    except ImportError:
        raise DependencyError("the labelled grid needs matplotlib: pip install 'camkit[plot]'") from None
    imgs = _tiles_as_images(tiles)
    if len(titles) != len(imgs):
        raise InputError(f"{len(titles)} titles for {len(imgs)} tiles")
    cols = max(1, min(cols, len(imgs)))
    rows = (len(imgs) + cols - 1) // cols
    n_lines = max(t.count("\n") + 1 for t in titles) if titles else 0
    fig = Figure(figsize=(cols * tile_inches, rows * (tile_inches + 0.16 * n_lines) + (0.4 if suptitle else 0)))
    for k, (im, title) in enumerate(zip(imgs, titles)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_xticks([])  # no ticks to lay out: 2-3x faster tight_layout and savefig, the same picture
        ax.set_yticks([])
        ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_title(title, fontsize=8, loc="left", family="monospace")
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    if colorbar is not None:
        from matplotlib import colormaps
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cmap, vmin, vmax, label = colorbar
        relative = vmin is None or vmax is None
        sm = ScalarMappable(Normalize(0.0, 1.0) if relative else Normalize(vmin, vmax),
                            colormaps[cmap] if isinstance(cmap, str) else cmap)
        # below the grid, outside the figure box: savefig(bbox_inches="tight") takes it in
        cax = fig.add_axes((0.25, -0.2 / fig.get_figheight(), 0.5, 0.12 / fig.get_figheight()))
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        if relative:
            cb.set_ticks([0.0, 1.0], labels=["min", "max"])
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig


def save_labelled_grid(path: Union[str, os.PathLike], tiles: Sequence[ImageLike], titles: Sequence[str],
                       cols: int = 4, dpi: int = 100, suptitle: Optional[str] = None,
                       colorbar: Optional[ColorBarSpec] = None) -> None:
    """Write :func:`labelled_grid` to ``path``, in the format its extension names (e.g. PNG).

    Args:
        path (str or os.PathLike): The file.
        tiles, titles, cols, suptitle, colorbar: As in :func:`labelled_grid`.
        dpi (int, optional): Default: 100.

    Raises:
        InputError: As :func:`labelled_grid`.
    """
    fig = labelled_grid(tiles, titles, cols=cols, suptitle=suptitle, colorbar=colorbar)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08)
