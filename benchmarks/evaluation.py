"""camkit.evaluation against Quantus 0.6, captum and pytorch-grad-cam: time, peak memory, agreement.

One scenario per metric, on the same model, images, maps (camkit Grad-CAM of each image's top class) and
randomness; the runners of a scenario run interleaved in rounds (``benchmarks.harness.interleave``) and speed
is the median over rounds of same-round ratios (peer time / camkit time). Agreement is the max |camkit -
peer| of the timed calls' outputs, with the randomness shared:

* faithfulness correlation: timed only (Quantus's subsets are of input elements, camkit's of pixels; the
  values agree on one-channel inputs, tests/test_evaluation.py);
* pixel flipping: deterministic (distinct map values);
* infidelity / sensitivity: captum's ``perturb_func`` returns camkit's perturbations;
* ROAD: pytorch-grad-cam's ``ROADCombined`` and camkit's ``road`` with the imputation noise at 0;
* MPRT: Quantus's re-draw (``reset_parameters`` after ``torch.manual_seed(seed + 1)``) passed to camkit;
* sparseness: deterministic.

Peak memory: the peak resident size of the first timed round's call above the size before it (Linux; a
lower bound: freed memory is reused), or the CUDA peak on a GPU. The process keeps the normal allocator:
with ``MALLOC_MMAP_THRESHOLD_=65536`` (benchmarks/perturbation.py's setting for exact peaks) every
temporary of 64 KiB or more is a fresh mapping, which made camkit's ROAD solver, with its many
temporaries, much slower than in a user's process.

Run (peers: ``pip install quantus captum grad-cam``)::

    python -m benchmarks.evaluation --arch resnet18 --size 192 --batch 8 --rounds 3
    python -m benchmarks.evaluation --arch resnet18 --device cuda --batch 32 --rounds 3
    python -m benchmarks.evaluation --arch tiny --size 32 --batch 2 --rounds 1 --no-peers --no-memory --out /tmp/e.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

import camkit
from benchmarks.harness import (
    Runner,
    configure,
    cuda_peak_increase,
    interleave,
    markdown_table,
    run_provenance,
    same_round_ratio,
    timer_for,
    write_results,
)
from benchmarks.peers import tiny_net, versions
from benchmarks.perturbation import MemoryTimer
from camkit import evaluation as ev

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "evaluation"
LAYER = {"resnet18": "layer4", "resnet50": "layer4", "tiny": "layer3"}
Setup = Dict[str, Any]


def make_setup(arch: str, batch: int, size: int, device: str, seed: int = 0) -> Setup:
    """Random weights (seed), eval mode, standard-normal images (seed + 1), top-1 targets, Grad-CAM maps in
    float64 plus 1e-6-scale noise (distinct values, so every library orders the pixels alike)."""
    torch.manual_seed(seed)
    if arch == "tiny":
        model = tiny_net()
    else:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
    model = model.eval().to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    maps = camkit.GradCAM(model, LAYER[arch])(x, t).maps[:, 0]
    maps = (maps.double() + 1e-6 * torch.rand(maps.shape, generator=g, dtype=torch.float64).to(device)).detach()
    return {"arch": arch, "model": model, "x": x, "t": t, "maps": maps, "device": device,
            "layer": LAYER[arch], "size": size}


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def saliency(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    """|gradient of the target logit| summed over channels (B, H, W): the explainer of the robustness runs."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(model(x).gather(1, t.reshape(-1, 1).long()).sum(), x)
    return g.abs().sum(1)


# --------------------------------------------------------------------------- scenarios: (runners, compare)


