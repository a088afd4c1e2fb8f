"""The bundled sample photos (see camkit/samples/README.md for their licences)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import List


def sample_labels() -> Path:
    """The samples' labels file (:mod:`camkit.app.labels` format: ``path,label``)."""
    return Path(str(files("camkit") / "samples" / "labels.csv"))


def sample_images() -> List[Path]:
    """The bundled sample photos, in the labels file's order."""
    from .labels import read_labels

    return [Path(p) for p in read_labels(sample_labels())]
