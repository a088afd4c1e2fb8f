"""camkit against two floors and against pytorch-grad-cam, torchcam and captum: time, peak memory, agreement.

Two baselines, written here with plain torch (no camkit code):

* **naive** -- what an autograd user writes first: forward hooks keep the
  layers' outputs, one forward with grad enabled (the whole graph is built),
  ``torch.autograd.grad`` of the target logits with respect to the kept
  outputs (K retained-graph calls for K targets), the method's formula, each
  layer's maps upsampled bilinearly to the input size. No normalization, no
  fusion.
* **minimal** -- the least work that gives camkit's result: the forward runs
  without autograd until the shallowest hooked layer, whose output becomes a
  leaf that requires grad (no graph below it); outputs are kept without
  copies (right for the layers benchmarked: nothing downstream changes them
  in place); ``torch.autograd.grad`` w.r.t. the kept outputs, either K
  retained-graph calls (``loop``, each target's formula applied to its
  gradients at once) or one ``is_grads_batched`` call (``batched``), and
  the faster of the two is the floor; then the same map
  work as camkit: the formula in float32, each map min-max normalized, one
  bilinear upsample per layer for all K maps, pixelwise max over layers,
  clamped to [0, 1].

Each scenario (model, method, layers, K) times, interleaved in one process
(``benchmarks.harness``): a bare no-grad forward, both floors, camkit (its
default, which picks the backward by rule; with ``channels_last=True``; under
bf16 ``torch.autocast``; and for K > 1 with ``batched_backward=True`` and
``False``, against which the rule is judged) and each peer in its documented
usage (and, for K > 1, its best hand-written usage). Speed is the median over rounds of
same-round ratios (camkit / minimal, camkit / naive, peer / camkit). Peak
memory: ``torch.cuda.max_memory_allocated`` above what was allocated before
the call on a GPU; on CPU the peak resident size above the size before the
call, each runner in a fresh process after one bare forward. Agreement:
camkit's raw per-layer maps against each peer's and each floor's, and
camkit's fused maps against the minimal floor's.

Run (peers: ``pip install -e .[bench]``)::

    python -m benchmarks.peers --arch resnet50              # CPU: B=8 at 224, 1 warm-up + 5 timed rounds
    python -m benchmarks.peers --device cuda                # GPU: VGG16 B=32, ResNet50 B=64, 3 + 10 rounds
    python -m benchmarks.peers --arch tiny --no-peers --quick   # seconds: the whole pipeline on a small CNN

Results go to ``benchmarks/results/peers/<device>_<arch>.md`` and the JSON
beside it, with the command, commit, date, torch, device, cores and load.
A new scenario is a function ``Setup -> (title, [Runner, ...])`` appended
to ``SCENARIOS`` (see ``benchmarks/harness.py`` for the runner API).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.harness import (
    Runner,
    Times,
    configure,
    fastest,
    interleave,
    markdown_table,
    max_diff,
    peak_memory,
    run_provenance,
    same_round_ratio,
    tf32_off,
    timer_for,
    write_results,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "peers"
GPU_BATCH = {"vgg16": 32, "resnet50": 64, "tiny": 8}


# --------------------------------------------------------------------------- formulas and map work (plain torch)


def _cast(t: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """To ``dtype``; by default float16 / bfloat16 to float32, float32 and float64 unchanged."""
    if dtype is not None:
        return t.to(dtype)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def layercam_map(A: Tensor, G: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """LayerCAM of one layer: A (B,C,h,w), G (B,K,C,h,w) -> (B,K,h,w), ReLU(sum_c ReLU(G) A), in ``dtype``."""
    return torch.einsum("bkchw,bchw->bkhw", _cast(G, dtype).clamp(min=0), _cast(A, dtype)).clamp_(min=0)


def gradcam_map(A: Tensor, G: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Grad-CAM of one layer: A (B,C,h,w), G (B,K,C,h,w) -> (B,K,h,w), ReLU(sum_c mean_ij(G) A), in ``dtype``."""
    return torch.einsum("bkc,bchw->bkhw", _cast(G, dtype).mean(dim=(-2, -1)), _cast(A, dtype)).clamp_(min=0)


FORMULAS = {"layercam": layercam_map, "gradcam": gradcam_map}


def minmax_maps(m: Tensor) -> Tensor:
    """(..., h, w) -> each map (m - min) / (max - min); 0 for a constant map."""
    lo = m.amin(dim=(-2, -1), keepdim=True)
    rng = m.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(rng > 0, (m - lo) / rng, torch.zeros_like(m))


def fused_maps(raw: Sequence[Tensor], size: Tuple[int, int]) -> Tensor:
    """Per-layer (B,K,h_l,w_l) raw maps -> (B,K,H,W): normalize, upsample (one call per layer), max, clamp."""
    ups = [F.interpolate(minmax_maps(r), size=size, mode="bilinear", align_corners=False) for r in raw]
    fused = ups[0] if len(ups) == 1 else torch.stack(ups).amax(dim=0)
    return fused.clamp_(0.0, 1.0)


def target_grads(logits: Tensor, acts: Sequence[Tensor], targets: Tensor, mode: str = "loop") -> List[Tensor]:
    """d logits[b, targets[b, k]] / d act for each act: list of (B, K, *act.shape[1:]).

    ``loop``: K ``autograd.grad`` calls on the retained graph; ``batched``: one
    ``is_grads_batched`` call with K one-hot seeds.
    """
    B, K = targets.shape
    if mode == "batched" and K > 1:
        onehot = torch.zeros(K, *logits.shape, dtype=logits.dtype, device=logits.device)
        onehot.scatter_(2, targets.t().unsqueeze(-1), 1.0)
        gs = torch.autograd.grad(logits, list(acts), grad_outputs=onehot, is_grads_batched=True)
        return [g.transpose(0, 1) for g in gs]
    per_k: List[Tuple[Tensor, ...]] = []
    for k in range(K):
        score = logits.gather(1, targets[:, k : k + 1]).sum()
        per_k.append(torch.autograd.grad(score, list(acts), retain_graph=k < K - 1))
    return [torch.stack([gk[i] for gk in per_k], dim=1) for i in range(len(acts))]