def faithfulness_runners(s: Setup, a: argparse.Namespace, peers: bool) -> List[Runner]:
    m, x, t, maps = s["model"], s["x"], s["t"], s["maps"]
    kw = dict(subset_size=a.subset, runs=a.runs, baseline=x.amin((1, 2, 3), keepdim=True), batch_size=a.chunk)
    out = [Runner("camkit", lambda: ev.faithfulness_correlation(m, x, maps, t, seed=0, **kw)["correlation"])]
    if peers:
        import quantus

        # Quantus draws subsets of input elements (C H W of them), camkit of pixels: the work is alike (one
        # forward per run and image), the values are not comparable
        metric = quantus.FaithfulnessCorrelation(nr_runs=a.runs, subset_size=a.subset, perturb_baseline="black",
                                                 abs=False, normalise=False, disable_warnings=True)
        out.append(Runner("Quantus", lambda: torch.full((1,), float("nan")) if metric(
            model=m, x_batch=_np(x), y_batch=_np(t), a_batch=np.repeat(_np(maps)[:, None], 3, 1),
            device=s["device"], softmax=False, batch_size=x.shape[0]) is None else torch.full((1,), float("nan"))))
    return out


def pixel_flipping_runners(s: Setup, a: argparse.Namespace, peers: bool) -> List[Runner]:
    """camkit flips ``H W / steps`` pixels per step; Quantus flips input elements, so it gets the map repeated over
    the 3 channels and 3 x as many elements per step, which it requires to divide H W (steps a multiple of 3,
    H W of 3 x steps): the same curve."""
    m, x, t, maps = s["model"], s["x"], s["t"], s["maps"]
    hw = s["size"] ** 2
    step = hw // a.steps
    base = x.amin((1, 2, 3), keepdim=True)
    out = [Runner("camkit", lambda: ev.pixel_flipping(m, x, maps, t, step, base, batch_size=a.chunk))]
    if peers and hw % (3 * step) == 0 and hw % a.steps == 0:
        import quantus

        metric = quantus.PixelFlipping(features_in_step=3 * step, perturb_baseline="black", abs=False,
                                       normalise=False, disable_warnings=True)
        out.append(Runner("Quantus", lambda: torch.tensor(np.asarray(metric(
            model=m, x_batch=_np(x), y_batch=_np(t), a_batch=np.repeat(_np(maps)[:, None], 3, 1), device=s["device"],
            softmax=False, batch_size=x.shape[0])))))
    return out


def infidelity_runners(s: Setup, a: argparse.Namespace, peers: bool) -> List[Runner]:
    m, x, t, maps = s["model"], s["x"], s["t"], s["maps"]
    g = torch.Generator(device=x.device).manual_seed(0)
    noise = 0.003 * torch.randn((x.shape[0], a.samples, *x.shape[1:]), generator=g, device=x.device)
    out = [Runner("camkit", lambda: ev.infidelity(m, x, maps, t, perturbations=noise, batch_size=a.chunk))]
    if peers:
        from captum.metrics import infidelity

        stream = noise.flatten(0, 1)
        out.append(Runner("captum", lambda: infidelity(m, lambda inp: (stream, inp - stream), x,
                                                       maps[:, None].expand_as(x), target=t,
                                                       n_perturb_samples=a.samples)))
    return out


def sensitivity_runners(s: Setup, a: argparse.Namespace, peers: bool) -> List[Runner]:
    m, x, t = s["model"], s["x"], s["t"]
    g = torch.Generator(device=x.device).manual_seed(0)
    d = (torch.rand((x.shape[0], a.samples, *x.shape[1:]), generator=g, device=x.device) * 2 - 1) * 0.02
    out = [Runner("camkit", lambda: ev.max_sensitivity(m, saliency, x, t, perturbations=d, batch_size=a.chunk))]
    if peers:
        from captum.metrics import sensitivity_max

        def expl(inputs: Any, target: Tensor) -> Tuple[Tensor]:
            return (saliency(m, inputs[0] if isinstance(inputs, tuple) else inputs, target)[:, None],)

        out.append(Runner("captum", lambda: sensitivity_max(expl, x, perturb_func=lambda i, r: i + d.flatten(0, 1),
                                                            n_perturb_samples=a.samples, target=t,
                                                            max_examples_per_batch=a.chunk)))
    return out


