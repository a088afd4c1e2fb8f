"""Throughput of ``camkit export`` on Flower-17: 1 process, torchrun 2 processes, and a plain
pytorch-grad-cam loop (``benchmarks/export/baseline.py``) over the same images, method and layers.

    python -m benchmarks.export throughput                     # all 1360 images, gradcam and layercam
    python -m benchmarks.export throughput --images 64 --methods gradcam   # a quick look

Every run is a fresh process (``python -m camkit export ...`` / ``torchrun ... -m camkit export ...``
/ ``python -m benchmarks.export.baseline ...``), one torch thread per process, writing its outputs
to a scratch folder. Reported per run: images/s over the loop (camkit: its summary line, from the
first batch to the merged manifest; the baseline: its own loop timer), images/s end to end
(process start to exit: imports, model, rendezvous included), CPU seconds per image (user + sys of
the whole process tree: DataLoader workers, writer thread and torchrun agent included) and the
load average before and after. Ratios are taken within one run of this script. The 2-process
outputs are checked byte for byte against the 1-process ones; the baseline's maps are compared
with camkit's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from benchmarks.harness import load_average, markdown_table, run_provenance, write_results

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "export"
FLOWERS = REPO.parent / "shared" / "flower17" / "jpg"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: Sequence[str], env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run ``cmd`` to the end: wall seconds, CPU seconds of its process tree, load before/after, output."""
    load0, cpu0, t0 = load_average(), _children_cpu(), time.perf_counter()
    p = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=REPO)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return {"command": " ".join(cmd), "wall_s": wall, "cpu_s": cpu, "load_before": load0, "load_after": load_average(),
            "stdout": p.stdout.strip().splitlines()[-1]}


def _export_rate(line: str) -> float:
    m = re.search(r"([0-9.]+) images/s", line)
    if not m:
        raise RuntimeError(f"no images/s in {line!r}")
    return float(m.group(1))


