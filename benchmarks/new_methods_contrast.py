"""ShapleyCAM, Finer-CAM, RefineCAM and LeGrad: camkit against pytorch-grad-cam and torchcam (time, peak memory).

Each scenario (model, method, K targets per image) runs its runners interleaved in rounds
(``benchmarks.harness.interleave``); speed is the median over rounds of same-round ratios (peer time /
camkit time). Every runner is the library's documented usage; K targets are one call in camkit, K calls
in pytorch-grad-cam (one target per image each) and, in torchcam, one forward then K extractor calls
(``retain_graph=True`` but for the last):

* ShapleyCAM: ``camkit.ShapleyCAM(model, layers=[layer])``; pytorch-grad-cam ``ShapleyCAM(model,
  target_layers=[layer])`` (torchcam has none);
* Finer-CAM: ``camkit.FinerCAM(model, layers=[layer])``; torchcam ``FinerCAM(model, layer)``;
  pytorch-grad-cam ``FinerCAM(model, [layer])`` with ``FinerWeightedTarget(c, 3 nearest, 1.0)`` per image;
* RefineCAM (Grad-CAM++ on three stages): ``camkit.RefineCAM(model, layers=stages)``; torchcam
  ``RefineCAM(model, stages)``; pytorch-grad-cam ``RefineCAM(model, stages)`` (one base method per layer);
* LeGrad (a torchvision ViT, its last four blocks; torchcam takes torchvision's ViT only):
  ``camkit.LeGrad(vit, layers=blocks)``; torchcam ``LeGrad(vit, blocks)`` (pytorch-grad-cam has none).

Peak memory: the peak resident size during each call of the first timed round above the size before it
(``benchmarks.harness.RssTimer``; on CUDA ``max_memory_allocated``; run as a script the process re-executes itself with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks return to the system).

Run on a quiet machine, from a clean tree (peers: ``pip install -e .[bench]``)::

    python -m benchmarks.new_methods_contrast --arch resnet18 --k 1 3 --rounds 5
    python -m benchmarks.new_methods_contrast --arch tiny --size 32 --rounds 1 --no-memory --out /tmp/c.md  # smoke
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "new_methods_contrast"
LAYER = {"resnet18": "layer4", "resnet50": "layer4", "tiny": "layer3"}
STAGES = {"resnet18": ["layer2", "layer3", "layer4"], "resnet50": ["layer2", "layer3", "layer4"],
          "tiny": ["layer1", "layer2", "layer3"]}
METHOD_NAMES = ("ShapleyCAM", "Finer-CAM", "RefineCAM", "LeGrad")


def make_vit(arch: str, batch: int, size: int, k: int, seed: int = 0) -> Tuple[nn.Module, Tensor, Tensor, List[str]]:
    """torchvision's ViT-B/16 (``tiny``: 2 blocks of width 16), random weights with a drawn head (torchvision
    zero-initializes it), eval mode; a standard-normal input; its top-k classes; the last four blocks."""
    import torchvision

    torch.manual_seed(seed)
    if arch == "tiny":
        model = torchvision.models.VisionTransformer(image_size=size, patch_size=max(1, size // 4), num_layers=2,
                                                     num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)
    else:
        model = torchvision.models.vit_b_16(weights=None)
        size = 224
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)
    model = model.eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        t = model(x).topk(k, dim=1).indices
    names = [n for n, _ in model.encoder.layers.named_children()][-4:]
    return model, x, t, [f"encoder.layers.{n}" for n in names]


# --------------------------------------------------------------------------- runners


def camkit_runner(method: str, model: nn.Module, layers: List[str], x: Tensor, t: Tensor) -> Runner:
    import camkit

    cls = {"ShapleyCAM": camkit.ShapleyCAM, "Finer-CAM": camkit.FinerCAM, "RefineCAM": camkit.RefineCAM,
           "LeGrad": camkit.LeGrad}[method]

    def call() -> object:
        with cls(model, layers=layers) as cam:
            return cam(x, targets=t).maps

    return Runner(f"camkit {method}", call, note=f"camkit.{cls.__name__}(model, layers={layers})(x, targets=t).maps: "
                                                 "all K targets in one call")


def _finer_targets(scores: Tensor, t: Tensor, k: int) -> list:
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    out = []
    for b in range(scores.shape[0]):
        c = int(t[b, k])
        order = (scores[b] - scores[b, c]).abs().argsort().tolist()
        out.append(FinerWeightedTarget(c, [j for j in order if j != c][:3], 1.0))
    return out


def pgc_runner(method: str, model: nn.Module, layers: List[str], x: Tensor, t: Tensor) -> Optional[Runner]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method == "LeGrad":
        return None
    mods = [model.get_submodule(n) for n in layers]
    with torch.no_grad():
        scores = model(x)

    def call() -> object:
        maps = []
        for k in range(t.shape[1]):
            if method == "Finer-CAM":
                cam = pgc.FinerCAM(model, mods)
                with cam:
                    maps.append(cam(x, _finer_targets(scores, t, k)))
                continue
            targets = [ClassifierOutputTarget(int(c)) for c in t[:, k]]
            if method == "RefineCAM":
                maps.append(pgc.RefineCAM(model, mods)(x, targets))
            else:
                with pgc.ShapleyCAM(model=model, target_layers=mods) as cam:
                    maps.append(cam(input_tensor=x, targets=targets))
        return maps

    return Runner(f"pytorch-grad-cam {method}", call, note=f"pytorch_grad_cam.{method.replace('-', '')}"
                                                           "(model, layers)(x, targets) per target")


def torchcam_runner(method: str, model: nn.Module, layers: List[str], x: Tensor, t: Tensor) -> Optional[Runner]:
    import torchcam.methods as tcm

    if method == "ShapleyCAM":
        return None

    def make() -> Any:
        if method == "LeGrad":
            return tcm.LeGrad(model, layers)
        cls = tcm.FinerCAM if method == "Finer-CAM" else tcm.RefineCAM
        return cls(model, layers if method == "RefineCAM" else layers[0], input_shape=tuple(x.shape[1:]))

    def call() -> object:
        with make() as ex:
            scores = model(x)
            k = t.shape[1]
            return [ex([int(c) for c in t[:, j]], scores, retain_graph=j < k - 1)[0] for j in range(k)]

    return Runner(f"torchcam {method}", call, note=f"with torchcam.methods.{method.replace('-', '')}(model, layers) "
                                                   "as ex: scores = model(x); ex(class_idx, scores) per target")


def scenario_inputs(arch: str, method: str, args: argparse.Namespace, k: int):
    """(model, layers, x, targets) for one scenario, on ``args.device``."""
    if method == "LeGrad":
        model, x, t, blocks = make_vit(arch, args.batch, args.size, k)
        layers = blocks
    else:
        model, x, t = make_model(arch, args.batch, args.size, k)
        layers = STAGES[arch] if method == "RefineCAM" else [LAYER[arch]]
    return model.to(args.device), layers, x.to(args.device), t.to(args.device)


def runners_for(method: str, model: nn.Module, layers: List[str], x: Tensor, t: Tensor, peers: bool) -> List[Runner]:
    out = [camkit_runner(method, model, layers, x, t)]
    if peers:
        out += [r for r in (pgc_runner(method, model, layers, x, t), torchcam_runner(method, model, layers, x, t))
                if r is not None]
    return out


def run_scenario(arch: str, method: str, k: int, args: argparse.Namespace) -> Dict[str, Any]:
    model, layers, x, t = scenario_inputs(arch, method, args, k)
    runners = runners_for(method, model, layers, x, t, args.peers)
    if args.warm_size and method != "LeGrad":  # untimed warm-up on a small input (a ViT takes one size)
        _, xs, ts = make_model(arch, 1, args.warm_size, 1)
        for r in runners_for(method, model, layers, xs.to(args.device), ts.to(args.device), args.peers):
            r.call()
    elif args.warm_size:  # LeGrad: one untimed round at the timed size
        for r in runners:
            r.call()
    times, peaks = timed_rounds(runners, args.rounds, args.device, args.memory)
    memory = {r.name: peaks[i] for i, r in enumerate(runners)} if args.memory else {}
    base = f"camkit {method}"
    ratios = {n: same_round_ratio(times, n, base) for n in times if n != base}
    return {"arch": arch, "method": method, "k": k, "layers": layers, "times_s": times, "peak_mib": memory,
            "ratios": ratios, "notes": {r.name: r.note for r in runners}}


# --------------------------------------------------------------------------- report


def report(results: List[Dict[str, Any]], args: argparse.Namespace, policy: Dict[str, Any]) -> Tuple[str, Dict]:
    rows = []
    for r in results:
        base = f"camkit {r['method']}"
        for name, ts in r["times_s"].items():
            peak = r["peak_mib"].get(name)
            rows.append([r["arch"], r["method"], r["k"], name, statistics.median(ts), min(ts), len(ts),
                         "1" if name == base else f"{r['ratios'][name]:.2f}x", "-" if peak is None else round(peak)])
    header = ["model", "method", "K", "runner", "median s", "min s", "rounds", "peer / camkit (same-round median)",
              "peak MiB"]
    notes = {n: note for r in results for n, note in r["notes"].items()}
    text = "\n".join([
        f"Models: torchvision random weights (seed 0), eval mode, B={args.batch}, CNN input 3x{args.size}x{args.size} "
        "(seed 1; LeGrad: torchvision ViT-B/16 at 224, or the tiny ViT at the given size), targets: each image's "
        f"top-K classes. Runners interleaved in each round; {args.rounds} timed round(s). Device policy: {policy}.",
        "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".", "",
        "## Times, ratios, peak memory", "", markdown_table(header, rows), "",
        "## How each runner is called", "", *[f"- {n}: {note}" for n, note in notes.items()], ""])
    data = {"settings": {"archs": args.arch, "batch": args.batch, "size": args.size, "k": args.k,
                         "rounds": args.rounds, "warm_size": args.warm_size, "policy": policy},
            "versions": versions(), "results": results}
    return text, data


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.new_methods_contrast", description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["resnet18"], choices=sorted(LAYER))
    p.add_argument("--method", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    p.add_argument("--k", nargs="+", type=int, default=[1, 3], help="targets per image (one scenario each)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds")
    p.add_argument("--warm-size", type=int, default=64, help="side of the untimed warm-up input (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA events; peak max_memory_allocated)")
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="time only (no peak-memory bookkeeping)")
    p.add_argument("--out", default=None, help="Markdown file (default: results/new_methods_contrast/cpu_<archs>.md)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if __name__ == "__main__":
        rerun_with_low_mmap_threshold("benchmarks.new_methods_contrast", argv)
    policy = configure(args.device, args.threads)
    prov = run_provenance(argv, "benchmarks.new_methods_contrast", args.device)
    results = []
    for arch in args.arch:
        for k in args.k:
            for method in args.method:
                print(f"{arch} {method} K={k}: {args.rounds} rounds", flush=True)
                results.append(run_scenario(arch, method, k, args))
                print({n: [round(s, 3) for s in ts] for n, ts in results[-1]["times_s"].items()}, flush=True)
                if args.memory:  # a full collection costs seconds in a large process: only before measuring memory
                    gc.collect()
    text, data = report(results, args, policy)
    out = args.out or str(RESULTS_DIR / f"{torch.device(args.device).type}_{'_'.join(args.arch)}.md")
    md, js = write_results(out, prov, "ShapleyCAM, Finer-CAM, RefineCAM, LeGrad: camkit, pytorch-grad-cam, torchcam",
                           text, data)
    print(text)
    print(f"wrote {md} and {js}")
    return md, js


if __name__ == "__main__":
    main()
