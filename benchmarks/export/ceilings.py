"""camkit export against its two ceilings, in one run: decode-only, model-only, end to end.

    python -m benchmarks.export ceilings                         # 1360 Flower-17 JPEGs, 2 rounds (CPU)
    python -m benchmarks.export ceilings --images 64 --rounds 1 --model-batches 2   # a quick look
    python -m benchmarks.export ceilings --device cuda --batch-size 128 --workers 8   # on a GPU

In one process, interleaved rounds of:

- decode-only: the export's own DataLoader (``camkit.export.pipeline.make_loader`` over its
  ``Decode`` dataset, ``--workers`` processes) over all images, nothing else; on CUDA with the
  nvjpeg decoder the batches are also decoded and transformed on the GPU (``on_device``);
- model-only: the export's ``explain_group`` (the method's call, the finest-layer maps, the copies
  to the CPU) on ``--model-batches`` batches decoded beforehand, held in memory;
- write-only: the export's ``Writer`` (maps back on the photo, float16, mask, ``.npz`` + ``.png``,
  manifest records) on those batches' results;
- end to end: ``camkit.export.run`` on all images (its loop rate: first batch to merged manifest).

With ``--compare-pil`` (default on) decode-only and end to end also run with the PIL decoder the
export used before (``camkit.load_image``), forced by replacing ``pipeline.choose_decoder`` for
that run. The goal (issue 25): end to end >= 90% of the lower of decode-only and model-only
(same-round ratios, median over rounds).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from benchmarks.harness import markdown_table, run_provenance, write_results

REPO = Path(__file__).resolve().parents[2]
MODELS = {"efficientnet_lite0": "`efficientnet_lite0` (camkit export's default, offline ImageNet weights, 224 x 224)",
          "resnet50": "torchvision `resnet50` (random weights, ImageNet preprocessing, 224 x 224)"}
RESULTS = REPO / "benchmarks" / "results" / "export"
FLOWERS = REPO.parent / "shared" / "flower17" / "jpg"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def forced_decoder(name: Optional[str]) -> Iterator[None]:
    """The export's decoder choice replaced by ``name`` (None: its own choice)."""
    from camkit.export import pipeline

    old = pipeline.choose_decoder
    if name is not None:
        pipeline.choose_decoder = lambda device, transform: name  # type: ignore[assignment]
    try:
        yield
    finally:
        pipeline.choose_decoder = old  # type: ignore[assignment]


def decode_only(items: Sequence[Any], batches: Sequence[List[int]], tf: Any, decoder: str, device: torch.device,
                workers: int) -> float:
    """images/s of the export's loader alone (and the GPU decode of its batches with nvjpeg)."""
    from camkit.export.decoding import tensor_plan
    from camkit.export.pipeline import Decode, make_loader, on_device

    dataset = Decode(items, tf, decoder)
    plan = tensor_plan(tf) if decoder == "nvjpeg" else None
    n, t0 = 0, time.perf_counter()
    for batch in make_loader(dataset, batches, device, workers):
        if plan is not None:
            batch = on_device(batch, dataset, plan, device)
        n += len(batch)
    _sync(device)
    return n / (time.perf_counter() - t0)


def predecode(items: Sequence[Any], batches: Sequence[List[int]], tf: Any, decoder: str,
              device: torch.device) -> List[Dict[str, Any]]:
    """``batches`` decoded once (held for model-only): per batch its items, inputs and sizes."""
    from camkit.export.decoding import tensor_plan
    from camkit.export.pipeline import Decode, on_device

    dataset, plan, out = Decode(items, tf, decoder), tensor_plan(tf), []
    for b in batches:
        got = [dataset[i] for i in b]
        if decoder == "nvjpeg":
            got = on_device(got, dataset, plan, device)  # type: ignore[arg-type]
        out.append({"items": [items[g[0]] for g in got], "xs": [torch.as_tensor(g[1]) for g in got],
                    "sizes": [g[2] for g in got]})
    return out


