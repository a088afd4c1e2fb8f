"""The ``camkit`` command: ``explain``, ``layers``, ``export``, ``evaluate-masks``, ``report`` and ``evaluate``, one
module per subcommand.

Mistakes in the input (an unreadable image, an unknown model, layer, class or
colormap, a bad option value, an output folder that cannot be made) print one
line, ``camkit: error: ...``, and exit with status 2, before the model is built
where they can be checked without it. Anything else is a bug in camkit: it
prints its traceback and asks to be reported (exit status 1).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from typing import Optional, Sequence

from ..errors import InputError
from . import evaluate, explain, export, layers, report
from .common import Parser

REPORT = ("camkit: internal error: the traceback above is a bug in camkit, not a mistake in your input; "
          "please report it with the command you ran")


def parser() -> argparse.ArgumentParser:
    """The ``camkit`` argument parser with every subcommand."""
    p = Parser(prog="camkit", description="Class activation maps for PyTorch vision models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    explain.add_parser(sub)
    layers.add_parser(sub)
    export.add_parsers(sub)
    report.add_parser(sub)
    evaluate.add_parser(sub)
    return p


def _note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings as one line each: ``camkit: note: ...``."""
    print(f"camkit: note: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns its exit status (0 done, 1 a bug in camkit or failed images, 2 a mistake
    in the input)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or argparse's one-line error (Parser.error)
        return e.code if isinstance(e.code, int) else 2
    shown = warnings.showwarning
    warnings.showwarning = _note
    try:
        return int(args.func(args) or 0)
    except InputError as e:  # the user's mistake: one line (CAMKIT_DEBUG=1 shows the traceback)
        if os.environ.get("CAMKIT_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"camkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("camkit: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(REPORT, file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