def _pick_targets(logits: Tensor, targets: Optional[Tensor], topk: Optional[int]) -> Tensor:
    if targets is None:
        return logits.detach().topk(topk or 1, dim=1).indices
    return targets[:, None] if targets.dim() == 1 else targets


class _Floor:
    def __init__(self, model: nn.Module, layers: Sequence[str], method: str = "layercam", mode: str = "loop",
                 map_dtype: Optional[torch.dtype] = None) -> None:
        if mode not in ("loop", "batched"):
            raise ValueError(f"mode must be 'loop' or 'batched', got {mode!r}")
        modules = dict(model.named_modules())
        self.model, self.modules = model, [modules[n] for n in layers]
        self.method, self.mode, self.map_dtype = method, mode, map_dtype

    def formula(self, A: Tensor, G: Tensor) -> Tensor:
        return FORMULAS[self.method](A, G, self.map_dtype)


class NaiveFloor(_Floor):
    """The naive baseline (module docstring): grad-enabled forward, K retained-graph grad calls.

    ``__call__(x, targets=None, topk=None)`` returns (per-layer maps at input
    size (B,K,H,W), per-layer raw maps (B,K,h,w), targets (B,K)).
    """

    def __call__(self, x: Tensor, targets: Optional[Tensor] = None, topk: Optional[int] = None):
        acts: List[Optional[Tensor]] = [None] * len(self.modules)

        def keeper(i: int):
            def hook(m: nn.Module, inp: object, out: Tensor) -> None:
                acts[i] = out
            return hook

        handles = [m.register_forward_hook(keeper(i)) for i, m in enumerate(self.modules)]
        try:
            with torch.enable_grad():
                logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        targets = _pick_targets(logits, targets, topk)
        with torch.enable_grad():  # the seeds' gather joins the graph whatever the caller's mode
            grads = target_grads(logits, acts, targets, self.mode)  # type: ignore[arg-type]
        raw = [self.formula(a.detach(), g) for a, g in zip(acts, grads)]  # type: ignore[union-attr]
        size = tuple(x.shape[-2:])
        ups = [F.interpolate(r, size=size, mode="bilinear", align_corners=False) for r in raw]
        return ups, raw, targets


class MinimalFloor(_Floor):
    """The minimal baseline (module docstring): no graph below the shallowest hooked layer, camkit's map work.

    ``__call__(x, targets=None, topk=None)`` returns (fused maps (B,K,H,W) in
    [0, 1], float32 for a low-precision model; per-layer raw maps (B,K,h,w);
    targets (B,K)). Under ``torch.autocast`` the forward and backward run in
    the autocast dtype and the map work in float32 (``map_dtype=None``) or in
    ``map_dtype`` (``benchmarks/precision.py`` measures both).
    """

    def __call__(self, x: Tensor, targets: Optional[Tensor] = None, topk: Optional[int] = None):
        acts: List[Optional[Tensor]] = [None] * len(self.modules)

        def keeper(i: int):
            def hook(m: nn.Module, inp: object, out: Tensor) -> Optional[Tensor]:
                if not torch.is_grad_enabled():  # the shallowest hooked layer: the graph starts here
                    torch.set_grad_enabled(True)
                    out = out.detach().requires_grad_(True)
                    acts[i] = out
                    return out
                acts[i] = out
                return None
            return hook

        handles = [m.register_forward_hook(keeper(i)) for i, m in enumerate(self.modules)]
        try:
            with torch.no_grad():  # its exit turns grad mode back to the caller's
                logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        targets = _pick_targets(logits, targets, topk)
        if self.mode == "loop":  # each target's maps made from its gradients at once: K grads never coexist
            raw = self._per_target(logits, acts, targets)  # type: ignore[arg-type]
        else:
            with torch.enable_grad():  # the seeds' gather joins the graph whatever the caller's mode
                grads = target_grads(logits, acts, targets, self.mode)  # type: ignore[arg-type]
            with torch.autocast(x.device.type, enabled=False), torch.no_grad():
                raw = [self.formula(a.detach(), g) for a, g in zip(acts, grads)]  # type: ignore[union-attr]
        with torch.autocast(x.device.type, enabled=False), torch.no_grad():
            return fused_maps(raw, tuple(x.shape[-2:])), raw, targets

    def _per_target(self, logits: Tensor, acts: List[Tensor], targets: Tensor) -> List[Tensor]:
        """K retained-graph grad calls, the formula applied to each target's gradients right away."""
        K, per_k = targets.shape[1], []
        for k in range(K):
            with torch.enable_grad():
                score = logits.gather(1, targets[:, k : k + 1]).sum()
                gs = torch.autograd.grad(score, acts, retain_graph=k < K - 1)
            with torch.autocast(logits.device.type, enabled=False), torch.no_grad():
                per_k.append([self.formula(a.detach(), g.unsqueeze(1)) for a, g in zip(acts, gs)])
        return [torch.cat([m[i] for m in per_k], dim=1) for i in range(len(acts))]


# --------------------------------------------------------------------------- models and inputs


@dataclass
class Setup:
    """One model and input batch with the layers of its scenarios and precomputed top-1 / top-5."""

    name: str
    model: nn.Module
    x: Tensor
    layers3: List[str]  # LayerCAM's three layers
    layer1: str  # Grad-CAM's layer
    top1: Tensor  # (B,)
    top5: Tensor  # (B, 5)
    cam_layer: Optional[str] = None  # GAP + linear head: the pooled layer and the linear layer
    fc: Optional[str] = None

    @property
    def device(self) -> torch.device:
        return self.x.device


