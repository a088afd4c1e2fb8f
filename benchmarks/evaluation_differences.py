"""Where camkit.evaluation's definitions differ from its peers', measured on real photos: the offline
EfficientNet-Lite0 (ImageNet weights), the 4 bundled sample photos, camkit Grad-CAM maps on ``bn2`` for the
top-1 class. One number per difference (the README's lines come from this output).

    python -m benchmarks.evaluation_differences            # about a minute on one CPU thread

writes ``benchmarks/results/evaluation/differences.{json,md}`` with the run's provenance.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor

import camkit
from benchmarks.provenance import markdown_header, provenance
from camkit import evaluation as ev
from camkit.app import ModelSpec, load_image, sample_images

warnings.filterwarnings("ignore")


def setup() -> Tuple[torch.nn.Module, Tensor, Tensor, Tensor]:
    model, preset = ModelSpec().build()
    x = torch.stack([preset.transform(load_image(p)) for p in sample_images()])
    with torch.no_grad():
        t = model(x).argmax(1)
    maps = camkit.GradCAM(model, "bn2")(x, t).maps[:, 0].detach()
    return model.eval(), x, t, maps


def road_ties(model, x, t, maps) -> str:
    """pytorch-grad-cam's ROAD removes every pixel tied at the percentile (Grad-CAM maps are 0 on whole regions)."""
    from pytorch_grad_cam.metrics import road as gc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    gc_road.NoisyLinearImputer.__init__.__defaults__ = (0.0, gc_road.neighbors_weights)
    pct = [20, 40, 60, 80]
    ours = ev.road(model, x, maps, t, pct, noise=0.0)["combined"]
    theirs = gc_road.ROADCombined(pct)(x, maps.numpy(), [ClassifierOutputTarget(int(c)) for c in t], model)
    n = maps[0].numel()
    gc = [n - int((maps[0].numpy() < np.percentile(maps[0].numpy(), 100 - p)).sum()) for p in pct]
    return (f"ROAD combined (logit), camkit - pytorch-grad-cam, noise 0, percentiles 20..80: max |diff| "
            f"{np.abs(ours.numpy() - theirs).max():.3g} (camkit {ours.numpy().round(3).tolist()}, pytorch-grad-cam "
            f"{np.round(theirs, 3).tolist()}); pixels removed (MoRF, image 0): camkit "
            f"{[int(n * p / 100) for p in pct]}, pytorch-grad-cam {gc}")


def quantus_elements(model, x, t, maps) -> List[str]:
    """Quantus perturbs input elements (a channel of a pixel), camkit whole pixels."""
    import quantus

    g = torch.Generator().manual_seed(0)
    maps = maps + 1e-6 * torch.rand(maps.shape, generator=g)
    hw = maps[0].numel()
    ours = ev.pixel_flipping(model, x, maps, t, hw // 8, x.amin((1, 2, 3), keepdim=True))
    metric = quantus.PixelFlipping(features_in_step=hw // 8, perturb_baseline="black", abs=False, normalise=False,
                                   disable_warnings=True, display_progressbar=False)
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps[:, None].numpy(),
                               device="cpu", softmax=False))
    # Quantus: 3 H W features, H W / 8 elements a step -> 24 steps; camkit's 8 steps = Quantus's steps 3, 6, ... 24
    d = np.abs(theirs[:, 2::3] - ours.numpy()).max()
    return [f"pixel flipping, Quantus with a (B, 1, H, W) map on RGB images flips channels of pixels, not pixels: "
            f"{theirs.shape[1]} steps instead of {ours.shape[1]}, and at the same number of input elements changed "
            f"its curve differs from camkit's by up to {d:.3g} (logit)"]


def quantus_ssim(maps) -> str:
    """Quantus's ssim gets the maps flattened (MPRT reshapes them to (B, H*W)): a 1-D SSIM."""
    from skimage.metrics import structural_similarity

    a, b = maps[:2], maps[2:4]
    ours = ev.ssim(a, b).numpy()
    flat = [structural_similarity(u.flatten().numpy(), v.flatten().numpy(), data_range=float(max(u.max(), v.max())
                                                                                               - min(u.min(), v.min())))
            for u, v in zip(a, b)]
    return f"SSIM: Quantus's MPRT / random logit compare flattened maps (1-D SSIM): {np.round(flat, 3).tolist()} " \
           f"against camkit's 2-D SSIM {ours.round(3).tolist()} on the same two pairs of maps"