def road_runners(s: Setup, a: argparse.Namespace, peers: bool) -> List[Runner]:
    m, x, t, maps = s["model"], s["x"], s["t"], s["maps"]
    pct = (20, 40, 60, 80)
    out = [Runner("camkit", lambda: ev.road(m, x, maps, t, pct, noise=0.0, batch_size=a.chunk)["combined"])]
    if peers:
        from pytorch_grad_cam.metrics import road as gc_road
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def call() -> Tensor:
            old = gc_road.NoisyLinearImputer.__init__.__defaults__
            gc_road.NoisyLinearImputer.__init__.__defaults__ = (0.0, gc_road.neighbors_weights)
            try:
                return torch.tensor(gc_road.ROADCombined(list(pct))(x, _np(maps), [ClassifierOutputTarget(int(c))
                                                                                   for c in t], m))
            finally:
                gc_road.NoisyLinearImputer.__init__.__defaults__ = old

        out.append(Runner("pytorch-grad-cam", call))
    return out


def mprt_runners(s: Setup, a: argparse.Namespace, peers: bool) -> List[Runner]:
    m, x, t = s["model"], s["x"], s["t"]
    layers = [n for n, mod in m.named_modules() if hasattr(mod, "reset_parameters")][::-1][:a.layers]

    def reset(module: nn.Module, gen: torch.Generator) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(43)
            module.reset_parameters()

    out = [Runner("camkit", lambda: ev.model_randomization(m, saliency, x, t, layers=layers, similarity="spearman",
                                                           randomize=reset)["spearman"])]
    if peers:
        import quantus

        def call() -> Tensor:
            metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, abs=False,
                                  normalise=False, seed=42, disable_warnings=True)
            with torch.random.fork_rng(devices=[]):
                res = metric(model=m, x_batch=_np(x), y_batch=_np(t), a_batch=None, device=s["device"],
                             explain_func=lambda model, inputs, targets, **k: _np(saliency(
                                 model, torch.as_tensor(inputs, device=x.device), torch.as_tensor(targets,
                                                                                                  device=x.device)))[:, None])
            scores = res if isinstance(res, dict) else metric.evaluation_scores
            return torch.tensor(np.array([scores[n] for n in layers]))

        out.append(Runner("Quantus", call))
    return out


def sparseness_runners(s: Setup, a: argparse.Namespace, peers: bool) -> List[Runner]:
    maps = s["maps"]
    out = [Runner("camkit", lambda: ev.sparseness(maps))]
    if peers:
        import quantus

        metric = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)
        out.append(Runner("Quantus", lambda: torch.tensor(metric(model=None, x_batch=_np(s["x"]), y_batch=_np(s["t"]),
                                                                 a_batch=_np(maps)[:, None].copy()))))
    return out


SCENARIOS: Dict[str, Callable[[Setup, argparse.Namespace, bool], List[Runner]]] = {
    "faithfulness_correlation": faithfulness_runners, "pixel_flipping": pixel_flipping_runners,
    "infidelity": infidelity_runners, "max_sensitivity": sensitivity_runners, "road": road_runners,
    "mprt": mprt_runners, "sparseness": sparseness_runners,
}


# --------------------------------------------------------------------------- running and reporting


def _timed(runners: List[Runner], rounds: int, device: str, memory: bool = True) -> Tuple[Dict[str, List[float]], Dict[str, float],
                                                                        Dict[str, Tensor]]:
    outs: Dict[str, Tensor] = {}
    peaks: Dict[str, float] = {}

    def keep(r: Runner) -> Runner:
        def call() -> None:
            outs.setdefault(r.name, torch.as_tensor(r.call()).detach().double().cpu())
        return Runner(r.name, call)

    kept = [keep(r) for r in runners]
    if not memory:
        times, peaks = interleave(kept, rounds, 0, timer=timer_for(device)), {r.name: float("nan") for r in kept}
    elif device == "cpu":
        timer = MemoryTimer()
        times = interleave(kept, rounds, 0, timer=timer)
        peaks = {r.name: timer.peaks[i] for i, r in enumerate(kept)}
    else:
        times = interleave(kept, rounds, 0, timer=timer_for(device))
        peaks = {r.name: cuda_peak_increase(r.call, device) / 2 ** 20 for r in runners}
    return times, peaks, outs


