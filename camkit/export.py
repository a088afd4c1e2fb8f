"""Dataset-scale maps and pseudo-masks (``camkit export``, ``camkit evaluate-masks``): work in progress."""
from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` and ``evaluate-masks`` sub-commands on the ``camkit`` parser."""
