"""Explain a video classifier (or a 3-D scan model): maps over time, a strip of frames, a GIF.

    python examples/video.py            # torchvision r3d_18 with random weights, a synthetic clip

torchvision's video models (r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v1_b / mvit_v2_s, swin3d_t/s/b)
have presets: ``camkit.adapters.resolve(model)`` names their layers (Grad-CAM's, CAM's, LayerCAM's)
and ``camkit.adapters.build("tv:r3d_18", weights="none")`` builds one with its preset; for your own
3-D model, name the layer.

A video is ``(B, C, T, H, W)`` into a model of ``nn.Conv3d`` layers (torchvision's r3d_18, mc3_18,
r2plus1d_18, s3d, or your own); the maps are ``(B, K, T, H, W)``, each normalized over its whole
clip, and ``layer_maps`` ``(B, K, t, h, w)`` at the layer's resolution. A 3-D medical scan is the
same with C = 1 and the depth as T. With Kinetics-400 weights (``weights="DEFAULT"``, a download),
normalize the clip with the weights' mean and std; the overlays take the clip in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import camkit
from camkit.adapters import resolve
from camkit.video import frame_strip, save_gif


def moving_square(frames: int = 8, size: int = 112) -> torch.Tensor:
    """A synthetic clip ``(3, T, H, W)`` in [0, 1]: a bright square moving left to right on grey."""
    clip = torch.full((3, frames, size, size), 0.3)
    side = size // 4
    for t in range(frames):
        left = (size - side) * t // max(frames - 1, 1)
        clip[:, t, size // 2 - side // 2: size // 2 + side // 2, left:left + side] = 1.0
    return clip


def explain(model: nn.Module, clip: torch.Tensor, layer: Optional[str] = None, out: Optional[Path] = None,
            k: int = 2, cmap: Any = "jet") -> dict:
    """Grad-CAM maps of the clip's top-``k`` classes, and (with ``out``) a strip of frames and a GIF
    of the first class's map (``cmap``: a matplotlib colormap name or a function of values in [0, 1]).
    ``layer``: the layer to explain; None: the preset's (torchvision's video models).

    Returns:
        {"maps": (1, k, T, H, W), "layer_maps": (1, k, t, h, w), "classes": (1, k), "files": [paths]}.
    """
    kw = {"layers": [layer]} if layer else resolve(model).method_kwargs("gradcam")
    layer = kw["layers"][0]
    res = camkit.GradCAM(model, **kw)(clip[None], topk=k)
    files = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        frame_strip(clip, res.maps[0, 0], frames=8, cmap=cmap).save(out / "strip.png")
        files = [out / "strip.png", save_gif(out / "clip.gif", clip, res.maps[0, 0], fps=4, cmap=cmap)]
    return {"maps": res.maps, "layer_maps": res.layer_maps[layer], "classes": res.targets, "files": files}


def main(model: Optional[nn.Module] = None, layer: Optional[str] = None, frames: int = 8, size: int = 112,
         out: Optional[Path] = Path("video_cam"), cmap: Any = "jet") -> dict:
    if model is None:
        import torchvision

        model = torchvision.models.video.r3d_18(weights=None).eval()
    got = explain(model, moving_square(frames, size), layer, out, cmap=cmap)
    print("classes:", got["classes"].tolist(), "maps:", tuple(got["maps"].shape),
          "layer maps:", tuple(got["layer_maps"].shape))
    for f in got["files"]:
        print("wrote", f)
    return got


if __name__ == "__main__":
    main()
