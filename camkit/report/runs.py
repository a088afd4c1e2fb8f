"""A run folder as the report sees it: one :class:`Row` per image, whatever wrote the folder.

Two writers are read:

- ``camkit export`` (``manifest.jsonl``, ``export.json``, ``cams/<rel>.npz``, ``masks/<rel>.png``):
  one method per folder; ``--compare`` adds other export folders of the same images (matched by
  ``rel``) as more methods side by side. The classes explained are the labels (``--labels`` export:
  the true classes) or the model's top-K (the predicted classes).
- ``camkit explain`` (``explain.jsonl`` when the run wrote it: truth, predictions with their
  probabilities, each method's overlay files; else the overlay file names alone, ``KEY_METHOD.png``,
  ``KEY_METHOD_K-CLASS.png``, ``KEY_METHOD_CLASS.png``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import InputError
from ..export import read_manifest

#: Manifest fields that are not per-image metrics.
KNOWN = {"path", "rel", "status", "keys", "scores", "size", "error", "rank", "run", "stat", "probs"}
FIGURE_PREFIXES = ("strip_", "grid_", "compact_")
REPORT_FILES = "report_files"


@dataclass
class View:
    """One method's maps of one image, as the report draws them.

    ``kind`` "npz": ``source`` an export's ``cams/<rel>.npz`` (``high_res`` (K, H, W) drawn over the
    photo); "png": ``sources`` finished overlay images (one per target), drawn as they are."""

    kind: str
    sources: List[str]
    classes: List[int]                 # class index (into Run.classes) of each target; -1 unknown


@dataclass
class Row:
    """One image of the run."""

    name: str                          # shown and searched (the image's rel name or output key)
    photo: Optional[str]               # the image file (None: not known, e.g. explain overlays alone)
    status: str = "ok"                 # "ok" / "error"
    error: Optional[str] = None
    truth: List[int] = field(default_factory=list)
    pred: List[int] = field(default_factory=list)
    conf: Optional[float] = None
    fg: Optional[float] = None         # foreground share of the pseudo-mask
    agree: Optional[float] = None      # mean pairwise correlation of the methods' first maps
    metrics: Dict[str, float] = field(default_factory=dict)
    views: List[Optional[View]] = field(default_factory=list)   # one per method (None: missing)
    mask: Optional[str] = None         # the pseudo-mask PNG
    links: List[List[str]] = field(default_factory=list)        # per method: original overlay files

    @cached_property
    def key(self) -> str:
        """A stable id for the row's thumbnails: 16 hex digits of the name's SHA-1."""
        return hashlib.sha1(self.name.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class Run:
    """What the report shows: rows, methods, classes, settings."""

    folder: Path
    kind: str                          # "export" / "explain"
    methods: List[str]
    classes: List[str]
    rows: List[Row]
    settings: Dict[str, Any] = field(default_factory=dict)
    confidence: str = "probability"    # what ``conf`` is: "probability" or "score (logit)"


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _export_settings(folder: Path) -> Tuple[Dict[str, Any], List[str]]:
    path = folder / "export.json"
    try:
        blob = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}, []
    settings = blob.get("settings", {}) if isinstance(blob, dict) else {}
    names = blob.get("categories") or settings.get("categories") or []
    return settings, [str(n) for n in names]


def _class_list(names: List[str], index: int) -> int:
    while index >= len(names):
        names.append(f"class {len(names)}")
    return index


def _export_row(folder: Path, rec: Dict[str, Any], names: List[str], labelled: bool) -> Row:
    rel = str(rec.get("rel"))
    row = Row(name=rel, photo=rec.get("path"), status=str(rec.get("status", "error")), error=rec.get("error"))
    keys = [_class_list(names, int(k)) for k in rec.get("keys") or [] if isinstance(k, int) and k >= 0]
    if labelled:
        row.truth = keys
    else:
        row.pred = keys
    probs = rec.get("probs") or rec.get("scores") or []
    row.conf = _number(probs[0]) if probs else None
    row.metrics = {k: float(v) for k, v in rec.items() if k not in KNOWN and _number(v) is not None}
    if row.status == "ok":  # the paths of camkit.export.files.output_paths, as strings (fast at 50,000)
        row.views = [View("npz", [f"{folder}/cams/{rel}.npz"], keys)]
        row.mask = f"{folder}/masks/{rel}.png"
    else:
        row.views = [None]
        row.error = row.error or "no outputs"
    return row


def read_export(folder: Path, compare: Sequence[Path] = ()) -> Run:
    """An export folder (and others of the same images, as more methods) as a :class:`Run`."""
    settings, names = _export_settings(folder)
    labelled = bool(settings.get("labels"))
    recs = read_manifest(folder)
    rows = [_export_row(folder, r, names, labelled) for r in recs]
    methods = [str(settings.get("method") or "export")]
    for other in compare:
        o_settings, _ = _export_settings(other)
        methods.append(str(o_settings.get("method") or other.name))
        by_rel = {str(r.get("rel")): r for r in read_manifest(other)}
        for row in rows:
            rec = by_rel.get(row.name)
            if rec is None or rec.get("status") != "ok":
                row.views.append(None)
                continue
            keys = [int(k) for k in rec.get("keys") or [] if isinstance(k, int) and k >= 0]
            row.views.append(View("npz", [f"{other}/cams/{row.name}.npz"], keys))
    methods = [m if methods.count(m) == 1 else f"{m} ({i + 1})" for i, m in enumerate(methods)]
    conf = "probability" if any("probs" in r for r in recs[:1]) else "score (logit)"
    return Run(folder, "export", methods, names, rows, settings, confidence=conf)


def _names_index(names: List[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _explain_row(folder: Path, rec: Dict[str, Any], methods: List[str], names: List[str]) -> Row:
    row = Row(name=str(rec.get("key") or rec.get("path")), photo=rec.get("path"))
    truth = rec.get("truth") or ""
    row.truth = [_names_index(names, t.strip()) for t in str(truth).split(";") if t.strip()]
    preds = rec.get("preds") or []
    row.pred = [_names_index(names, str(p[0])) for p in preds]
    row.conf = _number(preds[0][1]) if preds else None
    files = rec.get("files") or {}
    for m in methods:
        got = files.get(m) or []
        cls = [_names_index(names, str(c)) for c, _ in got]
        row.views.append(View("png", [str(folder / f) for _, f in got], cls) if got else None)
        row.links.append([str(f) for _, f in got])
    row.metrics = {k: float(v) for k, v in rec.items() if k not in KNOWN and _number(v) is not None}
    return row


def _explain_from_records(folder: Path, lines: List[str]) -> Run:
    recs = []
    for k, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{folder / 'explain.jsonl'}:{k} is not a JSON record (a damaged file?)") from None
        recs.append(rec)
    settings = next((r["settings"] for r in recs if isinstance(r, dict) and "settings" in r), {})
    images = [r for r in recs if isinstance(r, dict) and "key" in r]
    methods: List[str] = []
    for r in images:
        methods += [m for m in r.get("files") or {} if m not in methods]
    names: List[str] = list(settings.get("categories") or [])
    rows = [_explain_row(folder, r, methods, names) for r in images]
    rows += [Row(name=str(r.get("path")), photo=r.get("path"), status="error", error=str(r.get("error")),
                 views=[None] * len(methods), links=[[] for _ in methods])
             for r in recs if isinstance(r, dict) and r.get("status") == "error"]
    return Run(folder, "explain", methods, names, rows, {k: v for k, v in settings.items() if k != "categories"})


def _parse_overlay(stem: str, methods: Sequence[str]) -> Optional[Tuple[str, str, int, str]]:
    """``(key, method, k, class slug)`` of an explain overlay's file stem, or None."""
    alt = "|".join(re.escape(m) for m in sorted(methods, key=len, reverse=True))
    m = re.fullmatch(rf"(.+)_({alt})(?:_(\d+)-([0-9a-z_]+)|_([0-9a-z_]+))?(?:-\d+)?", stem)
    if m is None:
        return None
    k = int(m.group(3)) - 1 if m.group(3) else 0
    return m.group(1), m.group(2), k, m.group(4) or m.group(5) or ""