def tiny_net(num_classes: int = 10) -> nn.Module:
    """A small CNN with a GAP + linear head, for checking the pipeline in seconds."""
    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())

    return nn.Sequential(OrderedDict(
        stem=block(3, 8, 2), layer1=block(8, 16, 2), layer2=block(16, 32, 2), layer3=block(32, 32, 1),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(32, num_classes)))


def make_setup(arch: str, batch: int, size: int, device: str | torch.device = "cpu", seed: int = 0) -> Setup:
    """Random weights (seed), eval mode, a standard-normal input (seed + 1), on ``device``."""
    torch.manual_seed(seed)
    cam_layer = fc = None
    if arch in ("vgg16", "resnet50"):
        import torchvision
    if arch == "vgg16":
        model = torchvision.models.vgg16(weights=None)
        layers3, layer1 = ["features.15", "features.22", "features.29"], "features.29"
    elif arch == "resnet50":
        model = torchvision.models.resnet50(weights=None)
        layers3, layer1, cam_layer, fc = ["layer2", "layer3", "layer4"], "layer4", "layer4", "fc"
    elif arch == "tiny":
        model = tiny_net()
        layers3, layer1, cam_layer, fc = ["layer1", "layer2", "layer3"], "layer3", "layer3", "fc"
    else:
        raise ValueError(f"unknown arch {arch!r}")
    model = model.eval().to(device)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    with torch.no_grad():
        logits = model(x)
    return Setup(arch, model, x, layers3, layer1, logits.argmax(1), logits.topk(5, dim=1).indices, cam_layer, fc)


def _layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


# --------------------------------------------------------------------------- runners: floors and camkit


def bare_runner(s: Setup) -> Runner:
    def call():
        with torch.no_grad():
            return s.model(s.x)
    return Runner("bare forward (no grad)", call, note="the model alone, under no_grad")


def naive_runner(s: Setup, layers: List[str], method: str, k: int) -> Runner:
    fl = NaiveFloor(s.model, layers, method, "loop")
    return Runner("naive", lambda: fl(s.x, topk=k)[0],
                  note="grad-enabled forward + autograd.grad w.r.t. the hooked outputs (K calls) + formula + upsample")


def minimal_runner(s: Setup, layers: List[str], method: str, k: int, mode: str = "loop") -> Runner:
    fl = MinimalFloor(s.model, layers, method, mode)
    name = "minimal" if k == 1 else f"minimal ({mode})"
    how = "one batched grad call" if mode == "batched" else "K retained-graph grad calls"
    return Runner(name, lambda: fl(s.x, topk=k)[0],
                  note=f"no graph below the first hooked layer, {how}, formula, normalize, upsample, fuse")


def _autocast(device: torch.device, dtype: torch.dtype, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call():
        with torch.autocast(device.type, dtype=dtype):
            return fn()
    return call


def camkit_runner(s: Setup, method: str, layers: List[str], k: int, channels_last: bool = False,
                  batched_backward: Optional[bool] = None, autocast: Optional[torch.dtype] = None) -> Runner:
    """camkit's call with ``res.maps`` read inside the timed call (``batched_backward=None``: camkit's rule)."""
    import camkit

    cls = {"layercam": camkit.LayerCAM, "gradcam": camkit.GradCAM}[method]
    cam = cls(s.model, layers=layers, channels_last=channels_last, batched_backward=batched_backward)
    call: Callable[[], Any] = (lambda: cam(s.x).maps) if k == 1 else (lambda: cam(s.x, topk=k).maps)
    name, note = "camkit", "cam(x).maps" if k == 1 else f"cam(x, topk={k}).maps"
    if channels_last:
        name, note = name + " channels_last", note + " with channels_last=True (input channels-last; model untouched)"
    if batched_backward is not None:
        how = "one vmapped backward" if batched_backward else "K retained-graph calls"
        name, note = f"{name} batched_backward={batched_backward}", f"{note} with batched_backward={batched_backward} ({how})"
    if autocast is not None:
        tag = str(autocast).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16")
        name, note = f"{name} {tag} autocast", note + f" under torch.autocast({s.device.type!r}, dtype={autocast})"
        call = _autocast(s.device, autocast, call)
    return Runner(name, call, teardown=cam.remove, note=note)


# --------------------------------------------------------------------------- runners: peers


def _pgc_targets(t: Tensor):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(c)) for c in t]


def pgc_runners(s: Setup, method: str, layers: List[str], k: int) -> List[Runner]:
    import pytorch_grad_cam as pgc

    cls = {"layercam": pgc.LayerCAM, "gradcam": pgc.GradCAM}[method]
    mods = [_layer(s.model, n) for n in layers]
    state: Dict[str, Any] = {}

    def setup():
        state["cam"] = cls(model=s.model, target_layers=mods)

    def teardown():
        state.pop("cam").activations_and_grads.release()
        s.model.zero_grad(set_to_none=True)  # it leaves parameter .grad behind

    if k == 1:
        tg = _pgc_targets(s.top1)
        return [Runner("pytorch-grad-cam", lambda: state["cam"](input_tensor=s.x, targets=tg), setup, teardown,
                       note="cam(input_tensor=x, targets=[ClassifierOutputTarget(c) ...])")]
    tgs = [_pgc_targets(s.top5[:, j]) for j in range(k)]

    def documented():
        return [state["cam"](input_tensor=s.x, targets=tg) for tg in tgs]

    def best():
        cam = state["cam"]
        ag = cam.activations_and_grads
        out = ag(s.x)  # one forward through its hooks
        maps = []
        for j, tg in enumerate(tgs):
            s.model.zero_grad(set_to_none=True)
            ag.gradients = []
            loss = sum(t(o) for t, o in zip(tg, out))
            loss.backward(retain_graph=j < k - 1)
            maps.append(cam.aggregate_multi_layers(cam.compute_cam_per_layer(s.x, tg, False)))
        return maps

    return [
        Runner(f"pytorch-grad-cam documented ({k} calls)", documented, setup, teardown,
               note="one cam(...) call per class rank: a forward and a full backward each"),
        Runner("pytorch-grad-cam best (1 forward, K backward)", best, setup, teardown,
               note="its ActivationsAndGradients forward once, K loss.backward(retain_graph) + its per-layer maps"),
    ]


