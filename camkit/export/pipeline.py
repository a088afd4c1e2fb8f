"""An export's pipeline: decode in DataLoader workers, explain each batch, write in a thread.

Decoding (:class:`Decode`) runs in ``workers`` processes, overlapped with the
computation (each worker keeps 4 batches ready); the maps of a batch are
computed in the main process (same-size inputs together) and handed as
:class:`Job` objects to the :class:`Writer` thread, which puts them back on the
original image, writes the files and appends the manifest records while the
next batch is computed. The decoder (:mod:`camkit.export.decoding`): on CPU
PIL without ``load_image``'s copies for plain JPEGs (byte-identical model
inputs; ``load_image`` for the other files); on a CUDA device the workers read
the JPEGs' bytes and the main process decodes and transforms each batch on the
GPU (nvjpeg). Writing runs in :func:`writer_threads` threads.
"""
from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import Tensor

from ..app import load_image
from ..errors import InputError
from ..geometry import to_original
from ..targets import MultiLabel
from .decoding import Raw, choose_decoder, decode_batch, jpeg_orientation, load_fast, read_bytes, tensor_plan
from .files import remove_outputs, write_outputs
from .manifest import PartLog
from .worklist import Item

Size = Tuple[int, int]


@dataclass
class Job:
    """One image for the writer: its maps, or the error that stopped it.

    Attributes:
        item: the work-list entry.
        size: the original image's ``(H, W)``.
        error: why it failed (None: it did not).
        keys: the classes of its maps, ``K`` of them.
        scores: the targets' values (logits), one per key.
        cam: ``(K, h, w)`` float16 maps at the finest hooked layer's resolution.
        maps: ``(K, H', W')`` float32 maps on the preprocessed input.
    """

    item: Item
    size: Optional[Size] = None
    error: Optional[str] = None
    keys: List[int] = field(default_factory=list)
    scores: List[float] = field(default_factory=list)
    cam: Optional[Tensor] = None
    maps: Optional[Tensor] = None


class Decode:
    """DataLoader dataset: item i -> ``(i, array (3, h, w) | Raw | None, (H, W) | None, error | None)``.

    ``decoder`` (:data:`camkit.export.decoding.DECODERS`): ``"pil"`` (:func:`camkit.load_image`),
    ``"pil-jpeg"`` (plain JPEGs without its copies, the same pixels), ``"nvjpeg"`` (a plain JPEG's
    bytes as a :class:`~camkit.export.decoding.Raw` for the main process to decode on the GPU; the
    other files as ``"pil-jpeg"``).
    """

    def __init__(self, items: Sequence[Item], transform: Callable[[Any], Tensor], decoder: str = "pil-jpeg") -> None:
        self.items, self.transform, self.decoder = list(items), transform, decoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path = self.items[i].path
        try:
            if self.decoder == "nvjpeg":
                o = jpeg_orientation(path)
                if o is not None:
                    return i, Raw(read_bytes(path), o), None, None
            # decodes fully: a truncated file fails here
            rgb = load_image(path) if self.decoder == "pil" else load_fast(path)
            # as an array, pickled through the pipe: a tensor would travel as a shared file descriptor,
            # whose sharer thread prints a traceback when Ctrl-C stops the workers
            return i, self.transform(rgb).numpy(), (rgb.height, rgb.width), None
        except Exception as e:  # any failure of this image is recorded, the run goes on
            msg = " ".join(str(e).split())
            return i, None, None, msg if isinstance(e, InputError) else f"{type(e).__name__}: {msg}"


def _as_list(batch):
    return batch


