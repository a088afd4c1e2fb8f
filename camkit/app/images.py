"""Image input: folder listing, early checks and reading (EXIF orientation, depth scaling).

:func:`load_image` (``camkit.load_image``) is how camkit reads a photo: upright
(EXIF orientation applied, as a phone's camera app shows it), 8-bit RGB, with
16-bit, 32-bit integer and floating-point images scaled by their own value range.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
Note = Callable[[str], None]
_HIGH_DEPTH = {"I": "32-bit integer", "F": "floating-point"}


def image_extensions() -> Tuple[str, ...]:
    """File name endings of the images a folder is searched for (torchvision's list)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def list_folder(folder: PathLike, exclude: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """Every image file under ``folder``, recursively.

    Args:
        folder: the folder to search (hidden files and folders are skipped).
        exclude: a folder left out (e.g. the output folder inside the input).

    Returns:
        ``(path, rel)`` sorted by ``rel``, the path relative to ``folder`` without its
        extension (posix).

    Raises:
        InputError: no image file is found.
    """
    exts = image_extensions()
    skip = Path(exclude).resolve() if exclude is not None else None
    found: List[Tuple[str, str]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
        for f in files:
            if not f.startswith(".") and f.lower().endswith(exts):
                full = Path(root) / f
                found.append((str(full), full.relative_to(folder).with_suffix("").as_posix()))
    if not found:
        raise InputError(f"no image files in folder {folder} (searched recursively for {', '.join(exts)})")
    return sorted(found, key=lambda pk: pk[1])


def collect_images(specs: Sequence[str], exclude: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """Image files and folders -> ``(path, output key)``: a file's key is its stem, a folder's
    images keep their relative path (outputs mirror the folder); a file named twice counts once.

    Raises:
        InputError: a path that is neither an image file nor a folder with images.
    """
    items: List[Tuple[str, str]] = []
    seen = set()
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found = list_folder(p, exclude)
        elif p.is_file():
            found = [(s, p.stem)]
        else:
            raise InputError(f"no such image file or folder: {s}")
        for path, key in found:
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                items.append((path, key))
    return items


def _cannot_read(p: PathLike, e: BaseException) -> InputError:
    first = str(e).splitlines()[0] if str(e) else ""
    return InputError(f"cannot read image {p}: {type(e).__name__}: {first}")


def check_image(path: PathLike) -> None:
    """Refuse, before any model is built, a file that is missing or that PIL cannot
    identify or will not open (a decompression bomb).

    Raises:
        InputError: naming the file and the reason.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise InputError(f"no such image file: {path}")
    try:
        with Image.open(path):
            pass
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read image {path}: {e} Downscale it first") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _cannot_read(path, e) from None


def _scaled(im, path: PathLike, note: Optional[Note]):
    """A high-depth image as 8-bit RGB, scaled by its own value range (lowest -> 0, highest -> 255)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"cannot read image {path}: it holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    if note is not None:
        depth = _HIGH_DEPTH.get(im.mode, "16-bit")
        note(f"camkit: note: {path} is a {depth} image (values {lo:g} to {hi:g}); scaled to 8 bits by its value range")
    return Image.fromarray(np.round(scaled).astype(np.uint8)).convert("RGB")


def load_image(path: PathLike, note: Optional[Note] = None):
    """Read an image as camkit explains it.

    Args:
        path: an image file PIL reads.
        note: called with a one-line note when a high-depth image is scaled (None: no note).

    Returns:
        A PIL ``Image`` in mode RGB, upright (EXIF orientation applied), fully decoded;
        16-bit, 32-bit integer and floating-point images scaled to 0..255 by their own
        value range (``convert("RGB")`` alone would clip them).

    Raises:
        InputError: the file cannot be read (missing, truncated, a decompression bomb,
        NaN values), naming it.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in _HIGH_DEPTH or im.mode.startswith("I;16"):
                return _scaled(im, path, note)
            out = im.convert("RGB")
            out.load()
            return out
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read image {path}: {e} Downscale it first") from None
    except (OSError, ValueError, SyntaxError) as e:  # e.g. a truncated file
        raise _cannot_read(path, e) from None
