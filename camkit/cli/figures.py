"""``camkit explain``'s figures: tile titles, per-method grids and compact pages, per-image strips."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import overlay as ov
from .outputs import Outputs, prefixed


def tile_caption(preds: Sequence[Tuple[str, float]], truth: Optional[str], name: str, value: float, k: int, K: int,
                 segmentation: bool, one_class: bool) -> str:
    """A grid tile's title: the top-3 once per image, then the map's class where it is not the top-1."""
    short = name if len(name) <= 24 else name[:23] + "~"
    if segmentation:
        return "\n".join(([f"truth: {truth}"] if truth else []) + [f"map: {short} ({100 * value:.0f}% of pixels)"])
    title = ov.tile_title(preds, truth) if k == 0 else ""
    if K > 1 or one_class:
        head = "map" if K == 1 else f"map {k + 1}"
        title += ("\n" if title else "") + f"{head}: {short} {100 * value:.0f}%"
    return title


@dataclass
class Figures:
    """The tiles a run collects for its figures: per method, per image, K tiles with their titles
    and strip captions; per image the network's view."""

    methods: Sequence[str]
    tiles: Dict[str, List[List[Any]]] = field(default_factory=dict)
    titles: Dict[str, List[List[str]]] = field(default_factory=dict)
    captions: Dict[str, List[List[str]]] = field(default_factory=dict)
    inputs: List[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for d in (self.tiles, self.titles, self.captions):
            d.update({m: [] for m in self.methods})

    def add_row(self, method: str, tiles: List[Any], titles: List[str], captions: List[str]) -> None:
        """One image's K tiles of ``method``, their titles and strip captions."""
        self.tiles[method].append(tiles)
        self.titles[method].append(titles)
        self.captions[method].append(captions)

    def write(self, keys: Sequence[str], outputs: Outputs, cmap: str, colorbar: bool, raw: bool,
              suptitle: str) -> Optional[Any]:
        """Per method a labelled grid (one row per image when K > 1) and compact 3 x 4 pages; per
        image a strip. Returns the first grid's path."""
        cbar = (cmap, None, None, "each map from its minimum to its maximum") if raw else (cmap, 0.0, 1.0, "map value")
        first = None
        for m in self.methods:
            grid = self._grid(m, outputs, suptitle.format(method=m), cbar if colorbar else None)
            first = first or grid
        for i, key in enumerate(keys):
            col = [self.inputs[i]] + [t for m in self.methods for t in self.tiles[m][i]]
            caps = ["input"] + [c for m in self.methods for c in self.captions[m][i]]
            im = ov.strip(col, labels=caps)
            if colorbar:
                im = ov.with_colorbar(im, cmap, 0.0, 1.0, labels=("min", "max") if raw else None)
            outputs.save(prefixed(key, "strip_"), ".png", im.save)
        return first

    def _grid(self, m: str, outputs: Outputs, suptitle: str, cbar: Optional[tuple]) -> Any:
        flat = [t for row in self.tiles[m] for t in row]
        flat_titles = [t for row in self.titles[m] for t in row]
        K = len(self.tiles[m][0])
        cols = K if K > 1 else min(4, len(flat))
        (f,) = outputs.reserve(f"grid_{m}", ".png")
        try:
            kw = {"cols": cols, "suptitle": suptitle, "colorbar": cbar}
            outputs.write(f, lambda p: ov.save_labelled_grid(p, flat, flat_titles, **kw))
        except ImportError as e:  # no matplotlib: the grid without titles
            print(f"camkit: note: {e}; writing the grid without labels", file=sys.stderr)
            outputs.write(f, ov.grid(flat, cols=cols).save)
        for page, im in enumerate(ov.compact_grid(flat, rows=3, cols=4 if K == 1 else K), 1):
            outputs.save(f"compact_{m}" if page == 1 else f"compact_{m}_{page}", ".png", im.save)
        return f
