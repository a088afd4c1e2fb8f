"""Every method's layer_maps against an independent reference (tests/reference.py),
and the documented shapes and values of results."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_maps, timm_effnet_forward, vgg_forward
from torch import nn

import camkit

GRAD_METHODS = {"gradcam": camkit.GradCAM, "gradcampp": camkit.GradCAMpp, "layercam": camkit.LayerCAM}
VGG_LAYERS = [15, 28, 29]  # a ReLU output, a conv overwritten by an in-place ReLU, that ReLU


def assert_close(actual, expected, rtol=1e-5):
    scale = expected.abs().max().clamp(min=1e-12)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale.item())


VGG_TARGETS = torch.tensor([[3, 7, 999], [0, 500, 3]])


@pytest.fixture(scope="module")
def vgg_reference(vgg64, img64):
    """reference_maps(method) on vgg64, img64 and VGG_TARGETS, computed once per method for both
    backward modes below (the same model, input and targets: the same reference)."""
    cache = {}

    def get(method):
        if method not in cache:
            forward = functools.partial(vgg_forward, vgg64, capture=VGG_LAYERS)
            cache[method] = reference_maps(forward, img64, VGG_TARGETS, method)
        return cache[method]

    return get


@pytest.mark.parametrize("batched", [True, False], ids=["batched_backward", "loop_backward"])
@pytest.mark.parametrize("method", sorted(GRAD_METHODS))
def test_vgg16_layer_maps_match_reference(method, batched, vgg64, img64, vgg_reference):
    targets = VGG_TARGETS
    names = [f"features.{i}" for i in VGG_LAYERS]
    with GRAD_METHODS[method](vgg64, layers=names, batched_backward=batched) as cam:
        res = cam(img64, targets=targets)
    ref = vgg_reference(method)
    for i, name in zip(VGG_LAYERS, names):
        assert res.layer_maps[name].shape == ref[i].shape
        assert_close(res.layer_maps[name], ref[i])
    if method != "layercam":  # LayerCAM is the same before and after a ReLU (its gradient is 0 where A < 0)
        assert not torch.allclose(res.layer_maps["features.28"], res.layer_maps["features.29"])


@pytest.mark.parametrize("method", sorted(GRAD_METHODS))
def test_timm_convnet_layer_maps_match_reference(method):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", num_classes=10).double().eval()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    targets = torch.tensor([[1, 4], [9, 0]])
    blocks = [3, 5]
    with GRAD_METHODS[method](model, layers=[f"blocks.{i}" for i in blocks]) as cam:
        res = cam(x, targets=targets)
    ref = reference_maps(functools.partial(timm_effnet_forward, model, capture=blocks), x, targets, method)
    for i in blocks:
        assert_close(res.layer_maps[f"blocks.{i}"], ref[i])


@pytest.mark.parametrize("method", sorted(GRAD_METHODS))
def test_k_targets_equal_k_single_calls(method, vgg64, img64):
    targets = torch.tensor([[3, 7, 11], [5, 2, 8]])
    cam = GRAD_METHODS[method](vgg64, layers=["features.22", "features.29"])
    many = cam(img64, targets=targets)
    for k in range(3):
        one = cam(img64, targets=targets[:, k])
        for name in many.layer_maps:
            assert_close(many.layer_maps[name][:, k : k + 1], one.layer_maps[name])
        assert_close(many.maps[:, k : k + 1], one.maps)


def test_batched_and_loop_backward_agree():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=20).eval()
    x = torch.randn(2, 3, 64, 64)
    out = {}
    for batched in (True, False):
        with camkit.LayerCAM(model, layers=["layer2", "layer4"], batched_backward=batched) as cam:
            out[batched] = cam(x, topk=4)
    assert torch.equal(out[True].targets, out[False].targets)
    for name in ("layer2", "layer4"):
        assert_close(out[False].layer_maps[name], out[True].layer_maps[name])
    assert_close(out[False].maps, out[True].maps)
    assert all(p.grad is None for p in model.parameters())


def test_cam_resnet_matches_reference_and_all_classes():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=12).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    cam = camkit.CAM(model)
    assert cam.layer_names == ["layer4"]
    res = cam(x, targets="all")
    # reference: layer4 output by a manual forward, then W_c . A
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    A = model.layer4(model.layer3(model.layer2(model.layer1(h))))
    ref = torch.einsum("nc,bchw->bnhw", model.fc.weight, A)
    assert res.targets.shape == (2, 12)
    assert_close(res.layer_maps["layer4"], ref)
    assert_close(res.logits, model(x))
    # CAM is exact: the spatial mean of CAM_c plus the bias is logit c
    assert_close(res.layer_maps["layer4"].mean(dim=(2, 3)) + model.fc.bias, res.logits)
    # the same classes for every image (one (K, C) weight copy), per-image classes, topk: the rows of each
    for spec, rows in (([[7, 2, 7]] * 2, [[7, 2, 7]] * 2), (4, [[4], [4]]), ([[1, 9], [11, 0]], [[1, 9], [11, 0]])):
        got = cam(x, targets=spec).layer_maps["layer4"]
        assert_close(got, torch.stack([ref[b, rows[b]] for b in range(2)]))
    top = cam(x, topk=3)
    assert_close(top.layer_maps["layer4"], torch.stack([ref[b, top.targets[b]] for b in range(2)]))


def test_cam_on_cam_model_and_vgg_error():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16()
    with pytest.raises(ValueError, match="CAMHead"):
        camkit.CAM(vgg)
    backbone = nn.Sequential(vgg.features, nn.AdaptiveAvgPool2d(7))
    model = camkit.CAMModel(backbone, camkit.CAMHead(512, 17)).eval()
    x = torch.randn(2, 3, 64, 64)
    res = camkit.CAM(model)(x, topk=3)
    f = backbone(x)
    ref = model.head.cam(f).gather(1, res.targets[:, :, None, None].expand(-1, -1, 7, 7))
    assert_close(res.layer_maps["head.relu"], ref)
    assert torch.equal(res.targets, model(x).topk(3).indices)


def test_cam_wrong_layer_is_refused():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with pytest.raises(ValueError, match="not fc\\(GAP"):
        camkit.CAM(model, layers="layer4.0")(torch.randn(1, 3, 64, 64))
    for targets in ("all", 3, [[1, 2]]):  # all classes: checked on the maps' means; else by a second fc
        with pytest.raises(ValueError, match="not fc\\(GAP"):
            camkit.CAM(model, layers="layer4.0", fc="fc")(torch.randn(1, 3, 64, 64), targets=targets)


class _ShiftedHead(nn.Module):
    """GAP + linear, then + 0.01 on one class: not CAM's head, by less than any map would show."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, a):
        out = self.fc(a.mean(dim=(2, 3)))
        return out + 0.01 * (torch.arange(4) == 3)


