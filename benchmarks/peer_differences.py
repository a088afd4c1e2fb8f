"""Where camkit's maps differ from the peers' by definition, measured on real photos.

    python -m benchmarks.peer_differences [--flowers 60] [--threads 1]

Model: the offline ImageNet EfficientNet-Lite0 (camkit's default), on the bundled sample photos
and the first ``--flowers`` Flower-17 photos (``../shared/flower17/jpg``), each image's top-1 class.

- Grad-CAM++ at ``bn2`` (camkit's default layer): camkit (no eps) against pytorch-grad-cam (1e-6 in
  alpha's denominator), both min-max normalized at the layer's resolution; the gradients' size.
- torchcam's Grad-CAM++ against camkit and against the same formula with ``alpha = G^2`` (what its
  in-place division on a copy leaves): which one torchcam computes.
- Fused LayerCAM on the preset's three stages at 224 x 224: camkit's ``fusion="max"`` (the paper)
  against pytorch-grad-cam (mean of the layers) and torchcam (max of ``tanh(2 M)`` at the largest
  layer's size), and camkit's ``fusion="mean"`` / ``fusion="tanh_max"`` against each.

Writes ``benchmarks/results/peers/differences.json`` and ``.md`` (with provenance).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.provenance import ROOT, markdown_header, provenance

RESULTS = ROOT / "benchmarks" / "results" / "peers"
FLOWERS = ROOT.parent / "shared" / "flower17" / "jpg"


def _minmax(m: Tensor) -> Tensor:
    lo = m.flatten(-2).amin(-1)[..., None, None]
    hi = m.flatten(-2).amax(-1)[..., None, None]
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp(min=1e-30), torch.zeros_like(m))


def photos(n_flowers: int) -> List[Path]:
    from camkit.app import sample_images

    return list(sample_images()) + sorted(FLOWERS.glob("image_*.jpg"))[:n_flowers]


def pgc_at_layer(cls: type, model, layers, x: Tensor, cls_idx: int, at_input: bool) -> Tensor:
    """pytorch-grad-cam's output for one image and class: at the input's size (``at_input``), else at
    the layer's resolution (its get_target_width_height returns None: no resize)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class AtLayer(cls):  # type: ignore[misc, valid-type]
        def get_target_width_height(self, input_tensor):
            return super().get_target_width_height(input_tensor) if at_input else None

    cam = AtLayer(model, layers)
    try:
        return torch.as_tensor(np.asarray(cam(x, [ClassifierOutputTarget(cls_idx)])))[0]
    finally:
        cam.activations_and_grads.release()


