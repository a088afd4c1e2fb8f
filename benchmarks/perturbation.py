"""Score-CAM, SS-CAM, IS-CAM and Ablation-CAM: camkit against the floor (the least work that gives the
same maps, written out here in plain torch) and against pytorch-grad-cam and torchcam (time, peak memory,
where the time goes, agreement).

The floor per method (``score_floor``, ``ablation_floor``; tests/test_perturbation_floor.py checks that
their maps equal camkit's in float64, so a ratio to the floor compares the same work):

* Score-CAM: one forward for the layer's output A; per image, the distinct min-max-normalized channel
  maps (equal ones share their forward: all-zero channels, say), upsampled and normalized in chunks of 16,
  the input times each mask, channels-last (camkit's layout; ``--layouts`` measures where another
  would pay), through a BatchNorm-folded copy of the model
  (``torch.fx.experimental.optimization.fuse``), the targets' scores read off; softmax over the channels,
  the weighted sum, ReLU, normalized and upsampled;
* SS-CAM: the same with ``--samples`` noisy copies of each mask (one generator per image and channel,
  seeded as camkit documents, so the draws are the same) and no de-duplication; IS-CAM: ``--samples``
  scaled copies of each distinct mask (``c_i = sum_{j <= i} j / N``);
* Ablation-CAM: one forward for A and the targets' values; per image, only the layers above the hooked
  one (``ABOVE``, written out per architecture) on the copies of A with one live channel zeroed, 64 at a
  time in one buffer; ``w = (y - S) / y``, the weighted sum, normalized and upsampled.

Each scenario (model, method, K targets per image) runs its runners interleaved
in rounds (``benchmarks.harness.interleave``): the floor, camkit, then the peers that have
the method. Speed is the median over rounds of same-round ratios, to the floor and
to camkit. Every library runner is the library's documented usage, K targets being
K calls where the library takes one target per image:

* camkit: ``with camkit.ScoreCAM(model, layers=[layer]) as cam: cam(x, targets=t).maps``
  (``SSCAM``, ``ISCAM`` with ``num_samples=--samples``, ``AblationCAM`` alike; all K targets in one call);
* pytorch-grad-cam: ``with ScoreCAM(model=model, target_layers=[layer]) as cam:
  cam(input_tensor=x, targets=[ClassifierOutputTarget(c) ...])`` per target
  (``AblationCAM`` alike; their default batch sizes, 16 and 32; it has no SS-CAM or IS-CAM);
* torchcam: ``with ScoreCAM(model, layer) as ex: model(x); ex(class_idx=[...])``
  per target (``SSCAM``, ``ISCAM`` alike with ``num_samples``; its default batch size, 32;
  it has no Ablation-CAM). torchcam's SS-CAM draws its noise from the global RNG per chunk:
  its maps differ from camkit's by design.

Where the time goes: after the timed rounds, one more call of camkit and of the floor
with timers around their parts (``camkit_profile`` wraps camkit's functions for that call:
the unperturbed forward, BatchNorm folding, mask upsampling and normalization, noise,
the perturbed forwards, softmax and the weighted sum, the final normalization; "the rest"
is what no timer covers).

Peak memory: the peak resident size during each call of the first timed round
above the resident size before it. The process runs with
``MALLOC_MMAP_THRESHOLD_=65536`` (set by re-executing itself), so that glibc
returns every freed block of 64 KiB or more to the system and one call's peak
is not hidden by memory an earlier call left in the heap.

Agreement (from the timed calls' outputs): the floor's maps against camkit's; camkit's
min-max-normalized layer maps against torchcam's (layer resolution), camkit's maps against
pytorch-grad-cam's (input resolution: it resizes with cv2 and rescales).

Run (peers: ``pip install -e .[bench]``)::

    python -m benchmarks.perturbation --arch resnet18 --k 1 3 --rounds 3 --threads 2 --layouts 64 96 128 160 224
    python -m benchmarks.perturbation --arch resnet50 --k 1 --rounds 1 --method Score-CAM Ablation-CAM
    python -m benchmarks.perturbation --arch tiny --size 32 --rounds 1 --out /tmp/p.md   # seconds: a smoke run
"""
from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse

from benchmarks.harness import (
    RssTimer,
    Runner,
    WallTimer,
    configure,
    interleave,
    markdown_table,
    rerun_with_low_mmap_threshold,
    run_provenance,
    same_round_ratio,
    write_results,
)
from benchmarks.peers import tiny_net, versions

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "perturbation"
LAYER = {"resnet18": "layer4", "resnet50": "layer4", "tiny": "layer3"}


def make_model(arch: str, batch: int, size: int, k: int, seed: int = 0) -> Tuple[nn.Module, Tensor, Tensor]:
    """Random weights (seed), eval mode; a standard-normal input (seed + 1); its top-k classes (B, k)."""
    torch.manual_seed(seed)
    if arch == "tiny":
        model = tiny_net()
    else:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
    model = model.eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        t = model(x).topk(k, dim=1).indices
    return model, x, t


# --------------------------------------------------------------------------- runners


METHODS = ["Score-CAM", "SS-CAM", "IS-CAM", "Ablation-CAM"]


def sample_options(method: str, samples: int) -> Dict[str, int]:
    """``num_samples`` for SS-CAM and IS-CAM (the benchmark's ``--samples``), nothing for the others."""
    return {"num_samples": samples} if method in ("SS-CAM", "IS-CAM") else {}


def camkit_runner(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor, samples: int = 2) -> Runner:
    import camkit.methods as cm

    cls = {"Score-CAM": cm.ScoreCAM, "SS-CAM": cm.SSCAM, "IS-CAM": cm.ISCAM, "Ablation-CAM": cm.AblationCAM}[method]
    opts = sample_options(method, samples)

    def call() -> Dict[str, Tensor]:
        with cls(model, layers=[layer], **opts) as cam:
            res = cam(x, targets=t)
            return {"maps": res.maps, "layer": res.layer_maps[layer]}

    shown = "".join(f", {k}={v}" for k, v in opts.items())
    return Runner(f"camkit {method}", call, note=f"camkit.{cls.__name__}(model, layers=[layer]{shown})(x, targets=t)"
                                                 ".maps: all K targets in one call")


def floor_runner(method: str, arch: str, model: nn.Module, layer: str, x: Tensor, t: Tensor,
                 samples: int = 2, clock: Optional[Callable[[str], Any]] = None) -> Runner:
    """The method's floor (``score_floor`` / ``ablation_floor``) with camkit's default batch sizes and options."""
    clock = clock or _no_clock
    if method == "Ablation-CAM":
        def call() -> Dict[str, Tensor]:
            return {"maps": ablation_floor(model, layer, ABOVE[arch], x, t, batch_size=64, clock=clock)}
        note = "ablation_floor: one forward, then only the layers above on the ablated copies, 64 a batch"
    else:
        n = samples if method != "Score-CAM" else 1

        def call() -> Dict[str, Tensor]:
            return {"maps": score_floor(model, layer, x, t, method, batch_size=16, samples=n, clock=clock)}
        note = (f"score_floor({method!r}): one forward, the distinct masks' forwards ({n} sample(s) each), 16 a batch, "
                "channels-last on a BatchNorm-folded copy")
    return Runner(f"floor {method}", call, note=note)


def keep_raw(cam: Any, into: List[Tensor]) -> None:
    """Record what the instance's get_cam_image returns (its map at layer resolution, before the ReLU)."""
    inner = cam.get_cam_image

    def get_cam_image(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        into.append(torch.as_tensor(out))
        return out

    cam.get_cam_image = get_cam_image


def pgc_runner(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor) -> Runner:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"Score-CAM": pgc.ScoreCAM, "Ablation-CAM": pgc.AblationCAM}[method]
    mod = dict(model.named_modules())[layer]

    def call() -> Dict[str, Tensor]:
        maps, raw = [], []
        for k in range(t.shape[1]):
            with cls(model=model, target_layers=[mod]) as cam:
                keep_raw(cam, raw)
                maps.append(torch.as_tensor(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c))
                                                                         for c in t[:, k]])))
        return {"maps": torch.stack(maps, 1), "layer": torch.stack(raw, 1).clamp(min=0)}

    return Runner(f"pytorch-grad-cam {method}", call,
                  note=f"with {cls.__name__}(model, target_layers=[layer]) as cam: cam(x, targets) per target")