def torchcam_runners(s: Setup, method: str, layers: List[str], k: int) -> List[Runner]:
    import torchcam.methods as tcm

    cls = {"layercam": tcm.LayerCAM, "gradcam": tcm.GradCAM}[method]
    state: Dict[str, Any] = {}

    def setup():
        state["cam"] = cls(s.model, target_layer=list(layers) if len(layers) > 1 else layers[0])

    def teardown():
        state.pop("cam").remove_hooks()

    def finish(cam, cams):
        return cam.fuse_cams(cams) if len(cams) > 1 else cams[0]

    if k == 1:
        def one():
            cam = state["cam"]
            scores = s.model(s.x)
            return finish(cam, cam(class_idx=scores.argmax(1).tolist(), scores=scores))

        return [Runner("torchcam", one, setup, teardown,
                       note="scores = model(x); cam(class_idx, scores) (+ fuse_cams for several layers)")]

    def documented():
        cam, out = state["cam"], []
        for j in range(k):
            scores = s.model(s.x)
            idx = scores.topk(k, dim=1).indices[:, j].tolist()
            out.append(finish(cam, cam(class_idx=idx, scores=scores)))
        return out

    def best():
        cam, out = state["cam"], []
        scores = s.model(s.x)
        top = scores.topk(k, dim=1).indices
        for j in range(k):
            out.append(finish(cam, cam(class_idx=top[:, j].tolist(), scores=scores, retain_graph=j < k - 1)))
        return out

    return [
        Runner(f"torchcam documented ({k} forwards)", documented, setup, teardown,
               note="its per-class example repeated: forward + extractor call per class rank"),
        Runner("torchcam best (1 forward, K retain_graph calls)", best, setup, teardown,
               note="cam(class_idx, scores, retain_graph=True) K times"),
    ]


def captum_runners(s: Setup, method: str, layers: List[str], k: int) -> List[Runner]:
    from captum.attr import LayerAttribution, LayerGradCam, LayerGradientXActivation

    size = tuple(s.x.shape[-2:])
    mods = [_layer(s.model, n) for n in layers]
    if method == "gradcam":
        lgc = LayerGradCam(s.model, mods[0])

        def one(t: Tensor):
            a = lgc.attribute(s.x, target=t, relu_attributions=True)
            return LayerAttribution.interpolate(a, size, interpolate_mode="bilinear")

        note = "LayerGradCam(model, layer).attribute(x, target, relu_attributions=True) + LayerAttribution.interpolate"
    else:
        # captum has no LayerCAM; on layers whose outputs are >= 0 (ReLU outputs, as here)
        # ReLU(G) * A == ReLU(G * A), so LayerCAM = ReLU(sum_c ReLU(G x A)) from its GradientXActivation.
        lgxa = LayerGradientXActivation(s.model, mods if len(mods) > 1 else mods[0])

        def one(t: Tensor):
            attrs = lgxa.attribute(s.x, target=t)
            attrs = attrs if isinstance(attrs, list) else [attrs]
            ups = [LayerAttribution.interpolate(a.clamp(min=0).sum(1, keepdim=True), size, interpolate_mode="bilinear")
                   for a in attrs]
            return torch.stack(ups).amax(0)

        note = "LayerGradientXActivation(model, [layers]).attribute(x, target) -> ReLU, channel sum, interpolate, max"
    if k == 1:
        return [Runner("captum", lambda: one(s.top1), note=note)]
    return [Runner(f"captum documented ({k} calls)", lambda: [one(s.top5[:, j]) for j in range(k)],
                   note="one attribute call per class rank (its API runs the forward inside; no graph reuse)")]


# --------------------------------------------------------------------------- scenarios


def gradient_scenario(s: Setup, method: str, layers: List[str], k: int, peers: bool = True) -> Tuple[str, List[Runner]]:
    """bare, naive, minimal (loop and batched for K > 1), camkit rows, then the peers."""
    title = f"{s.name} {'LayerCAM' if method == 'layercam' else 'Grad-CAM'} {'/'.join(layers)} top-{k}"
    runners = [bare_runner(s), naive_runner(s, layers, method, k), minimal_runner(s, layers, method, k, "loop")]
    if k > 1:
        runners.append(minimal_runner(s, layers, method, k, "batched"))
    runners += [camkit_runner(s, method, layers, k), camkit_runner(s, method, layers, k, channels_last=True),
                camkit_runner(s, method, layers, k, autocast=torch.bfloat16)]
    if k > 1:  # both backward choices, against which camkit's rule (the default) is judged
        runners += [camkit_runner(s, method, layers, k, batched_backward=b) for b in (True, False)]
    if peers:
        runners += [*pgc_runners(s, method, layers, k), *torchcam_runners(s, method, layers, k),
                    *captum_runners(s, method, layers, k)]
    return title, runners


