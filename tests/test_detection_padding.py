"""Detectors that pad (issue 21): torchvision's R-CNN / RetinaNet / FCOS resize the input and pad it
to a multiple of 32; a map must cover the image, not the padded canvas.

Reference: the canvas size and the resized image size read from the detector's own transform
(torchvision's GeneralizedRCNNTransform), Grad-CAM written out on plain torch.autograd gradients over
the whole canvas, and the resampling onto the image's part written out cell by cell (bilinear,
half-pixel centres, edges clamped) rather than with camkit's code.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_detection import LAYER, tiny_faster_rcnn

import camkit
from camkit import adapters
from camkit.targets import TopDetections


@pytest.fixture(scope="module")
def padded():
    """A tiny Faster R-CNN (min_size 64, max_size 128) and a 48 x 80 input: resized to 64 x 106, padded
    to a 64 x 128 canvas (torchvision's transform says so)."""
    m = tiny_faster_rcnn(min_size=64, max_size=128)
    x = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(3))
    images, _ = m.transform([x[0]])
    assert images.image_sizes == [(64, 106)] and images.tensors.shape[-2:] == (64, 128)
    return m, x


def resample(m: torch.Tensor, e: float, n: int) -> torch.Tensor:
    """The last dimension's first e cells (of a longer row) laid on n cells: cell j reads position
    (j + 0.5) * e / n - 0.5, bilinear between its two neighbours, clamped to the first and the n-th cell."""
    cols = []
    for j in range(n):
        src = max((j + 0.5) * e / n - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n - 1)
        i1, lam = min(i0 + 1, n - 1), src - math.floor(src)
        cols.append((1 - lam) * m[..., i0] + lam * m[..., i1])
    return torch.stack(cols, -1)


def test_a_padded_input_gives_maps_over_the_image_not_the_canvas(padded):
    model, x = padded
    kept = {}
    h = dict(model.named_modules())[LAYER].register_forward_hook(lambda mod, i, o: kept.update(A=o))
    try:
        with torch.enable_grad():
            det = model(x)[0]
    finally:
        h.remove()
    A = kept["A"]  # (1, C, 8, 16): the canvas 64 x 128 at stride 8
    assert A.shape[-2:] == (8, 16)
    top = det["scores"].topk(2)
    hand = []
    for s in top.values:
        (g,) = torch.autograd.grad(s, A, retain_graph=True)
        hand.append(torch.relu((g.mean((-2, -1), keepdim=True) * A).sum(1))[0].detach())
    canvas = torch.stack(hand)[None]  # (1, 2, 8, 16) over the canvas
    assert float(canvas[..., 14:].abs().sum()) > 0  # the padding's cells are not blank: stretching would show
    want = resample(canvas[..., :14], 16 * 106 / 128, 14)  # 13.25 of the 16 columns are the image; rows all
    preset = adapters.resolve(model)
    res = camkit.GradCAM(model, layers=[LAYER], output=preset.output)(x, targets=TopDetections(2))
    torch.testing.assert_close(res.scores[0], top.values.detach())
    torch.testing.assert_close(res.layer_maps[LAYER], want, rtol=1e-4, atol=1e-6)
    lo, hi = want.amin((-2, -1), keepdim=True), want.amax((-2, -1), keepdim=True)
    maps = F.interpolate((want - lo) / (hi - lo), size=(48, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(res.maps, maps, rtol=1e-4, atol=1e-5)
    fitted = adapters.detection.fit_input(model, x)  # at fit_size nothing is padded: the canvas map as it is
    assert fitted.shape[-2:] == (64, 96)
    res = camkit.GradCAM(model, layers=[LAYER], output=preset.output)(fitted, targets=TopDetections(1))
    assert res.layer_maps[LAYER].shape[-2:] == (8, 12)


def test_methods_that_upsample_before_the_crop_refuse_a_padded_input(padded):
    """Score-CAM's masks are the layer's outputs resampled over the whole input: on a padded canvas they
    would be stretched, so a padded input is refused (one line naming fit_input); at the working size it runs.
    (FullGrad, flagged the same way, cannot hook these detectors at all: their RPN head runs once per level.)"""
    model, x = padded
    preset = adapters.resolve(model)
    cam = camkit.ScoreCAM(model, layers=[preset.gradcam_layer], output=preset.output, batch_size=64)
    with pytest.raises(camkit.InputError, match=r"padded canvas: pass the input .*fit_input\(model, x\)"):
        cam(x, targets=TopDetections(1))
    fitted = adapters.detection.fit_input(model, x)
    assert cam(fitted, targets=TopDetections(1)).maps.shape == (1, 1, 64, 96)