def torchcam_runner(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor, samples: int = 2) -> Runner:
    import torchcam.methods as tcm

    cls = {"Score-CAM": tcm.ScoreCAM, "SS-CAM": tcm.SSCAM, "IS-CAM": tcm.ISCAM}[method]
    opts = sample_options(method, samples)

    def call() -> Dict[str, Tensor]:
        with cls(model, layer, input_shape=tuple(x.shape[1:]), **opts) as ex:
            with torch.inference_mode():
                model(x)
            maps = [ex(class_idx=[int(c) for c in t[:, k]])[0] for k in range(t.shape[1])]
        return {"layer": torch.stack(maps, 1)}

    shown = "".join(f", {k}={v}" for k, v in opts.items())
    return Runner(f"torchcam {method}", call, note=f"with {cls.__name__}(model, layer{shown}) as ex: model(x) in "
                                                   "inference_mode; ex(class_idx=[...]) per target")


def runners_for(method: str, arch: str, model: nn.Module, layer: str, x: Tensor, t: Tensor, peers: bool,
                samples: int = 2) -> List[Runner]:
    """The floor, camkit, then the peers that have the method (pytorch-grad-cam: Score-CAM and Ablation-CAM;
    torchcam: Score-CAM, SS-CAM and IS-CAM)."""
    out = [floor_runner(method, arch, model, layer, x, t, samples), camkit_runner(method, model, layer, x, t, samples)]
    if peers:
        if method in ("Score-CAM", "Ablation-CAM"):
            out.append(pgc_runner(method, model, layer, x, t))
        if method != "Ablation-CAM":
            out.append(torchcam_runner(method, model, layer, x, t, samples))
    return out


# --------------------------------------------------------------------------- the floor


class Clock:
    """Seconds spent in each named part of a call: ``with clock("forward"): ...`` (accumulates)."""

    def __init__(self) -> None:
        self.parts: Dict[str, float] = {}

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - t0


def _no_clock(part: str) -> Any:
    return nullcontext()


#: The model above the hooked layer (``LAYER``), written out: all the floor's Ablation-CAM runs on the copies.
ABOVE: Dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "resnet18": lambda m, a: m.fc(torch.flatten(m.avgpool(a), 1)),
    "resnet50": lambda m, a: m.fc(torch.flatten(m.avgpool(a), 1)),
    "tiny": lambda m, a: m.fc(m.flatten(m.pool(a))),
}


def plain_minmax(m: Tensor) -> Tensor:
    """``(m - min) / (max - min)`` per ``(h, w)`` map, 0 for a constant map."""
    lo, hi = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    return torch.where(hi > lo, (m - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)), torch.zeros_like(m))


