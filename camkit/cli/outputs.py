"""The files one ``camkit explain`` run writes: the output folder, unique names, a true count."""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, List, Sequence

from ..errors import InputError


def output_dir(path: str) -> Path:
    """The output folder, made now (before the model is built) or refused in one line."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {path} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder {path}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in the output folder {path}: permission denied")
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
        """``save(path)``, its folder made first; a write error is the user's disk, not a bug."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path)
        except OSError as e:  # a full disk, a folder made read-only meanwhile: not a bug in camkit
            raise InputError(f"cannot write {path}: {e.strerror or e}") from None
        self.written.append(path)
        return path

    def save(self, base: str, ext: str, save: Callable[[Path], Any]) -> Path:
        """Reserve ``base + ext`` and write it."""
        return self.write(self.reserve(base, ext)[0], save)


def prefixed(key: str, prefix: str) -> str:
    """``a/b`` -> ``a/PREFIXb`` (figures sit next to the image's overlays)."""
    p = PurePosixPath(key)
    return str(p.with_name(prefix + p.name))


def slug(name: str, width: int = 40) -> str:
    """A class name as a file-name part: 'football helmet' -> 'football_helmet'."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
    return (s or "class")[:width]


def file_base(key: str, method: str, k: int, K: int, name: str, one_class: bool) -> str:
    """``key_method`` for the top-1; ``key_method_2-football_helmet`` for target 2 of K; ``key_method_tabby``
    for a class asked for by name or index."""
    if K > 1:
        return f"{key}_{method}_{k + 1}-{slug(name)}"
    return f"{key}_{method}_{slug(name)}" if one_class else f"{key}_{method}"
