"""Score-CAM and Ablation-CAM: camkit against pytorch-grad-cam and torchcam (time, peak memory, agreement).

Each scenario (model, method, K targets per image) runs its runners interleaved
in rounds (``benchmarks.harness.interleave``); speed is the median over rounds
of same-round ratios (peer time / camkit time). Every runner is the library's
documented usage, K targets being K calls where the library takes one target
per image:

* camkit: ``with camkit.ScoreCAM(model, layers=[layer]) as cam: cam(x, targets=t).maps``
  (``AblationCAM`` alike; all K targets in one call);
* pytorch-grad-cam: ``with ScoreCAM(model=model, target_layers=[layer]) as cam:
  cam(input_tensor=x, targets=[ClassifierOutputTarget(c) ...])`` per target
  (``AblationCAM`` alike; their default batch sizes, 16 and 32);
* torchcam: ``with ScoreCAM(model, layer) as ex: model(x); ex(class_idx=[...])``
  per target (its default batch size, 32; it has no Ablation-CAM).

Peak memory: the peak resident size during each call of the first timed round
above the resident size before it. The process runs with
``MALLOC_MMAP_THRESHOLD_=65536`` (set by re-executing itself), so that glibc
returns every freed block of 64 KiB or more to the system and one call's peak
is not hidden by memory an earlier call left in the heap.

Agreement (from the timed calls' outputs): camkit's min-max-normalized layer
maps against torchcam's (layer resolution), camkit's maps against
pytorch-grad-cam's (input resolution: it resizes with cv2 and rescales).

Run (peers: ``pip install -e .[bench]``)::

    python -m benchmarks.perturbation --arch resnet18 --k 1 3 --rounds 3
    python -m benchmarks.perturbation --arch resnet50 --k 1 --rounds 1
    python -m benchmarks.perturbation --arch tiny --size 32 --rounds 1 --out /tmp/p.md   # seconds: a smoke run
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from benchmarks.harness import (
    Runner,
    WallTimer,
    _status_kb,
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


def camkit_runner(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor) -> Runner:
    import camkit.methods as cm

    cls = {"Score-CAM": cm.ScoreCAM, "Ablation-CAM": cm.AblationCAM}[method]

    def call() -> Dict[str, Tensor]:
        with cls(model, layers=[layer]) as cam:
            res = cam(x, targets=t)
            return {"maps": res.maps, "layer": res.layer_maps[layer]}

    return Runner(f"camkit {method}", call, note=f"camkit.{cls.__name__}(model, layers=[layer])(x, targets=t).maps: "
                                                 "all K targets in one call")


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


def torchcam_runner(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor) -> Runner:
    import torchcam.methods as tcm

    def call() -> Dict[str, Tensor]:
        with tcm.ScoreCAM(model, layer, input_shape=tuple(x.shape[1:])) as ex:
            with torch.inference_mode():
                model(x)
            maps = [ex(class_idx=[int(c) for c in t[:, k]])[0] for k in range(t.shape[1])]
        return {"layer": torch.stack(maps, 1)}

    return Runner(f"torchcam {method}", call,
                  note="with ScoreCAM(model, layer) as ex: model(x) in inference_mode; ex(class_idx=[...]) per target")


def runners_for(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor, peers: bool) -> List[Runner]:
    out = [camkit_runner(method, model, layer, x, t)]
    if peers:
        out.append(pgc_runner(method, model, layer, x, t))
        if method == "Score-CAM":
            out.append(torchcam_runner(method, model, layer, x, t))
    return out


# --------------------------------------------------------------------------- timing with memory


class MemoryTimer(WallTimer):
    """Host-clock timer that also records each call's peak resident size above the size before it
    (MiB, Linux; the bookkeeping stays outside the timed region)."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.peaks: List[float] = []

    def __call__(self, fn: Callable[[], object]) -> Tuple[object, float]:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = _status_kb("VmRSS")
        out, seconds = super().__call__(fn)
        self.peaks.append((_status_kb("VmHWM") - before) / 1024.0)
        return out, seconds


