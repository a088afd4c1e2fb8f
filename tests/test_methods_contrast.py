"""Finer-CAM and RefineCAM against the peers' own outputs (torchcam 0.5.0's FinerCAM and RefineCAM,
pytorch-grad-cam 1.5.7's FinerCAM and RefineCAM) on the same float64 ResNet18, 8 times narrower
(tests/small_models.py), layer, input and targets, at the layer's resolution, and against the
papers' definitions written out with plain autograd.

Definition differences (measured here; the README lines carry the numbers):

- Finer-CAM: torchcam and camkit (``weighting="mean"``, the paper's) explain ``y_c - gamma mean_t y_{d_t}``;
  pytorch-grad-cam explains ``sum_t p_t (y_c - alpha y_{d_t}) / sum_t p_t`` with the softmax
  probabilities p, differentiated through p (camkit's ``weighting="softmax"``); pytorch-grad-cam's
  default alpha is 1, torchcam's gamma 0.6 (camkit's default).
- RefineCAM: torchcam multiplies the normalized maps at the largest layer's size, pytorch-grad-cam at
  the input's (after a cv2 resize), camkit at the size asked (``maps`` the input's, ``maps_at`` any);
  torchcam's default base (Grad-CAM++) keeps alpha = G^2 (so compared with base LayerCAM, which
  agrees); pytorch-grad-cam works in float32 with eps 1e-7 in each normalization.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_state import assert_as_found, snapshot
from small_models import narrow_resnet18

import camkit
from camkit.errors import InputError
from camkit.methods import cli_names

pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    ref = ref.to(ours.dtype)
    err = (ours - ref).abs().max() / ref.abs().max().clamp(min=1e-30)
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol:g}"


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = narrow_resnet18(num_classes=8).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64, dtype=torch.float64)


def at_layer(cls):
    """A pytorch-grad-cam method at the layer's resolution, keeping get_cam_image's raw output."""

    class AtLayer(cls):
        kept: list = []

        def get_target_width_height(self, input_tensor):
            return None

        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            type(self).kept.append(np.asarray(cam))
            return cam

    AtLayer.kept = []
    return AtLayer


def hand_finer(model, layer, x, classes, gamma, refs):
    """Finer-CAM by hand (the paper's objective, Grad-CAM base): per image and target,
    v = y_c - gamma mean_t y_{d_t}; w = mean_ij dv/dA; ReLU(sum_k w_k A_k)."""
    kept = {}
    h = layer.register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    try:
        y = model(x)
    finally:
        h.remove()
    A, rows = kept["a"], []
    for b in range(x.shape[0]):
        per_k = []
        for k, c in enumerate(classes[b].tolist()):
            v = y[b, c] - gamma * y[b, refs[b][k]].mean()
            (G,) = torch.autograd.grad(v, A, retain_graph=True)
            w = G[b].mean(dim=(1, 2))
            per_k.append(torch.relu((w[:, None, None] * A[b]).sum(0)).detach())
        rows.append(torch.stack(per_k))
    return torch.stack(rows)


def nearest(scores, c, t):
    """The t classes with scores closest to class c's, by hand."""
    order = sorted((abs(float(scores[j] - scores[c])), j) for j in range(len(scores)) if j != c)
    return [j for _, j in order[:t]]


def test_finercam_matches_torchcam_and_the_paper(net, x):
    with torch.no_grad():
        y = net(x)
    classes = y.topk(2, dim=1).indices
    before = snapshot(net)
    res = camkit.FinerCAM(net, layers="layer3")(x, topk=2)
    assert_as_found(net, before)
    ours = res.layer_maps["layer3"]
    refs = [[nearest(y[b], int(c), 3) for c in classes[b]] for b in range(2)]
    close(ours, hand_finer(net, net.layer3, x, classes, 0.6, refs), 1e-10)
    peer = []
    for k in range(2):
        with tcm.FinerCAM(net, "layer3", input_shape=(3, 64, 64)) as ex:
            scores = net(x)
            peer.append(ex([int(c) for c in classes[:, k]], scores, normalized=False)[0].detach())
    close(ours, torch.stack(peer, 1), 1e-10)
    plain = camkit.GradCAM(net, layers="layer3")(x, topk=2).layer_maps["layer3"]
    assert (ours - plain).abs().max() > 1e-2 * plain.abs().max()  # the contrast changes the maps
    close(camkit.FinerCAM(net, layers="layer3", gamma=0)(x, topk=2).layer_maps["layer3"], plain, 1e-12)


def test_finercam_layercam_base_matches_torchcam(net, x):
    ours = camkit.FinerCAM(net, layers="layer2", base="layercam", gamma=0.8, references=2)(x, targets=[1, 5])
    with tcm.FinerCAM(net, "layer2", input_shape=(3, 64, 64), base_method=tcm.LayerCAM, gamma=0.8,
                      num_references=2) as ex:
        peer = ex([1, 5], net(x), normalized=False)[0].detach()
    close(ours.layer_maps["layer2"][:, 0], peer, 1e-10)


def test_finercam_softmax_weighting_matches_pytorch_grad_cam(net, x):
    ours = camkit.FinerCAM(net, layers="layer3", weighting="softmax", gamma=1.0)(x).layer_maps["layer3"]
    cls = at_layer(pgc.GradCAM)
    cam = pgc.FinerCAM(net, [net.layer3], base_method=cls)
    try:
        cam(x)  # its default: the top class against the 3 nearest, alpha = 1
    finally:
        cam.base_cam.activations_and_grads.release()
    close(ours[:, 0], torch.as_tensor(cls.kept[-1]).clamp(min=0), 1e-10)
    mean = camkit.FinerCAM(net, layers="layer3", gamma=1.0)(x).layer_maps["layer3"]
    assert (ours - mean).abs().max() > 1e-3 * mean.abs().max()  # the two weightings differ


def test_finercam_bad_input(net, x):
    for kw, what in (({"references": 0}, "references"), ({"gamma": -1.0}, "gamma"),
                     ({"weighting": "max"}, "weighting"), ({"base": "scorecam"}, "base")):
        with pytest.raises(InputError, match=what):
            camkit.FinerCAM(net, layers="layer3", **kw)
    with pytest.raises(InputError, match="class targets"):
        camkit.FinerCAM(net, layers="layer3")(x, targets=lambda s: s[:, 0])
    one = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 1)).double()
    with pytest.raises(InputError, match="two classes"):
        camkit.FinerCAM(one, layers="0")(x)
    assert {"finercam", "refinecam"} <= set(cli_names())


