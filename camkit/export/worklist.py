"""An export's work list: the images of a folder or a list file, with their labels.

``SRC`` is a folder (recursive, sorted, image files only) or a text/CSV file
listing image paths (first column; a ``path`` header, blank and ``#`` lines
skipped; relative paths are relative to the list's folder). Each image's
``rel`` is its path relative to the folder (a list: to the listed paths' common
folder), without extension: its outputs' name.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..app import class_indices, labels_of, list_folder, read_labels
from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Item:
    """One image of the work list.

    Attributes:
        path: its path as found.
        rel: its output name (posix, no extension).
        labels: the class indices to explain (None: the model's top classes).
        stat: ``[size in bytes, mtime in ns]`` of the file when the work was listed (None: unreadable);
            a resumed run recomputes an image whose file changed.
    """

    path: str
    rel: str
    labels: Optional[Tuple[int, ...]] = None
    stat: Optional[Tuple[int, int]] = None


def file_stat(path: str) -> Optional[Tuple[int, int]]:
    """``(size, mtime_ns)`` of a file, None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _rel_name(rel: str) -> str:
    p = Path(rel)
    return p.with_suffix("").as_posix() if p.suffix else p.as_posix()


def _listed(src: Path) -> List[Tuple[str, str]]:
    """``(path, rel)`` of the images a list file names, each listed path once."""
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the list of images {src}: {e}") from None
    paths: List[str] = []
    for k, row in enumerate(csv.reader(text.splitlines())):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        cell = row[0].strip()
        if k == 0 and cell.lower() == "path":
            continue
        full = cell if os.path.isabs(cell) else os.path.normpath(os.path.join(src.parent, cell))
        if full not in paths:
            paths.append(full)
    if not paths:
        raise InputError(f"{src} lists no image paths")
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [(p, _rel_name(os.path.relpath(os.path.abspath(p), common))) for p in paths]


def list_images(src: PathLike, exclude: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """The images of ``src`` (a folder or a list file; see the module's notes).

    Args:
        src: a folder or a text/CSV list of image paths.
        exclude: a folder left out of a folder's search (the output folder).

    Returns:
        ``(path, rel)`` per image.

    Raises:
        InputError: no images, an unreadable list, or two images that would write the same outputs.
    """
    src_p = Path(src)
    if src_p.is_dir():
        out = list_folder(src_p, exclude)
    elif src_p.is_file():
        out = _listed(src_p)
    else:
        raise InputError(f"SRC {src} is neither a folder nor a list of image paths")
    names: Dict[str, str] = {}
    for p, r in out:
        if r in names:
            raise InputError(f"{names[r]} and {p} would write the same outputs ({r}.npz / {r}.png); rename one")
        names[r] = p
    return out


def work_items(images: Sequence[Tuple[str, str]], labels_file: Optional[PathLike],
               categories: Sequence[str]) -> List[Item]:
    """The work list: each image with the class indices of its row in ``labels_file``
    (:mod:`camkit.app.labels`), or without labels (the model's top classes are explained)."""
    if not labels_file:
        return [Item(p, r, None, file_stat(p)) for p, r in images]
    rows = labels_of([p for p, _ in images], read_labels(labels_file), labels_file)
    return [Item(p, r, class_indices(row, categories, f"{labels_file} ({p})"), file_stat(p))
            for (p, r), row in zip(images, rows)]
