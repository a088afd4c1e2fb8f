"""Where camkit's ShapleyCAM, Finer-CAM and RefineCAM differ from the peers' by definition, measured on
real photos (LeGrad equals torchcam's within 1e-10: tests/test_methods_legrad.py; no ViT has offline
weights here).

    python -m benchmarks.new_methods_contrast_differences [--flowers 20] [--threads 1]

Model: the offline ImageNet EfficientNet-Lite0 (camkit's default), on the bundled sample photos and the
first ``--flowers`` Flower-17 photos, each image's top-1 class; maps min-max normalized to [0, 1]; per
comparison the max and the median over the images of the largest pixel difference.

- ShapleyCAM at ``bn2``: camkit against pytorch-grad-cam (same definition); the paper's ReST utility
  against the logit (Lite0 is piecewise linear above bn2: with a logit target H A = 0, ShapleyCAM is Grad-CAM).
- Finer-CAM at ``bn2``: camkit's default (the paper, torchcam: ``y_c - 0.6 mean_t y_{d_t}``) against
  pytorch-grad-cam's own output (softmax-weighted, alpha 1); camkit ``weighting="softmax", gamma=1``
  against it; the weighting alone (softmax vs mean at gamma 1).
- RefineCAM on the preset's three stages: camkit (product at the input's size) against torchcam (product
  at the largest layer's size, then upsampled), both on a LayerCAM base; camkit's Grad-CAM++ base against
  torchcam's default (its Grad-CAM++ keeps alpha = G^2), at the largest layer's size; camkit against
  pytorch-grad-cam's RefineCAM at the input's size (cv2 resize, float32, eps 1e-7; its Grad-CAM++ eps 1e-6).

Writes ``benchmarks/results/new_methods_contrast/differences.json`` and ``.md`` (with provenance).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.peer_differences import _minmax, pgc_at_layer, photos
from benchmarks.provenance import ROOT, markdown_header, provenance

RESULTS = ROOT / "benchmarks" / "results" / "new_methods_contrast"
NAMES = {
    "shapley_pgc": "ShapleyCAM at bn2: camkit vs pytorch-grad-cam",
    "shapley_rest_vs_logit": "ShapleyCAM at bn2: utility='rest' (the paper's ReST) vs the logit",
    "shapley_logit_vs_gradcam": "ShapleyCAM at bn2 with the logit vs Grad-CAM (H A = 0 on a piecewise-linear head)",
    "finer_default_pgc": "Finer-CAM at bn2: camkit default (mean, gamma 0.6) vs pytorch-grad-cam (softmax, alpha 1)",
    "finer_softmax_pgc": "Finer-CAM at bn2: camkit weighting='softmax', gamma=1 vs pytorch-grad-cam",
    "finer_weighting": "Finer-CAM at bn2, gamma 1: softmax-weighted vs mean of the references",
    "finer_vs_gradcam": "Finer-CAM at bn2: camkit default vs Grad-CAM (what the contrast changes)",
    "refine_resize_order": "RefineCAM, LayerCAM base, 224 px: camkit (product at 224) vs torchcam (product at the "
                           "largest layer's size, upsampled)",
    "refine_torchcam_gradcampp": "RefineCAM, default Grad-CAM++ base, largest layer's size: camkit vs torchcam "
                                 "(alpha = G^2)",
    "refine_pgc": "RefineCAM, Grad-CAM++ base, 224 px: camkit vs pytorch-grad-cam",
    "gradcampp_first_stage_pgc": "Grad-CAM++ at the first stage (layer resolution): camkit vs pytorch-grad-cam "
                                 "(its eps 1e-6 against G^2)",
    "refine_pgc_layercam": "RefineCAM, LayerCAM base, 224 px: camkit vs pytorch-grad-cam (cv2 resize, float32)",
}


def _d(a: Tensor, b: Tensor) -> float:
    return float((_minmax(a.double()) - _minmax(b.double().reshape(a.shape))).abs().max())


def _pgc_finer(model, mod, x: Tensor) -> Tensor:
    from pytorch_grad_cam import FinerCAM, GradCAM

    class AtLayer(GradCAM):
        def get_target_width_height(self, input_tensor):
            return None

    cam = FinerCAM(model, [mod], base_method=AtLayer)
    with cam:
        return torch.as_tensor(np.asarray(cam(x)))[0]


def _pgc_refine(model, mods, x: Tensor, c: int, base: Any = None) -> Tensor:
    from pytorch_grad_cam import GradCAMPlusPlus, RefineCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = RefineCAM(model, mods, base_method=base or GradCAMPlusPlus)
    try:
        return torch.as_tensor(np.asarray(cam(x, [ClassifierOutputTarget(c)])))[0]
    finally:
        for b in cam.base_cam_per_layer:
            b.activations_and_grads.release()


def _one_image(model, preset, mods, x: Tensor) -> Dict[str, float]:
    import pytorch_grad_cam as pgc
    import torchcam.methods as tcm

    import camkit

    c, stages, row = int(model(x).argmax(1)), list(preset.layers), {}
    lm = lambda cls, **kw: cls(model, layers=["bn2"], **kw)(x, targets=[c]).layer_maps["bn2"][0, 0]  # noqa: E731
    shap = lm(camkit.ShapleyCAM)
    row["shapley_pgc"] = _d(shap, pgc_at_layer(pgc.ShapleyCAM, model, [mods["bn2"]], x, c, at_input=False))
    row["shapley_rest_vs_logit"] = _d(lm(camkit.ShapleyCAM, utility="rest"), shap)
    row["shapley_logit_vs_gradcam"] = _d(shap, lm(camkit.GradCAM))
    finer, theirs = lm(camkit.FinerCAM), _pgc_finer(model, mods["bn2"], x)
    soft = lm(camkit.FinerCAM, weighting="softmax", gamma=1.0)
    row["finer_default_pgc"], row["finer_softmax_pgc"] = _d(finer, theirs), _d(soft, theirs)
    row["finer_weighting"] = _d(soft, lm(camkit.FinerCAM, gamma=1.0))
    row["finer_vs_gradcam"] = _d(finer, lm(camkit.GradCAM))
    size = tuple(x.shape[-2:])
    for base, tbase, key in (("layercam", tcm.LayerCAM, "refine_resize_order"),
                             ("gradcampp", tcm.GradCAMpp, "refine_torchcam_gradcampp")):
        res = camkit.RefineCAM(model, layers=stages, base=base)(x, targets=[c])
        with tcm.RefineCAM(model, stages, input_shape=tuple(x.shape[1:]), base_method=tbase) as ex:
            tc = ex(c, model(x))[0].detach()
        if key == "refine_resize_order":
            up = F.interpolate(tc[None].double(), size=size, mode="bilinear", align_corners=False)[0, 0]
            row[key] = _d(res.maps[0, 0], up)
        else:
            row[key] = _d(res.maps_at(tuple(tc.shape[-2:]))[0, 0], tc[0])
            row["refine_pgc"] = _d(res.maps[0, 0], _pgc_refine(model, [mods[n] for n in stages], x, c))
            first = camkit.GradCAMpp(model, layers=stages[:1])(x, targets=[c]).layer_maps[stages[0]][0, 0]
            row["gradcampp_first_stage_pgc"] = _d(first, pgc_at_layer(pgc.GradCAMPlusPlus, model, [mods[stages[0]]],
                                                                       x, c, at_input=False))
            lay = camkit.RefineCAM(model, layers=stages, base="layercam")(x, targets=[c]).maps[0, 0]
            row["refine_pgc_layercam"] = _d(lay, _pgc_refine(model, [mods[n] for n in stages], x, c, pgc.LayerCAM))
    return row


def measure(n_flowers: int) -> Dict[str, Any]:
    import camkit

    model, preset = camkit.adapters.build("efficientnet_lite0")
    mods = dict(model.named_modules())
    rows: List[Dict[str, float]] = [_one_image(model, preset, mods, preset.transform(camkit.load_image(p))[None])
                                    for p in photos(n_flowers)]
    return {"images": len(rows), "stages": list(preset.layers),
            "max": {k: max(r[k] for r in rows) for k in NAMES},
            "median": {k: float(np.median([r[k] for r in rows])) for k in NAMES}, "rows": rows}


def write(data: Dict[str, Any], prov: Dict[str, Any]) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "differences.json").write_text(json.dumps({"provenance": prov, **data}, indent=1))
    mx, md = data["max"], data["median"]
    lines = ["# ShapleyCAM, Finer-CAM, RefineCAM against the peers, by definition (real photos)", "",
             markdown_header(prov),
             f"EfficientNet-Lite0 (offline ImageNet weights), {data['images']} photos (the bundled samples and "
             f"Flower-17 images), each image's top-1 class; stages {data['stages']}; maps in [0, 1]; max and "
             "median over the images of the largest pixel difference.", "",
             "| comparison | max | median |", "|---|---|---|"]
    lines += [f"| {NAMES[k]} | {mx[k]:.3g} | {md[k]:.3g} |" for k in NAMES]
    text = "\n".join(lines) + "\n"
    (RESULTS / "differences.md").write_text(text)
    return text


def main(argv: Any = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.new_methods_contrast_differences", description=__doc__)
    p.add_argument("--flowers", type=int, default=20, help="Flower-17 photos besides the bundled samples")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    prov = provenance(argv, module="benchmarks.new_methods_contrast_differences")
    print(write(measure(args.flowers), prov))


if __name__ == "__main__":
    main()