def _worker_init(worker_id: int) -> None:
    """A decoding worker leaves Ctrl-C to the main process (which stops the run and its workers), and
    exits as soon as that process is gone: its results travel through a pipe nobody reads any more,
    which would keep it waiting forever after a killed rank."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="camkit-orphan-watch", daemon=True).start()


def back_on_original(maps: Tensor, size: Size, transform: Callable) -> Tensor:
    """``(K, h, w)`` maps on the preprocessed input -> ``(K, H, W)`` float16 in [0, 1] on the original image."""
    if maps.shape[0] == 0:
        return torch.zeros(0, *size, dtype=torch.float16)
    return to_original(maps.float(), size, transform).clamp_(0.0, 1.0).half()


def disk_error(e: OSError, out: Path) -> InputError:
    """A write that failed (a full disk, a quota, a file-size limit) as one line for the user."""
    where = f" writing {e.filename}" if getattr(e, "filename", None) else f" writing in {out}"
    return InputError(f"{(e.strerror or str(e)).lower()}{where}: the export stopped; what it wrote is kept, and the "
                      "same command resumes it")


class Writer:
    """Background thread(s): jobs -> original geometry, float16, mask, atomic files, manifest records.

    One thread to start with; :meth:`add_threads` adds more on the same queue (each image's files
    are written on their own and the manifest is merged in work-list order, so the files do not
    depend on the number of threads; only the order of the records in the part file does).
    A failure to write (a full disk, a file-size limit, a folder made read-only) stops the run:
    the next :meth:`put` or :meth:`close` raises it in the main thread, naming the file, and
    what was written so far is kept for a resumed run.
    """

    def __init__(self, out: Path, log: PartLog, threshold: float, transform: Callable, maxsize: int,
                 num_classes: int) -> None:
        self.out, self.log, self.threshold, self.transform = out, log, threshold, transform
        self.num_classes = num_classes
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.ok = self.failed = 0
        self.fatal: Optional[BaseException] = None
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self.add_threads(1)

    @property
    def thread_count(self) -> int:
        """The writer threads started."""
        return len(self._threads)

    def add_threads(self, n: int) -> None:
        """Start ``n`` more writer threads."""
        for _ in range(max(0, n)):
            t = threading.Thread(target=self._loop, name=f"camkit-export-writer-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def put(self, job: Optional[Job]) -> None:
        """Queue a job (None: the end); raises the writer's failure instead of waiting on a dead thread."""
        while True:
            self._raise_fatal()
            try:
                self._q.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_fatal(self) -> None:
        e = self.fatal
        if e is None:
            return
        if isinstance(e, OSError):
            raise disk_error(e, self.out) from e
        raise RuntimeError("the export's writer thread failed") from e

    def _write(self, job: Job) -> Dict[str, Any]:
        item = job.item
        rec: Dict[str, Any] = {"path": item.path, "rel": item.rel, "stat": item.stat}
        if job.error is not None:
            remove_outputs(self.out, item.rel)  # no stale outputs of an earlier run survive a failure
            with self._lock:
                self.failed += 1
            return {**rec, "status": "error", "keys": [], "error": job.error}
        high = back_on_original(job.maps, job.size, self.transform)  # type: ignore[arg-type]
        write_outputs(self.out, item.rel, np.asarray(job.keys, dtype=np.int64), job.cam.numpy(),  # type: ignore[union-attr]
                      high.numpy(), self.threshold, self.num_classes)
        with self._lock:
            self.ok += 1
        return {**rec, "status": "ok", "keys": job.keys, "scores": job.scores, "size": list(job.size),  # type: ignore[arg-type]
                "error": None}

    def _loop(self) -> None:
        try:
            while True:
                job = self._q.get()
                if job is None:
                    return
                rec = self._write(job)
                with self._lock:
                    self.log.append(rec)
        except BaseException as e:  # raised in the main thread by put / close
            with self._lock:
                self.fatal = self.fatal or e

    def close(self) -> None:
        """Finish the queued jobs and close the part file; raises the writer's failure, if any."""
        try:
            alive = [t for t in self._threads if t.is_alive()]
            for _ in alive:
                self.put(None)
            for t in alive:
                t.join()
            self._raise_fatal()
        finally:
            try:
                self.log.close()
            except OSError:
                pass


def writer_threads(workers: int) -> int:
    """Writer threads for a run: the cores left beside the torch threads and the ``workers``
    decoding processes, at least 1, at most 8 (a 2-core machine: 1; 16 cores, 1 torch thread
    and 8 workers, as on a GPU machine: 7)."""
    return max(1, min(8, (os.cpu_count() or 1) - torch.get_num_threads() - workers))


