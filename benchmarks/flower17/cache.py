"""Feature cache: the frozen backbone runs once per (backbone, image set, augmentation seed).

File: ``<run_dir>/features_<split>_seed<seed>[_quick<n>].pt`` holding, for
``train`` (each training image then its 9 augmented copies), ``val`` and ``test``
(un-augmented): features ``(N, C, 7, 7)`` (float16 by default), labels and the
1-based image index of each row, plus ``meta``.
"""
from __future__ import annotations

import pickle
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .data import NUM_COPIES, Sample, augmented_copies, load_image, load_split, subset
from .models import backbone_stats, build_backbone, normalize_transform


def cache_path(run_dir: Path, split_name: str, seed: int, quick: Optional[int] = None) -> Path:
    q = f"_quick{quick}" if quick else ""
    return Path(run_dir) / f"features_{split_name}_seed{seed}{q}.pt"


def image_index(path: str) -> int:
    return int(Path(path).stem.split("_")[-1])


def fast_extractor(net: nn.Module, batch_size: int, channels_in: int = 3, size: int = 256) -> nn.Module:
    """The backbone traced and frozen for inference (conv+BN folding, oneDNN weight
    packing): about twice as fast on CPU, same features to ~1e-5. Falls back to the
    eager module if tracing fails."""
    # The final AdaptiveAvgPool2d(7) (8 -> 7) stays eager: oneDNN's frozen pooling
    # only supports output sizes that divide the input.
    body, tail = (net[:-1], net[-1]) if isinstance(net, nn.Sequential) else (net, nn.Identity())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                ex = torch.zeros(batch_size, channels_in, size, size)
                fast = torch.jit.optimize_for_inference(torch.jit.trace(body.eval(), ex))
                tail(fast(ex))
        return nn.Sequential(fast, tail)
    except Exception as e:  # pragma: no cover - depends on the torch build
        warnings.warn(f"tracing the backbone failed ({e}); using the eager module", stacklevel=2)
        return net


class _Batcher:
    """Collects normalized images, runs the backbone on full batches, writes rows."""

    def __init__(self, net, out: torch.Tensor, batch_size: int, pbar):
        self.net, self.out, self.bs, self.pbar = net, out, batch_size, pbar
        self.buf: List[torch.Tensor] = []
        self.row = 0

    def add(self, x: torch.Tensor) -> None:
        self.buf.append(x)
        if len(self.buf) == self.bs:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        n = len(self.buf)
        x = torch.stack(self.buf + [torch.zeros_like(self.buf[0])] * (self.bs - n))  # fixed batch shape
        with torch.inference_mode():
            f = self.net(x)[:n]
        self.out[self.row:self.row + n] = f.to(self.out.dtype)
        self.row += n
        self.buf = []
        self.pbar.update(n)


def extract_features(net: nn.Module, norm, samples: Sequence[Sample], channels: int, augment_seed: Optional[int],
                     batch_size: int = 32, dtype=torch.float16, desc: str = "features") -> Dict[str, torch.Tensor]:
    """Features of ``samples`` (with ``augment_seed``: the original then 9 augmented
    copies of each image, in that order)."""
    copies = 1 + (NUM_COPIES if augment_seed is not None else 0)
    n = len(samples) * copies
    out = torch.empty(n, channels, 7, 7, dtype=dtype)
    labels = torch.empty(n, dtype=torch.long)
    index = torch.empty(n, dtype=torch.long)
    with tqdm(total=n, desc=desc, unit="img", mininterval=2.0) as pbar:
        b = _Batcher(net, out, batch_size, pbar)
        r = 0
        for p, y in samples:
            img = load_image(p)
            idx = image_index(p)
            imgs = augmented_copies(img, idx, augment_seed) if augment_seed is not None else [img]
            for im in imgs:
                b.add(norm(im))
                labels[r], index[r] = y, idx
                r += 1
        b.flush()
    return {"x": out, "y": labels, "index": index}


def prepare(backbone: str, run_dir: Path, data_root=None, seed: int = 0, quick: Optional[int] = None,
            batch_size: int = 32, dtype=torch.float16, fast: bool = True, force: bool = False) -> Path:
    """Compute (or reuse) the feature cache; returns its path."""
    split = load_split(data_root)
    path = cache_path(run_dir, split.name, seed, quick)
    if path.exists() and not force:
        meta = load_cache(path)["meta"]
        print(f"feature cache present: {path} ({meta.get('seconds', float('nan')):.1f} s to build)")
        return path
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    net, _, channels = build_backbone(backbone)
    norm = normalize_transform(*backbone_stats(backbone))
    # Tracing and freezing cost about half a minute: worth it for the 7,480 images
    # of the study, not for a --quick subset.
    fast = fast and not quick
    runner = fast_extractor(net, batch_size) if fast else net
    blob = {}
    for part in ("train", "val", "test"):
        samples = split[part] if not quick else subset(split[part], quick)
        blob[part] = extract_features(runner, norm, samples, channels, seed if part == "train" else None,
                                      batch_size, dtype, desc=f"{backbone} {part}")
    seconds = time.perf_counter() - t0
    blob["meta"] = {"backbone": backbone, "split": split.name, "split_source": split.source, "seed": seed,
                    "quick": quick, "dtype": str(dtype), "channels": channels, "seconds": seconds,
                    "fast": fast, "threads": torch.get_num_threads()}
    torch.save(blob, path)
    print(f"wrote {path} in {seconds:.1f} s")
    return path


def load_cache(path: Path) -> dict:
    """The cache written by :func:`prepare`: tensors, numbers and strings only, read with
    ``weights_only=True`` (a file holding anything else, such as pickled code, is refused)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not a feature cache written by benchmarks.flower17 (it holds objects that "
                         f"weights_only loading refuses: {e})") from None


def time_study_way(backbone: str, data_root=None, n_images: int = 48, batch_size: int = 8, seed: int = 0) -> dict:
    """Per-image cost of the study's way (images read from disk and through the
    eager backbone at batch 8 every epoch), measured on ``n_images`` augmented
    training images; the caller extrapolates to a full epoch."""
    split = load_split(data_root)
    net, _, _ = build_backbone(backbone)
    norm = normalize_transform(*backbone_stats(backbone))
    samples = subset(split["train"], 1)[: max(1, n_images // (1 + NUM_COPIES) + 1)]
    with torch.inference_mode():
        net(torch.zeros(batch_size, 3, 256, 256))  # warm-up
        t0 = time.perf_counter()
        xs, done = [], 0
        for p, _y in samples:
            for im in augmented_copies(load_image(p), image_index(p), seed):
                xs.append(norm(im))
                if len(xs) == batch_size:
                    net(torch.stack(xs))
                    done += len(xs)
                    xs = []
                if done >= n_images:
                    break
            if done >= n_images:
                break
        dt = time.perf_counter() - t0
    return {"images": done, "seconds": dt, "seconds_per_image": dt / max(done, 1), "batch_size": batch_size}
