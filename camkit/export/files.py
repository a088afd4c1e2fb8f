"""An export's files: where each image's outputs go, written atomically, and read back.

Per image, mirroring its ``rel`` name: ``DIR/cams/<rel>.npz`` (``keys``, ``cam``,
``high_res``; no pickle) and ``DIR/masks/<rel>.png`` (a palette PNG). Each file is
written under a temporary name and renamed, so a file that exists is complete.
"""
from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

import numpy as np

from ..pseudomasks import mask_png_mode, masks_from_maps, voc_palette

TMP_SUFFIX = ".camkit-tmp"
PathLike = Union[str, "os.PathLike[str]"]


def output_paths(out: PathLike, rel: str) -> Tuple[Path, Path]:
    """``(DIR/cams/<rel>.npz, DIR/masks/<rel>.png)``."""
    return Path(out) / "cams" / f"{rel}.npz", Path(out) / "masks" / f"{rel}.png"


NPZ_KEYS = ("keys.npy", "cam.npy", "high_res.npy")


def is_complete(out: PathLike, rel: str) -> bool:
    """Both outputs exist and read back: the npz's zip directory lists its three arrays, the
    PNG's chunks are whole (cheap: no array is decoded). A truncated, empty or foreign file is not."""
    from PIL import Image

    npz, png = output_paths(out, rel)
    if not (npz.is_file() and png.is_file()):
        return False
    try:
        with zipfile.ZipFile(npz) as z:
            if not set(NPZ_KEYS) <= set(z.namelist()):
                return False
        with Image.open(png) as im:
            im.verify()
    except (OSError, zipfile.BadZipFile, ValueError, SyntaxError):
        return False
    return True


def remove_outputs(out: PathLike, rel: str) -> None:
    """Delete an image's outputs (a failed image keeps no stale ones)."""
    for p in output_paths(out, rel):
        p.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a temporary file next to ``path``, flushed to disk, then renamed to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_npz(f: Any, arrays: Dict[str, np.ndarray]) -> None:
    """``numpy.savez`` with fixed zip timestamps: the same arrays give the same bytes."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as o:
                np.lib.format.write_array(o, np.ascontiguousarray(a), allow_pickle=False)


def mask_image(mask: np.ndarray, num_classes: int):
    """A ``(H, W)`` label mask (0 background, 1 + class) as a PIL image: palette (VOC colours) while
    the classes fit in 8 bits, 16-bit grayscale beyond (:func:`camkit.pseudomasks.mask_png_mode`)."""
    from PIL import Image

    if mask_png_mode(num_classes) == "P":
        im = Image.fromarray(mask.astype(np.uint8))
        im.putpalette(voc_palette())
        return im
    return Image.fromarray(mask.astype(np.uint16))


def write_outputs(out: PathLike, rel: str, keys: np.ndarray, cam: np.ndarray, high_res: np.ndarray,
                  threshold: float, num_classes: int) -> np.ndarray:
    """Write one image's outputs atomically: ``cams/<rel>.npz`` then ``masks/<rel>.png``.

    Args:
        out: the export folder.
        rel: the image's output name (posix, no extension).
        keys: ``(K,)`` the classes of the maps.
        cam: ``(K, h, w)`` maps at the finest hooked layer's resolution (stored float16).
        high_res: ``(K, H, W)`` maps in [0, 1] on the original image (stored float16).
        threshold: the background threshold of the mask.
        num_classes: the model's classes (how the mask is stored: :func:`mask_image`).

    Returns:
        The mask ``(H, W)`` int64: 0 background, 1 + class (:func:`camkit.pseudomasks.masks_from_maps`
        of the stored float16 maps).
    """
    npz, png = output_paths(out, rel)
    stored = high_res.astype(np.float16)
    mask = masks_from_maps(stored, threshold, keys)
    arrays = {"keys": keys.astype(np.int64), "cam": cam.astype(np.float16), "high_res": stored}
    atomic_write(npz, lambda f: write_npz(f, arrays))
    im = mask_image(mask, num_classes)
    atomic_write(png, lambda f: im.save(f, format="PNG"))
    return mask


def read_cams(out: PathLike, rel: str) -> Dict[str, np.ndarray]:
    """``keys``, ``cam``, ``high_res`` of one image (no pickle)."""
    with np.load(output_paths(out, rel)[0], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def remove_stale_tmp(out: PathLike) -> None:
    """Delete the temporary files a killed run left in ``out``."""
    for sub in ("cams", "masks"):
        for p in (Path(out) / sub).rglob(f"*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)
