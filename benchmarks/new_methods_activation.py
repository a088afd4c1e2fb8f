"""KPCA-CAM, Seg-Eigen-CAM, FEM, RandomCAM, Deep Feature Factorization, Guided Backprop and FullGrad's
eigen_smooth: camkit against pytorch-grad-cam (time, peak memory).

Each scenario (model, method, K targets per image) runs its runners interleaved in rounds
(``benchmarks.harness.interleave``); speed is the median over rounds of same-round ratios (peer time /
camkit time). Every runner is the library's documented usage, K targets being K calls where the peer
takes one target per image:

* camkit: ``with camkit.METHODS[name](model, layers=[layer]) as cam: cam(x, targets=t).maps`` (all K
  targets in one call; Guided Backprop and FullGrad take no layer);
* pytorch-grad-cam: ``with KPCA_CAM(model=model, target_layers=[layer]) as cam: cam(input_tensor=x,
  targets=[ClassifierOutputTarget(c) ...])`` per target (SegEigenCAM, FEM, RandomCAM alike;
  ``FullGrad(model, [])`` with ``eigen_smooth=True``); ``DeepFeatureFactorization(model, layer,
  computation_on_concepts=fc)(x, n_components)`` once (its concepts serve every target);
  ``GuidedBackpropReLUModel(model)(x[i:i+1], c)`` per image and target (it explains image 0 only),
  on a copy of the model (it replaces the model's ReLU modules).

Peak memory: the peak resident size during each call of the first timed round above the size before
it (``benchmarks.harness.RssTimer``; on CUDA ``max_memory_allocated``; run as a script the process re-executes itself with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks return to the system).

Run on a quiet machine, from a clean tree (peers: ``pip install -e .[bench]``)::

    python -m benchmarks.new_methods_activation --arch resnet18 --k 1 3 --rounds 5
    python -m benchmarks.new_methods_activation --arch tiny --size 32 --rounds 1 --no-memory --out /tmp/a.md  # smoke
"""
from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from benchmarks.harness import (
    Runner,
    configure,
    markdown_table,
    rerun_with_low_mmap_threshold,
    run_provenance,
    same_round_ratio,
    timed_rounds,
    write_results,
)
from benchmarks.peers import versions
from benchmarks.perturbation import make_model

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "new_methods_activation"
LAYER = {"resnet18": "layer4", "resnet50": "layer4", "tiny": "layer3"}
#: display name -> (camkit registry name, pytorch-grad-cam class name, camkit options)
METHODS: Dict[str, Tuple[str, str, Dict[str, Any]]] = {
    "KPCA-CAM": ("kpcacam", "KPCA_CAM", {}),
    "Seg-Eigen-CAM": ("segeigencam", "SegEigenCAM", {}),
    "FEM": ("fem", "FEM", {}),
    "RandomCAM": ("randomcam", "RandomCAM", {}),
    "DFF": ("dff", "DeepFeatureFactorization", {"n_components": 5}),
    "Guided Backprop": ("guidedbackprop", "GuidedBackpropReLUModel", {}),
    "FullGrad eigen_smooth": ("fullgrad", "FullGrad", {"eigen_smooth": True}),
}


def camkit_runner(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor) -> Runner:
    import camkit.methods as cm

    name, _, opts = METHODS[method]
    cls = cm.METHODS[name]
    layers = None if name in ("guidedbackprop", "fullgrad") else [layer]

    def call() -> Tensor:
        with cls(model, layers=layers, **opts) as cam:
            return cam(x, targets=t).maps

    return Runner(f"camkit {method}", call, note=f"camkit.{cls.__name__}(model, layers={layers}, **{opts})"
                                                 "(x, targets=t).maps: all K targets in one call")


def _per_target(cls: type, model: nn.Module, mod: Any, x: Tensor, t: Tensor, **call_kw: Any) -> Callable[[], Any]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def call() -> Tensor:
        maps = []
        for k in range(t.shape[1]):
            with cls(model=model, target_layers=mod) as cam:
                maps.append(torch.as_tensor(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c))
                                                                         for c in t[:, k]], **call_kw)))
        return torch.stack(maps, 1)

    return call


def pgc_runner(method: str, model: nn.Module, layer: str, x: Tensor, t: Tensor) -> Runner:
    import pytorch_grad_cam as pgc

    _, cls_name, opts = METHODS[method]
    cls = getattr(pgc, cls_name)
    mod = dict(model.named_modules())[layer]
    if cls_name == "FullGrad":
        call = _per_target(cls, model, [], x, t, eigen_smooth=True)
    elif cls_name == "DeepFeatureFactorization":
        def call() -> Any:
            dff = cls(model=model, target_layer=mod, computation_on_concepts=model.fc)
            try:
                return dff(x, opts["n_components"])
            finally:
                dff.activations_and_grads.release()  # it has no __enter__; its hooks would stay until collected
    elif cls_name == "GuidedBackpropReLUModel":
        own = copy.deepcopy(model)  # the peer replaces the ReLU modules (and puts back new ones)

        def call() -> Any:
            gb = cls(own, device=x.device)
            return [gb(x[i:i + 1].clone(), int(c)) for i in range(x.shape[0]) for c in t[i]]
    else:
        call = _per_target(cls, model, [mod], x, t)
    return Runner(f"pytorch-grad-cam {method}", call, note=f"pytorch_grad_cam.{cls_name}: see the module's notes")