def model_only(held: Sequence[Dict[str, Any]], method: Any, device: torch.device) -> Tuple[float, List[Any]]:
    """images/s of ``explain_group`` on the held batches; the jobs it made."""
    from camkit.export.pipeline import explain_group

    dtype = next(method.model.parameters()).dtype
    jobs: List[Any] = []
    _sync(device)
    t0 = time.perf_counter()
    for h in held:
        jobs += explain_group(h["items"], h["xs"], h["sizes"], method, device, dtype, 1)
    _sync(device)
    return len(jobs) / (time.perf_counter() - t0), jobs


def write_only(jobs: Sequence[Any], tf: Any, out: Path, num_classes: int, threads: int) -> float:
    """images/s of the export's writer (``threads`` threads, as the export starts them) on ``jobs``."""
    from camkit.export import DEFAULT_THRESHOLD
    from camkit.export.manifest import PartLog
    from camkit.export.pipeline import Writer

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    w = Writer(out, PartLog(out / "parts" / "bench.jsonl", 0, "bench"), DEFAULT_THRESHOLD, tf, maxsize=64,
               num_classes=num_classes)
    w.add_threads(threads - 1)
    for j in jobs:
        w.put(j)
    w.close()
    return len(jobs) / (time.perf_counter() - t0)


def end_to_end(lst: Path, out: Path, spec: Any, args: Any, decoder: Optional[str]) -> float:
    from camkit.export import run

    shutil.rmtree(out, ignore_errors=True)
    with forced_decoder(decoder):
        s = run(str(lst), str(out), spec, batch_size=args.batch_size, workers=args.workers, device=args.device,
                threads=args.threads, progress=False, overwrite=True)
    shutil.rmtree(out, ignore_errors=True)
    return s.images_per_s


def synthetic_jpegs(folder: Path, n: int) -> Path:
    """``n`` JPEGs (quality 90, 500 px shorter side, Flower-17's aspect ratios) cut from the bundled
    sample photos at seeded random boxes and flips: for a machine without Flower-17."""
    import numpy as np
    from PIL import Image

    from camkit.app import sample_images

    rng = np.random.default_rng(0)
    photos = [Image.open(q).convert("RGB") for q in sample_images()]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        im = photos[k % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x0, y0, x0 + cw, y0 + ch))
        s = 500 / min(cw, ch)
        crop = crop.resize((round(cw * s), round(ch * s)), Image.Resampling.BICUBIC)
        if k % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"image_{k:04d}.jpg", quality=90)
    return folder


