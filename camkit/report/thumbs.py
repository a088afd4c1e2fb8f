"""The report's images, made once: per image and method a thumbnail of the first map (the grid) and a
larger view of every target's map (the enlarged view), the pseudo-mask over the photo, the photo.

Files go to ``DIR/report_files/<2 hex>/<row key>.<view>.jpg`` (names made of hex digits only, whatever
the image's own name). ``DIR/report_files/index.json`` records, per image, the sources' sizes and
modification times with the look (sizes, colormap, opacity) and what was measured (foreground share,
agreement, targets per method): a rerun with the same sources reuses the files and the numbers without
opening anything.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .. import overlay as ov
from ..app import load_image
from ..errors import InputError
from ..pseudomasks import voc_palette
from .runs import REPORT_FILES, Row, View

PALETTE = np.asarray(voc_palette(), dtype=np.float32).reshape(256, 3)

THUMB = 176     # the grid's thumbnails: longest side, pixels
LARGE = 448     # the enlarged view's images
AGREE_SIZE = 32  # maps are compared at this resolution
DRAWING = 2      # how the views are drawn: a change redraws every report's thumbnails


@dataclass(frozen=True)
class Look:
    """How the maps are drawn (part of every thumbnail's signature)."""

    cmap: str = "jet"
    alpha: float = 0.5
    thumb: int = THUMB
    large: int = LARGE


def view_path(root: Path, key: str, view: str) -> Path:
    """``root/report_files/ab/KEY.VIEW.jpg``."""
    return root / REPORT_FILES / key[:2] / f"{key}.{view}.jpg"


def _stat(p: Optional[str]) -> Optional[List[Any]]:
    if not p:
        return None
    try:
        s = os.stat(p)
    except OSError:
        return [p, None]
    return [p, s.st_size, s.st_mtime_ns]


def signature(row: Row, look: Look) -> List[Any]:
    """What the row's images are made from: the sources as they are now, and the look."""
    srcs = [row.photo, row.mask] + [s for v in row.views if v is not None for s in v.sources]
    srcs += [str(Path(v.sources[0]).with_suffix(".npy")) for v in row.views if v is not None and v.kind == "png"]
    return [[DRAWING, look.cmap, look.alpha, look.thumb, look.large]] + [_stat(s) for s in srcs]


def _scaled(im: Image.Image, side: int) -> Image.Image:
    im = im.copy()
    im.thumbnail((side, side), Image.BILINEAR)
    return im


def _save(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    im.convert("RGB").save(tmp, format="JPEG", quality=85)
    os.replace(tmp, path)


def _photo(row: Row, notes: List[str], fallback: Tuple[int, int]) -> Image.Image:
    """The photo (at most twice the large view's size), or a dark placeholder of the map's size."""
    if row.photo:
        try:
            return _scaled(load_image(row.photo), LARGE * 2)
        except InputError as e:
            notes.append(" ".join(str(e).split()))
    im = Image.new("RGB", (max(1, fallback[1]), max(1, fallback[0])), (40, 40, 40))
    im.info["placeholder"] = True
    return im


def _small_map(m: np.ndarray) -> np.ndarray:
    f = Image.fromarray(np.nan_to_num(m.astype(np.float32)), mode="F")
    return np.asarray(f.resize((AGREE_SIZE, AGREE_SIZE), Image.BILINEAR), dtype=np.float64)


def agreement(maps: Sequence[np.ndarray]) -> Optional[float]:
    """The mean Pearson correlation over pairs of maps (each ``(H, W)``, compared at 32 x 32); None for
    fewer than two; a constant map's pairs count 0."""
    if len(maps) < 2:
        return None
    small = [_small_map(m).ravel() for m in maps]
    vals = []
    for i in range(len(small)):
        for j in range(i + 1, len(small)):
            a, b = small[i] - small[i].mean(), small[j] - small[j].mean()
            d = float(np.sqrt((a * a).sum() * (b * b).sum()))
            vals.append(float((a * b).sum()) / d if d > 0 else 0.0)
    return float(np.mean(vals))


def _npz_view(root: Path, row: Row, i: int, v: View, look: Look, photo: Optional[Image.Image],
              notes: List[str]) -> Tuple[int, Optional[np.ndarray], Image.Image]:
    with np.load(v.sources[0], allow_pickle=False) as z:
        high = np.asarray(z["high_res"], dtype=np.float32)
    if photo is None:
        photo = _photo(row, notes, high.shape[1:])
    big = _scaled(photo, look.large)
    for k in range(high.shape[0]):  # each map brought to the view's size first: the overlay works at 448 px
        small = Image.fromarray(high[k], mode="F").resize(big.size, Image.BILINEAR)
        img = ov.overlay(big, np.array(small), alpha=look.alpha, cmap=look.cmap)
        _save(img, view_path(root, row.key, f"m{i}k{k}"))
        if k == 0:
            _save(_scaled(img, look.thumb), view_path(root, row.key, f"m{i}"))
    return int(high.shape[0]), (high[0] if len(high) else None), photo


def _png_view(root: Path, row: Row, i: int, v: View, look: Look) -> Tuple[int, Optional[np.ndarray]]:
    first = None
    for k, src in enumerate(v.sources):
        with Image.open(src) as im:
            img = _scaled(im.convert("RGB"), look.large)
        _save(img, view_path(root, row.key, f"m{i}k{k}"))
        if k == 0:
            _save(_scaled(img, look.thumb), view_path(root, row.key, f"m{i}"))
            npy = Path(src).with_suffix(".npy")
            first = np.load(npy, allow_pickle=False) if npy.is_file() else None
    return len(v.sources), first


def _mask_views(root: Path, row: Row, look: Look, photo: Image.Image) -> float:
    """The mask's colours over the photo (background dimmed), at the view's size; returns the
    foreground share of the mask itself (its pixels > 0)."""
    big = _scaled(photo, look.large)
    with Image.open(row.mask) as im:  # type: ignore[arg-type]
        labels = np.asarray(im)
        shown = np.asarray(im.resize(big.size, Image.NEAREST)).astype(np.int64)
    small_fg = shown > 0
    # VOC colours by label, also for 16-bit masks (more than 254 classes): label v > 0 gets colour 1 + (v - 1) % 255
    colours = PALETTE[np.where(small_fg, 1 + (shown - 1) % 255, 0)]
    fg = labels > 0
    base = np.asarray(big, dtype=np.float32)
    a = np.where(small_fg, np.float32(0.6), np.float32(0.0))[..., None]
    blend = Image.fromarray(((1 - a) * base * np.where(small_fg, 1.0, 0.45)[..., None] + a * colours).astype(np.uint8))
    _save(blend, view_path(root, row.key, "maskL"))
    _save(_scaled(blend, look.thumb), view_path(root, row.key, "mask"))
    return float(fg.mean()) if fg.size else 0.0


def make_views(root: Path, row: Row, look: Look) -> Dict[str, Any]:
    """Draw one row's images; returns ``{"n": targets per method, "fg", "agree", "photo", "notes"}``."""
    notes: List[str] = []
    out: Dict[str, Any] = {"n": [], "fg": None, "agree": None, "photo": False, "notes": notes}
    photo: Optional[Image.Image] = None
    firsts = []
    for i, v in enumerate(row.views):
        try:
            if v is None:
                n, first = 0, None
            elif v.kind == "npz":
                n, first, photo = _npz_view(root, row, i, v, look, photo, notes)
            else:
                n, first = _png_view(root, row, i, v, look)
        except (OSError, ValueError, KeyError) as e:
            notes.append(f"{v.sources[0] if v else '?'}: cannot draw ({e})")
            n, first = 0, None
        out["n"].append(n)
        if first is not None:
            firsts.append(first)
    out["agree"] = agreement(firsts)
    if row.mask and photo is not None:
        try:
            out["fg"] = _mask_views(root, row, look, photo)
        except (OSError, ValueError) as e:
            notes.append(f"{row.mask}: cannot read the mask ({e})")
    if photo is not None and not photo.info.get("placeholder"):
        _save(_scaled(photo, look.large), view_path(root, row.key, "photo"))
        out["photo"] = True
    return out


def _job(args: Tuple[Path, Row, Look]) -> Dict[str, Any]:
    return make_views(*args)


def read_index(root: Path) -> Dict[str, Any]:
    """What an earlier report recorded in ``report_files/index.json`` (empty when none)."""
    try:
        idx = json.loads((root / REPORT_FILES / "index.json").read_text())
        return idx if isinstance(idx, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _have(root: Path, key: str, done: Dict[str, Any]) -> bool:
    for i, n in enumerate(done.get("n", [])):
        if n and not view_path(root, key, f"m{i}").is_file():
            return False
    return done.get("fg") is None or view_path(root, key, "mask").is_file()


def make_all(root: Path, rows: Sequence[Row], look: Look, workers: int = 1) -> Tuple[Dict[str, Any], int, int]:
    """Every row's images, reusing what an earlier report made from the same sources.

    Returns:
        ``({row key: what make_views returned}, images drawn, images reused)``.
    """
    old = read_index(root)
    new: Dict[str, Any] = {}
    todo: List[Row] = []
    for row in rows:
        if row.status != "ok" or not any(v is not None for v in row.views):
            continue
        sig = signature(row, look)
        done = old.get(row.key)
        if done is not None and done.get("sig") == sig and _have(root, row.key, done):
            new[row.key] = done
        else:
            todo.append(row)
    reused = len(new)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # images of 448 pixels: threads cost more than they save (restored below)
    try:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                made = list(pool.map(_job, [(root, r, look) for r in todo], chunksize=16))
        else:
            made = [make_views(root, r, look) for r in todo]
    finally:
        torch.set_num_threads(threads)
    for row, got in zip(todo, made):
        new[row.key] = {**got, "sig": signature(row, look)}
    folder = root / REPORT_FILES
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".index.json.{os.getpid()}.tmp"  # two reports at once: each its own, the last one stays
    tmp.write_text(json.dumps(new))
    os.replace(tmp, folder / "index.json")
    return new, len(todo), reused
