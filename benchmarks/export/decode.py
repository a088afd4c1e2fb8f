"""Decode paths for the export on Flower-17: speed and difference from the current (PIL) path.

    python -m benchmarks.export decode                  # all 1360 JPEGs, 3 rounds, maps on 64
    python -m benchmarks.export decode --images 40 --rounds 1 --maps 8   # a quick look

Paths, each from the file to the model input of the offline ``efficientnet_lite0`` preset
(Resize 256 bicubic, CenterCrop 224, ToTensor, Normalize), one torch thread, one process:

- ``pil``: ``preset.transform(camkit.load_image(path))``, the path before this benchmark;
- ``pil draft``: PIL's ``Image.draft("RGB", size)`` (JPEG DCT-domain downscaling by 1/2, 1/4 or 1/8
  while decoding, never below the size the resize needs), then the same exact transform;
- ``pil-jpeg``: ``camkit.export.decoding.load_fast`` (PIL once, without ``load_image``'s two
  full-image copies), the same transform: the export's CPU decoder;
- ``torchvision decode + PIL transform``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo), the
  pixels handed to PIL (``Image.fromarray``) for the same exact transform;
- ``torchvision tensors``: ``decode_batch`` on the CPU (``decode_jpeg`` + the transform's steps on
  tensors: torch's antialiased bicubic resize): the code the export runs on a CUDA device, here on CPU;
- ``pil-jpeg + resize of the crop only``: PIL's ``resize(box=...)`` of the part CenterCrop keeps,
  straight to 224 x 224 (less work; not PIL's exact arithmetic of resize-then-crop).

Rounds are interleaved (all paths in round 1, then round 2, ...); images/s is the median over rounds.
Differences against ``pil`` over every image: max and mean |model input difference| (normalized
units and 8-bit grey levels), share of images byte-identical; on the first ``--maps`` images the
LayerCAM top-1 maps (the export's default method) put back on the photo (max / mean |diff|) and
the masks at the export's threshold (pixels that differ).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from benchmarks.harness import markdown_table, run_provenance, write_results

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "export"
FLOWERS = REPO.parent / "shared" / "flower17" / "jpg"


def draft_loader(transform: Any) -> Callable[[str], Any]:
    """PIL with ``draft``: the largest JPEG scale that still leaves the first resize's output size."""
    from PIL import Image, ImageOps

    short = transform.transforms[0].size
    short = short if isinstance(short, int) else short[0]

    def load(path: str):
        with Image.open(path) as im:
            w, h = im.size
            s = short / min(w, h)
            im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
            im = ImageOps.exif_transpose(im)
            out = im.convert("RGB")
            out.load()
            return out
    return load