def mprt_randomizer(model, x, t, maps) -> str:
    """Quantus re-draws a layer by its reset_parameters (global RNG seeded seed + 1); camkit by U(-1/sqrt(fan_in))
    from a private generator; BatchNorm: reset (weight 1, bias 0, running stats 0 / 1) against U(-1, 1)."""
    layers = [n for n, mod in model.named_modules() if hasattr(mod, "reset_parameters")][::-1][:6]

    def reset(module, gen):
        with torch.random.fork_rng():
            torch.manual_seed(43)
            module.reset_parameters()

    def explain(m, xx, tt):
        return camkit.GradCAM(m, "bn2")(xx, tt).maps[:, 0]

    ours = ev.model_randomization(model, explain, x, t, layers=layers, similarity="spearman")["spearman"]
    theirs = ev.model_randomization(model, explain, x, t, layers=layers, similarity="spearman",
                                    randomize=reset)["spearman"]
    return (f"MPRT, top 6 layers cascading, Grad-CAM: mean Spearman per layer with camkit's re-draw "
            f"{ours.nanmean(1).numpy().round(3).tolist()}, with Quantus's reset_parameters "
            f"{theirs.nanmean(1).numpy().round(3).tolist()} (layers {layers})")


def monotonicity(model, x, t, maps) -> str:
    """Quantus 0.6's Monotonicity replaces the baseline by the baseline: its curve never moves."""
    import quantus

    g = torch.Generator().manual_seed(0)
    maps = maps + 1e-6 * torch.rand(maps.shape, generator=g)
    hw = maps[0].numel()
    ours = ev.monotonicity(model, x, maps, t, hw // 16)
    metric = quantus.Monotonicity(features_in_step=hw // 16, perturb_baseline="black", abs=False, normalise=False,
                                  disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps[:, None].numpy(), device="cpu",
                    softmax=False)
    return (f"monotonicity: Quantus 0.6 says {theirs} (its baseline image never receives the image's pixels); "
            f"camkit (Arya et al.: pixels revealed, least relevant first) {ours['monotonic'].tolist()}, "
            f"curve range {float((ours['curve'].amax(1) - ours['curve'].amin(1)).min()):.3g}..."
            f"{float((ours['curve'].amax(1) - ours['curve'].amin(1)).max()):.3g}")


def small_epsilons(maps) -> str:
    import quantus

    kw = dict(model=None, x_batch=np.zeros((4, 1, *maps.shape[-2:])), y_batch=np.zeros(4, dtype=int), channel_first=True)
    a = maps[:, None].numpy().copy()
    ds = np.abs(quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)(a_batch=a.copy(), **kw)
                - ev.sparseness(maps).numpy()).max()
    dc = np.abs(quantus.Complexity(abs=True, normalise=False, disable_warnings=True)(a_batch=a.copy(), **kw)
                - ev.complexity(maps).numpy()).max()
    return f"sparseness: Quantus adds 1e-7 to every value: max |diff| {ds:.2g}; complexity: Quantus's log(p + 1e-12): {dc:.2g}"


def irof_baseline(model, x, t, maps) -> str:
    """Quantus 0.6's IROF on RGB images: its segment mask is (B, 1, H, W), its input (B, 3, H, W)."""
    import quantus

    np.trapz = np.trapezoid  # Quantus 0.6 on numpy 2.4
    metric = quantus.IROF(perturb_baseline="mean", abs=False, normalise=False, return_aggregate=False,
                          disable_warnings=True)
    try:
        metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=np.repeat(maps[:, None].numpy(), 3, 1),
               device="cpu")
        state = "runs"
    except AssertionError as e:
        state = f"fails ({e})"
    ours = ev.irof(model, x, maps, t, ev.slic_segments(x))
    return (f"IROF: Quantus 0.6 on these RGB images {state}; camkit's AOC / segments "
            f"{(ours['aoc'] / ours['segments']).numpy().round(3).tolist()}")


def main() -> None:
    torch.set_num_threads(1)
    model, x, t, maps = setup()
    lines: List[str] = []
    steps: List[Callable[[], object]] = [
        lambda: road_ties(model, x, t, maps), lambda: quantus_elements(model, x, t, maps),
        lambda: quantus_ssim(maps), lambda: mprt_randomizer(model, x, t, maps),
        lambda: monotonicity(model, x, t, maps), lambda: small_epsilons(maps),
        lambda: irof_baseline(model, x, t, maps)]
    for step in steps[int(sys.argv[1]) if len(sys.argv) > 1 else 0:]:
        out = step()
        for line in out if isinstance(out, list) else [out]:
            lines.append(line)
            print("-", line, flush=True)
    results: Dict[str, object] = {"classes": t.tolist()}
    print(results, file=sys.stderr)
    if len(sys.argv) == 1:  # the whole run: the README's lines come from this file
        prov = provenance(module="benchmarks.evaluation_differences")
        out = Path(__file__).resolve().parent / "results" / "evaluation"
        out.mkdir(parents=True, exist_ok=True)
        (out / "differences.json").write_text(json.dumps({"provenance": prov, "lines": lines, **results}, indent=1) + "\n")
        (out / "differences.md").write_text("# camkit.evaluation against its peers: definition differences\n\n"
                                            + markdown_header(prov) + "\n" + "".join(f"- {ln}\n" for ln in lines))
        print(f"wrote {out / 'differences.md'}")


if __name__ == "__main__":
    main()