def run_scenario(arch: str, method: str, k: int, args: argparse.Namespace) -> Dict[str, Any]:
    model, x, t = make_model(arch, args.batch, args.size, k)
    model, x, t = model.to(args.device), x.to(args.device), t.to(args.device)
    layer = LAYER[arch]
    runners = [camkit_runner(method, model, layer, x, t)]
    if args.peers:
        runners.append(pgc_runner(method, model, layer, x, t))
    if args.warm_size:  # untimed warm-up on a small input: code paths, not a full call's minutes
        _, xs, ts = make_model(arch, 1, args.warm_size, 1)
        xs, ts = xs.to(args.device), ts.to(args.device)
        for r in [camkit_runner(method, model, layer, xs, ts)] + ([pgc_runner(method, model, layer, xs, ts)]
                                                                  if args.peers else []):
            r.call()
    times, peaks = timed_rounds(runners, args.rounds, args.device, args.memory)
    base = f"camkit {method}"
    return {"arch": arch, "method": method, "k": k, "layer": layer, "times_s": times,
            "peak_mib": {r.name: peaks[i] for i, r in enumerate(runners)},
            "ratios": {n: same_round_ratio(times, n, base) for n in times if n != base},
            "notes": {r.name: r.note for r in runners}}


def _mib(v: float) -> object:
    return "-" if math.isnan(v) else round(v)


def report(results: List[Dict[str, Any]], args: argparse.Namespace, policy: Dict[str, Any]) -> Tuple[str, Dict]:
    rows = []
    for r in results:
        base = f"camkit {r['method']}"
        for name, ts in r["times_s"].items():
            rows.append([r["arch"], r["method"], r["k"], name, statistics.median(ts), min(ts), len(ts),
                         "1" if name == base else f"{r['ratios'][name]:.2f}x", _mib(r["peak_mib"][name])])
    header = ["model", "method", "K", "runner", "median s", "min s", "rounds", "peer / camkit (same-round median)",
              "peak MiB"]
    notes = {n: note for r in results for n, note in r["notes"].items()}
    text = "\n".join([
        f"Models: random weights (seed 0), eval mode, B={args.batch}, input 3x{args.size}x{args.size} (seed 1), "
        f"targets: each image's top-K classes, hooked layer {', '.join(sorted(set(LAYER[a] for a in args.arch)))}. "
        f"Runners interleaved in each round; {args.rounds} timed round(s) after an untimed warm-up on a "
        f"{args.warm_size}x{args.warm_size} input. Device policy: {policy}.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".", "",
        "## Times, ratios, peak memory", "", markdown_table(header, rows), "",
        "## How each runner is called", "", *[f"- {n}: {note}" for n, note in notes.items()], ""])
    data = {"settings": {"archs": args.arch, "methods": args.method, "batch": args.batch, "size": args.size,
                         "k": args.k, "rounds": args.rounds, "warm_size": args.warm_size, "policy": policy},
            "versions": versions(), "results": results}
    return text, data


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["resnet18"], choices=sorted(LAYER))
    p.add_argument("--method", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--k", nargs="+", type=int, default=[1], help="targets per image (one scenario each)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds")
    p.add_argument("--warm-size", type=int, default=64, help="side of the untimed warm-up input (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA events; peak max_memory_allocated)")
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="host-clock times only (no gc.collect and resident-size reads around each call)")
    p.add_argument("--out", default=None, help="Markdown file (default: results/new_methods_activation/cpu_<archs>.md)")
    return p.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    policy = configure(args.device, args.threads)
    prov = run_provenance(argv, "benchmarks.new_methods_activation", args.device)
    results = []
    for arch in args.arch:
        for k in args.k:
            for method in args.method:
                print(f"{arch} {method} K={k}: {args.rounds} rounds", flush=True)
                results.append(run_scenario(arch, method, k, args))
                print({n: [round(s, 3) for s in ts] for n, ts in results[-1]["times_s"].items()}, flush=True)
                if args.memory:
                    gc.collect()
    text, data = report(results, args, policy)
    out = args.out or str(RESULTS_DIR / f"{torch.device(args.device).type}_{'_'.join(args.arch)}.md")
    md, js = write_results(out, prov, "New activation methods: camkit and pytorch-grad-cam", text, data)
    print(text)
    print(f"wrote {md} and {js}")
    return md, js


if __name__ == "__main__":
    rerun_with_low_mmap_threshold("benchmarks.new_methods_activation", sys.argv[1:])
    main()