def make_loader(dataset: Decode, batches: Sequence[List[int]], device: torch.device, workers: int):
    """The export's DataLoader: ``batches`` of ``dataset`` decoded in ``workers`` processes, each
    keeping 4 batches ready ahead of the computation (0 workers: in the main process)."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_as_list,
                      pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                      prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0))


def compute(items: Sequence[Item], batches: Sequence[List[int]], pending: Set[int], explainer: Any,
            transform: Callable, writer: Writer, device: torch.device, workers: int, topk: int,
            progress: bool, world: int) -> None:
    """Decode in DataLoader workers, compute each batch's maps (same-size inputs together), hand the
    pending images' jobs to the writer."""
    from tqdm import tqdm

    if not batches:
        return
    decoder = choose_decoder(device, transform)
    plan = tensor_plan(transform) if decoder == "nvjpeg" else None
    dataset = Decode(items, transform, decoder)
    loader = make_loader(dataset, batches, device, workers)
    writer.add_threads(writer_threads(workers) - writer.thread_count)
    bar = tqdm(total=len(pending), unit="img", desc=f"camkit export rank 0/{world}", disable=not progress or None,
               file=sys.stderr, smoothing=0.1)
    dtype = next(explainer.model.parameters()).dtype
    try:
        for batch in loader:
            if plan is not None:
                batch = on_device(batch, dataset, plan, device)
            groups: Dict[Tuple[int, ...], List[Tuple[int, Tensor, Size]]] = {}
            for i, x, size, err in batch:
                if err is not None:
                    if i in pending:
                        writer.put(Job(items[i], error=err))
                else:
                    groups.setdefault(tuple(x.shape), []).append((i, torch.as_tensor(x), size))
            for group in groups.values():
                jobs = explain_group([items[i] for i, _, _ in group], [x for _, x, _ in group],
                                     [s for _, _, s in group], explainer, device, dtype, topk)
                for (i, _, _), job in zip(group, jobs):
                    if i in pending:  # the others ran only to keep the batch as it was: their outputs exist
                        writer.put(job)
            bar.update(sum(i in pending for i, *_ in batch))
    finally:
        bar.close()


def on_device(batch: List[tuple], dataset: Decode, plan: Sequence[Callable[[Tensor], Tensor]],
              device: torch.device) -> List[tuple]:
    """A batch's plain JPEGs (:class:`~camkit.export.decoding.Raw`) decoded and transformed on
    ``device`` in one call; a file that fails there takes the PIL path here (which words its error)."""
    raws = [k for k, entry in enumerate(batch) if isinstance(entry[1], Raw)]
    done = decode_batch([batch[k][1] for k in raws], plan, device)
    out = list(batch)
    pil = Decode(dataset.items, dataset.transform, "pil")
    for k, d in zip(raws, done):
        i = batch[k][0]
        out[k] = pil[i] if d is None else (i, d[0], d[1], None)
    return out


def explain_group(its: Sequence[Item], xs: Sequence[Tensor], sizes: Sequence[Size], explainer: Any,
                  device: torch.device, dtype: torch.dtype, topk: int) -> List[Job]:
    """The jobs of images whose inputs have one shape: their labels' maps (every image has
    labels) or their ``topk`` classes' maps (none has), from one call of ``explainer``."""
    if its[0].labels is not None and not any(it.labels for it in its):  # nothing to explain: all background
        return [Job(it, size=s, cam=torch.zeros(0, 1, 1), maps=torch.zeros(0, 1, 1)) for it, s in zip(its, sizes)]
    x = torch.stack(list(xs)).to(device=device, dtype=dtype, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions (the methods' channels_last=True)
    if its[0].labels is not None:
        res = explainer(x, targets=MultiLabel([list(it.labels) for it in its]))
    else:
        res = explainer(x, topk=topk)
    finest = max((tuple(m.shape[-2:]) for m in res.layer_maps.values()), key=lambda hw: hw[0] * hw[1])
    cams = res.maps_at(finest).clamp_(0.0, 1.0).half().cpu()
    maps = res.maps.float().cpu()
    targets, scores, valid = res.targets.cpu(), res.scores.detach().float().cpu(), res.valid.cpu()
    jobs = []
    for b, it in enumerate(its):
        k = int(valid[b].sum())  # valid columns come first (MultiLabel pads at the end)
        jobs.append(Job(it, size=sizes[b], keys=targets[b, :k].tolist(),
                        scores=[round(v, 6) for v in scores[b, :k].tolist()], cam=cams[b, :k], maps=maps[b, :k]))
    return jobs
