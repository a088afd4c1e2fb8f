"""``camkit explain``'s work: every image in batches, its overlays (and maps) written as they
come, then the figures."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import tqdm
from PIL import Image

from .. import overlay as ov
from ..adapters import Preset
from ..app import categories, load_image
from ..errors import InputError
from ..geometry import to_original
from .explain_records import Records, settings_of
from .figures import Figures, tile_caption
from .outputs import Outputs, file_base

Call = Callable[[Any, torch.Tensor], Any]


@dataclass
class Job:
    """One ``camkit explain`` run: what to explain, with what, and where its files go."""

    args: argparse.Namespace
    items: Sequence[Tuple[str, str]]      # (path, output key)
    truths: Dict[str, str]                # path -> ground truth text
    explainers: Dict[str, Any]            # method name -> method object
    call: Call                            # (method, x) -> CAMResult
    preset: Preset
    target_class: Optional[int]
    segmentation: bool
    outputs: Outputs
    raw: bool


def _note(s: str) -> None:
    tqdm.tqdm.write(s, file=sys.stderr)


def _display_range(m: torch.Tensor, raw: bool) -> Tuple[float, float]:
    """The values that span the colormap: [0, 1] for normalized maps, the map's own range for raw ones."""
    if not raw:
        return 0.0, 1.0
    lo, hi = float(m.min()), float(m.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _same_shape_runs(xs: Sequence[Any]) -> List[List[int]]:
    """Indices of consecutive inputs of one shape (a batch needs one shape; segmentation inputs vary)."""
    runs: List[List[int]] = []
    for i, x in enumerate(xs):
        if runs and xs[runs[-1][0]].shape == x.shape:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _shares(scores: torch.Tensor, segmentation: bool) -> torch.Tensor:
    """Per class: the probability (classification, scores (C,)) or the share of pixels predicted as
    that class (segmentation, scores (C, H, W))."""
    if segmentation:
        pred = scores.argmax(0).flatten()
        return torch.bincount(pred, minlength=scores.shape[0]).double() / pred.numel()
    return scores.detach().float().softmax(0)


class ExplainRun:
    """Runs a :class:`Job`; the figures' tiles are its state."""

    def __init__(self, job: Job) -> None:
        self.job = job
        a = job.args
        self.figures = Figures(list(job.explainers)) if not a.no_figures else None
        self.categories: Optional[List[str]] = None
        self.look = {"alpha": a.alpha, "cmap": a.cmap, "postprocess": a.postprocess}
        self.done: List[str] = []                 # output keys of the images explained
        self.failed: List[Tuple[str, str]] = []   # (path, why) of the images that could not be read
        self.records = Records(job.outputs.root, settings_of(a, job.explainers))  # explain.jsonl

    def _load(self, chunk: Sequence[Tuple[str, str]]) -> Tuple[List[Tuple[str, str]], List[Image.Image]]:
        """The chunk's images that read; the others are recorded as failed (the run goes on)."""
        items, photos = [], []
        for path, key in chunk:
            try:
                photos.append(load_image(path, _note))
                items.append((path, key))
            except InputError as e:
                self.failed.append((path, " ".join(str(e).split())))
        return items, photos

    def run(self) -> int:
        """Explain every image, write the figures; returns the exit status."""
        job = self.job
        bar = tqdm.tqdm(total=len(job.items), desc="camkit", unit="image", disable=None, file=sys.stderr)
        bs = job.args.batch_size
        for start in range(0, len(job.items), bs):
            chunk, photos = self._load(job.items[start:start + bs])
            xs = [job.preset.transform(ph) for ph in photos]  # type: ignore[misc]
            for run in _same_shape_runs(xs):
                self._batch([chunk[i] for i in run], [photos[i] for i in run], torch.stack([xs[i] for i in run]))
                bar.update(len(run))
            bar.update(len(job.items[start:start + bs]) - len(chunk))
        bar.close()
        if not self.done:
            first = self.failed[0][1]
            raise InputError(first if len(self.failed) == 1 else
                             f"none of the {len(self.failed)} images could be read (first: {first})")
        return self._finish()

    def _finish(self) -> int:
        job, first = self.job, None
        if self.figures is not None:
            a = job.args
            first = self.figures.write(self.done, job.outputs, a.cmap, a.colorbar, job.raw,
                                       f"{{method}} on {a.model} ({job.preset.family})")
        self.records.write(job.outputs, self.failed)
        shows = f" ({first.relative_to(job.outputs.root).as_posix()} shows them all)" if first else ""
        n = len(job.outputs.written)
        print(f"wrote {n} file{'' if n == 1 else 's'} to {job.outputs.root}/{shows}")
        for _, why in self.failed:
            print(f"camkit: error: {why}", file=sys.stderr)
        if self.failed:
            print(f"camkit: {len(self.failed)} of {len(job.items)} images could not be read; the others were "
                  "explained", file=sys.stderr)
        return 1 if self.failed else 0

    def _batch(self, items: Sequence[Tuple[str, str]], photos: Sequence[Image.Image], x: torch.Tensor) -> None:
        job = self.job
        results = {m: job.call(ex, x) for m, ex in job.explainers.items()}
        if self.categories is None:
            num_classes = int(next(iter(results.values())).logits.shape[1])
            self.categories = categories(job.preset.categories, num_classes, job.args.classes)
            if job.target_class is not None and job.target_class >= num_classes:
                raise InputError(f"class index {job.target_class} out of range 0..{num_classes - 1}")
        for j, ((path, key), photo) in enumerate(zip(items, photos)):
            self._image(j, path, key, photo, x[j], results)
            self.done.append(key)

    def _image(self, j: int, path: str, key: str, photo: Image.Image, x: torch.Tensor, results: Dict[str, Any]) -> None:
        job, cats = self.job, self.categories
        assert cats is not None
        shown = ov.to_uint8(ov.denormalize(x, job.preset.mean, job.preset.std))
        first = next(iter(results.values()))
        share = _shares(first.logits[j], job.segmentation)
        top = share.topk(min(3, len(cats)))
        preds = [(cats[c], float(v)) for v, c in zip(top.values, top.indices.tolist())]
        for m, res in results.items():
            self._maps(m, res, j, key, photo, shown, preds, share, job.truths.get(path))
        if self.figures is not None:
            view = Image.fromarray(shown)
            view.thumbnail((224, 224))
            self.figures.inputs.append(view)
        self.records.image(path, key, job.truths.get(path), preds)
        tqdm.tqdm.write(self._line(path, preds, share), file=sys.stdout)

    def _line(self, path: str, preds: Sequence[Tuple[str, float]], share: torch.Tensor) -> str:
        job, cats = self.job, self.categories
        if not job.segmentation:
            return f"{path}: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in preds)
        c = job.target_class
        if float(share[c]) == 0.0:
            _note(f"camkit: note: {cats[c]} is predicted at no pixel of {path}; its maps are empty")  # type: ignore[index]
        return (f"{path}: {cats[c]} at {100 * float(share[c]):.1f}% of the pixels; "  # type: ignore[index]
                "most pixels: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in preds))

    def _maps(self, m: str, res: Any, j: int, key: str, photo: Image.Image, shown: np.ndarray,
              preds: Sequence[Tuple[str, float]], share: torch.Tensor, truth: Optional[str]) -> None:
        """Method ``m``'s K maps of image ``j``: overlays (and .npy maps) written, tiles collected."""
        job, a, cats = self.job, self.job.args, self.categories
        K = int(res.maps.shape[1])
        one_class = job.target_class is not None
        classes = [job.target_class] * K if one_class else res.targets[j].tolist()
        back = to_original(res.maps[j].detach(), photo, job.preset.transform, fill=float("nan"))
        tiles, titles, captions = [], [], []
        for k in range(K):
            name = cats[classes[k]]  # type: ignore[index]
            lo, hi = _display_range(res.maps[j, k], job.raw)
            kw = {**self.look, "vmin": lo, "vmax": hi}
            img = ov.overlay(photo, back[k], **kw)
            if a.colorbar:
                img = ov.with_colorbar(img, a.cmap, lo, hi)
            paths = job.outputs.reserve(file_base(key, m, k, K, name, one_class),
                                        *((".png", ".npy") if a.save_maps else (".png",)))
            job.outputs.write(paths[0], img.save)
            self.records.add_file(m, name, paths[0])
            if a.save_maps:
                arr = back[k].nan_to_num(0.0).cpu().numpy().astype(np.float32)
                job.outputs.write(paths[1], lambda p, a=arr: np.save(p, a))
            if self.figures is not None:
                tile = ov.overlay(shown, res.maps[j, k].detach(), **kw)
                tile.thumbnail((224, 224))
                tiles.append(tile)
                titles.append(tile_caption(preds, truth, name, float(share[classes[k]]), k, K, job.segmentation,
                                           one_class))
                captions.append(f"{m}: {name}")
        if self.figures is not None:
            self.figures.add_row(m, tiles, titles, captions)