def test_refinecam_matches_torchcam(net, x):
    layers = ["layer2", "layer3", "layer4"]
    res = camkit.RefineCAM(net, layers=layers, base="layercam")(x, targets=[[3, 0], [6, 2]])
    for k, col in enumerate(([3, 6], [0, 2])):
        with tcm.RefineCAM(net, layers, input_shape=(3, 64, 64), base_method=tcm.LayerCAM) as ex:
            peer = ex(col, net(x))[0]  # at the largest layer's size (layer2: 8 x 8), normalized
        close(res.maps_at((8, 8))[:, k], peer, 1e-6)


def test_refinecam_matches_pytorch_grad_cam(net, x):
    layers = ["layer3.0", "layer3.1"]  # one resolution: pytorch-grad-cam stacks the layers' maps
    for base, peer_base, rtol in (("gradcam", pgc.GradCAM, 1e-5), ("gradcampp", pgc.GradCAMPlusPlus, 2e-2)):
        res = camkit.RefineCAM(net, layers=layers, base=base)(x, targets=[4, 7])
        cam = pgc.RefineCAM(net, [net.get_submodule(n) for n in layers], base_method=at_layer(peer_base))
        try:
            peer = cam(x, [pgc.utils.model_targets.ClassifierOutputTarget(c) for c in (4, 7)])
        finally:
            for c in cam.base_cam_per_layer:
                c.activations_and_grads.release()
        # float32 and eps 1e-7 in its normalizations; Grad-CAM++: its eps 1e-6 in alpha's denominator
        # moves the maps by 0.0082 here (gradients ~1e-3, G^2 ~ eps)
        close(res.maps_at((4, 4))[:, 0], torch.as_tensor(peer), rtol)


def test_refinecam_is_the_product_of_the_normalized_layers(net, x):
    layers = ["layer2", "layer4"]
    res = camkit.RefineCAM(net, layers=layers, base="gradcam")(x, targets=[1, 1])
    # by hand: Grad-CAM per layer (plain autograd), min-max, bilinear to 64 x 64, product, min-max
    kept = {}
    hs = [net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: kept.__setitem__(n, o)) for n in layers]
    try:
        y = net(x)
    finally:
        for h in hs:
            h.remove()
    gs = torch.autograd.grad(y[:, 1].sum(), [kept[n] for n in layers])
    prod = 1.0
    for n, g in zip(layers, gs):
        m = torch.relu((g.mean(dim=(2, 3), keepdim=True) * kept[n]).sum(1, keepdim=True)).detach()
        lo, hi = m.amin(dim=(2, 3), keepdim=True), m.amax(dim=(2, 3), keepdim=True)
        prod = prod * F.interpolate((m - lo) / (hi - lo), size=(64, 64), mode="bilinear", align_corners=False)
    lo, hi = prod.amin(dim=(2, 3), keepdim=True), prod.amax(dim=(2, 3), keepdim=True)
    close(res.maps, (prod - lo) / (hi - lo), 1e-10)
    with pytest.raises(InputError, match="fuse"):
        camkit.RefineCAM(net, layers=layers, fusion="mean")
    with pytest.raises(InputError, match="base"):
        camkit.RefineCAM(net, layers=layers, base="eigencam")


def test_speed_script_runs_end_to_end(tmp_path):
    """benchmarks/new_methods_contrast.py on tiny nets (one round, no warm-up): every runner timed, the
    same-round ratios and the provenance written."""
    import json

    from benchmarks.new_methods_contrast import main

    md, js = main(["--arch", "tiny", "--size", "16", "--k", "2", "--rounds", "1", "--warm-size", "0", "--no-memory",
                   "--out", str(tmp_path / "c.md")])
    data = json.loads(js.read_text())
    assert [r["method"] for r in data["results"]] == ["ShapleyCAM", "Finer-CAM", "RefineCAM", "LeGrad"]
    peers = {"ShapleyCAM": ["pytorch-grad-cam"], "Finer-CAM": ["pytorch-grad-cam", "torchcam"],
             "RefineCAM": ["pytorch-grad-cam", "torchcam"], "LeGrad": ["torchcam"]}
    for r in data["results"]:
        want = {f"camkit {r['method']}"} | {f"{p} {r['method']}" for p in peers[r["method"]]}
        assert set(r["times_s"]) == want and set(r["ratios"]) == want - {f"camkit {r['method']}"}
    assert "peer / camkit" in md.read_text() and data["provenance"]["git_commit"]
