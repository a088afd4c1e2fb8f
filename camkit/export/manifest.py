"""An export's manifest: each rank appends one JSON line per image to its part file
``DIR/parts/<run>.rank<r>.jsonl``; rank 0 merges them into ``DIR/manifest.jsonl``
(one record per image, in work-list order: ``path``, ``rel``, ``status`` "ok" / "error",
``keys``, ``scores``, ``size``, ``error``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..errors import InputError
from .files import PathLike, atomic_write, is_complete, read_cams
from .worklist import Item


def last_records(out: PathLike) -> Dict[str, Dict[str, Any]]:
    """The last record of each rel over all part files (runs in time order; a torn last line skipped)."""
    recs: Dict[str, Dict[str, Any]] = {}
    for part in sorted((Path(out) / "parts").glob("*.jsonl")):
        for line in part.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "rel" in rec:
                recs[rec["rel"]] = rec
    return recs


def merge_manifest(out: PathLike, items: Sequence[Item]) -> Dict[str, int]:
    """Write ``DIR/manifest.jsonl`` for ``items`` (in order) from the part files; counts by status.

    An image with complete outputs but no record (killed between the rename and the record)
    gets one rebuilt from its ``.npz``.
    """
    out = Path(out)
    recs = last_records(out)
    lines, counts = [], {"ok": 0, "error": 0}
    for it in items:
        rec = recs.get(it.rel)
        done = is_complete(out, it.rel)
        if done and (rec is None or rec.get("status") != "ok"):
            z = read_cams(out, it.rel)
            rec = {"path": it.path, "rel": it.rel, "status": "ok", "keys": z["keys"].tolist(),
                   "size": list(z["high_res"].shape[1:]), "error": None}
        elif rec is None or (rec.get("status") == "ok" and not done):
            rec = {"path": it.path, "rel": it.rel, "status": "error", "keys": [], "error": "no outputs written"}
        rec["path"] = it.path
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + ("\n" if lines else "")
    atomic_write(out / "manifest.jsonl", lambda f: f.write(text.encode()))
    return counts


def read_manifest(out: PathLike) -> List[Dict[str, Any]]:
    """The records of ``DIR/manifest.jsonl``, in work-list order."""
    path = Path(out) / "manifest.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found: is {out} the output folder of `camkit export`?")
    out_recs = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict) or "rel" not in rec:
            raise InputError(f"{path}:{k} is not a manifest record (a damaged file?); rerun camkit export into "
                             f"{out} to rebuild it")
        out_recs.append(rec)
    return out_recs


class PartLog:
    """This rank's part file: one JSON record appended (and flushed) per image."""

    def __init__(self, path: Path, rank: int, run_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.run_id = rank, run_id
        self._f = open(path, "a")

    def append(self, rec: Dict[str, Any]) -> None:
        """Append one image's record (with this rank and run), flushed."""
        rec.update(rank=self.rank, run=self.run_id)
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