def _explain_from_files(folder: Path, known_methods: Sequence[str]) -> Run:
    found: Dict[str, Dict[str, List[Tuple[int, str, str]]]] = {}
    methods: List[str] = []
    for p in sorted(folder.rglob("*.png")):
        rel = p.relative_to(folder)
        if rel.parts[0] == REPORT_FILES or p.name.startswith(FIGURE_PREFIXES):
            continue
        got = _parse_overlay(rel.with_suffix("").as_posix(), known_methods)
        if got is None:
            continue
        key, m, k, cls = got
        methods += [m] if m not in methods else []
        found.setdefault(key, {}).setdefault(m, []).append((k, cls, rel.as_posix()))
    if not found:
        raise InputError(f"{folder} holds no camkit output: no manifest.jsonl (camkit export), explain.jsonl "
                         "or overlays named KEY_METHOD.png (camkit explain)")
    methods.sort(key=list(known_methods).index)  # the registry's order, as explain runs them
    names: List[str] = []
    rows = []
    for key, per in found.items():
        files = {m: [(cls or "", f) for _, cls, f in sorted(v)] for m, v in per.items()}
        row = _explain_row(folder, {"key": key, "files": files}, methods, names)
        row.pred = [c for c in (row.views[0].classes if row.views and row.views[0] else [])
                    if names[c]][:1]
        rows.append(row)
    if "" in names:
        names[names.index("")] = "(top-1)"
    return Run(folder, "explain", methods, names, rows)