def test_cam_head_check_sees_a_small_shift_of_one_class_for_all_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), _ShiftedHead()).eval()
    x = torch.rand(2, 3, 12, 12)
    with pytest.raises(ValueError, match="not fc\\(GAP"):
        camkit.CAM(model, layers="1", fc="2.fc")(x, targets="all")


def test_recam_matches_reference():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7))
    head = camkit.ReCAMHead(8, 5, normalize="sigmoid")
    model = camkit.CAMModel(backbone, head).eval()
    x = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([[0, 4], [2, 1], [3, 3]])
    res = camkit.ReCAM(model)(x, targets=targets)
    f = backbone(x)
    maps = torch.relu(head.conv(f))
    W = head.fc.weight
    for b in range(3):
        for k in range(2):
            c = targets[b, k]
            cam_c = torch.sigmoid((W[c][:, None, None] * maps[b]).sum(0))
            masked = maps[b] * cam_c
            raw = (W[c][:, None, None] * masked).sum(0)
            assert_close(res.layer_maps["head"][b, k], raw)
            assert_close(res.maps[b, k], F.interpolate(torch.sigmoid(raw)[None, None], size=(32, 32), mode="bilinear")[0, 0])
    # the model's logits: re-activation with the plain CAM head's top-1 as target
    plain = head.fc(maps.mean(dim=(2, 3))).argmax(1)
    for b in range(3):
        cam_c = torch.sigmoid((W[plain[b]][:, None, None] * maps[b]).sum(0))
        assert_close(res.logits[b], head.fc((maps[b] * cam_c).mean(dim=(1, 2))))