def cam_all_scenario(s: Setup, peers: bool = True) -> Optional[Tuple[str, List[Runner]]]:
    """CAM for every class from one no-grad forward (models with a GAP + linear head only)."""
    if s.cam_layer is None or s.fc is None:
        return None
    import camkit

    ck = camkit.CAM(s.model, layers=s.cam_layer, fc=s.fc)
    fc, hooked = _layer(s.model, s.fc), _layer(s.model, s.cam_layer)
    acts: Dict[str, Tensor] = {}
    size = tuple(s.x.shape[-2:])

    def raw_maps() -> Tensor:
        h = hooked.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
        try:
            with torch.no_grad():
                s.model(s.x)
                return torch.einsum("nc,bchw->bnhw", fc.weight, acts.pop("a"))
        finally:
            h.remove()

    def upsampled() -> Tensor:
        raw = raw_maps()
        with torch.no_grad():
            return F.interpolate(minmax_maps(raw), size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)

    n = fc.out_features
    runners = [
        bare_runner(s),
        Runner("minimal raw", raw_maps, note="no-grad forward + one einsum with the fc weights"),
        Runner("minimal + maps", upsampled, note="... + min-max normalize + one F.interpolate of (B, N, h, w)"),
        Runner("camkit (maps not read)", lambda: ck(s.x, targets="all"), teardown=ck.remove,
               note="CAM(model)(x, targets='all'): logits and raw layer_maps; .maps computed on first access"),
        Runner("camkit + .maps", lambda: ck(s.x, targets="all").maps, teardown=ck.remove,
               note="... and reading res.maps: (B, N, H, W) normalized, upsampled"),
    ]
    if peers:
        import torchcam.methods as tcm

        state: Dict[str, Any] = {}

        def tc_setup():
            state["cam"] = tcm.CAM(s.model, target_layer=s.cam_layer, fc_layer=s.fc)

        def tc_doc():
            cam = state["cam"]
            with torch.no_grad():
                s.model(s.x)
            return [cam(class_idx=c)[0] for c in range(n)]

        runners.append(Runner(f"torchcam documented ({n} calls)", tc_doc, tc_setup,
                              lambda: state.pop("cam").remove_hooks(),
                              note="with no_grad: model(x); then cam(class_idx=c) for every class"))
    return f"{s.name} CAM {s.cam_layer} all {n} classes", runners


ScenarioFn = Callable[[Setup, bool], Optional[Tuple[str, List[Runner]]]]
SCENARIOS: List[ScenarioFn] = [
    lambda s, p: gradient_scenario(s, "layercam", s.layers3, 1, p),
    lambda s, p: gradient_scenario(s, "gradcam", [s.layer1], 1, p),
    lambda s, p: gradient_scenario(s, "layercam", s.layers3, 5, p),
    lambda s, p: gradient_scenario(s, "gradcam", [s.layer1], 5, p),
    cam_all_scenario,
]


def scenarios(s: Setup, peers: bool = True) -> List[Tuple[str, List[Runner]]]:
    """Every scenario that applies to ``s`` (in ``SCENARIOS`` order)."""
    return [sc for sc in (fn(s, peers) for fn in SCENARIOS) if sc is not None]


# --------------------------------------------------------------------------- ratios per scenario


def baselines(names: Sequence[str], times: Times) -> Dict[str, str]:
    """The runner names that ratios are taken against: bare, naive, minimal (the fastest minimal), camkit."""
    mins = [n for n in names if n == "minimal" or n.startswith("minimal (")]
    return {"bare": names[0], "naive": "naive" if "naive" in names else names[0],
            "minimal": fastest(times, mins) if mins else names[0], "camkit": "camkit" if "camkit" in names else names[0]}