def merge_evaluation(run: Run, path: Path) -> None:
    """``camkit evaluate``'s per-image values (``evaluation.json``) as metrics named ``METHOD METRIC``,
    matched to the run's images by path; an image the run lacks gets a row of its own (no maps)."""
    try:
        blob = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{path} is not a camkit evaluate result (unreadable JSON)") from None
    by_path = {os.path.abspath(r.photo): r for r in run.rows if r.photo}
    for rec in blob.get("per_image") or [] if isinstance(blob, dict) else []:
        image = str(rec.get("image"))
        row = by_path.get(os.path.abspath(image))
        if row is None:
            row = by_path[os.path.abspath(image)] = Row(name=image, photo=image, views=[None] * len(run.methods),
                                                        links=[[] for _ in run.methods])
            run.rows.append(row)
        if not row.pred and isinstance(rec.get("class"), int):
            row.pred = [_class_list(run.classes, rec["class"])]
        row.metrics.update({f"{rec.get('method')} {k}": float(v) for k, v in rec.items()
                            if k not in ("image", "method", "class") and _number(v) is not None})
    if not run.settings and isinstance(blob, dict):
        run.settings = {k: v for k, v in (blob.get("settings") or {}).items() if not isinstance(v, (dict, list))}


def read_run(folder: Path, compare: Sequence[Path] = (), known_methods: Sequence[str] = ()) -> Run:
    """The run in ``folder``: an export (``manifest.jsonl``) or an explain run (``explain.jsonl`` or
    its overlays, with method names among ``known_methods``), with ``camkit evaluate``'s per-image values
    where the folder holds its ``evaluation.json`` (an evaluate folder alone: its images and values)."""
    run = _read_run(folder, compare, known_methods)
    if (folder / "evaluation.json").is_file():
        merge_evaluation(run, folder / "evaluation.json")
    return run


def _read_run(folder: Path, compare: Sequence[Path], known_methods: Sequence[str]) -> Run:
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (give the --out folder of camkit explain or export)")
    if (folder / "manifest.jsonl").is_file():
        for c in compare:
            if not (Path(c) / "manifest.jsonl").is_file():
                raise InputError(f"--compare {c}: no manifest.jsonl (not a camkit export folder)")
        return read_export(folder, [Path(c) for c in compare])
    if compare:
        raise InputError("--compare takes export folders; the methods of an explain run are already side by side")
    rec = folder / "explain.jsonl"
    if rec.is_file():
        return _explain_from_records(folder, [ln for ln in rec.read_text().splitlines() if ln.strip()])
    if (folder / "evaluation.json").is_file() and not _any_overlay(folder, known_methods):
        return Run(folder, "evaluate", [], [], [])  # camkit evaluate's folder alone: read_run adds its images
    return _explain_from_files(folder, known_methods)


def _any_overlay(folder: Path, known_methods: Sequence[str]) -> bool:
    return any(_parse_overlay(p.relative_to(folder).with_suffix("").as_posix(), known_methods)
               for p in folder.rglob("*.png") if not p.name.startswith(FIGURE_PREFIXES)
               and p.relative_to(folder).parts[0] != REPORT_FILES)
