"""One export at a time per output folder: an exclusive lock on ``DIR/.camkit-export.lock``."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: no lock there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".camkit-export.lock"


@contextmanager
def folder_lock(out: Path, take: bool) -> Iterator[None]:
    """Hold ``out``'s export lock during the block (``take``: this process takes it; under torchrun,
    rank 0 for the whole job).

    Raises:
        InputError: another export holds it, or the folder cannot be made.
    """
    if not take or fcntl is None:
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"another camkit export is writing to {out}; wait for it to finish, or use "
                             "another --out") from None
        yield
    finally:
        os.close(fd)  # releases the lock