def _peer_groups(names: Sequence[str]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    for n in names:
        for peer in ("pytorch-grad-cam", "torchcam", "captum"):
            if n.startswith(peer):
                groups.setdefault(peer, []).append(n)
    return groups


def targets_report(raw: Dict[str, Times], device: str) -> List[List[object]]:
    """The issue's goals per scenario: [scenario, ratio, measured, goal, met]."""
    rows: List[List[object]] = []

    def check(title: str, what: str, v: float, goal: str, ok: Optional[bool]) -> None:
        rows.append([title, what, v, goal, "-" if ok is None else ("yes" if ok else "no")])

    for title, t in raw.items():
        names = list(t)
        if " all " in title:
            for n, base in (("camkit (maps not read)", "minimal raw"), ("camkit + .maps", "minimal + maps")):
                v = same_round_ratio(t, n, base)
                check(title, f"{n} / {base}", v, "<= 1.02", v <= 1.02)
            continue
        b = baselines(names, t)
        v = same_round_ratio(t, "camkit", b["minimal"])
        check(title, f"camkit / {b['minimal']}", v, "<= 1.02", v <= 1.02)
        v = same_round_ratio(t, "camkit", "naive")
        check(title, "camkit / naive", v, "<= 1.0" + (" (a GPU goal)" if device != "cuda" else ""), v <= 1.0)
        for n in names:
            if n.startswith("camkit "):
                check(title, f"{n} / {b['minimal']}", same_round_ratio(t, n, b["minimal"]), "(reference)", None)
        for peer, members in _peer_groups(names).items():
            best = fastest(t, members)
            v = same_round_ratio(t, best, "camkit")
            goal = peer in ("torchcam", "captum")
            check(title, f"{best} / camkit", v, ">= 1.0" if goal else "(reference)", v >= 1.0 if goal else None)
    return rows


def _ratio_or_dash(t: Times, a: Optional[str], base: str) -> object:
    return same_round_ratio(t, a, base) if a in t else "-"


def summary_rows(raw: Dict[str, Times], memory: Dict[str, Dict[str, object]]) -> List[List[object]]:
    """One row per gradient scenario: the headline ratios and peak memory."""
    rows: List[List[object]] = []
    for title, t in raw.items():
        if " all " in title:
            continue
        names = list(t)
        b = baselines(names, t)
        option = {p: next((n for n in names if n.startswith(p)), None)
                  for p in ("camkit channels_last", "camkit bf16", "camkit batched_backward=True",
                            "camkit batched_backward=False")}
        peers = _peer_groups(names)
        peer_ratio = {p: _ratio_or_dash(t, fastest(t, peers[p]) if p in peers else None, "camkit")
                      for p in ("torchcam", "captum", "pytorch-grad-cam")}
        mem = memory.get(title, {})
        peer_mem = {n: v for n, v in mem.items() if isinstance(v, float) and any(n.startswith(p) for p in peers)}
        low = min(peer_mem, key=peer_mem.__getitem__) if peer_mem else None
        rows.append([title, _ratio_or_dash(t, "camkit", b["minimal"]), _ratio_or_dash(t, "camkit", "naive"),
                     *(_ratio_or_dash(t, n, b["minimal"]) for n in option.values()),
                     peer_ratio["torchcam"], peer_ratio["captum"], peer_ratio["pytorch-grad-cam"],
                     mem.get("camkit", "-"), mem.get(b["minimal"], "-"), mem.get("naive", "-"),
                     f"{peer_mem[low]:.0f} ({low})" if low else "-"])
    return rows


SUMMARY_HEADER = ["scenario", "camkit / minimal", "camkit / naive", "channels_last / minimal", "bf16 autocast / minimal",
                  "batched_backward=True / minimal", "batched_backward=False / minimal", "torchcam / camkit",
                  "captum / camkit",
                  "pytorch-grad-cam / camkit", "camkit MiB", "minimal MiB", "naive MiB", "lowest peer MiB"]


# --------------------------------------------------------------------------- agreement


def _pgc_raw(s: Setup, method: str, layers: List[str], t: Tensor) -> List[Tensor]:
    """pytorch-grad-cam's raw per-layer maps (its get_cam_image, then ReLU) for targets t (B,)."""
    import numpy as np
    import pytorch_grad_cam as pgc

    cls = {"layercam": pgc.LayerCAM, "gradcam": pgc.GradCAM}[method]
    mods = [_layer(s.model, n) for n in layers]
    cam = cls(model=s.model, target_layers=mods)
    try:
        tg = _pgc_targets(t)
        cam(input_tensor=s.x, targets=tg)
        ag = cam.activations_and_grads
        out = []
        for m, a, g in zip(mods, ag.activations, ag.gradients):
            raw = cam.get_cam_image(s.x, m, tg, a.cpu().numpy(), g.cpu().numpy(), False)
            out.append(torch.from_numpy(np.maximum(raw, 0)))
        return out
    finally:
        cam.activations_and_grads.release()
        s.model.zero_grad(set_to_none=True)


def _torchcam_raw(s: Setup, method: str, layers: List[str], targets: Tensor) -> List[Tensor]:
    """torchcam's per-layer maps with normalized=False, one forward, K retained calls: list of (B,K,h,w)."""
    import torchcam.methods as tcm

    cls = {"layercam": tcm.LayerCAM, "gradcam": tcm.GradCAM}[method]
    cam = cls(s.model, target_layer=list(layers))
    try:
        scores = s.model(s.x)
        K = targets.shape[1]
        per_k = [cam(class_idx=targets[:, j].tolist(), scores=scores, normalized=False, retain_graph=j < K - 1)
                 for j in range(K)]
        return [torch.stack([pk[i] for pk in per_k], 1) for i in range(len(layers))]
    finally:
        cam.remove_hooks()


def _captum_raw(s: Setup, method: str, layers: List[str], t: Tensor) -> List[Tensor]:
    from captum.attr import LayerGradCam, LayerGradientXActivation

    mods = [_layer(s.model, n) for n in layers]
    if method == "gradcam":
        return [LayerGradCam(s.model, m).attribute(s.x, target=t, relu_attributions=True)[:, 0] for m in mods]
    attrs = LayerGradientXActivation(s.model, mods).attribute(s.x, target=t)
    return [a.clamp(min=0).sum(1).clamp(min=0) for a in attrs]


def _stack_k(per_k: List[List[Tensor]]) -> List[Tensor]:
    """K lists of per-layer (B, h, w) maps -> per-layer (B, K, h, w)."""
    return [torch.stack([p[i] for p in per_k], 1) for i in range(len(per_k[0]))]


def agreement(s: Setup, peers: bool = True) -> List[List[object]]:
    """Rows [scenario, compared with, layer, max |diff|, that / max |camkit|] against camkit's results."""
    import camkit

    rows: List[List[object]] = []
    for method, layers, k in (("layercam", s.layers3, 1), ("gradcam", [s.layer1], 1),
                              ("layercam", s.layers3, 5), ("gradcam", [s.layer1], 5)):
        cls = {"layercam": camkit.LayerCAM, "gradcam": camkit.GradCAM}[method]
        res = cls(s.model, layers=layers)(s.x, topk=k)
        t = res.targets
        label = f"{s.name} {'LayerCAM' if method == 'layercam' else 'Grad-CAM'} top-{k}"
        fused, minimal_raw, _ = MinimalFloor(s.model, layers, method)(s.x, targets=t)
        others: Dict[str, List[Tensor]] = {"naive floor": NaiveFloor(s.model, layers, method)(s.x, targets=t)[1],
                                           "minimal floor": minimal_raw}
        if peers:
            others["pytorch-grad-cam"] = _stack_k([_pgc_raw(s, method, layers, t[:, j]) for j in range(k)])
            others["torchcam"] = _torchcam_raw(s, method, layers, t)
            name = "captum" + (" (GradientXActivation composition)" if method == "layercam" else "")
            others[name] = _stack_k([_captum_raw(s, method, layers, t[:, j]) for j in range(k)])
        for other, maps in others.items():
            for layer, m in zip(layers, maps):
                rows.append([label, other, layer, *max_diff(res.layer_maps[layer], m)])
        rows.append([label, "minimal floor, fused maps", "(fused .maps)", *max_diff(res.maps, fused)])
    if s.cam_layer is not None and peers:
        import torchcam.methods as tcm

        res = camkit.CAM(s.model, layers=s.cam_layer, fc=s.fc)(s.x, targets="all")
        cam = tcm.CAM(s.model, target_layer=s.cam_layer, fc_layer=s.fc)
        try:
            with torch.no_grad():
                s.model(s.x)
            n = _layer(s.model, s.fc).out_features
            tc = torch.stack([cam(class_idx=c, normalized=False)[0] for c in range(n)], 1)
        finally:
            cam.remove_hooks()
        rows.append([f"{s.name} CAM all classes", "torchcam", s.cam_layer, *max_diff(res.layer_maps[s.cam_layer], tc)])
    return rows


DEFINITIONS = [
    "Normalization: camkit min-max normalizes each layer's map (per image and class) before upsampling; "
    "pytorch-grad-cam min-max scales each layer's map, resizes with OpenCV, averages the layers, then rescales; "
    "torchcam min-max normalizes at layer resolution (normalized=True); captum returns unnormalized attributions.",
    "Fusion of several layers: camkit takes the pixelwise max (the LayerCAM paper) or tanh(2 * weighted sum); "
    "pytorch-grad-cam takes the mean; torchcam's fuse_cams applies tanh(2x) per layer (LayerCAM) and takes the max, "
    "at the largest layer's resolution, not the input's; captum has no fusion (the composition here takes the max).",
    "Upsampling: camkit bilinear (align_corners=False) to the input size in torch; pytorch-grad-cam cv2.resize "
    "(bilinear, on float32 numpy) after normalization; torchcam none in the extractor; captum "
    "LayerAttribution.interpolate.",
    "In-place ReLU: camkit hands downstream layers a copy of each hooked output, so a later in-place op cannot change "
    "the captured activation; torchcam, pytorch-grad-cam and the two floors keep the tensor itself. "
    "The layers benchmarked are ReLU or block outputs that nothing changes in place, where all agree.",
    "Targets: camkit takes top-1/top-k from the same forward; pytorch-grad-cam computes top-1 itself but needs "
    "ClassifierOutputTarget lists for other classes, captum needs targets before its forward; both were given the "
    "top-k computed once outside the timing (a user who does not know them pays one more forward).",
    "Gradients: camkit, torchcam and both floors take torch.autograd.grad w.r.t. the hooked outputs only; "
    "pytorch-grad-cam calls loss.backward(), which also computes every parameter gradient down to the input (and "
    "leaves .grad on the model); captum uses autograd.grad w.r.t. the layer outputs.",
    "LayerCAM in captum: not provided; on layers whose outputs are >= 0 (ReLU outputs, as here) ReLU(G)*A = ReLU(G*A), "
    "so ReLU(sum_c ReLU(GradientXActivation)) is exactly LayerCAM.",
]


# --------------------------------------------------------------------------- driver


def _setup_for(args: argparse.Namespace, arch: str) -> Setup:
    return make_setup(arch, args.batch or (GPU_BATCH[arch] if args.device.startswith("cuda") else 8), args.size,
                      args.device)


def memory_probe(args: argparse.Namespace, arch: str, scen: int, run: int) -> float:
    """In this (fresh) process: set up, one bare forward, then one call's peak (see ``harness.peak_memory``)."""
    s = _setup_for(args, arch)
    r = scenarios(s, args.peers)[scen][1][run]
    with torch.no_grad():
        s.model(s.x)
    r.setup()
    try:
        return peak_memory(r.call, s.device)
    finally:
        r.teardown()


def probe_in_subprocess(args: argparse.Namespace, arch: str, scen: int, run: int) -> float:
    cmd = [sys.executable, "-m", "benchmarks.peers", "--probe-memory", arch, str(scen), str(run),
           "--size", str(args.size), "--threads", str(args.threads), "--device", args.device]
    cmd += ["--batch", str(args.batch)] if args.batch else []
    cmd += [] if args.peers else ["--no-peers"]
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["mib"])


