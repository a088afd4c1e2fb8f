"""The baseline: a plain loop of pytorch-grad-cam over a list of images, one image at a time.

    python -m benchmarks.export.baseline LIST --method gradcam --threads 1 [--out DIR]

Per image: PIL decode, the preset's transform, ``cam(input_tensor=x, targets=None)`` (its top-1
class), as pytorch-grad-cam's README does it. With ``--out`` the loop also writes what
``camkit export`` writes (the map put back on the photo with ``camkit.geometry.to_original``,
float16, the thresholded mask, the ``.npz`` and ``.png`` through ``camkit.export.write_outputs``),
so both sides do the same work. Prints one JSON line: images, loop seconds, images/s.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

METHODS = ("gradcam", "layercam")


def read_list(path: str) -> List[str]:
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export.baseline", description=__doc__)
    p.add_argument("list", help="text file, one image path per line")
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write camkit export's outputs here")
    p.add_argument("--bg-threshold", type=float, default=0.15)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from pytorch_grad_cam import GradCAM, LayerCAM

    from camkit.adapters import build
    from camkit.export import write_outputs
    from camkit.geometry import to_original

    torch.set_num_threads(args.threads)
    model, preset = build("efficientnet_lite0")
    names = list(preset.layers) if args.method == "layercam" else [preset.gradcam_layer]
    modules = dict(model.named_modules())
    cam = (LayerCAM if args.method == "layercam" else GradCAM)(model=model, target_layers=[modules[n] for n in names])
    paths = read_list(args.list)
    t0, c0 = time.perf_counter(), time.process_time()
    for path in paths:
        with Image.open(path) as im:
            img = im.convert("RGB")
        x = preset.transform(img)[None]
        g = cam(input_tensor=x, targets=None)  # (1, 224, 224) in [0, 1], the top-1 class
        if args.out:
            key = int(cam.outputs.argmax(dim=1)[0])
            high = to_original(torch.from_numpy(g), (img.height, img.width), preset.transform).clamp_(0, 1)
            write_outputs(args.out, Path(path).stem, np.array([key]), g.astype(np.float16),
                          high.half().numpy(), args.bg_threshold, num_classes=1000)
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": len(paths), "loop_seconds": seconds, "images_per_s": len(paths) / seconds,
                      "process_cpu_seconds": time.process_time() - c0, "layers": names}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