def boxed_transform(transform: Any) -> Callable[[Any], torch.Tensor]:
    """Resize only the part CenterCrop keeps (PIL ``resize(box=...)`` straight to 224 x 224), then
    the transform's remaining steps: less resizing work, not PIL's exact arithmetic."""
    from PIL import Image

    from camkit.geometry import crop_box

    rest = transform.transforms[2:]
    out_h, out_w = transform.transforms[1].size

    def run(im: Any) -> torch.Tensor:
        top, left, h, w = crop_box((im.height, im.width), transform)
        x = im.resize((out_w, out_h), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
        for t in rest:
            x = t(x)
        return x
    return run


def paths_under_test(transform: Any) -> Dict[str, Callable[[Sequence[str]], List[torch.Tensor]]]:
    """name -> function(list of paths) -> model inputs ``(3, 224, 224)``."""
    from PIL import Image

    from camkit.app import load_image
    from camkit.export.decoding import (
        Raw,
        decode_batch,
        decode_jpeg,
        jpeg_orientation,
        load_fast,
        read_bytes,
        tensor_plan,
    )

    plan = tensor_plan(transform)
    draft, boxed = draft_loader(transform), boxed_transform(transform)

    def tensors(ps: Sequence[str]) -> List[torch.Tensor]:
        raws = [Raw(read_bytes(q), jpeg_orientation(q) or 1) for q in ps]
        return [d[0] for d in decode_batch(raws, plan, "cpu")]  # type: ignore[index,arg-type]

    def tv_then_pil(q: str) -> Any:  # Flower-17 has no EXIF rotation: decode + hand to PIL
        x = decode_jpeg(torch.from_numpy(read_bytes(q)))
        return Image.fromarray(x.permute(1, 2, 0).numpy())

    return {
        "pil": lambda ps: [transform(load_image(q)) for q in ps],
        "pil draft": lambda ps: [transform(draft(q)) for q in ps],
        "pil-jpeg (export's CPU decoder)": lambda ps: [transform(load_fast(q)) for q in ps],
        "torchvision decode + PIL transform": lambda ps: [transform(tv_then_pil(q)) for q in ps],
        "torchvision tensors (the CUDA path's code)": tensors,
        "pil-jpeg + resize of the crop only": lambda ps: [boxed(load_fast(q)) for q in ps],
    }


def input_differences(ref: Sequence[torch.Tensor], other: Sequence[torch.Tensor], std: float) -> Dict[str, float]:
    d = [(a - b).abs() for a, b in zip(ref, other)]
    mx = max(float(x.max()) for x in d)
    mean = statistics.fmean(float(x.mean()) for x in d)
    return {"max_abs": mx, "mean_abs": mean, "max_levels": mx * std * 255, "mean_levels": mean * std * 255,
            "identical_share": sum(torch.equal(a, b) for a, b in zip(ref, other)) / len(ref)}


def map_differences(model: Any, preset: Any, paths: Sequence[str], ref: Sequence[torch.Tensor],
                    other: Sequence[torch.Tensor]) -> Dict[str, float]:
    """LayerCAM top-1 on both inputs, put back on the photo; masks at the export's threshold."""
    from PIL import Image

    from camkit import LayerCAM
    from camkit.export import DEFAULT_THRESHOLD
    from camkit.export.pipeline import back_on_original
    from camkit.pseudomasks import masks_from_maps

    mx, means, differ, total, same_class = 0.0, [], 0, 0, 0
    with LayerCAM(model, layers=list(preset.layers)) as cam:
        for q, a, b in zip(paths, ref, other):
            ra, rb = cam(a[None]), cam(b[None])
            with Image.open(q) as im:
                size = im.size[::-1]
            ha = back_on_original(ra.maps[0], size, preset.transform).float()
            hb = back_on_original(rb.maps[0], size, preset.transform).float()
            same_class += int(ra.targets[0, 0] == rb.targets[0, 0])
            d = (ha - hb).abs()
            mx, means = max(mx, float(d.max())), means + [float(d.mean())]
            ka, kb = ra.targets[0].numpy(), rb.targets[0].numpy()
            ma = masks_from_maps(ha.half().numpy(), DEFAULT_THRESHOLD, ka)
            mb = masks_from_maps(hb.half().numpy(), DEFAULT_THRESHOLD, kb)
            differ, total = differ + int((ma != mb).sum()), total + ma.size
    return {"max_abs": mx, "mean_abs": statistics.fmean(means), "mask_pixels_differing": differ,
            "mask_pixels": total, "same_top1": same_class / len(paths)}


def draft_scales(paths: Sequence[str], transform: Any) -> Dict[str, int]:
    """How many images ``draft`` decoded at each scale (1 = full size)."""
    from PIL import Image

    load = draft_loader(transform)
    counts: Dict[str, int] = {}
    for q in paths:
        with Image.open(q) as im:
            w = im.size[0]
        k = f"1/{round(w / load(q).size[0])}"
        counts[k] = counts.get(k, 0) + 1
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.export decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=0, help="first N images of Flower-17 (0: all 1360)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--maps", type=int, default=64, help="images whose maps and masks are compared")
    p.add_argument("--data", default=str(FLOWERS), help="folder of the Flower-17 JPEGs")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prov = run_provenance(["decode", *argv], module="benchmarks.export")

    from camkit.adapters import build

    model, preset = build("efficientnet_lite0")
    paths = sorted(str(q) for q in Path(args.data).glob("*.jpg"))[:args.images or None]
    fns = paths_under_test(preset.transform)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    outs: Dict[str, List[torch.Tensor]] = {}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn(paths)
            times[name].append(time.perf_counter() - t0)
            print(f"{name}: {len(paths) / times[name][-1]:.1f} images/s", file=sys.stderr)
    std = float(preset.std[0])
    rates = {k: len(paths) / statistics.median(v) for k, v in times.items()}
    diffs = {k: input_differences(outs["pil"], outs[k], std) for k in fns if k != "pil"}
    m = min(args.maps, len(paths))
    maps = {k: map_differences(model, preset, paths[:m], outs["pil"][:m], outs[k][:m]) for k in fns if k != "pil"}
    write(args, prov, paths, rates, diffs, maps, draft_scales(paths, preset.transform), m)
    return 0


def write(args: Any, prov: Dict[str, Any], paths: Sequence[str], rates: Dict[str, float], diffs: Dict[str, Any],
          maps: Dict[str, Any], scales: Dict[str, int], m: int) -> None:
    rows = [[k, f"{r:.1f}", f"{r / rates['pil']:.2f}",
             *(["(reference)"] * 5 if k == "pil" else
               [f"{diffs[k]['max_abs']:.2e} ({diffs[k]['max_levels']:.1f})",
                f"{diffs[k]['mean_abs']:.2e} ({diffs[k]['mean_levels']:.3f})",
                f"{100 * diffs[k]['identical_share']:.1f}%",
                f"{maps[k]['max_abs']:.2e} / {maps[k]['mean_abs']:.2e}",
                f"{maps[k]['mask_pixels_differing']} of {maps[k]['mask_pixels']}"])] for k, r in rates.items()]
    header = ["path", "images/s (1 thread)", "x pil", "model input max |diff| (grey levels)",
              "mean |diff| (grey levels)", "inputs byte-identical", f"maps max / mean |diff| ({m} images)",
              f"mask pixels differing ({m} images)"]
    body = [
        f"{len(paths)} Flower-17 JPEGs (500 px shorter side), the offline `efficientnet_lite0` preset's input "
        f"(Resize 256 bicubic, CenterCrop 224, ToTensor, Normalize mean 0.5 std 0.5), one torch thread, "
        f"{args.rounds} interleaved round(s), median. Differences against `pil` over all images, in normalized "
        "units and in 8-bit grey levels; maps: LayerCAM top-1 (the preset's layers, max fusion) put back on the "
        "photo, masks at the export's threshold 0.15.", "", markdown_table(header, rows), "",
        f"`pil draft` decoded the images at scales {scales}: `draft` never goes below the size the resize needs "
        "(256 px shorter side), and a 500 px JPEG cannot be halved without going below it, so on Flower-17 it "
        "decodes at full size and gains nothing.",
        "`torchvision tensors` is the CUDA path's code run on the CPU (on a GPU, nvjpeg decodes; its pixels are "
        "not measured here).",
    ]
    md, js = write_results(Path(args.out) / "decode.md", prov, "Export decode paths on Flower-17", "\n".join(body),
                           {"rates": rates, "input_differences": diffs, "map_differences": maps,
                            "draft_scales": scales, "images": len(paths), "rounds": args.rounds, "maps": m})
    print(f"wrote {md} and {js}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
