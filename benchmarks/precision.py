"""How far maps under mixed precision are from float32, and CUDA maps from CPU maps.

For VGG16 and ResNet50 (random weights, seed 0), LayerCAM on three layers and
Grad-CAM on the last one, the float32 maps of the float32 top-5 classes are
the reference. Each low-precision row runs the same call under
``torch.autocast(device, dtype)`` with the same targets and reports, over
all B x 5 maps: the maps' (``res.maps``, in [0, 1]) max, 99th percentile and
mean absolute difference from the reference, the raw per-layer maps' max
difference relative to their max, the maps' dtype and how many images keep
their float32 top-1 class. Rows:

* ``camkit``: ``cam(x, targets=t).maps`` under autocast.
* ``minimal floor, float32 map work``: ``benchmarks.peers.MinimalFloor``
  (plain autograd, no camkit code) with the formula, normalization and
  upsampling in float32: the difference that the low-precision forward and
  backward alone cause.
* ``minimal floor, map work in <dtype>``: the same with the formula,
  normalization and upsampling in the autocast dtype: what float32 map work
  saves.

With ``--device cuda`` (fp16 and bf16), a second table compares each method's
maps computed on CUDA with the same call on CPU, in float64 and in float32
(TF32 off), with the minimal floor's CPU-vs-CUDA difference beside camkit's.

Run::

    python -m benchmarks.precision                  # CPU, bf16, B=4
    python -m benchmarks.precision --device cuda    # fp16 and bf16, B=8, and CPU vs CUDA

Writes ``benchmarks/results/precision/<device>.md`` and the JSON beside it.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from benchmarks.harness import configure, markdown_table, max_diff, run_provenance, tf32_off, write_results
from benchmarks.peers import MinimalFloor, make_setup

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "precision"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def diff_stats(ref: Tensor, other: Tensor) -> Dict[str, float]:
    """|ref - other| over all elements (any equal shapes): max, 99th percentile, mean (float64 on CPU)."""
    d = (ref.detach().double().cpu() - other.detach().double().cpu()).abs().flatten()
    return {"max": d.max().item(), "p99": torch.quantile(d, 0.99).item() if d.numel() <= 2**24 else float("nan"),
            "mean": d.mean().item()}


def layer_rel(ref: Sequence[Tensor], other: Sequence[Tensor]) -> float:
    """The largest, over layers, of max |ref - other| / max |ref|."""
    return max(max_diff(r, o)[1] for r, o in zip(ref, other))


def _camkit(method: str, model: torch.nn.Module, layers: List[str]):
    import camkit

    cls = {"layercam": camkit.LayerCAM, "gradcam": camkit.GradCAM, "gradcampp": camkit.GradCAMpp}[method]
    return cls(model, layers=layers)


def _label(method: str) -> str:
    return {"layercam": "LayerCAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++"}[method]


def mixed_precision_rows(arch: str, batch: int, size: int, device: str, dtypes: Sequence[str]) -> List[List[object]]:
    """Rows [arch, method, layers, dtype, computed by, maps dtype, max, p99, mean, raw rel, top-1 kept]."""
    s = make_setup(arch, batch, size, device)
    rows: List[List[object]] = []
    for method, layers in (("layercam", s.layers3), ("gradcam", [s.layer1])):
        cam = _camkit(method, s.model, layers)
        ref = cam(s.x, topk=5)
        t = ref.targets
        ref_layers = [ref.layer_maps[n] for n in layers]
        floor_ref, floor_ref_raw, _ = MinimalFloor(s.model, layers, method)(s.x, targets=t)
        for name in dtypes:
            dt = DTYPES[name]
            with torch.autocast(s.device.type, dtype=dt):
                low = cam(s.x, targets=t)
                low_maps = low.maps
                floor32, floor32_raw, _ = MinimalFloor(s.model, layers, method)(s.x, targets=t)
                floorlow, floorlow_raw, _ = MinimalFloor(s.model, layers, method, map_dtype=dt)(s.x, targets=t)
            kept = f"{int((low.logits.argmax(1) == ref.logits.argmax(1)).sum())}/{s.x.shape[0]}"
            for who, maps, raw, rmaps, rraw, k in (
                ("camkit", low_maps, [low.layer_maps[n] for n in layers], ref.maps, ref_layers, kept),
                ("minimal floor, float32 map work", floor32, floor32_raw, floor_ref, floor_ref_raw, "-"),
                (f"minimal floor, map work in {name}", floorlow, floorlow_raw, floor_ref, floor_ref_raw, "-"),
            ):
                st = diff_stats(rmaps, maps)
                rows.append([arch, _label(method), "/".join(layers), name, who, str(maps.dtype).replace("torch.", ""),
                             st["max"], st["p99"], st["mean"], layer_rel(rraw, raw), k])
        cam.remove()
    return rows


def device_equality_rows(arch: str, batch: int, size: int, device: str) -> List[List[object]]:
    """Rows [arch, method, layers, dtype, computed by, max |cuda - cpu| of maps, raw rel] (TF32 off)."""
    rows: List[List[object]] = []
    for dtype in (torch.float64, torch.float32):
        s = make_setup(arch, batch, size, "cpu")
        s.model.to(dtype)
        x_cpu = s.x.to(dtype)
        model_gpu = copy.deepcopy(s.model).to(device)
        x_gpu = x_cpu.to(device)
        combos = [("layercam", s.layers3), ("gradcam", [s.layer1]), ("gradcampp", [s.layer1])]
        if arch == "vgg16":
            combos.append(("gradcam", ["features.28"]))  # a conv output that an in-place ReLU overwrites
        for method, layers in combos:
            with tf32_off():
                a = _camkit(method, s.model, layers)(x_cpu, topk=5)
                b = _camkit(method, model_gpu, layers)(x_gpu, targets=a.targets.to(device))
            dt = str(dtype).replace("torch.", "")
            rows.append([arch, _label(method), "/".join(layers), dt, "camkit", max_diff(a.maps, b.maps)[0],
                         layer_rel([a.layer_maps[n] for n in layers], [b.layer_maps[n] for n in layers])])
            if method == "gradcampp" and s.cam_layer is not None:  # and CAM, no backward
                import camkit

                with tf32_off():
                    a = camkit.CAM(s.model, layers=s.cam_layer, fc=s.fc)(x_cpu, topk=5)
                    b = camkit.CAM(model_gpu, layers=s.cam_layer, fc=s.fc)(x_gpu, targets=a.targets.to(device))
                rows.append([arch, "CAM", s.cam_layer, dt, "camkit", max_diff(a.maps, b.maps)[0],
                             max_diff(a.layer_maps[s.cam_layer], b.layer_maps[s.cam_layer])[1]])
            if method in ("layercam", "gradcam") and layers != ["features.28"]:
                with tf32_off():
                    fa, ra, _ = MinimalFloor(s.model, layers, method)(x_cpu, targets=a.targets)
                    fb, rb, _ = MinimalFloor(model_gpu, layers, method)(x_gpu, targets=a.targets.to(device))
                rows.append([arch, _label(method), "/".join(layers), dt, "minimal floor (plain autograd)",
                             max_diff(fa, fb)[0], layer_rel(ra, rb)])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", nargs="+", default=["vgg16", "resnet50"], choices=["vgg16", "resnet50", "tiny"])
    p.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                   help="default: bf16 on CPU, fp16 and bf16 on CUDA")
    p.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 8 on CUDA")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-device-equality", dest="equality", action="store_false", help="CUDA: skip CPU vs CUDA")
    p.add_argument("--out", default=None, help="Markdown file (default: results/precision/<device>.md)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    dtypes = args.dtypes or (["fp16", "bf16"] if cuda else ["bf16"])
    batch = args.batch or (8 if cuda else 4)
    out = args.out or str(RESULTS_DIR / f"{torch.device(args.device).type}.md")
    policy = configure(args.device, args.threads, "off")
    prov = run_provenance(argv, "benchmarks.precision", args.device)
    rows: List[List[object]] = []
    for arch in args.arch:
        print(f"{arch}: mixed precision", flush=True)
        with tf32_off():
            rows += mixed_precision_rows(arch, batch, args.size, args.device, dtypes)
    header = ["arch", "method", "layers", "autocast", "computed by", "maps dtype", "max |d| maps", "p99 |d| maps",
              "mean |d| maps", "max rel |d| raw layer maps", "top-1 kept"]
    body = [f"Models with random weights (seed 0), eval mode, B={batch} standard-normal inputs 3x{args.size}x{args.size} "
            "(seed 1), the float32 top-5 classes as targets (B x 5 maps per row). Differences from the float32 run of "
            f"the same computation; maps in [0, 1]. TF32 off. Device policy: {policy}.\n",
            "## Mixed precision against float32\n", markdown_table(header, rows), ""]
    eq_rows: List[List[object]] = []
    if cuda and args.equality:
        for arch in args.arch:
            print(f"{arch}: CPU vs CUDA", flush=True)
            eq_rows += device_equality_rows(arch, 2, args.size, args.device)
        body += ["## CUDA against CPU (same weights, input and targets; TF32 off)\n",
                 markdown_table(["arch", "method", "layers", "dtype", "computed by", "max |d| maps",
                                 "max rel |d| raw layer maps"], eq_rows), ""]
    text = "\n".join(body)
    print(text, flush=True)
    md, js = write_results(out, prov, "Maps under mixed precision" + (" and on CUDA vs CPU" if cuda else ""), text,
                           {"settings": {"batch": batch, "size": args.size, "dtypes": dtypes, "policy": policy},
                            "mixed_precision": [header, *rows], "device_equality": eq_rows})
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