def layer_and_logits(model: nn.Module, layer: str, x: Tensor) -> Tuple[Tensor, Tensor]:
    """One forward: the layer's output ``A (B, C, h, w)`` (a forward hook) and the logits ``(B, classes)``."""
    got: List[Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return got[0], logits


def final_maps(w: Tensor, A: Tensor, size: Sequence[int]) -> Tensor:
    """``ReLU(sum_c w_c A_c)`` ``(B, K, h, w)``, min-max normalized, upsampled to ``size`` (bilinear)."""
    cam = torch.einsum("bkc,bchw->bkhw", w, A).clamp(min=0)
    return F.interpolate(plain_minmax(cam), size=tuple(size), mode="bilinear", align_corners=False)


def score_samples(method: str, masks: Tensor, b: int, first: int, samples: int, std: float,
                  seed: int) -> Iterator[Tensor]:
    """What the input is multiplied by for masks ``(n, H, W)`` (channels ``first..first+n`` of image ``b``):
    the masks (Score-CAM), ``samples`` noisy copies (SS-CAM: one generator per image and channel, seeded
    as camkit documents), or ``samples`` scaled copies (IS-CAM: ``c_i = sum_{j <= i} j / N``)."""
    if method == "Score-CAM":
        yield masks
        return
    if method == "IS-CAM":
        for c in itertools.accumulate(i / samples for i in range(1, samples + 1)):
            yield masks * c
        return
    gens = [torch.Generator().manual_seed((seed * 1_000_003 + b) * 65_537 + first + i) for i in range(len(masks))]
    for _ in range(samples):
        yield masks + torch.stack([torch.randn(masks.shape[1:], generator=g) for g in gens]).mul_(std)


@torch.no_grad()
def score_floor(model: nn.Module, layer: str, x: Tensor, t: Tensor, method: str = "Score-CAM", batch_size: int = 16,
                samples: int = 1, std: float = 2.0, seed: int = 0, clock: Callable[[str], Any] = _no_clock) -> Tensor:
    """The least work for Score-CAM / SS-CAM / IS-CAM's maps ``(B, K, H, W)``, written out.

    One forward for A; per image, the distinct min-max-normalized channel maps (equal ones, e.g. all the
    constant channels, share their forwards; SS-CAM draws per channel and has none), upsampled and
    normalized in chunks of ``batch_size``; the masked inputs run channels-last on a BatchNorm-folded copy
    of the model; the targets' scores (averaged over SS-CAM's / IS-CAM's samples), softmax over the
    channels, the weighted sum, normalized and upsampled.
    """
    with clock("forward (one, for A)"):
        A, _ = layer_and_logits(model, layer, x)
    with clock("folding BatchNorm (torch.fx)"):
        fast = fuse(model)
    S = []
    for b in range(x.shape[0]):
        with clock("masks: normalize, dedupe, upsample, normalize"):
            low = plain_minmax(A[b])
            if method == "SS-CAM":
                maps, inverse = low, None
            else:
                maps, inverse = torch.unique(low.flatten(1), dim=0, return_inverse=True)
                maps = maps.view(-1, *A.shape[2:])
        vals = []
        for first in range(0, len(maps), batch_size):
            with clock("masks: normalize, dedupe, upsample, normalize"):
                up = F.interpolate(maps[first:first + batch_size, None], size=tuple(x.shape[2:]), mode="bilinear",
                                   align_corners=False)[:, 0]
                masks = plain_minmax(up)
            draws, outs = score_samples(method, masks, b, first, samples, std, seed), []
            while True:
                with clock("noise / scaled masks"):
                    m = next(draws, None)
                if m is None:
                    break
                with clock("masked inputs"):
                    inp = (x[b] * m[:, None]).contiguous(memory_format=torch.channels_last)
                with clock("forwards (masked inputs)"):
                    outs.append(fast(inp)[:, t[b]])
            vals.append(sum(outs[1:], outs[0]) / len(outs))
        s = torch.cat(vals)
        S.append(s[inverse] if inverse is not None else s)
    with clock("softmax and weighted sum, normalize, upsample"):
        return final_maps(torch.stack(S).transpose(1, 2).softmax(dim=-1), A, x.shape[2:])


@torch.no_grad()
def ablation_floor(model: nn.Module, layer: str, above: Callable[[nn.Module, Tensor], Tensor], x: Tensor, t: Tensor,
                   batch_size: int = 64, clock: Callable[[str], Any] = _no_clock) -> Tensor:
    """The least work for Ablation-CAM's maps ``(B, K, H, W)``, written out: one forward for A and the
    targets' values y; per image, only ``above`` (the model from the layer on) on the copies of A with one
    channel zeroed, ``batch_size`` at a time in one buffer per image (an all-zero channel changes nothing:
    no copy);
    ``w = (y - S) / y``, the weighted sum, normalized and upsampled."""
    with clock("forward (one, for A)"):
        A, logits = layer_and_logits(model, layer, x)
        y = logits.gather(1, t)
    B, C = A.shape[:2]
    S = y[:, :, None].expand(B, t.shape[1], C).clone()
    alive = A.flatten(2).ne(0).any(dim=2)
    for b in range(B):
        buffer = None
        for chunk in alive[b].nonzero().flatten().split(batch_size):
            with clock("ablated copies"):  # one buffer per image (the first chunk is the largest)
                if buffer is None:
                    copies = buffer = A[b].expand(len(chunk), *A.shape[1:]).clone()
                else:
                    copies = buffer[:len(chunk)].copy_(A[b].expand(len(chunk), *A.shape[1:]))
                copies[torch.arange(len(chunk)), chunk] = 0
            with clock("forwards (layers above, on the copies)"):
                S[b, :, chunk] = above(model, copies)[:, t[b]].T
    with clock("weights and weighted sum, normalize, upsample"):
        yy = y[..., None]
        return final_maps((yy - S) / torch.where(yy != 0, yy, torch.ones_like(yy)), A, x.shape[2:])


# --------------------------------------------------------------------------- timing with memory


MemoryTimer = RssTimer  # the harness's: peak resident size per call


def _minmax(m: Tensor) -> Tensor:
    lo = m.amin(dim=(-2, -1), keepdim=True)
    rng = m.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(rng > 0, (m - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(m))


def agreement(outs: Dict[str, Dict[str, Tensor]], method: str) -> List[List[object]]:
    """camkit's maps against the floor's and each peer's: [runner, resolution, max |difference|] (maps in [0, 1])."""
    ours = outs[f"camkit {method}"]
    rows: List[List[object]] = []
    for name, o in outs.items():
        if name.startswith("camkit"):
            continue
        if "layer" not in o:  # the floor: its maps only
            rows.append([name, "input", float((ours["maps"].float() - o["maps"].float()).abs().max())])
            continue
        d = (_minmax(ours["layer"].float()) - _minmax(o["layer"].float()).reshape(ours["layer"].shape)).abs().max()
        rows.append([name, "layer", float(d)])
        if "maps" in o:
            d = (ours["maps"].float() - o["maps"].float().reshape(ours["maps"].shape)).abs().max()
            rows.append([name, "input", float(d)])
    return rows


def run_scenario(arch: str, method: str, k: int, args: argparse.Namespace) -> Dict[str, Any]:
    model, x, t = make_model(arch, args.batch, args.size, k)
    layer = LAYER[arch]
    runners = runners_for(method, arch, model, layer, x, t, args.peers, args.samples)
    outs: Dict[str, Dict[str, Tensor]] = {}

    def keep(r: Runner) -> Runner:
        def call() -> object:
            out = r.call()
            outs.setdefault(r.name, out)
            return None
        return Runner(r.name, call, r.setup, r.teardown, r.note)

    # untimed warm-up on a small input: code paths and kernels, not the minutes a full call costs
    if args.warm_size:
        _, xs, ts = make_model(arch, 1, args.warm_size, 1)
        for r in runners_for(method, arch, model, layer, xs, ts, args.peers, args.samples):
            r.call()
    timer = MemoryTimer()
    kept = [keep(r) for r in runners]
    times = interleave(kept, args.rounds, 0, timer=timer)
    memory = {r.name: timer.peaks[i] for i, r in enumerate(kept)}  # the first timed round
    base, floor = f"camkit {method}", f"floor {method}"
    ratios = {n: same_round_ratio(times, n, base) for n in times if n != base}
    to_floor = {n: same_round_ratio(times, n, floor) for n in times}
    profile = {"camkit": camkit_profile(method, model, layer, x, t, args.samples),
               "floor": floor_profile(method, arch, model, layer, x, t, args.samples)}
    return {"arch": arch, "method": method, "k": k, "layer": layer, "times_s": times, "peak_mib": memory,
            "ratios": ratios, "to_floor": to_floor, "profile": profile, "agreement": agreement(outs, method),
            "notes": {r.name: r.note for r in runners}}


# --------------------------------------------------------------------------- where the time goes


@contextmanager
def timed_parts(clock: Clock, parts: Sequence[Tuple[Any, str, str]]) -> Iterator[None]:
    """Each ``(owner, attribute, part)``: the owner's function (a module's function, a class's method or
    staticmethod) replaced during the block by one that adds its time to ``clock``'s ``part``; a
    generator function's time is that of producing its items."""
    saved = []
    for owner, attr, part in parts:
        raw = owner.__dict__[attr]
        fn = raw.__func__ if isinstance(raw, staticmethod) else raw

        def timed(*a: Any, _fn: Callable = fn, _part: str = part, **kw: Any) -> Any:
            with clock(_part):
                out = _fn(*a, **kw)
            if not isinstance(out, Iterator):
                return out
            return _timed_items(out, clock, _part)

        saved.append((owner, attr, raw))
        setattr(owner, attr, staticmethod(timed) if isinstance(raw, staticmethod) else timed)
    try:
        yield
    finally:
        for owner, attr, raw in reversed(saved):
            setattr(owner, attr, raw)


def _timed_items(items: Iterator[Any], clock: Clock, part: str) -> Iterator[Any]:
    while True:
        with clock(part):
            item = next(items, StopIteration)
        if item is StopIteration:
            return
        yield item


def _shares(total: float, parts: Dict[str, float]) -> Dict[str, float]:
    """``parts`` plus ``"the rest"`` (total - their sum) and ``"total"``, in seconds."""
    out = dict(parts)
    out["the rest"] = total - sum(parts.values())
    out["total"] = total
    return out


@contextmanager
def timed_forwards(clock: Clock, on: bool = True) -> Iterator[None]:
    """During the block, the function ScoreCAM's ``_forward_fn`` returns (the perturbed forwards) adds its
    time to ``clock``'s "forwards (masked inputs)"."""
    import camkit.methods.perturbation as cp

    make = cp.ScoreCAM.__dict__["_forward_fn"]

    def forward_fn(self: Any) -> Callable[[Tensor], object]:
        run = make(self)

        def timed_run(inp: Tensor) -> object:
            with clock("forwards (masked inputs)"):
                return run(inp)
        return timed_run

    if on:
        cp.ScoreCAM._forward_fn = forward_fn  # type: ignore[method-assign]
    try:
        yield
    finally:
        cp.ScoreCAM._forward_fn = make  # type: ignore[method-assign]


def camkit_profile(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor, samples: int) -> Dict[str, float]:
    """Seconds per part of one camkit call (timers around its functions, for this call only): the
    unperturbed forward, BatchNorm folding, the masks (upsampling and normalization), the noise / scaled
    masks, the perturbed forwards, softmax (or Ablation-CAM's weights) and the weighted sum, the final
    normalization and upsampling; "the rest" is what no timer covers (low-resolution normalization and
    de-duplication, masked inputs or ablated copies, checks, result)."""
    import camkit.methods.perturbation as cp
    from camkit.methods.base import _Method

    clock = Clock()
    parts: List[Tuple[Any, str, str]] = [(_Method, "_forward", "forward (one, for A)"),
                                         (_Method, "_combine", "normalize and upsample the maps")]
    if method == "Ablation-CAM":
        parts += [(cp.AblationCAM, "_run_ablated", "forwards (layers above, on the copies)"),
                  (cp, "ablationcam_formula", "weights and weighted sum")]
    else:
        parts += [(cp, "folded_copy", "folding BatchNorm (torch.fx)"), (cp, "score_masks", "masks: upsample, normalize"),
                  (cp, "scorecam_formula", "softmax and weighted sum")]
        parts += [(cp.SSCAM if method == "SS-CAM" else cp.ISCAM, "_samples", "noise / scaled masks")] \
            if method != "Score-CAM" else []
    call = camkit_runner(method, model, layer, x, t, samples).call
    with timed_parts(clock, parts), timed_forwards(clock, method != "Ablation-CAM"):
        t0 = time.perf_counter()
        call()
        total = time.perf_counter() - t0
    return _shares(total, clock.parts)


def floor_profile(method: str, arch: str, model: nn.Module, layer: str, x: Tensor, t: Tensor,
                  samples: int) -> Dict[str, float]:
    """Seconds per part of one floor call (the floor's own timers)."""
    clock = Clock()
    call = floor_runner(method, arch, model, layer, x, t, samples, clock=clock).call
    t0 = time.perf_counter()
    call()
    return _shares(time.perf_counter() - t0, clock.parts)


# --------------------------------------------------------------------------- memory layout of the masked forwards


def layouts(arch: str, sizes: Sequence[int], rounds: int, batch: int = 16) -> List[List[object]]:
    """Per input side: ms per image of the BatchNorm-folded model's forward on ``batch`` images, NCHW and
    channels-last, interleaved in ``rounds`` rounds (after one untimed), and the same-round median ratio:
    whether Score-CAM's masked forwards (channels-last in camkit and the floor) would pay in NCHW."""
    model = fuse(make_model(arch, 1, 32, 1)[0])
    rows: List[List[object]] = []
    for size in sizes:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
        xl = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            runners = [Runner("NCHW", lambda x=x: model(x)), Runner("channels-last", lambda xl=xl: model(xl))]
            times = interleave(runners, rounds, 1, timer=WallTimer("cpu"))
        per = {n: 1000 * statistics.median(ts) / batch for n, ts in times.items()}
        rows.append([size, per["NCHW"], per["channels-last"], same_round_ratio(times, "channels-last", "NCHW")])
        print(f"layout {size}: {rows[-1]}", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def profile_table(results: List[Dict[str, Any]]) -> str:
    rows = []
    for r in results:
        for who, parts in r["profile"].items():
            total = parts["total"]
            for part, sec in parts.items():
                if part != "total":
                    rows.append([r["arch"], r["method"], r["k"], who, part, sec, f"{100 * sec / total:.1f}%"])
            rows.append([r["arch"], r["method"], r["k"], who, "**total**", total, "100%"])
    return markdown_table(["model", "method", "K", "runner", "part", "s", "share"], rows)


def layout_section(rows: List[List[object]], args: argparse.Namespace) -> List[str]:
    if not rows:
        return []
    return ["## Memory layout of the masked forwards", "",
            f"The BatchNorm-folded {args.arch[0]} on 16 images, ms per image, {args.rounds} interleaved round(s) after "
            "one untimed; camkit (and the floor) run Score-CAM's masked forwards channels-last. Outside this "
            "run (1 thread, 16 images, CPU time, a loaded machine): channels-last / NCHW 1.18 / 0.84 / 0.69 for "
            "ResNet50 at 64 / 112 / 224, 0.68 / 0.63 / 0.49 for MobileNetV3-small, 0.89 / 0.73 for VGG11 at 64 / "
            "112: below about 100 px ResNets alone run faster in NCHW.", "",
            markdown_table(["input side", "NCHW ms/image", "channels-last ms/image",
                            "channels-last / NCHW (same-round median)"], rows), ""]


def report(results: List[Dict[str, Any]], args: argparse.Namespace, policy: Dict[str, Any],
           layout_rows: Sequence[List[object]] = ()) -> Tuple[str, Dict]:
    rows, agree = [], []
    for r in results:
        base = f"camkit {r['method']}"
        for name, ts in r["times_s"].items():
            rows.append([r["arch"], r["method"], r["k"], name, statistics.median(ts), min(ts), len(ts),
                         f"{r['to_floor'][name]:.3f}x", "1" if name == base else f"{r['ratios'][name]:.2f}x",
                         round(r["peak_mib"][name])])
        agree += [[r["arch"], r["method"], r["k"], *a] for a in r["agreement"]]
    header = ["model", "method", "K", "runner", "median s", "min s", "rounds", "/ floor (same-round median)",
              "/ camkit (same-round median)", "peak MiB"]
    notes = {n: note for r in results for n, note in r["notes"].items()}
    text = "\n".join([
        f"Models: torchvision random weights (seed 0), eval mode, B={args.batch}, input 3x{args.size}x{args.size} "
        f"(seed 1), targets: each image's top-K classes, hooked layer {', '.join(sorted(set(LAYER[a] for a in args.arch)))}; "
        f"SS-CAM and IS-CAM with num_samples={args.samples}. "
        f"Runners interleaved in each round; {args.rounds} timed round(s) after an untimed warm-up on a "
        f"{args.warm_size}x{args.warm_size} input. Device policy: {policy}. Peak MiB: first timed round, see "
        "benchmarks/perturbation.py (MALLOC_MMAP_THRESHOLD_=65536).",
        "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".", "",
        "## Times, ratios, peak memory", "", markdown_table(header, rows), "",
        *layout_section(list(layout_rows), args),
        "## Where the time goes", "",
        "One more call of camkit and of the floor after the timed rounds, with timers around their parts "
        "(camkit: its functions wrapped for that call, see camkit_profile; the floor: its own timers); "
        "seconds and share of the call.", "", profile_table(results), "",
        "## Agreement", "",
        "The floor's maps against camkit's (input resolution; tests/test_perturbation_floor.py checks them equal "
        "in float64). Max |camkit - peer| of maps in [0, 1] from the timed calls: at layer resolution (both min-max normalized; "
        "pytorch-grad-cam's map as its get_cam_image returned it, after the ReLU) and, for pytorch-grad-cam, at input "
        "resolution (its cv2 resize and rescaling against camkit's bilinear upsampling). pytorch-grad-cam's Score-CAM "
        "upsamples its masks with align_corners=True (camkit and torchcam: False); torchcam normalizes them before "
        "upsampling, camkit after (the paper); see tests/test_peer_methods.py for the exact comparisons.", "",
        markdown_table(["model", "method", "K", "runner", "resolution", "max abs diff"], agree), "",
        "## How each runner is called", "", *[f"- {n}: {note}" for n, note in notes.items()], ""])
    data = {"settings": {"archs": args.arch, "batch": args.batch, "size": args.size, "k": args.k,
                         "samples": args.samples,
                         "rounds": args.rounds, "warm_size": args.warm_size, "policy": policy},
            "versions": versions(), "results": results, "layouts": list(layout_rows)}
    return text, data


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--arch", nargs="+", default=["resnet18"], choices=sorted(LAYER))
    p.add_argument("--method", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--samples", type=int, default=2,
                   help="num_samples of SS-CAM and IS-CAM (camkit, floor, torchcam; their defaults: 35 and 10)")
    p.add_argument("--k", nargs="+", type=int, default=[1], help="targets per image (one scenario each)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds")
    p.add_argument("--warm-size", type=int, default=64, help="side of the untimed warm-up input (0: none)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine OpenMP barriers make 2 erratic)")
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--layouts", nargs="*", type=int, default=[],
                   help="input sides at which to time the folded model's forwards NCHW against channels-last")
    p.add_argument("--out", default=None, help="Markdown file (default: results/perturbation/cpu_<archs>.md)")
    args = p.parse_args(argv)
    rerun_with_low_mmap_threshold("benchmarks.perturbation", argv)
    policy = configure("cpu", args.threads)
    prov = run_provenance(argv, "benchmarks.perturbation", "cpu")
    layout_rows = layouts(args.arch[0], args.layouts, args.rounds) if args.layouts else []
    results = []
    for arch in args.arch:
        for k in args.k:
            for method in args.method:
                print(f"{arch} {method} K={k}: {args.rounds} rounds", flush=True)
                results.append(run_scenario(arch, method, k, args))
                print({n: [round(s, 2) for s in ts] for n, ts in results[-1]["times_s"].items()},
                      results[-1]["peak_mib"], results[-1]["agreement"], flush=True)
                gc.collect()
    text, data = report(results, args, policy, layout_rows)
    out = args.out or str(RESULTS_DIR / f"cpu_{'_'.join(args.arch)}.md")
    md, js = write_results(out, prov, "Score-CAM, SS-CAM, IS-CAM and Ablation-CAM: camkit against the floor, "
                           "pytorch-grad-cam, torchcam", text, data)
    print(text)
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