def measure_memory(args: argparse.Namespace, s: Setup, si: int, runners: List[Runner]) -> Dict[str, object]:
    """Peak MiB per runner: in this process on a GPU (exact allocator counts), a fresh process each on CPU."""
    mem: Dict[str, object] = {}
    for ri, r in enumerate(runners):
        try:
            if s.device.type == "cuda":
                r.setup()
                try:
                    mem[r.name] = peak_memory(r.call, s.device)
                finally:
                    r.teardown()
            else:
                mem[r.name] = probe_in_subprocess(args, s.name, si, ri)
        except (subprocess.CalledProcessError, RuntimeError) as e:
            mem[r.name] = "failed"
            print(getattr(e, "stderr", str(e))[-2000:], file=sys.stderr)
    return mem


def scenario_section(title: str, runners: List[Runner], times: Times, mem: Dict[str, object]) -> str:
    names = [r.name for r in runners]
    b = baselines(names, times)
    rows = [[n, statistics.median(times[n]) * 1000, min(times[n]) * 1000,
             *(same_round_ratio(times, n, b[k]) for k in ("bare", "naive", "minimal", "camkit")), mem.get(n, "-")]
            for n in names]
    return (f"### {title}\n\n'x minimal' is against {b['minimal']} (the faster minimal floor)\n\n"
            + markdown_table(["runner", "median ms", "min ms", "x bare", "x naive", "x minimal", "x camkit", "peak MiB"],
                             rows)
            + "\n\nHow each runner is called:\n\n" + "\n".join(f"- {r.name}: {r.note}" for r in runners if r.note) + "\n")


def versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "torchvision", "camkit", "grad-cam", "torchcam", "captum"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    if out["camkit"] == "-":  # run from a source tree that is not installed
        import camkit

        out["camkit"] = f"{camkit.__version__} (source tree)"
    return out


