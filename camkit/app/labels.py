"""Label files and class names: one format for ``camkit explain`` and ``camkit export``.

A labels file is CSV (UTF-8, with or without the byte-order mark spreadsheet
programs write): one row per image, ``path,label``; several labels of one
image go in the same row, separated by ``;`` (or ``|``, or more columns). A
first row whose first cell is ``path`` is a header. Blank rows and rows
starting with ``#`` are skipped. Relative paths are relative to the file's
folder; an image is matched by its path only, never by its file name.

A labels cell names classes by index or by name (:func:`class_indices`);
``explain`` also shows it as the image's ground truth.
"""
from __future__ import annotations

import csv
import difflib
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


def path_key(path: PathLike) -> str:
    """The key an image is matched by: its absolute, normalized path."""
    return os.path.abspath(os.path.normpath(os.fspath(path)))


def _read_text(path: PathLike, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None


def read_labels(path: PathLike) -> Dict[str, Tuple[str, ...]]:
    """Read a labels file (see the module's notes).

    Args:
        path: the CSV file.

    Returns:
        ``{path_key(image): labels}``, each a tuple of the row's label cells split on ``;`` / ``|``
        (stripped, empty pieces dropped; an image listed without labels has none: all background).

    Raises:
        InputError: an unreadable file, or two rows for one image (naming both lines and how to
        give one image several labels).
    """
    root = Path(path).parent
    out: Dict[str, Tuple[str, ...]] = {}
    lines: Dict[str, int] = {}
    for k, row in enumerate(csv.reader(_read_text(path, "labels file").splitlines()), 1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        cell = row[0].strip()
        if k == 1 and cell.lower() == "path":
            continue
        labels = tuple(p.strip() for p in ";".join(row[1:]).replace("|", ";").split(";") if p.strip())
        key = path_key(cell if os.path.isabs(cell) else root / cell)
        if key in out:
            raise InputError(f"{path}:{lines[key]} and {path}:{k} both label {cell} ({';'.join(out[key])} and "
                             f"{';'.join(labels)}); give each image one row, several labels separated by ';' "
                             f"({cell},{';'.join(out[key] + labels)})")
        out[key], lines[key] = labels, k
    return out


def labels_of(paths: Sequence[str], labels: Dict[str, Tuple[str, ...]], labels_file: PathLike) -> List[Tuple[str, ...]]:
    """Each image's labels, matched by its path.

    Raises:
        InputError: images without a row, naming the first few.
    """
    missing = [p for p in paths if path_key(p) not in labels]
    if missing:
        raise InputError(f"{labels_file} has no row for {len(missing)} of {len(paths)} images "
                         f"(first: {', '.join(missing[:3])}); rows are matched by path, relative to the file's folder")
    return [labels[path_key(p)] for p in paths]


def _is_index(token: str) -> bool:
    return re.fullmatch(r"[0-9]+", token) is not None


def class_indices(labels: Sequence[str], categories: Sequence[str], where: str) -> Tuple[int, ...]:
    """A row's labels as class indices, in order, without repeats.

    Each label is a class index (ASCII digits) or a class name (case-insensitive); a label
    that is neither is split on spaces when every part is one (``"1 4"``).

    Args:
        labels: the row's labels (:func:`read_labels`).
        categories: the class names, one per class index.
        where: ``file:line`` for messages.

    Raises:
        InputError: an index out of range or an unknown name (with close matches).
    """
    by_name = {c.lower(): i for i, c in reversed(list(enumerate(categories)))}
    known = lambda tok: _is_index(tok) or tok.lower() in by_name  # noqa: E731
    tokens: List[str] = []
    for piece in labels:
        parts = piece.split()
        tokens += parts if not known(piece) and len(parts) > 1 and all(map(known, parts)) else [piece]
    out: List[int] = []
    for tok in tokens:
        if _is_index(tok):
            c = int(tok)
            if c >= len(categories):
                raise InputError(f"{where}: class index {c} out of range 0..{len(categories) - 1}")
        elif tok.lower() in by_name:
            c = by_name[tok.lower()]
        else:
            close = difflib.get_close_matches(tok, list(categories), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise InputError(f"{where}: {tok!r} is neither a class index nor a class name{hint}")
        if c not in out:
            out.append(c)
    return tuple(out)


def read_class_names(path: PathLike) -> List[str]:
    """Class names, one per line (blank lines skipped), in class-index order."""
    return [ln.strip() for ln in _read_text(path, "classes file").splitlines() if ln.strip()]


def categories(preset_categories: Optional[Sequence[str]], num_classes: int,
               classes_file: Optional[PathLike] = None) -> List[str]:
    """The model's class names: the classes file's, else the preset's, else ``"class k"``.

    Raises:
        InputError: a classes file whose count differs from the model's.
    """
    if classes_file:
        names = read_class_names(classes_file)
        if len(names) != num_classes:
            raise InputError(f"{classes_file} names {len(names)} classes, the model has {num_classes}")
        return names
    if preset_categories is not None and len(preset_categories) == num_classes:
        return list(preset_categories)
    return [f"class {k}" for k in range(num_classes)]