def run_scenario(name: str, s: Setup, args: argparse.Namespace) -> Dict[str, Any]:
    runners = SCENARIOS[name](s, args, args.peers)
    for r in runners:  # untimed warm-up (kernels, imports)
        r.call()
    times, peaks, outs = _timed(runners, args.rounds, s["device"], args.memory)
    ratios = {n: same_round_ratio(times, n, "camkit") for n in times if n != "camkit"}
    ref = outs["camkit"]
    agree = {n: float((o.reshape(ref.shape) - ref).abs().max()) for n, o in outs.items()
             if not n.startswith("camkit") and o.numel() == ref.numel()}
    return {"metric": name, "times_s": times, "peak_mib": peaks, "ratios": ratios, "agreement": agree}


def report(results: List[Dict[str, Any]], args: argparse.Namespace, policy: Dict[str, Any]) -> Tuple[str, Dict]:
    rows = [[r["metric"], n, statistics.median(ts), min(ts), "1" if n == "camkit" else f"{r['ratios'][n]:.2f}x",
             round(r["peak_mib"][n], 1), "" if n not in r["agreement"] else f"{r['agreement'][n]:.2e}"]
            for r in results for n, ts in r["times_s"].items()]
    text = "\n".join([
        f"Model {args.arch} (random weights, seed 0, eval mode), B={args.batch}, input 3x{args.size}x{args.size}, "
        f"top-1 targets, camkit Grad-CAM maps on {LAYER[args.arch]}. Settings: {args.runs} runs of {args.subset} "
        f"pixels (faithfulness correlation), {args.steps} steps (pixel flipping), {args.samples} perturbations "
        f"(infidelity, sensitivity), ROAD at 20/40/60/80 %, MPRT over the top {args.layers} layers, camkit "
        f"chunks of {args.chunk} inputs. {args.rounds} timed round(s) after one untimed call each. "
        f"Policy: {policy}.", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".", "",
        markdown_table(["metric", "runner", "median s", "min s", "peer / camkit (same-round median)", "peak MiB",
                        "max abs diff to camkit"], rows), ""])
    return text, {"settings": vars(args), "policy": policy, "versions": versions(), "results": results}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", choices=sorted(LAYER))
    p.add_argument("--metric", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192, help="H W a multiple of 3 x steps for Quantus's pixel flipping")
    p.add_argument("--runs", type=int, default=20, help="faithfulness correlation: subsets per image")
    p.add_argument("--subset", type=int, default=224, help="faithfulness correlation: pixels per subset")
    p.add_argument("--steps", type=int, default=12, help="pixel flipping: steps (a multiple of 3 for Quantus)")
    p.add_argument("--samples", type=int, default=8, help="infidelity / sensitivity: perturbations per image")
    p.add_argument("--layers", type=int, default=3, help="MPRT: layers randomized (top first)")
    p.add_argument("--chunk", type=int, default=64, help="camkit: inputs per model call")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="no peak memory (no gc.collect per call)")
    p.add_argument("--out", default=None, help="Markdown file (default: results/evaluation/<device>_<arch>.md)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    policy = configure(args.device, args.threads)
    prov = run_provenance(argv, "benchmarks.evaluation", args.device)
    s = make_setup(args.arch, args.batch, args.size, args.device)
    results = []
    for name in args.metric:
        results.append(run_scenario(name, s, args))
        print(name, {n: round(statistics.median(v), 3) for n, v in results[-1]["times_s"].items()},
              results[-1]["agreement"], flush=True)
    text, data = report(results, args, policy)
    out = args.out or str(RESULTS_DIR / f"{torch.device(args.device).type}_{args.arch}.md")
    md, js = write_results(out, prov, "camkit.evaluation against Quantus, captum and pytorch-grad-cam", text, data)
    print(text)
    print(f"wrote {md} and {js}")
    return md, js


if __name__ == "__main__":
    main()
