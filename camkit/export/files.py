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

from ..pseudomasks import masks_from_maps, voc_palette

TMP_SUFFIX = ".camkit-tmp"
PathLike = Union[str, "os.PathLike[str]"]


def output_paths(out: PathLike, rel: str) -> Tuple[Path, Path]:
    """``(DIR/cams/<rel>.npz, DIR/masks/<rel>.png)``."""
    return Path(out) / "cams" / f"{rel}.npz", Path(out) / "masks" / f"{rel}.png"


def is_complete(out: PathLike, rel: str) -> bool:
    """Both outputs exist (each was renamed into place only once fully written)."""
    return all(p.is_file() for p in output_paths(out, rel))


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


def write_outputs(out: PathLike, rel: str, keys: np.ndarray, cam: np.ndarray, high_res: np.ndarray,
                  threshold: float) -> np.ndarray:
    """Write one image's outputs atomically: ``cams/<rel>.npz`` then ``masks/<rel>.png``.

    Args:
        out: the export folder.
        rel: the image's output name (posix, no extension).
        keys: ``(K,)`` the classes of the maps.
        cam: ``(K, h, w)`` maps at the finest hooked layer's resolution (stored float16).
        high_res: ``(K, H, W)`` maps in [0, 1] on the original image (stored float16).
        threshold: the background threshold of the mask.

    Returns:
        The mask ``(H, W)`` uint8 (:func:`camkit.pseudomasks.masks_from_maps`).
    """
    from PIL import Image

    npz, png = output_paths(out, rel)
    mask = masks_from_maps(high_res, threshold)
    arrays = {"keys": keys.astype(np.int64), "cam": cam.astype(np.float16), "high_res": high_res.astype(np.float16)}
    atomic_write(npz, lambda f: write_npz(f, arrays))
    im = Image.fromarray(mask)
    im.putpalette(voc_palette())
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
