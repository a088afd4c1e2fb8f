"""Dataset-scale maps and pseudo-masks: ``camkit export`` and ``camkit evaluate-masks``.

    camkit export photos/ --out cams_out --labels labels.csv
    torchrun --standalone --nproc_per_node=2 -m camkit export photos/ --out cams_out
    camkit evaluate-masks cams_out --gt SegmentationClass --sweep 0.05:0.95:0.05

``export`` turns a folder (recursive, sorted, image files only) or a text/CSV
list of image paths into, per image, mirroring its path relative to SRC
(extension replaced):

- ``DIR/cams/<rel>.npz`` (``numpy.load``, no pickle): ``keys`` (K,) int64 class
  indices; ``cam`` (K, h, w) float16, the normalized, fused map at the
  resolution of the finest hooked layer; ``high_res`` (K, H, W) float16 in
  [0, 1] at the original image's size and geometry;
- ``DIR/masks/<rel>.png``: a palette PNG, 0 = background (every map of
  ``high_res`` below ``--bg-threshold``), else 1 + the position in ``keys`` of
  the strongest class (:func:`camkit.pseudomasks.masks_from_maps`);
- ``DIR/manifest.jsonl``: one JSON object per image in work-list order, with
  ``path``, ``rel``, ``status`` ("ok" / "error"), ``keys``, ``scores`` (the
  target logits), ``size`` ([H, W]) and ``error``; ``DIR/export.json``: the
  settings, checked on a rerun.

Each file is written under a temporary name and renamed, so an output that
exists is complete: a rerun skips the images whose two outputs exist and
computes the rest; a killed run loses at most the images in flight. The
sorted work list is cut into batches of ``--batch-size`` images, and under
``torchrun`` each rank takes a contiguous run of whole batches (counts differ
by at most one), appends its records to ``DIR/parts/<run>.rank<r>.jsonl`` and
rank 0 merges them into ``manifest.jsonl`` at the end (gloo on CPU, NCCL on
GPU). Every image is computed in the same batch whatever the number of
processes, and a batch with a missing output is recomputed whole (only the
missing outputs are written), so with the same ``--batch-size`` and
``--threads`` the files are byte for byte those of one process. ``DIR``
must be one shared folder for all ranks (on several machines: a shared
filesystem).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import os
import queue
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .pseudomasks import (
    IGNORE,
    best_threshold,
    class_labels,
    confusion,
    grow,
    masks_from_maps,
    parse_sweep,
    scores,
    sweep_confusion,
    voc_palette,
)

DEFAULT_THRESHOLD = 0.15  # IRN's and ReCAM's cam_eval_thres default
TMP_SUFFIX = ".camkit-tmp"
PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- work list

@dataclass(frozen=True)
class Item:
    """One image of the work list: its path as found, its output name (posix, no extension), its labels."""

    path: str
    rel: str
    labels: Optional[Tuple[int, ...]] = None


def _rel_name(rel: str) -> str:
    p = Path(rel)
    return p.with_suffix("").as_posix() if p.suffix else p.as_posix()


def list_images(src: PathLike, exclude: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """``(path, rel)`` of every image under folder ``src`` (recursive, sorted by rel, hidden
    entries and the folder ``exclude`` skipped), or of every path listed in the text/CSV file
    ``src`` (first column; a ``path`` header, blank and ``#`` lines skipped; relative paths
    are relative to the list's folder). ``rel``: the path relative to ``src`` (a list: to the
    listed paths' common folder), without extension."""
    from .cli import _folder_images

    src_p = Path(src)
    if src_p.is_dir():
        out = _folder_images(src_p, Path(exclude) if exclude is not None else None)
        if not out:
            from .cli import image_extensions

            raise InputError(f"no image files in folder {src} (searched recursively for "
                             f"{', '.join(image_extensions())})")
    elif src_p.is_file():
        try:
            text = src_p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the list of images {src}: {e}") from None
        paths: List[str] = []
        for k, row in enumerate(csv.reader(text.splitlines())):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            cell = row[0].strip()
            if k == 0 and cell.lower() == "path":
                continue
            paths.append(cell if os.path.isabs(cell) else os.path.normpath(os.path.join(src_p.parent, cell)))
        if not paths:
            raise InputError(f"{src} lists no image paths")
        common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
        out = [(p, _rel_name(os.path.relpath(os.path.abspath(p), common))) for p in paths]
        seen: Dict[str, str] = {}
        dedup = []
        for p, r in out:
            if r in seen:
                if os.path.abspath(seen[r]) == os.path.abspath(p):
                    continue  # listed twice: once is enough
            seen[r] = p
            dedup.append((p, r))
        out = dedup
    else:
        raise InputError(f"SRC {src} is neither a folder nor a list of image paths")
    names: Dict[str, str] = {}
    for p, r in out:
        if r in names:
            raise InputError(f"{names[r]} and {p} would write the same outputs ({r}.npz / {r}.png); rename one")
        names[r] = p
    return out


def _split_labels(cell: str, categories: Sequence[str]) -> List[str]:
    """Label tokens of a cell: pieces split on ``;`` / ``|``; a piece that is not itself a class
    name or index is split on spaces when every part is one (else kept whole, to be reported)."""
    lowered = {c.lower() for c in categories}
    known = lambda tok: tok.isdigit() or tok.lower() in lowered  # noqa: E731
    out: List[str] = []
    for piece in cell.replace("|", ";").split(";"):
        piece = piece.strip()
        if not piece:
            continue
        parts = piece.split()
        out.extend(parts if not known(piece) and len(parts) > 1 and all(map(known, parts)) else [piece])
    return out


def read_labels(path: PathLike, categories: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """A CSV ``path,labels`` (one row per image; labels: class indices or names, several per
    image separated by ``;``, ``|``, spaces or more columns) -> {absolute path: class indices}.
    Relative paths are relative to the CSV's folder; a ``path`` header is skipped."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read labels file {path}: {e}") from None
    by_name = {c.lower(): i for i, c in reversed(list(enumerate(categories)))}
    out: Dict[str, Tuple[int, ...]] = {}
    for k, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if k == 1 and row[0].strip().lower() == "path":
            continue
        labels: List[int] = []
        for tok in _split_labels(";".join(row[1:]), categories):
            if tok.isdigit():
                c = int(tok)
                if c >= len(categories):
                    raise InputError(f"{path}:{k}: class index {c} out of range 0..{len(categories) - 1}")
            elif tok.lower() in by_name:
                c = by_name[tok.lower()]
            else:
                import difflib

                close = difflib.get_close_matches(tok, categories, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise InputError(f"{path}:{k}: {tok!r} is neither a class index nor a class name{hint}")
            if c not in labels:
                labels.append(c)
        cell = row[0].strip()
        full = cell if os.path.isabs(cell) else os.path.join(p.parent, cell)
        out[os.path.abspath(os.path.normpath(full))] = tuple(labels)
    return out


def attach_labels(images: Sequence[Tuple[str, str]], labels: Dict[str, Tuple[int, ...]],
                  labels_file: str) -> List[Item]:
    """Each image's labels, matched by absolute path, else by file name when that is unique."""
    by_base: Dict[str, List[Tuple[int, ...]]] = {}
    for full, lab in labels.items():
        by_base.setdefault(os.path.basename(full), []).append(lab)
    items, missing = [], []
    for p, r in images:
        lab = labels.get(os.path.abspath(p))
        if lab is None:
            cands = by_base.get(os.path.basename(p), [])
            lab = cands[0] if len(cands) == 1 else None
        if lab is None:
            missing.append(p)
        items.append(Item(p, r, lab))
    if missing:
        raise InputError(f"{labels_file} has no labels for {len(missing)} of {len(images)} images "
                         f"(first: {', '.join(missing[:3])})")
    return items


def share(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items: the first ``n % world`` ranks take
    ``ceil(n / world)``, the others one fewer (so the last ranks' shares may be shorter)."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def rank_batches(n: int, batch_size: int, rank: int, world: int) -> List[range]:
    """Rank ``rank``'s batches: the work list ``0..n-1`` cut into batches of ``batch_size``,
    a contiguous :func:`share` of the batches per rank."""
    cuts = [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    return [cuts[b] for b in share(len(cuts), rank, world)]


# --------------------------------------------------------------------------- outputs

def output_paths(out: PathLike, rel: str) -> Tuple[Path, Path]:
    """``(DIR/cams/<rel>.npz, DIR/masks/<rel>.png)``."""
    return Path(out) / "cams" / f"{rel}.npz", Path(out) / "masks" / f"{rel}.png"


def is_complete(out: PathLike, rel: str) -> bool:
    """Both outputs exist (each was renamed into place only once fully written)."""
    return all(p.is_file() for p in output_paths(out, rel))


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_npz(f: Any, arrays: Dict[str, np.ndarray]) -> None:
    """``numpy.savez`` with fixed zip timestamps: the same arrays give the same bytes."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as o:
                np.lib.format.write_array(o, np.ascontiguousarray(a), allow_pickle=False)


def write_outputs(out: PathLike, rel: str, keys: np.ndarray, cam: np.ndarray, high_res: np.ndarray,
                  threshold: float) -> np.ndarray:
    """Write ``cams/<rel>.npz`` then ``masks/<rel>.png`` atomically; returns the mask (H, W) uint8."""
    from PIL import Image

    npz, png = output_paths(out, rel)
    mask = masks_from_maps(high_res, threshold)
    arrays = {"keys": keys.astype(np.int64), "cam": cam.astype(np.float16), "high_res": high_res.astype(np.float16)}
    _atomic_write(npz, lambda f: _write_npz(f, arrays))
    im = Image.fromarray(mask)
    im.putpalette(voc_palette())
    _atomic_write(png, lambda f: im.save(f, format="PNG"))
    return mask


def read_cams(out: PathLike, rel: str) -> Dict[str, np.ndarray]:
    """``keys``, ``cam``, ``high_res`` of one image (no pickle)."""
    with np.load(output_paths(out, rel)[0], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- distributed

class _Dist:
    """This process's place in a torchrun job (or a lone process): rank, world size, device."""

    def __init__(self, device: Optional[str]) -> None:
        import torch
        import torch.distributed as dist

        self.own = False
        launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0)) if launched else 0
        want = device or "auto"
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(want)
        except RuntimeError:
            raise InputError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.device = dev
        if launched and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                    timeout=_dt.timedelta(hours=24))
            self.own = True
        self.on = dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (JSON-serializable) on every rank, sent as JSON bytes: no pickle."""
        if not self.on:
            return obj
        import numpy as np
        import torch
        import torch.distributed as dist

        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        data = json.dumps(obj).encode() if self.rank == 0 else b""
        n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
        dist.broadcast(n, src=0)
        if self.rank == 0:
            buf = torch.tensor(np.frombuffer(data, dtype=np.uint8), device=dev)
        else:
            buf = torch.empty(int(n.item()), dtype=torch.uint8, device=dev)
        dist.broadcast(buf, src=0)
        return json.loads(buf.cpu().numpy().tobytes())

    def sum(self, values: Sequence[float]) -> List[float]:
        if not self.on:
            return list(values)
        import torch
        import torch.distributed as dist

        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(list(values), dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.own:
            import torch.distributed as dist

            dist.destroy_process_group()


# --------------------------------------------------------------------------- decoding

class _Decode:
    """DataLoader dataset: item i -> ``(i, tensor (3, h, w) | None, (H, W) | None, error | None)``."""

    def __init__(self, items: Sequence[Item], transform: Callable) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from .cli import _load_image

        path = self.items[i].path
        try:
            rgb = _load_image(path, note=lambda s: None)  # decodes fully: a truncated file fails here
            return i, self.transform(rgb), (rgb.height, rgb.width), None
        except Exception as e:  # any failure of this image is recorded, the run goes on
            msg = " ".join(str(e).split())
            return i, None, None, msg if isinstance(e, InputError) else f"{type(e).__name__}: {msg}"


def _as_list(batch):
    return batch


# --------------------------------------------------------------------------- writing

class _Writer:
    """Background thread: maps -> original geometry, float16, mask, atomic files, manifest lines."""

    def __init__(self, out: Path, part: Path, threshold: float, transform: Callable, rank: int, run_id: str,
                 maxsize: int) -> None:
        self.out, self.threshold, self.transform, self.rank, self.run_id = out, threshold, transform, rank, run_id
        part.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(part, "a")
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.ok = self.failed = 0
        self._thread = threading.Thread(target=self._loop, name="camkit-export-writer", daemon=True)
        self._thread.start()

    def put(self, job: Dict[str, Any]) -> None:
        self._q.put(job)

    def _record(self, rec: Dict[str, Any]) -> None:
        rec.update(rank=self.rank, run=self.run_id)
        self._log.write(json.dumps(rec) + "\n")
        self._log.flush()

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            item: Item = job["item"]
            rec: Dict[str, Any] = {"path": item.path, "rel": item.rel}
            if job.get("error") is None:
                try:
                    high = _to_original(job["maps"], job["size"], self.transform)
                    write_outputs(self.out, item.rel, np.asarray(job["keys"], dtype=np.int64),
                                  job["cam"].numpy(), high.numpy(), self.threshold)
                    rec.update(status="ok", keys=job["keys"], scores=job["scores"], size=list(job["size"]),
                               error=None)
                    self.ok += 1
                except Exception as e:  # e.g. a full disk: recorded, the run goes on
                    rec.update(status="error", keys=[], error=f"writing outputs failed: {type(e).__name__}: {e}")
                    self.failed += 1
            else:
                rec.update(status="error", keys=[], error=job["error"])
                self.failed += 1
            self._record(rec)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        self._log.flush()
        os.fsync(self._log.fileno())
        self._log.close()


def _to_original(maps, size: Tuple[int, int], transform: Callable):
    """(K, h, w) maps on the preprocessed input -> (K, H, W) float16 in [0, 1] on the original image."""
    import torch

    from .geometry import to_original

    if maps.shape[0] == 0:
        return torch.zeros(0, *size, dtype=torch.float16)
    return to_original(maps.float(), size, transform).clamp_(0.0, 1.0).half()


# --------------------------------------------------------------------------- manifest

def _load_parts(out: Path) -> Dict[str, Dict[str, Any]]:
    """The last record of each rel over all part files (runs in time order; a torn last line skipped)."""
    recs: Dict[str, Dict[str, Any]] = {}
    for part in sorted((out / "parts").glob("*.jsonl")):
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
    recs = _load_parts(out)
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
    _atomic_write(out / "manifest.jsonl", lambda f: f.write(text.encode()))
    return counts


def _remove_stale_tmp(out: Path) -> None:
    for sub in ("cams", "masks"):
        for p in (out / sub).rglob(f"*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)


def read_manifest(out: PathLike) -> List[Dict[str, Any]]:
    path = Path(out) / "manifest.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found: is {out} the output folder of `camkit export`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- the run

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
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        procs = f"{self.world_size} process{'es' if self.world_size > 1 else ''}"
        return (f"camkit export: {self.images} images, {self.ok} ok ({self.computed} computed, "
                f"{self.skipped} already done), {self.failed} failed; {self.images_per_s:.2f} images/s on {procs}; "
                f"outputs in {self.out}/ (manifest.jsonl)")


def _sha256(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_settings(out: Path, settings: Dict[str, Any], categories: Sequence[str], overwrite: bool) -> None:
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
    blob = json.dumps({"settings": settings, "categories": list(categories)}, indent=1).encode()
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda f: f.write(blob))


def _num_classes(model, transform: Callable, device) -> int:
    from PIL import Image

    from .hooks import dry_run

    x = transform(Image.new("RGB", (320, 320), (128, 128, 128)))[None]
    _, logits = dry_run(model, x.to(device=device, dtype=next(model.parameters()).dtype), names=[])
    if not hasattr(logits, "dim") or logits.dim() != 2:
        raise InputError(f"the model must return logits (B, num_classes), got {type(logits).__name__}")
    return int(logits.shape[1])


def run(src: PathLike, out: PathLike, *, model: Any = "efficientnet_lite0", weights: str = "imagenet",
        head: Optional[str] = None, transform: Optional[Callable] = None, method: str = "layercam",
        layers: Optional[Sequence[str]] = None, fusion: str = "max", layer_weights: Optional[Sequence[float]] = None,
        normalize: Optional[str] = None, labels: Optional[PathLike] = None, classes: Optional[PathLike] = None,
        topk: int = 1, batch_size: int = 16, workers: int = 1, bg_threshold: float = DEFAULT_THRESHOLD,
        device: Optional[str] = None, threads: int = 0, overwrite: bool = False, progress: bool = True) -> Summary:
    """Export maps and pseudo-masks for every image of ``src`` into ``out`` (see the module doc).

    model: a name for :func:`camkit.adapters.build` (``weights``, ``head`` as in the CLI), or an
    ``nn.Module`` (run on its own device, left as found; ``transform`` then maps a PIL image to
    its input when its preset has none). Targets: the classes of ``labels`` (CSV ``path,labels``)
    or the model's ``topk`` best. Under torchrun (or an initialized ``torch.distributed``) each
    rank does its share; every rank returns the same totals.
    """
    import torch
    from torch import nn

    from . import cli

    if not isinstance(topk, int) or topk < 1:
        raise InputError(f"--topk must be a positive integer, got {topk!r}")
    if batch_size < 1 or workers < 0:
        raise InputError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    if not 0.0 <= float(bg_threshold) <= 1.0:
        raise InputError(f"--bg-threshold must lie in [0, 1], got {bg_threshold}")
    method = method.lower()
    if method not in cli.METHOD_NAMES:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(cli.METHOD_NAMES)}")
    if normalize is not None and normalize.lower() == "none":
        raise InputError("export writes maps in [0, 1] and thresholds them: --normalize none is not available; "
                         "use minmax, sigmoid, relu_max or tanh_max")
    if layer_weights is not None and fusion == "max":
        fusion = "weighted"
    out_p = Path(out)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    dist = _Dist(device)
    try:
        opts = argparse.Namespace(model=model, weights=weights, head=head, layers=list(layers) if layers else None,
                                  normalize=normalize, fusion=fusion, layer_weights=layer_weights)
        if isinstance(model, nn.Module):
            from .adapters import resolve

            net, preset = model, resolve(model)
            run_device = next(net.parameters()).device
            model_name = type(model).__name__
        else:
            net, preset = cli._build(opts)
            net = net.to(dist.device)
            run_device = dist.device
            model_name = str(model)
        tf = transform if transform is not None else preset.transform
        if tf is None:
            raise InputError("this model's preset has no preprocessing: pass transform=(PIL image -> tensor)")
        explainer = cli._explainer(method, net, preset, opts)
        num_classes = _num_classes(net, tf, run_device)
        categories = cli._categories(preset, num_classes, str(classes) if classes else None)
        settings = {
            "src": str(Path(src).resolve()), "model": model_name, "weights": weights if isinstance(model, str) else None,
            "head": head, "method": method, "layers": explainer.layer_names, "fusion": fusion,
            "layer_weights": list(layer_weights) if layer_weights is not None else None, "normalize": normalize,
            "labels": {"file": str(Path(labels).resolve()), "sha256": _sha256(labels)}
            if labels and Path(labels).is_file() else (str(labels) if labels else None),
            "topk": None if labels else topk, "bg_threshold": float(bg_threshold), "transform": repr(tf),
        }

        plan: Dict[str, Any] = {}
        if dist.rank == 0:
            try:
                images = list_images(src, exclude=out_p)
                items = (attach_labels(images, read_labels(labels, categories), str(labels)) if labels
                         else [Item(p, r) for p, r in images])
                _check_settings(out_p, settings, categories, overwrite)
                run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
                plan = {"items": [asdict(it) for it in items], "run": run_id, "error": None}
            except InputError as e:
                plan = {"error": str(e)}
        plan = dist.broadcast(plan)
        if plan["error"]:
            raise InputError(plan["error"])
        items = [Item(d["path"], d["rel"], tuple(d["labels"]) if d["labels"] is not None else None)
                 for d in plan["items"]]
        batches = rank_batches(len(items), batch_size, dist.rank, dist.world)
        mine = [i for b in batches for i in b]
        pending = set(mine) if overwrite else {i for i in mine if not is_complete(out_p, items[i].rel)}
        skipped = len(mine) - len(pending)
        batches = [list(b) for b in batches if any(i in pending for i in b)]  # recomputed whole

        t0 = time.perf_counter()
        writer = _Writer(out_p, out_p / "parts" / f"{plan['run']}.rank{dist.rank}.jsonl", float(bg_threshold),
                         tf, dist.rank, plan["run"], maxsize=4 * batch_size)
        try:
            with explainer:
                _compute(items, batches, pending, explainer, tf, writer, run_device, workers, topk,
                         progress and dist.rank == 0, dist)
        finally:
            writer.close()
        computed = writer.ok
        dist.barrier()
        counts: Dict[str, int] = {}
        if dist.rank == 0:
            counts = merge_manifest(out_p, items)
            _remove_stale_tmp(out_p)
        counts = dist.broadcast(counts)
        totals = dist.sum([computed, skipped])
        seconds = time.perf_counter() - t0
        return Summary(out=str(out_p), images=len(items), ok=counts.get("ok", 0), failed=counts.get("error", 0),
                       computed=int(totals[0]), skipped=int(totals[1]), seconds=seconds, world_size=dist.world,
                       rank=dist.rank, settings=settings)
    finally:
        dist.close()
        if threads:
            torch.set_num_threads(old_threads)


def _compute(items: Sequence[Item], batches: Sequence[List[int]], pending: set, explainer, transform: Callable,
             writer: _Writer, device, workers: int, topk: int, progress: bool, dist: _Dist) -> None:
    """Decode in DataLoader workers, compute each batch's maps (same-size inputs together), hand the
    pending images' maps to the writer."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if not batches:
        return
    loader = DataLoader(_Decode(items, transform), batch_sampler=batches, num_workers=workers,
                        collate_fn=_as_list, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    bar = tqdm(total=len(pending), unit="img", desc=f"camkit export rank 0/{dist.world}", disable=not progress or None,
               file=sys.stderr, smoothing=0.1)
    dtype = next(explainer.model.parameters()).dtype
    try:
        for batch in loader:
            groups: Dict[Tuple[int, ...], List[Tuple[int, Any, Tuple[int, int]]]] = {}
            for i, x, size, err in batch:
                if err is not None:
                    if i in pending:
                        writer.put({"item": items[i], "error": err})
                else:
                    groups.setdefault(tuple(x.shape), []).append((i, x, size))
            for group in groups.values():
                _explain_group(group, items, pending, explainer, writer, device, dtype, topk)
            bar.update(sum(i in pending for i, *_ in batch))
    finally:
        bar.close()


def _explain_group(group, items: Sequence[Item], pending: set, explainer, writer: _Writer, device, dtype,
                   topk: int) -> None:
    import torch

    from .targets import MultiLabel

    its = [items[g[0]] for g in group]
    write = [g[0] in pending for g in group]
    if its[0].labels is not None and not any(it.labels for it in its):  # nothing to explain: all background
        for it, g, w in zip(its, group, write):
            if w:
                writer.put({"item": it, "error": None, "keys": [], "scores": [], "size": g[2],
                            "cam": torch.zeros(0, 1, 1), "maps": torch.zeros(0, 1, 1)})
        return
    x = torch.stack([g[1] for g in group]).to(device=device, dtype=dtype, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions (the methods' channels_last=True)
    if its[0].labels is not None:
        res = explainer(x, targets=MultiLabel([list(it.labels) for it in its]))
    else:
        res = explainer(x, topk=topk)
    finest = max((tuple(m.shape[-2:]) for m in res.layer_maps.values()), key=lambda hw: hw[0] * hw[1])
    cams = res.maps_at(finest).clamp_(0.0, 1.0).half().cpu()
    maps = res.maps.float().cpu()
    targets, scores, valid = res.targets.cpu(), res.scores.detach().float().cpu(), res.valid.cpu()
    for b, it in enumerate(its):
        if not write[b]:  # computed only to keep the batch as it was: its outputs are already there
            continue
        k = int(valid[b].sum())  # valid columns come first (MultiLabel pads at the end)
        writer.put({"item": it, "error": None, "keys": targets[b, :k].tolist(),
                    "scores": [round(v, 6) for v in scores[b, :k].tolist()],
                    "cam": cams[b, :k], "maps": maps[b, :k], "size": group[b][2]})


# --------------------------------------------------------------------------- evaluation

def evaluate(out: PathLike, gt: PathLike, *, ignore: int = IGNORE, thresholds: Optional[Sequence[float]] = None,
             num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Score an export's pseudo-masks against ground-truth PNGs ``gt/<rel>.png`` (class index per
    pixel: 0 background, 1 + c for class c, ``ignore`` left out).

    thresholds None: the masks as written; else the masks of ``high_res`` at each threshold
    (increasing), the best by mIoU reported. Returns ``thresholds``, ``miou`` (one per threshold),
    ``best`` {threshold, miou, iou, precision, recall (per class)}, ``images``, ``missing_gt``,
    ``num_classes``, ``class_names``.
    """
    from PIL import Image

    out_p, gt_p = Path(out), Path(gt)
    if not gt_p.is_dir():
        raise InputError(f"--gt {gt} is not a folder of ground-truth PNGs")
    recs = [r for r in read_manifest(out_p) if r.get("status") == "ok"]
    T = len(thresholds) if thresholds is not None else 1
    C = int(num_classes) if num_classes else 2
    acc = np.zeros((T, C, C), dtype=np.int64)
    n, missing = 0, []
    for rec in recs:
        rel = rec["rel"]
        gpath = gt_p / f"{rel}.png"
        if not gpath.is_file():
            missing.append(rel)
            continue
        with Image.open(gpath) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise InputError(f"{gpath}: ground truth must be a class-index PNG (mode P or L), got mode {im.mode}")
            g = np.asarray(im).astype(np.int64)
        if thresholds is None:
            with Image.open(output_paths(out_p, rel)[1]) as im:
                mask = np.asarray(im)
            keys = np.asarray(rec["keys"], dtype=np.int64)
        else:
            z = read_cams(out_p, rel)
            keys = z["keys"]
        valid = g[g != ignore]
        need = max(int(valid.max()) + 1 if valid.size else 1, int(keys.max()) + 2 if keys.size else 1)
        if num_classes and need > C:
            raise InputError(f"{gpath} or its keys hold label {need - 1}, but --num-classes is {C}")
        C = max(C, need)
        acc = grow(acc, C)
        try:
            if thresholds is None:
                conf = confusion(class_labels(mask, keys), g, C, ignore)[None]
            else:
                conf = sweep_confusion(z["high_res"], keys, g, thresholds, C, ignore)
        except InputError as e:
            raise InputError(f"{rel}: {e}") from None
        acc += conf
        n += 1
    if n == 0:
        raise InputError(f"no ground-truth mask in {gt} matches an exported image (looked for {gt}/<rel>.png, "
                         f"e.g. {gt_p / (recs[0]['rel'] + '.png') if recs else 'none exported'})")
    per = [scores(c) for c in acc]
    mious = [float(s["miou"]) for s in per]
    ts = list(thresholds) if thresholds is not None else [None]
    if thresholds is None:
        best_i = 0
    else:
        bt, _ = best_threshold(ts, mious)
        best_i = ts.index(bt)
    s = per[best_i]
    names = ["background"] + _class_names(out_p, C - 1)
    return {
        "thresholds": ts, "miou": mious,
        "best": {"threshold": ts[best_i], "miou": mious[best_i], "iou": _nan_list(s["iou"]),
                 "precision": _nan_list(s["precision"]), "recall": _nan_list(s["recall"])},
        "images": n, "missing_gt": len(missing), "num_classes": C, "class_names": names,
        "confusion": acc[best_i].tolist(),
    }


def _nan_list(a: np.ndarray) -> List[Optional[float]]:
    return [None if np.isnan(v) else float(v) for v in a]


def _class_names(out: Path, n: int) -> List[str]:
    try:
        cats = json.loads((out / "export.json").read_text()).get("categories") or []
    except (OSError, json.JSONDecodeError):
        cats = []
    return [cats[c] if c < len(cats) else f"class {c}" for c in range(n)]


def format_evaluation(res: Dict[str, Any]) -> str:
    """A plain-text report: the sweep (if any), then per class IoU / precision / recall."""
    lines = []
    if len(res["thresholds"]) > 1:
        lines.append("threshold  mIoU")
        lines += [f"{t:9.3f}  {m:.4f}" for t, m in zip(res["thresholds"], res["miou"])]
        lines.append("")
    b = res["best"]
    where = "masks as written" if b["threshold"] is None else f"threshold {b['threshold']:g}"
    lines.append(f"{res['images']} images ({res['missing_gt']} without ground truth), {where}:")
    width = max(len(n) for n in res["class_names"])
    lines.append(f"{'class':<{width}}  IoU     precision  recall")
    fmt = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731
    conf = np.asarray(res["confusion"])
    for c, name in enumerate(res["class_names"]):
        if conf[c].sum() + conf[:, c].sum() == 0:
            continue
        lines.append(f"{name:<{width}}  {fmt(b['iou'][c])}  {fmt(b['precision'][c])}     {fmt(b['recall'][c])}")
    lines.append(f"mIoU {b['miou']:.4f}" + ("" if b["threshold"] is None else f" at threshold {b['threshold']:g}"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def cmd_export(args: argparse.Namespace) -> int:
    summary = run(args.src, args.out, model=args.model, weights=args.weights, head=args.head, method=args.method,
                  layers=args.layers, fusion=args.fusion, layer_weights=args.layer_weights, normalize=args.normalize,
                  labels=args.labels, classes=args.classes, topk=args.topk, batch_size=args.batch_size,
                  workers=args.workers, bg_threshold=args.bg_threshold, device=args.device, threads=args.threads,
                  overwrite=args.overwrite, progress=not args.no_progress)
    if summary.rank == 0:
        print(summary.line())
    return 1 if summary.failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.sweep and args.threshold is not None:
        raise InputError("give --sweep or --threshold, not both")
    ts = parse_sweep(args.sweep) if args.sweep else ([args.threshold] if args.threshold is not None else None)
    res = evaluate(args.dir, args.gt, ignore=args.ignore, thresholds=ts, num_classes=args.num_classes)
    print(format_evaluation(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` and ``evaluate-masks`` sub-commands on the ``camkit`` parser."""
    from .cli import DEFAULT_MODEL, METHOD_NAMES

    e = sub.add_parser(
        "export", help="maps and pseudo-masks for a whole folder or list of images (resumable, torchrun-ready)",
        description="Per image: cams/<rel>.npz (keys, cam, high_res), masks/<rel>.png and a manifest.jsonl line. "
                    "A rerun skips finished images. Several processes or machines: "
                    "torchrun --nproc_per_node=N -m camkit export ... (same arguments).")
    e.add_argument("src", metavar="SRC", help="a folder (recursive) or a text/CSV file listing image paths")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder (shared by all ranks)")
    e.add_argument("--model", default=DEFAULT_MODEL, help="model name as for `camkit explain`; default %(default)s")
    e.add_argument("--weights", default="imagenet", help="imagenet, none or PATH of a state dict")
    e.add_argument("--head", metavar="PATH", help="a CAM/ReCAM head saved by camkit.save_head (as for explain)")
    e.add_argument("--method", default="layercam", choices=METHOD_NAMES, help="default %(default)s")
    e.add_argument("--layers", nargs="+", metavar="LAYER", help="layer names or a preset's layer set")
    e.add_argument("--fusion", choices=["max", "weighted"], default="max", help="multi-layer fusion; default max")
    e.add_argument("--layer-weights", nargs="+", type=float, metavar="W", help="per-layer weights (weighted fusion)")
    e.add_argument("--normalize", help="minmax (default), sigmoid, relu_max, tanh_max")
    e.add_argument("--labels", metavar="FILE", help="CSV path,labels: one or more class indices or names per image "
                   "(the weakly-supervised case); without it the model's top-K classes")
    e.add_argument("--classes", metavar="FILE", help="class names, one per line (to read names in --labels)")
    e.add_argument("--topk", type=int, default=1, help="classes per image without --labels; default 1")
    e.add_argument("--batch-size", type=int, default=16, help="default %(default)s")
    e.add_argument("--workers", type=int, default=1, help="DataLoader decoding processes per rank; default 1")
    e.add_argument("--bg-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="background where every map is below it; default %(default)s")
    e.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if there is a GPU), cpu, cuda")
    e.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    e.add_argument("--overwrite", action="store_true", help="recompute every image (also with other settings)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("evaluate-masks", help="IoU / precision / recall of exported pseudo-masks against ground truth",
                       description="Per-class IoU, mIoU, precision and recall of DIR's masks against PNG masks "
                                   "(0 background, 1 + class index, --ignore left out), as ReCAM's eval_cam; "
                                   "--sweep recomputes the masks from high_res at each background threshold.")
    v.add_argument("dir", metavar="DIR", help="the --out folder of camkit export")
    v.add_argument("--gt", required=True, metavar="MASKS", help="folder of ground-truth PNGs, MASKS/<rel>.png")
    v.add_argument("--ignore", type=int, default=IGNORE, help="ground-truth value left out; default %(default)s")
    v.add_argument("--sweep", metavar="START:STOP:STEP", help="background thresholds to try, e.g. 0.05:0.95:0.05")
    v.add_argument("--threshold", type=float, help="one background threshold (default: the masks as written)")
    v.add_argument("--num-classes", type=int, help="classes including background (default: from the data)")
    v.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    v.set_defaults(func=cmd_evaluate)