def model_spec(name: str, device: str) -> Any:
    from camkit.app import ModelSpec

    if name == "efficientnet_lite0":
        return ModelSpec()
    import torchvision

    from camkit.adapters import imagenet_transform

    torch.manual_seed(0)
    return ModelSpec(torchvision.models.resnet50().eval().to(device), transform=imagenet_transform())


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export ceilings", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=0, help="first N images of Flower-17 (0: all 1360)")
    p.add_argument("--method", default="layercam", help="the export's method (default: camkit export's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model-batches", type=int, default=16, help="batches held for model-only and write-only")
    p.add_argument("--no-compare-pil", dest="compare_pil", action="store_false")
    p.add_argument("--decoder", default="auto", choices=["auto", "pil", "pil-jpeg", "nvjpeg"],
                   help="force a decoder (auto: the export's choice; nvjpeg on the CPU runs the CUDA path's code there)")
    p.add_argument("--data", default=str(FLOWERS), help="folder of the Flower-17 JPEGs")
    p.add_argument("--synthetic", type=int, default=0,
                   help="instead of --data: N JPEGs cut from camkit's sample photos (500 px shorter side)")
    p.add_argument("--model", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet50"],
                   help="resnet50: torchvision's, random weights (seed 0), ImageNet preprocessing (no download)")
    p.add_argument("--scratch", default="/tmp/camkit-export-ceilings")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prov = run_provenance(["ceilings", *argv], module="benchmarks.export", device=args.device)

    from camkit.app import ExplainSpec, MethodSpec
    from camkit.export import rank_batches
    from camkit.export.pipeline import choose_decoder, writer_threads
    from camkit.export.worklist import work_items

    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    data = synthetic_jpegs(scratch / "jpg", args.synthetic) if args.synthetic else Path(args.data)
    paths = sorted(str(q) for q in data.glob("*.jpg"))[:args.images or None]
    lst = scratch / "images.txt"
    lst.write_text("".join(f"{q}\n" for q in paths))
    spec = ExplainSpec(model=model_spec(args.model, args.device), method=MethodSpec(name=args.method))
    built = spec.build(device=args.device)
    device, tf = next(built.model.parameters()).device, built.preset.transform
    decoder = choose_decoder(device, tf) if args.decoder == "auto" else args.decoder
    items = work_items([(q, Path(q).stem) for q in paths], None, [])
    batches = rank_batches(len(items), args.batch_size, 0, 1)
    held = predecode(items, batches[:args.model_batches], tf, decoder, device)
    rows: List[Dict[str, float]] = []
    with built.method:
        model_only(held[:1], built.method, device)  # warm-up (first-call allocations, cudnn autotuning)
    for _ in range(args.rounds):
        row = {f"decode-only ({decoder})": decode_only(items, batches, tf, decoder, device, args.workers)}
        if args.compare_pil:
            row["decode-only (pil)"] = decode_only(items, batches, tf, "pil", device, args.workers)
        with built.method:
            row["model-only"], jobs = model_only(held, built.method, device)
        row["write-only"] = write_only(jobs, tf, scratch / "write", 1000, writer_threads(args.workers))
        row[f"end to end ({decoder})"] = end_to_end(lst, scratch / "e2e", spec, args,  # its own model
                                                    None if args.decoder == "auto" else decoder)
        if args.compare_pil:
            row["end to end (pil)"] = end_to_end(lst, scratch / "e2e", spec, args, "pil")
        rows.append(row)
        print({k: round(v, 2) for k, v in row.items()}, file=sys.stderr)
    report(args, prov, paths, decoder, rows, writer_threads(args.workers))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def report(args: Any, prov: Dict[str, Any], paths: Sequence[str], decoder: str, rows: List[Dict[str, float]],
           writers: int) -> None:
    e2e, dec = f"end to end ({decoder})", f"decode-only ({decoder})"
    for row in rows:
        row["e2e / min(decode, model)"] = row[e2e] / min(row[dec], row["model-only"])
        row["e2e / min(decode, model, write)"] = row[e2e] / min(row[dec], row["model-only"], row["write-only"])
        if "end to end (pil)" in row:
            row["e2e (pil) / min(decode (pil), model)"] = row["end to end (pil)"] / min(
                row["decode-only (pil)"], row["model-only"])
    keys = list(rows[0])
    med = {k: statistics.median(r[k] for r in rows) for k in keys}
    table = markdown_table(["measure", *[f"round {i + 1}" for i in range(len(rows))], "median"],
                           [[k, *[f"{r[k]:.2f}" for r in rows], f"{med[k]:.2f}"] for k in keys])
    goal = med["e2e / min(decode, model)"] >= 0.9
    body = [
        f"{len(paths)} {'synthetic JPEGs cut from the sample photos' if args.synthetic else 'Flower-17 JPEGs'} "
        f"(500 px shorter side), model {MODELS[args.model]} and method `{args.method}`, top-1 class, batch {args.batch_size}, "
        f"{args.workers} DataLoader worker(s), {args.threads or 'default'} torch thread(s), {writers} writer "
        f"thread(s) (`pipeline.writer_threads`), device {args.device}; "
        f"decoder `{decoder}` (the export's choice here). Rates in images/s, the measures interleaved in each round "
        f"(each end-to-end run builds its own model, untimed). Model-only and write-only run on "
        f"{min(args.model_batches, len(paths) // args.batch_size or 1)} batches decoded beforehand.", "",
        table, "",
        f"Goal (end to end >= 90% of the lower ceiling): {'met' if goal else 'not met'} "
        f"({100 * med['e2e / min(decode, model)']:.0f}%). Write-only is the writer's own rate (maps back on the "
        "photo, mask, `.npz` + `.png` with fsync): a third stage, run beside the computation on the cores "
        "left; where it is the slowest, end to end is bound by it (last ratio).",
    ]
    md, js = write_results(Path(args.out) / f"ceilings_{torch.device(args.device).type}.md", prov,
                           "camkit export against its decode-only and model-only ceilings", "\n".join(body),
                           {"rounds": rows, "median": med, "decoder": decoder, "images": len(paths),
                            "args": vars(args)})
    print(f"wrote {md} and {js}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
