"""``camkit report``: a self-contained HTML page of an explain or export run (:mod:`camkit.report`)."""
from __future__ import annotations

import argparse

from ..report import build_report
from .common import check_cmap, int_at_least, unit_float


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``camkit report``."""
    check_cmap(args.cmap)
    rep = build_report(args.dir, args.compare or (), labels=args.labels, cmap=args.cmap, alpha=args.alpha,
                       page_size=args.page_size, workers=args.workers, thumbnails=not args.no_thumbnails)
    print(rep.line())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``camkit report``."""
    r = sub.add_parser("report", help="one self-contained HTML page to browse a run's maps and masks",
                       description="Write DIR/report.html for the --out folder of camkit explain or export: the "
                                   "images with each method's overlay and the pseudo-mask, filters, search, "
                                   "sorting, a summary. Opens from the file system (no server); thumbnails go "
                                   "to DIR/report_files/ and are reused by a rerun.")
    r.add_argument("dir", metavar="DIR", help="the output folder of camkit explain or camkit export")
    r.add_argument("--compare", nargs="+", metavar="DIR2", help="other export folders of the same images "
                   "(other methods): shown side by side, with their agreement")
    r.add_argument("--labels", metavar="FILE", help="CSV path,label: the true classes (an export made with "
                   "--labels has them)")
    r.add_argument("--cmap", default="jet", help="matplotlib colormap of the maps; default %(default)s")
    r.add_argument("--alpha", type=unit_float, default=0.5, help="map opacity in [0, 1]; default %(default)s")
    r.add_argument("--page-size", type=int_at_least(1, "cards per page"), default=48, help="default %(default)s")
    r.add_argument("--workers", type=int_at_least(1, "processes drawing thumbnails"), default=1,
                   help="processes drawing the thumbnails; default %(default)s")
    r.add_argument("--no-thumbnails", action="store_true", help="the page alone (thumbnails of an earlier report)")
    r.set_defaults(func=cmd_report)