def _minmax(m: Tensor) -> Tensor:
    lo = m.amin(dim=(-2, -1), keepdim=True)
    rng = m.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(rng > 0, (m - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(m))


def agreement(outs: Dict[str, Dict[str, Tensor]], method: str) -> List[List[object]]:
    """camkit's maps against each peer's: [peer, resolution, max |difference|] (maps in [0, 1])."""
    ours = outs[f"camkit {method}"]
    rows: List[List[object]] = []
    for name, o in outs.items():
        if name.startswith("camkit"):
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
    runners = runners_for(method, model, layer, x, t, args.peers)
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
        for r in runners_for(method, model, layer, xs, ts, args.peers):
            r.call()
    timer = MemoryTimer()
    kept = [keep(r) for r in runners]
    times = interleave(kept, args.rounds, 0, timer=timer)
    memory = {r.name: timer.peaks[i] for i, r in enumerate(kept)}  # the first timed round
    base = f"camkit {method}"
    ratios = {n: same_round_ratio(times, n, base) for n in times if n != base}
    return {"arch": arch, "method": method, "k": k, "layer": layer, "times_s": times, "peak_mib": memory,
            "ratios": ratios, "agreement": agreement(outs, method), "notes": {r.name: r.note for r in runners}}


# --------------------------------------------------------------------------- report


def report(results: List[Dict[str, Any]], args: argparse.Namespace, policy: Dict[str, Any]) -> Tuple[str, Dict]:
    rows, agree = [], []
    for r in results:
        base = f"camkit {r['method']}"
        for name, ts in r["times_s"].items():
            rows.append([r["arch"], r["method"], r["k"], name, statistics.median(ts), min(ts), len(ts),
                         "1" if name == base else f"{r['ratios'][name]:.2f}x", round(r["peak_mib"][name])])
        agree += [[r["arch"], r["method"], r["k"], *a] for a in r["agreement"]]
    header = ["model", "method", "K", "runner", "median s", "min s", "rounds", "peer / camkit (same-round median)",
              "peak MiB"]
    notes = {n: note for r in results for n, note in r["notes"].items()}
    text = "\n".join([
        f"Models: torchvision random weights (seed 0), eval mode, B={args.batch}, input 3x{args.size}x{args.size} "
        f"(seed 1), targets: each image's top-K classes, hooked layer {', '.join(sorted(set(LAYER[a] for a in args.arch)))}. "
        f"Runners interleaved in each round; {args.rounds} timed round(s) after an untimed warm-up on a "
        f"{args.warm_size}x{args.warm_size} input. Device policy: {policy}. Peak MiB: first timed round, see "
        "benchmarks/perturbation.py (MALLOC_MMAP_THRESHOLD_=65536).",
        "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".", "",
        "## Times, ratios, peak memory", "", markdown_table(header, rows), "",
        "## Agreement", "",
        "Max |camkit - peer| of maps in [0, 1] from the timed calls: at layer resolution (both min-max normalized; "
        "pytorch-grad-cam's map as its get_cam_image returned it, after the ReLU) and, for pytorch-grad-cam, at input "
        "resolution (its cv2 resize and rescaling against camkit's bilinear upsampling). pytorch-grad-cam's Score-CAM "
        "upsamples its masks with align_corners=True (camkit and torchcam: False); torchcam normalizes them before "
        "upsampling, camkit after (the paper); see tests/test_peer_methods.py for the exact comparisons.", "",
        markdown_table(["model", "method", "K", "peer", "resolution", "max abs diff"], agree), "",
        "## How each runner is called", "", *[f"- {n}: {note}" for n, note in notes.items()], ""])
    data = {"settings": {"archs": args.arch, "batch": args.batch, "size": args.size, "k": args.k,
                         "rounds": args.rounds, "warm_size": args.warm_size, "policy": policy},
            "versions": versions(), "results": results}
    return text, data


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["resnet18"], choices=sorted(LAYER))
    p.add_argument("--method", nargs="+", default=["Score-CAM", "Ablation-CAM"], choices=["Score-CAM", "Ablation-CAM"])
    p.add_argument("--k", nargs="+", type=int, default=[1], help="targets per image (one scenario each)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds")
    p.add_argument("--warm-size", type=int, default=64, help="side of the untimed warm-up input (0: none)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine OpenMP barriers make 2 erratic)")
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--out", default=None, help="Markdown file (default: results/perturbation/cpu_<archs>.md)")
    args = p.parse_args(argv)
    rerun_with_low_mmap_threshold("benchmarks.perturbation", argv)
    policy = configure("cpu", args.threads)
    prov = run_provenance(argv, "benchmarks.perturbation", "cpu")
    results = []
    for arch in args.arch:
        for k in args.k:
            for method in args.method:
                print(f"{arch} {method} K={k}: {args.rounds} rounds", flush=True)
                results.append(run_scenario(arch, method, k, args))
                print({n: [round(s, 2) for s in ts] for n, ts in results[-1]["times_s"].items()},
                      results[-1]["peak_mib"], results[-1]["agreement"], flush=True)
                gc.collect()
    text, data = report(results, args, policy)
    out = args.out or str(RESULTS_DIR / f"cpu_{'_'.join(args.arch)}.md")
    md, js = write_results(out, prov, "Score-CAM and Ablation-CAM: camkit, pytorch-grad-cam, torchcam", text, data)
    print(text)
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
