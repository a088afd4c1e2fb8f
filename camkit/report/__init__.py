"""``camkit report DIR``: one self-contained HTML page to browse a run's maps and pseudo-masks.

    camkit explain photos/ --method layercam gradcam --out out/ && camkit report out/
    camkit export photos/ --out cams_out --labels labels.csv && camkit report cams_out
    camkit report cams_layercam --compare cams_gradcam cams_scorecam      # methods side by side

``DIR/report.html`` opens from the file system (inline style and script, no CDN, no server): a grid
of the images with each method's overlay side by side and the pseudo-mask as a toggle; a click
enlarges one image with every target's map; filters by true and predicted class and status, a name
search, sorting by confidence, foreground share, agreement between methods or any metric of the run;
a summary with per-class counts, a foreground-share histogram, the failed images with their errors,
the run's settings and how the page was made. Images are linked relatively, from
``DIR/report_files/`` (made once: a rerun reuses them, see :mod:`camkit.report.thumbs`), and loaded
lazily, one page of cards at a time (fast at 50,000 images).

Modules: ``runs`` (reading export and explain folders), ``thumbs`` (the images), ``page`` (the
HTML), ``assets`` (its style and script).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from ..app import class_indices, read_labels
from ..app.labels import path_key
from ..errors import InputError
from ..methods import cli_names
from ..overlay import colormap
from .page import page_html, provenance
from .runs import Row, Run, View, read_run
from .thumbs import Look, make_all, read_index

__all__ = ["build_report", "Report", "read_run", "Run", "Row", "View", "Look"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    path: Path          # DIR/report.html
    images: int
    failed: int
    drawn: int          # images whose thumbnails were made now
    reused: int         # images whose thumbnails an earlier report made
    seconds: float

    def line(self) -> str:
        """The one line the command prints."""
        return (f"camkit report: {self.images} images ({self.failed} failed); thumbnails: {self.drawn} made, "
                f"{self.reused} reused; {self.seconds:.1f} s; open {self.path}")


def _apply_labels(run: Run, labels: PathLike) -> None:
    """Each row's true classes from a labels file (:mod:`camkit.app.labels`), matched by the image's path."""
    table = read_labels(labels)
    for row in run.rows:
        got = table.get(path_key(row.photo)) if row.photo else None
        if got is not None:
            row.truth = list(class_indices(got, run.classes, f"{labels} ({row.name})"))


def build_report(folder: PathLike, compare: Sequence[PathLike] = (), *, labels: Optional[PathLike] = None,
                 cmap: str = "jet", alpha: float = 0.5, page_size: int = 48, workers: int = 1,
                 thumbnails: bool = True, argv: Optional[Sequence[str]] = None) -> Report:
    """Write ``folder/report.html`` for the run in ``folder`` (see the module's notes).

    Args:
        folder: the ``--out`` folder of ``camkit explain`` or ``camkit export``.
        compare: other export folders of the same images: more methods side by side.
        labels: a labels file giving the true classes (an export made with ``--labels`` has them).
        cmap: the maps' colormap (a matplotlib name). alpha: their opacity in [0, 1].
        page_size: cards per page (at least 1).
        workers: processes drawing the thumbnails.
        thumbnails: False: the page alone, from the thumbnails an earlier report made (none drawn).
        argv: the command's arguments, recorded on the page (default ``sys.argv[1:]``).

    Returns:
        A :class:`Report`.

    Raises:
        InputError: not a camkit output folder, a damaged manifest, a bad labels file or option.
    """
    t0 = time.perf_counter()
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise InputError(f"page_size must be an integer >= 1, got {page_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    colormap(cmap)  # an unknown name is refused before anything is read
    root = Path(folder)
    run = read_run(root, [Path(c) for c in compare], cli_names())
    if labels is not None:
        _apply_labels(run, labels)
    look = Look(cmap=cmap, alpha=float(alpha))
    if thumbnails:
        made, drawn, reused = make_all(root, run.rows, look, workers)
    else:
        made, drawn, reused = read_index(root), 0, 0
    info = {**provenance(argv), "thumbnails": f"{drawn} images drawn, {reused} reused"}
    text = page_html(run, made, info, page_size)
    out = root / "report.html"
    try:
        tmp = out.with_name(f".report.html.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e}") from None
    failed = sum(1 for r in run.rows if r.status != "ok")
    return Report(out, len(run.rows), failed, drawn, reused, time.perf_counter() - t0)
