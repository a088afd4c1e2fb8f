"""``camkit export`` as a library call: :func:`run` (see :mod:`camkit.export`)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..adapters import num_classes
from ..app import Built, ExplainSpec, categories, state_sha256
from ..errors import InputError
from .distributed import Dist, rank_batches
from .files import PathLike, atomic_write, is_complete, remove_stale_tmp
from .lock import folder_lock
from .manifest import PartLog, last_records, merge_manifest
from .pipeline import Writer, compute, disk_error
from .worklist import Item, list_images, work_items

DEFAULT_THRESHOLD = 0.15  # IRN's cam_eval_thres (ReCAM's run_sample.py: 0.21 on VOC; its COCO script 0.15)


@dataclass
class Summary:
    """What an export did, summed over all ranks."""

    out: str
    images: int
    ok: int
    failed: int
    computed: int
    skipped: int
    seconds: float
    world_size: int
    rank: int = 0
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Images computed per second of the run (all ranks)."""
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        """The one-line report the command prints."""
        procs = f"{self.world_size} process{'es' if self.world_size > 1 else ''}"
        return (f"camkit export: {self.images} images, {self.ok} ok ({self.computed} computed, "
                f"{self.skipped} already done), {self.failed} failed; {self.images_per_s:.2f} images/s on {procs}; "
                f"outputs in {self.out}/ (manifest.jsonl)")