def digest(out: Path) -> Dict[str, str]:
    """sha256 of every file under cams/ and masks/."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in ("cams", "masks") for p in sorted((out / sub).rglob("*")) if p.is_file()}


def same_up_to_rounding(a: Path, b: Path, rels: Sequence[str]) -> Dict[str, Any]:
    """1 vs 2 processes: files byte-identical, largest map difference, mask pixels that differ."""
    from PIL import Image

    da, db = digest(a), digest(b)
    maxd, differ, total = 0.0, 0, 0
    for rel in rels:
        za, zb = np.load(a / "cams" / f"{rel}.npz"), np.load(b / "cams" / f"{rel}.npz")
        if not np.array_equal(za["keys"], zb["keys"]):
            raise RuntimeError(f"{rel}: keys differ between the runs")
        for k in ("cam", "high_res"):
            maxd = max(maxd, float(np.abs(za[k].astype(np.float32) - zb[k].astype(np.float32)).max()))
        ma = np.asarray(Image.open(a / "masks" / f"{rel}.png"))
        mb = np.asarray(Image.open(b / "masks" / f"{rel}.png"))
        differ += int((ma != mb).sum())
        total += ma.size
    return {"files": len(da), "same_file_names": sorted(da) == sorted(db),
            "files_byte_identical": sum(da[k] == db.get(k) for k in da), "max_abs_map_diff": maxd,
            "mask_pixels_differing": differ, "mask_pixels": total}


def agreement(a: Path, b: Path, rels: Sequence[str]) -> Dict[str, float]:
    """camkit vs the baseline: mean and max |high_res difference|, share of equal mask pixels, same class."""
    from PIL import Image

    diffs, maxd, equal, total, same_key = [], 0.0, 0, 0, 0
    for rel in rels:
        za, zb = np.load(a / "cams" / f"{rel}.npz"), np.load(b / "cams" / f"{rel}.npz")
        same_key += int(za["keys"][0] == zb["keys"][0])
        d = np.abs(za["high_res"][0].astype(np.float32) - zb["high_res"][0].astype(np.float32))
        diffs.append(float(d.mean()))
        maxd = max(maxd, float(d.max()))
        ma = np.asarray(Image.open(a / "masks" / f"{rel}.png"))
        mb = np.asarray(Image.open(b / "masks" / f"{rel}.png"))
        equal += int((ma == mb).sum())
        total += ma.size
    return {"mean_abs_diff": float(np.mean(diffs)), "max_abs_diff": maxd, "mask_pixels_equal": equal / total,
            "same_top1_class": same_key / len(rels)}


def per_layer_agreement(paths: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """LayerCAM one layer at a time, pytorch-grad-cam against camkit on the network input: mean / max |diff|."""
    import torch
    from PIL import Image
    from pytorch_grad_cam import LayerCAM as PgcLayerCAM

    from camkit import LayerCAM
    from camkit.adapters import build

    model, preset = build("efficientnet_lite0")
    modules = dict(model.named_modules())
    x = torch.stack([preset.transform(Image.open(q).convert("RGB")) for q in paths])
    out = {}
    for name in preset.layers:
        theirs = PgcLayerCAM(model=model, target_layers=[modules[name]])(input_tensor=x, targets=None)
        with LayerCAM(model, layers=[name]) as cam:
            ours = cam(x).maps[:, 0].numpy()
        d = np.abs(theirs - ours)
        out[name] = {"mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max())}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.export throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=0, help="first N images of Flower-17 (0: all 1360)")
    p.add_argument("--methods", nargs="+", default=["gradcam", "layercam"], choices=["gradcam", "layercam"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data", default=str(FLOWERS), help="folder of the Flower-17 JPEGs")
    p.add_argument("--scratch", default="/tmp/camkit-export-bench", help="outputs of the runs (deleted after)")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--keep", action="store_true", help="keep the scratch outputs")
    args = p.parse_args(argv)
    prov = run_provenance(["throughput", *argv], module="benchmarks.export")

    paths = sorted(str(q) for q in Path(args.data).glob("*.jpg"))
    if args.images:
        paths = paths[:args.images]
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    lst = scratch / "images.txt"
    lst.write_text("".join(f"{q}\n" for q in paths))
    rels = [Path(q).stem for q in paths]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    py = sys.executable
    common = ["--threads", "1", "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--no-progress"]
    runs: List[Dict[str, Any]] = []
    checks: Dict[str, Any] = {}
    for method in args.methods:
        base_out, one_out, two_out = scratch / f"{method}_baseline", scratch / f"{method}_1p", scratch / f"{method}_2p"
        r = timed([py, "-m", "benchmarks.export.baseline", str(lst), "--method", method, "--threads", "1",
                   "--out", str(base_out)], env)
        r.update(json.loads(r["stdout"]), name="pytorch-grad-cam loop", method=method, processes=1)
        r["loop_rate"] = r["images_per_s"]
        runs.append(r)
        print(f"{method} baseline: {r['loop_rate']:.2f} images/s", file=sys.stderr)
        for procs, out in ((1, one_out), (2, two_out)):
            head = [py, "-m", "camkit"] if procs == 1 else \
                [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "camkit"]
            r = timed([*head, "export", str(lst), "--out", str(out), "--method", method, *common], env)
            r.update(name=f"camkit export, {procs} process{'es' if procs > 1 else ''}", method=method,
                     processes=procs, images=len(paths), loop_rate=_export_rate(r["stdout"]))
            runs.append(r)
            print(f"{method} camkit {procs}p: {r['loop_rate']:.2f} images/s", file=sys.stderr)
        checks[method] = {"two_vs_one_process": same_up_to_rounding(one_out, two_out, rels),
                          "vs_baseline": agreement(one_out, base_out, rels)}
        if not args.keep:
            for q in (base_out, one_out, two_out):
                shutil.rmtree(q, ignore_errors=True)

    rows = []
    for method in args.methods:
        rs = {r["processes"] if r["name"].startswith("camkit") else 0: r for r in runs if r["method"] == method}
        base, one, two = rs[0], rs[1], rs[2]
        for key, r in ((0, base), (1, one), (2, two)):
            n = r["images"]
            rows.append([
                method, r["name"], f"{r['loop_rate']:.2f}", f"{n / r['wall_s']:.2f}", f"{r['cpu_s'] / n:.3f}",
                "1" if key == 0 else f"{r['loop_rate'] / base['loop_rate']:.2f}",
                f"{two['loop_rate'] / (2 * one['loop_rate']):.2f}" if key == 2 else "",
                f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}",
            ])
    header = ["method", "run", "images/s (loop)", "images/s (end to end)", "CPU s / image",
              "x baseline (loop)", "scaling efficiency", "load 1-min before / after"]
    body = [
        f"{len(paths)} Flower-17 JPEGs (500 px shorter side), model `efficientnet_lite0` (offline ImageNet weights, "
        f"224 x 224 input), top-1 class, batch {args.batch_size}, {args.workers} DataLoader worker(s) per process, "
        "one torch thread per process (`--threads 1`; torchrun sets OMP_NUM_THREADS=1). Layers: Grad-CAM `bn2`, "
        "LayerCAM the preset's `blocks.2`, `blocks.4`, `blocks.6` (max fusion), the same for both libraries. Both "
        "write the same outputs per image (map put back on the photo, float16 `.npz`, thresholded palette PNG).",
        "",
        markdown_table(header, rows),
        "",
        "Scaling efficiency = 2-process images/s / (2 x 1-process images/s). CPU s / image: user + sys of the "
        "whole process tree over the images, startup included. On a shared machine the extra processes of "
        "`camkit export` (a decoding worker, a writer thread) get their own share of the cores, so compare the "
        "CPU column too.",
        "",
        "Checks:",
        "",
    ]
    for method, c in checks.items():
        a = c["vs_baseline"]
        t = c["two_vs_one_process"]
        body.append(f"- {method}: 2 processes against 1: same {t['files']} file names {t['same_file_names']}, "
                    f"{t['files_byte_identical']} byte-identical, largest map difference {t['max_abs_map_diff']:.2e}, "
                    f"{t['mask_pixels_differing']} of {t['mask_pixels']} mask pixels differ; against "
                    "pytorch-grad-cam's maps: mean "
                    f"|diff| {a['mean_abs_diff']:.2e}, max {a['max_abs_diff']:.2e}, mask pixels equal "
                    f"{100 * a['mask_pixels_equal']:.3f}%, same top-1 class {100 * a['same_top1_class']:.1f}%")
    if "layercam" in checks:
        import torch

        torch.set_num_threads(1)
        layers = checks["layercam"]["per_layer_vs_baseline"] = per_layer_agreement(paths[:16])
        body += ["", "pytorch-grad-cam fuses several layers by their mean, then min-max scales the result; camkit takes "
                 "the maximum (the LayerCAM paper), so their fused LayerCAM maps differ by definition (the work per "
                 "image is the same). One layer at a time, on the first 16 images at the network input: "
                 + ", ".join(f"`{n}` mean |diff| {v['mean_abs_diff']:.1e} (max {v['max_abs_diff']:.1e})"
                             for n, v in layers.items()) + "."]
    md, js = write_results(Path(args.out) / "throughput.md", prov, "camkit export throughput on Flower-17",
                           "\n".join(body), {"runs": runs, "checks": checks, "images": len(paths)})
    print(f"wrote {md} and {js}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0
