"""The peer libraries' maps at a layer's own resolution, for comparing camkit with them.

pytorch-grad-cam (1.5.7): :func:`pgc_maps` runs a method class through a subclass
whose ``get_target_width_height`` returns None, so no cv2 resize happens, and
which keeps what ``get_cam_image`` returned (the raw map before the ReLU)
together with the activations and gradients it was given. torchcam (0.5.0):
:func:`torchcam_maps` returns the extractor's raw maps (``normalized=False``).
K targets per image are K calls, one target per image each, as the peers take them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import torch
from torch import Tensor, nn

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def at_layer(cls: type) -> type:
    """A pytorch-grad-cam method class that stays at the layer's resolution and keeps
    ``raw`` (get_cam_image's output), ``acts`` and ``grads`` (its inputs) of each call."""

    class AtLayer(cls):  # type: ignore[misc, valid-type]
        def get_target_width_height(self, input_tensor: Tensor) -> None:
            return None

        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
            cam = super().get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
            self.kept.append({"raw": np.asarray(cam), "acts": activations, "grads": grads})
            return cam

    AtLayer.__name__ = f"AtLayer{cls.__name__}"
    return AtLayer


def pgc_maps(cls: type, model: nn.Module, layer: nn.Module, x: Tensor, classes: Tensor,
             aug_smooth: bool = False, eigen_smooth: bool = False, **kwargs: Any) -> Dict[str, Tensor]:
    """pytorch-grad-cam's maps for ``classes`` (B, K) on one layer.

    Returns {"raw": (B, K, h, w) get_cam_image's output (the last augmentation's
    with aug_smooth), "out": (B, K, h, w) the method's output at layer resolution
    (ReLU, min-max scaled; averaged over augmentations with aug_smooth),
    "acts", "grads": (B, K, C, h, w) as the method saw them (grads None for
    gradient-free methods)}.
    """
    raws, outs, acts, grads = [], [], [], []
    for k in range(classes.shape[1]):
        cam = at_layer(cls)(model, [layer], **kwargs)
        cam.kept = []
        try:
            out = cam(x, [ClassifierOutputTarget(int(c)) for c in classes[:, k]], aug_smooth=aug_smooth,
                      eigen_smooth=eigen_smooth)
        finally:
            cam.activations_and_grads.release()
        kept = cam.kept[-1]
        raws.append(torch.as_tensor(kept["raw"]))
        outs.append(torch.as_tensor(np.asarray(out)))
        acts.append(torch.as_tensor(np.asarray(kept["acts"])))
        grads.append(None if kept["grads"] is None else torch.as_tensor(np.asarray(kept["grads"])))
    return {"raw": torch.stack(raws, 1), "out": torch.stack(outs, 1), "acts": torch.stack(acts, 1),
            "grads": None if grads[0] is None else torch.stack(grads, 1)}


@contextmanager
def pgc_upsampling_align_corners_false() -> Iterator[None]:
    """pytorch-grad-cam's Score-CAM upsamples its masks with ``UpsamplingBilinear2d``
    (align_corners=True); inside the block it uses align_corners=False, as camkit does."""
    orig = torch.nn.UpsamplingBilinear2d

    def upsample(size: Any = None, scale_factor: Any = None) -> nn.Module:
        return torch.nn.Upsample(size=size, scale_factor=scale_factor, mode="bilinear", align_corners=False)

    torch.nn.UpsamplingBilinear2d = upsample  # type: ignore[assignment, misc]
    try:
        yield
    finally:
        torch.nn.UpsamplingBilinear2d = orig  # type: ignore[misc]


def torchcam_maps(cls: type, model: nn.Module, layer: str, x: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
    """torchcam's raw maps (B, K, h, w) for ``classes`` (B, K) on one layer (``normalized=False``)."""
    out: List[Tensor] = []
    for k in range(classes.shape[1]):
        with cls(model, layer, input_shape=tuple(x.shape[1:]), **kwargs) as ex:
            scores = model(x)
            out.append(ex(class_idx=[int(c) for c in classes[:, k]], scores=scores, normalized=False)[0].detach())
    return torch.stack(out, 1)