def run(args: argparse.Namespace) -> str:
    policy = configure(args.device, args.threads, args.tf32, args.cudnn_benchmark)
    prov = run_provenance(args.argv, "benchmarks.peers", args.device)
    sections: List[str] = []
    raw: Dict[str, Times] = {}
    memory: Dict[str, Dict[str, object]] = {}
    agree_rows: List[List[object]] = []
    batches: Dict[str, int] = {}
    for arch in args.arch:
        s = _setup_for(args, arch)
        batches[arch] = s.x.shape[0]
        for si, (title, runners) in enumerate(scenarios(s, args.peers)):
            if args.only and not any(o in title for o in args.only):
                continue
            print(f"{title}: {len(runners)} runners x {args.warmup}+{args.reps} rounds", flush=True)
            times = interleave(runners, args.reps, args.warmup, timer=timer_for(s.device),
                               between=gc.collect if args.gc else None)
            raw[title] = times
            memory[title] = measure_memory(args, s, si, runners) if args.memory else {}
            sections.append(scenario_section(title, runners, times, memory[title]))
            print(sections[-1], flush=True)
        if args.agreement:
            del s
            gc.collect()
            s = make_setup(arch, args.agreement_batch, args.size, args.device)
            with tf32_off() if s.device.type == "cuda" else contextlib.nullcontext():
                agree_rows += agreement(s, args.peers)
        del s
        gc.collect()
    tg = targets_report(raw, torch.device(args.device).type)
    summary = summary_rows(raw, memory)
    vers = versions()
    setup_text = (
        f"Models: torchvision {', '.join(f'{a} (B={b})' for a, b in batches.items())}, random weights (seed 0), eval "
        f"mode, input 3x{args.size}x{args.size} (seed 1). {args.warmup} warm-up round(s), then {args.reps} timed rounds, "
        "runners interleaved in each round. Ratios are medians over rounds of same-round ratios. "
        f"Device policy: {json.dumps(policy)}"
        + ("; agreement with TF32 off" if args.device.startswith("cuda") else "") + ". "
        + ("Timing: CUDA events after a synchronize; peak MiB: torch.cuda.max_memory_allocated during the call above "
           "what was allocated before it." if args.device.startswith("cuda") else
           "Timing: host clock; peak MiB: peak resident size during one call above the resident size before it, "
           "each runner in a fresh process after one bare forward (a lower bound: freed memory can be reused).")
        + "\n\nVersions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".\n\n"
        "Baselines: *naive* = grad-enabled forward + autograd.grad w.r.t. the hooked outputs (K retained calls) + "
        "formula + upsample per layer, no normalization or fusion; *minimal* = no graph below the shallowest hooked "
        "layer, outputs kept without copies, the faster of K retained grad calls and one batched call, the formula in "
        "float32, then camkit's map work (min-max normalize, upsample, max fusion). See benchmarks/peers.py.\n")
    body = [setup_text, "## Summary (same-round ratios; peak MiB)\n", markdown_table(SUMMARY_HEADER, summary), "",
            "## The issue's goals\n", markdown_table(["scenario", "ratio", "measured", "goal", "met"], tg), "",
            "## Timings\n", *sections]
    if agree_rows:
        body += ["## Agreement with camkit's maps\n",
                 "Same input and targets (camkit's top-k), raw per-layer maps (camkit's `res.layer_maps`) unless noted; "
                 "max |difference| and that divided by max |camkit map|.\n",
                 markdown_table(["scenario", "compared with", "layer", "max abs diff", "max rel diff"], agree_rows), "",
                 "## Where definitions differ\n", "\n".join(f"- {d}" for d in DEFINITIONS), ""]
    text = "\n".join(body)
    print(markdown_table(SUMMARY_HEADER, summary), flush=True)
    if args.out:
        data = {"settings": {"archs": batches, "size": args.size, "reps": args.reps, "warmup": args.warmup,
                             "policy": policy, "peers": args.peers},
                "versions": vers, "times_s": raw, "memory_mib": memory, "summary": [SUMMARY_HEADER, *summary],
                "goals": tg, "agreement": agree_rows}
        md, js = write_results(args.out, prov, "camkit vs the floors, pytorch-grad-cam, torchcam, captum", text, data)
        print(f"wrote {md} and {js}")
    return text


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: CUDA events, cudnn.benchmark, GPU batch sizes)")
    p.add_argument("--arch", nargs="+", default=None, choices=["vgg16", "resnet50", "tiny"],
                   help="default: resnet50 vgg16")
    p.add_argument("--batch", type=int, default=None, help="default: 8 on CPU; VGG16 32, ResNet50 64 on CUDA")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default: 5 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--tf32", default="on", choices=["on", "off", "default"], help="TF32 while timing on CUDA")
    p.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false")
    p.add_argument("--only", nargs="*", default=None, help="run scenarios whose title contains one of these")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-agreement", dest="agreement", action="store_false")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="floors and camkit only")
    p.add_argument("--agreement-batch", type=int, default=2)
    p.add_argument("--no-gc", dest="gc", action="store_false", help="no gc.collect() between runners")
    p.add_argument("--quick", action="store_true",
                   help="smoke check: B=2, 1 + 2 rounds, no memory probes, no gc between runners, no file unless --out")
    p.add_argument("--out", default=None, help="Markdown file (default: results/peers/<device>_<archs>.md)")
    p.add_argument("--probe-memory", nargs=3, metavar=("ARCH", "SCENARIO", "RUNNER"), default=None,
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    if args.probe_memory:
        arch, scen, r = args.probe_memory
        torch.set_num_threads(args.threads)
        print(json.dumps({"mib": memory_probe(args, arch, int(scen), int(r))}))
        return
    args.arch = args.arch or ["resnet50", "vgg16"]
    if args.quick:
        args.batch, args.reps, args.warmup = args.batch or 2, args.reps or 2, 1 if args.warmup is None else args.warmup
        args.memory = args.gc = False
    args.reps = args.reps or (10 if cuda else 5)
    args.warmup = (3 if cuda else 1) if args.warmup is None else args.warmup
    if args.reps < 1:
        p.error("--reps must be >= 1")
    if args.out is None and not args.quick:
        args.out = str(RESULTS_DIR / f"{torch.device(args.device).type}_{'_'.join(args.arch)}.md")
    run(args)


if __name__ == "__main__":
    main()