def test_maps_are_normalized_upsampled_fused(vgg64, img64):
    """res.maps from res.layer_maps, written out in plain torch (not camkit's normalize / fusion): each
    layer's map min-max normalized on its own grid, upsampled bilinearly to the input, then the
    element-wise max over the layers, or tanh(2 * sum_l w_l M_l) for the weighted fusion."""
    names = ["features.15", "features.22", "features.29"]
    for fusion, weights in (("max", None), ("weighted", [0.4, 0.4, 0.2])):
        res = camkit.LayerCAM(vgg64, layers=names, fusion=fusion, weights=weights)(img64, targets=[1, 2])
        ups = []
        for n in names:
            m = res.layer_maps[n]  # (B, K, h, w), before normalization
            lo, hi = m.amin(dim=(2, 3), keepdim=True), m.amax(dim=(2, 3), keepdim=True)
            assert (hi > lo).all(), n  # no constant map: (m - min) / (max - min) is defined everywhere
            ups.append(F.interpolate((m - lo) / (hi - lo), size=(64, 64), mode="bilinear", align_corners=False))
        if fusion == "max":
            expected = torch.maximum(torch.maximum(ups[0], ups[1]), ups[2])
        else:
            expected = torch.tanh(2 * (weights[0] * ups[0] + weights[1] * ups[1] + weights[2] * ups[2]))
        assert_close(res.maps, expected)
        assert res.maps.shape == (2, 1, 64, 64)
        assert res.maps.min() >= 0 and res.maps.max() <= 1
    # study's weighted fusion: tanh(2 * sum) never exceeds tanh(2)
    assert res.maps.max() <= torch.tanh(torch.tensor(2.0)) + 1e-12


def test_default_and_topk_targets(vgg64, img64):
    cam = camkit.GradCAM(vgg64, layers="features.29")
    logits = vgg64(img64)
    res = cam(img64)
    assert torch.equal(res.targets, logits.argmax(1, keepdim=True))
    assert_close(res.logits, logits.detach())
    res5 = cam(img64, topk=5)
    assert torch.equal(res5.targets, logits.topk(5).indices)
    assert res5.maps.shape == (2, 5, 64, 64)
    assert torch.equal(res5.scores, logits.detach().topk(5).values)
    # an int target applies to every image; a module object names the same layer
    res7 = camkit.GradCAM(vgg64, layers=vgg64.features[29])(img64, targets=7)
    assert torch.equal(res7.targets, torch.tensor([[7], [7]]))


def test_gradient_methods_inside_no_grad(vgg64, img64):
    cam = camkit.LayerCAM(vgg64, layers=["features.29"])
    free = cam(img64, targets=[1, 2])
    with torch.no_grad():
        inside = cam(img64, targets=[1, 2])
    assert_close(inside.layer_maps["features.29"], free.layer_maps["features.29"])
    assert inside.layer_maps["features.29"].abs().sum() > 0
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        cam(img64)


def test_float32_model_gives_float32_maps():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    res = camkit.GradCAMpp(model, layers=["layer3", "layer4"])(torch.randn(1, 3, 64, 64))
    assert res.maps.dtype == torch.float32 and torch.isfinite(res.maps).all()


class Tiny(nn.Module):
    """A small convnet, fast enough for property tests."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


TINY = Tiny().eval()


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    K=st.integers(1, 4),
    H=st.integers(4, 20),
    W=st.integers(4, 20),
    method=st.sampled_from(["cam", "gradcam", "gradcampp", "layercam"]),
    seed=st.integers(0, 2**16),
)
def test_result_shapes_and_ranges(B, K, H, W, method, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, H, W, generator=g)
    targets = torch.randint(0, 6, (B, K), generator=g)
    if method == "cam":
        cam = camkit.CAM(TINY, layers="features.4")
    else:
        cam = camkit.methods.METHODS[method](TINY, layers=["features.1", "features.4"])
    res = cam(x, targets=targets)
    assert res.maps.shape == (B, K, H, W)
    assert res.targets.shape == (B, K) and torch.equal(res.targets, targets)
    assert res.logits.shape == (B, 6)
    assert torch.isfinite(res.maps).all() and res.maps.min() >= 0 and res.maps.max() <= 1
    for m in res.layer_maps.values():
        assert m.shape[:2] == (B, K)
        if method != "cam":
            assert m.min() >= 0  # after the method's ReLU
    assert not res.maps.requires_grad and not res.logits.requires_grad