def gradcampp_g2(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++ with ``alpha = G^2``: ``w_k = sum_ij G^2 ReLU(G)``, map ``ReLU(sum_k w_k A_k)``;
    A ``(C, h, w)``, G ``(C, h, w)``."""
    w = (G.pow(2) * G.clamp(min=0)).sum((-2, -1))
    return (w[:, None, None] * A).sum(0).clamp(min=0)


def measure(n_flowers: int) -> Dict[str, Any]:
    import torchcam.methods as tcm
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM

    import camkit

    model, preset = camkit.adapters.build("efficientnet_lite0")
    mods = dict(model.named_modules())
    stages = list(preset.layers)
    rows: List[Dict[str, float]] = []
    for path in photos(n_flowers):
        x = preset.transform(camkit.load_image(path))[None]
        c = int(model(x).argmax(1))
        row: Dict[str, float] = {}
        with camkit.GradCAMpp(model, layers=["bn2"]) as ours:
            res = ours(x, targets=[c])
        mine = _minmax(res.layer_maps["bn2"][0, 0].double())
        theirs = pgc_at_layer(GradCAMPlusPlus, model, [mods["bn2"]], x, c, at_input=False).double()
        row["gradcampp_pgc"] = float((mine - _minmax(theirs)).abs().max())
        acts: Dict[str, Tensor] = {}
        h = mods["bn2"].register_forward_hook(lambda m, i, o, acts=acts: acts.setdefault("a", o))
        y = model(x)[0, c]
        h.remove()
        (g,) = torch.autograd.grad(y, acts["a"])
        row["grad_abs_median"] = float(g.abs().median())
        row["grad_abs_max"] = float(g.abs().max())
        with tcm.GradCAMpp(model, "bn2", input_shape=tuple(x.shape[1:])) as ex:
            tc = ex(class_idx=c, scores=model(x), normalized=False)[0][0].detach().double()
        row["gradcampp_torchcam"] = float((mine - _minmax(tc)).abs().max())
        row["torchcam_vs_alpha_g2"] = float((_minmax(tc) - _minmax(
            gradcampp_g2(acts["a"][0].detach().double(), g[0].double()))).abs().max())
        row.update(_fused(model, mods, stages, x, c, LayerCAM, tcm.LayerCAM))
        rows.append(row)
    keys = list(rows[0])
    return {"images": len(rows), "max": {k: max(r[k] for r in rows) for k in keys},
            "median": {k: float(np.median([r[k] for r in rows])) for k in keys}, "rows": rows}


def _fused(model, mods, stages, x: Tensor, c: int, pgc_cls: type, tc_cls: type) -> Dict[str, float]:
    import camkit

    size = tuple(x.shape[-2:])
    out: Dict[str, float] = {}
    theirs = pgc_at_layer(pgc_cls, model, [mods[n] for n in stages], x, c, at_input=True).double()
    with tc_cls(model, stages, input_shape=tuple(x.shape[1:])) as ex:
        cams = ex(class_idx=c, scores=model(x))
        fused = tc_cls.fuse_cams(cams)
    tc = F.interpolate(fused[None].double(), size=size, mode="bilinear", align_corners=False)[0, 0]
    for fusion in ("max", "mean", "tanh_max"):
        with camkit.LayerCAM(model, layers=stages, fusion=fusion) as ours:
            m = ours(x, targets=[c]).maps[0, 0].double()
        out[f"layercam_{fusion}_pgc"] = float((m - theirs).abs().max())
        out[f"layercam_{fusion}_torchcam"] = float((m - tc).abs().max())
    return out


def write(data: Dict[str, Any], prov: Dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "differences.json").write_text(json.dumps({"provenance": prov, **data}, indent=1))
    mx, md = data["max"], data["median"]
    lines = [
        "# camkit against the peers, by definition (real photos)", "", markdown_header(prov),
        f"EfficientNet-Lite0 (offline ImageNet weights), {data['images']} photos (the 4 bundled samples and "
        "Flower-17 images), each image's top-1 class; maps in [0, 1]; max and median over the images of the "
        "largest pixel difference.", "",
        "| comparison | max | median |", "|---|---|---|",
    ]
    names = {
        "gradcampp_pgc": "Grad-CAM++ at bn2 (layer resolution): camkit vs pytorch-grad-cam",
        "gradcampp_torchcam": "Grad-CAM++ at bn2: camkit vs torchcam",
        "torchcam_vs_alpha_g2": "Grad-CAM++ at bn2: torchcam vs the formula with alpha = G^2",
        "grad_abs_median": "bn2 gradients: median |dy/dA| (not a difference)",
        "grad_abs_max": "bn2 gradients: max |dy/dA| (not a difference)",
    }
    for f in ("max", "mean", "tanh_max"):
        names[f"layercam_{f}_pgc"] = f"fused LayerCAM, 3 stages, 224 px: camkit fusion={f} vs pytorch-grad-cam"
        names[f"layercam_{f}_torchcam"] = f"fused LayerCAM, 3 stages, 224 px: camkit fusion={f} vs torchcam"
    lines += [f"| {names[k]} | {mx[k]:.3g} | {md[k]:.3g} |" for k in names]
    (RESULTS / "differences.md").write_text("\n".join(lines) + "\n")


def main(argv: Any = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_differences", description=__doc__)
    p.add_argument("--flowers", type=int, default=60, help="Flower-17 photos besides the 4 samples")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    prov = provenance(argv, module="benchmarks.peer_differences")
    write(measure(args.flowers), prov)
    print((RESULTS / "differences.md").read_text())


if __name__ == "__main__":
    main()