def _sha256(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_options(spec: ExplainSpec, out: Path, topk: int, batch_size: int, workers: int, threads: int,
                   bg_threshold: float) -> None:
    if not isinstance(spec, ExplainSpec):
        raise InputError(f"spec must be a camkit.app.ExplainSpec, got {type(spec).__name__}")
    _int("--topk", topk, 1)
    _int("--batch-size", batch_size, 1)
    _int("--workers", workers, 0)
    _int("--threads", threads, 0)
    if isinstance(bg_threshold, bool) or not isinstance(bg_threshold, (int, float)) \
            or not 0.0 <= float(bg_threshold) <= 1.0:
        raise InputError(f"--bg-threshold must be a number in [0, 1], got {bg_threshold!r}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if spec.method.raw:
        raise InputError("export writes maps in [0, 1] and thresholds them: --normalize none is not available; "
                         "use minmax, sigmoid, relu_max or tanh_max")


def _settings(spec: ExplainSpec, built: Built, src: PathLike, labels: Optional[PathLike], topk: int,
              bg_threshold: float, names: Sequence[str]) -> Dict[str, Any]:
    """What a resumed run must share with the run it resumes (the model's weights and the class
    names among them)."""
    m, named = spec.method, not isinstance(spec.model.name, nn.Module)
    return {
        "src": str(Path(src).resolve()), "model": spec.model.label, "weights": spec.model.weights if named else None,
        "head": spec.model.head, "method": m.name, "layers": built.method.layer_names, "fusion": m.fusion,
        "layer_weights": list(m.layer_weights) if m.layer_weights is not None else None, "normalize": m.normalize,
        "scales": list(m.scales) if m.scales is not None else None, "flip": m.flip,
        "labels": {"file": str(Path(labels).resolve()), "sha256": _sha256(labels)}
        if labels and Path(labels).is_file() else (str(labels) if labels else None),
        "topk": None if labels else topk, "bg_threshold": float(bg_threshold), "transform": repr(built.preset.transform),
        "weights_sha256": state_sha256(built.model), "categories": list(names),
    }


def _check_settings(out: Path, settings: Dict[str, Any], names: Sequence[str], overwrite: bool) -> None:
    """Refuse to resume an export made with other settings; record these."""
    path = out / "export.json"
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text()).get("settings", {})
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            diff = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
            raise InputError(f"{out} holds an export made with other settings ({', '.join(diff) or 'unreadable'}"
                             f"); use another --out, or --overwrite to recompute every image")
    blob = json.dumps({"settings": settings, "categories": list(names)}, indent=1).encode()
    atomic_write(path, lambda f: f.write(blob))


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _plan(dist: Dist, src: PathLike, out: Path, labels: Optional[PathLike], names: Sequence[str],
          settings: Dict[str, Any], overwrite: bool) -> Tuple[List[Item], str]:
    """Rank 0 lists the work and checks the settings; every rank gets the same work list and run id."""
    plan: Dict[str, Any] = {}
    if dist.rank == 0:
        try:
            items = work_items(list_images(src, exclude=out), labels, names)
            _check_settings(out, settings, names, overwrite)
            run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
            plan = {"items": [asdict(it) for it in items], "run": run_id, "error": None}
        except InputError as e:
            plan = {"error": str(e)}
    plan = dist.broadcast(plan)
    if plan["error"]:
        raise InputError(plan["error"])
    items = [Item(d["path"], d["rel"], tuple(d["labels"]) if d["labels"] is not None else None,
                  tuple(d["stat"]) if d["stat"] is not None else None) for d in plan["items"]]
    return items, plan["run"]


def run(src: PathLike, out: PathLike, spec: Optional[ExplainSpec] = None, *, labels: Optional[PathLike] = None,
        classes: Optional[PathLike] = None, topk: int = 1, batch_size: int = 16, workers: int = 1,
        bg_threshold: float = DEFAULT_THRESHOLD, device: Optional[str] = None, threads: int = 0,
        overwrite: bool = False, progress: bool = True) -> Summary:
    """Export maps and pseudo-masks for every image of ``src`` into ``out`` (see :mod:`camkit.export`).

    Args:
        src: a folder (recursive) or a text/CSV file listing image paths.
        out: the output folder (one folder shared by all ranks).
        spec: the model and method (:class:`camkit.app.ExplainSpec`; default: the offline
            EfficientNet-Lite0 and LayerCAM). A model given as an ``nn.Module`` runs on its own
            device and is left as found; ``spec.model.transform`` maps a PIL image to its input
            where its preset has no preprocessing.
        labels: a labels file (:mod:`camkit.app.labels`): the classes explained per image;
            without it the model's ``topk`` best classes.
        classes: class names, one per line (to read names in ``labels``).
        topk: classes per image without labels.
        batch_size: images per forward.
        workers: DataLoader decoding processes per rank.
        bg_threshold: background where every map is below it.
        device: ``auto`` / None, ``cpu``, ``cuda``, ``cuda:N`` (models built by name).
        threads: torch threads per process (0: torch's default).
        overwrite: recompute every image (also with other settings).
        progress: show a progress bar (rank 0).

    Returns:
        A :class:`Summary`; under torchrun every rank returns the same totals.

    Raises:
        InputError: bad options, input or settings that differ from the export in ``out``.
    """
    spec = ExplainSpec() if spec is None else spec
    out_p = Path(out)
    _check_options(spec, out_p, topk, batch_size, workers, threads, bg_threshold)
    with _torch_threads(threads):
        dist = Dist(device)
        try:
            module = isinstance(spec.model.name, nn.Module)
            built = spec.build(device=None if module else dist.device)
            if built.preset.transform is None:
                raise InputError("this model's preset has no preprocessing: pass ModelSpec(transform=...) "
                                 "(PIL image -> tensor)")
            if built.preset.task != "classification":
                raise InputError(not_exported(spec.model.label, built.preset.task))
            run_device = next(built.model.parameters()).device
            names = categories(built.preset.categories, num_classes(
                built.model, built.preset.input_size, built.preset.output), classes)
            settings = _settings(spec, built, src, labels, topk, bg_threshold, names)
            with folder_lock(out_p, dist.rank == 0):
                items, run_id = _plan(dist, src, out_p, labels, names, settings, overwrite)
                return _execute(items, run_id, built, dist, run_device, out_p, settings, batch_size=batch_size,
                                workers=workers, topk=topk, bg_threshold=bg_threshold, overwrite=overwrite,
                                progress=progress)
        except OSError as e:  # the output folder's disk, not camkit: a full disk, a quota, a size limit
            raise disk_error(e, out_p) from e
        finally:
            dist.close()


def not_exported(label: str, task: str) -> str:
    """The one-line refusal for a model that is not an image classifier, naming what explains it."""
    what = {"detection": f"use `camkit explain --model {label} IMAGE ...` (the boxes and one map per detected box)",
            "segmentation": f"use `camkit explain --model {label} --target-class C IMAGE ...` (a class's region)",
            "video": "explain clips in Python (camkit.adapters.resolve(model), examples/video.py)"}
    return (f"camkit export writes per-class maps of image classifiers; {label} is a {task} model: "
            f"{what.get(task, 'explain it in Python')}")


def _done(out: Path, item: Item, last: Optional[Dict[str, Any]]) -> bool:
    """An image is done when its outputs read back and its last record says they were made from
    the file as it is now (same size and modification time)."""
    if last is None or last.get("status") != "ok" or item.stat is None or last.get("stat") != list(item.stat):
        return False
    return is_complete(out, item.rel)


def _capped_workers(workers: int, batches: int, say: bool) -> int:
    """No more decoding processes than batches to decode and cores to run them."""
    cap = max(1, min(batches, os.cpu_count() or 1))
    if workers > cap:
        if say:
            warnings.warn(f"--workers {workers} capped at {cap} (the batches to compute and the cores here)",
                          stacklevel=3)
        return cap
    return workers


def _execute(items: Sequence[Item], run_id: str, built: Built, dist: Dist, run_device: torch.device, out: Path,
             settings: Dict[str, Any], *, batch_size: int, workers: int, topk: int, bg_threshold: float,
             overwrite: bool, progress: bool) -> Summary:
    """This rank's share of the work, then the merged manifest and the totals."""
    batches = rank_batches(len(items), batch_size, dist.rank, dist.world)
    mine = [i for b in batches for i in b]
    last = {} if overwrite else last_records(out)
    pending = set(mine) if overwrite else {i for i in mine if not _done(out, items[i], last.get(items[i].rel))}
    skipped = len(mine) - len(pending)
    todo = [list(b) for b in batches if any(i in pending for i in b)]  # recomputed whole
    workers = _capped_workers(workers, len(todo), dist.rank == 0)
    t0 = time.perf_counter()
    tf = built.preset.transform
    log = PartLog(out / "parts" / f"{run_id}.rank{dist.rank}.jsonl", dist.rank, run_id)
    writer = Writer(out, log, float(bg_threshold), tf, maxsize=4 * batch_size,
                    num_classes=len(settings["categories"]))
    try:
        with built.method:
            compute(items, todo, pending, built.method, tf, writer, run_device, workers, topk,
                    progress and dist.rank == 0, dist.world)
    finally:
        writer.close()
    computed = writer.ok
    dist.barrier()
    counts: Dict[str, int] = {}
    if dist.rank == 0:
        counts = merge_manifest(out, items)
        remove_stale_tmp(out)
    counts = dist.broadcast(counts)
    totals = dist.sum([computed, skipped])
    return Summary(out=str(out), images=len(items), ok=counts.get("ok", 0), failed=counts.get("error", 0),
                   computed=int(totals[0]), skipped=int(totals[1]), seconds=time.perf_counter() - t0,
                   world_size=dist.world, rank=dist.rank, settings=settings)
