"""Any output, any target: output= on dict / tuple / object outputs, callable
targets and camkit.targets against hand computations with plain autograd,
segmentation regions, multi-label padding, and raw (unnormalized) maps."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from small_models import narrow_fcn_resnet50
from torch import nn

import camkit
from camkit.targets import ClassScore, MultiLabel, SegmentationRegion, Softmax


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=6).double().eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 48, 48, dtype=torch.float64)


def hand_maps(model, layers, x, score_fn, formula):
    """Hooks keep the layers' outputs; autograd.grad of score_fn(output) per column."""
    mods = dict(model.named_modules())
    acts = {}
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n in layers]
    try:
        values = score_fn(model(x))  # (B, K)
    finally:
        for h in hs:
            h.remove()
    out = {n: [] for n in layers}
    for k in range(values.shape[1]):
        grads = torch.autograd.grad(values[:, k].sum(), [acts[n] for n in layers], retain_graph=True)
        for n, g in zip(layers, grads):
            out[n].append(formula(acts[n].detach(), g))
    return {n: torch.stack(v, dim=1) for n, v in out.items()}, values.detach()


def gradcam_hand(A, g):
    return torch.relu((g.mean(dim=(2, 3), keepdim=True) * A).sum(1))


def layercam_hand(A, g):
    return torch.relu((torch.relu(g) * A).sum(1))


# --------------------------------------------------------------------------- targets


def test_callable_target_and_k_columns_equal_k_single_calls(net, x):
    fn = lambda s: torch.stack([s[:, 3] - s[:, 1], 2 * s[:, 0]], dim=1)  # noqa: E731
    cam = camkit.LayerCAM(net, layers=["layer3", "layer4"])
    res = cam(x, targets=fn)
    ref, values = hand_maps(net, ["layer3", "layer4"], x, fn, layercam_hand)
    for n in ref:
        torch.testing.assert_close(res.layer_maps[n], ref[n])
    torch.testing.assert_close(res.scores, values)
    assert res.targets.tolist() == [[-1, -1], [-1, -1]] and res.valid.all()
    for k in range(2):
        single = cam(x, targets=lambda s, k=k: fn(s)[:, k])  # (B,) -> one map per image
        torch.testing.assert_close(single.maps[:, 0], res.maps[:, k])
    batched_off = camkit.LayerCAM(net, layers=["layer3", "layer4"], batched_backward=False)(x, targets=fn)
    torch.testing.assert_close(batched_off.maps, res.maps)


def test_class_score_softmax_and_integer_targets(net, x):
    cam = camkit.GradCAM(net, layers=["layer4"])
    idx = torch.tensor([[1, 4], [5, 0]])
    by_int = cam(x, targets=idx)
    by_cls = cam(x, targets=ClassScore(idx))
    torch.testing.assert_close(by_cls.maps, by_int.maps)
    assert by_cls.targets.tolist() == idx.tolist()
    ref, _ = hand_maps(net, ["layer4"], x, lambda s: s.gather(1, idx), gradcam_hand)
    torch.testing.assert_close(by_int.layer_maps["layer4"], ref["layer4"])

    soft = cam(x, targets=Softmax(idx))
    ref, values = hand_maps(net, ["layer4"], x, lambda s: s.softmax(1).gather(1, idx), gradcam_hand)
    torch.testing.assert_close(soft.layer_maps["layer4"], ref["layer4"])
    torch.testing.assert_close(soft.scores, values)
    assert soft.targets.tolist() == idx.tolist()
    with pytest.raises(ValueError, match="CAM maps class logits"):
        camkit.CAM(net)(x, targets=Softmax(1))


def test_multilabel_pads_and_masks(net, x):
    cam = camkit.GradCAM(net, layers=["layer4"])
    labels = torch.zeros(2, 6)
    labels[0, [1, 3]] = 1
    labels[1, 2] = 1
    res = cam(x, targets=MultiLabel(labels))
    assert res.targets.tolist() == [[1, 3], [2, -1]]
    assert res.valid.tolist() == [[True, True], [True, False]]
    single = cam(x, targets=torch.tensor([[1, 3], [2, 2]]))
    torch.testing.assert_close(res.maps[res.valid], single.maps[res.valid])
    assert res.maps[1, 1].abs().max() == 0 and res.layer_maps["layer4"][1, 1].abs().max() == 0
    assert res.scores[1, 1] == 0
    ref, values = hand_maps(net, ["layer4"], x, lambda s: s[[[0], [1]], [[1, 3], [2, 2]]], gradcam_hand)
    torch.testing.assert_close(res.layer_maps["layer4"][res.valid], ref["layer4"][res.valid])  # plain autograd
    torch.testing.assert_close(res.scores[res.valid], values[res.valid])
    sig = camkit.GradCAM(net, layers=["layer4"], normalize="sigmoid")(x, targets=MultiLabel([[3, 1], [2]]))
    assert sig.maps[1, 1].abs().max() == 0  # padding stays zero whatever the normalizer
    cams = camkit.CAM(net)(x, targets=MultiLabel([[3, 1], [2]]))  # CAM reads the same classes
    assert cams.targets.tolist() == [[1, 3], [2, -1]] and cams.maps[1, 1].abs().max() == 0
    with pytest.raises(ValueError, match="outside 0..5"):
        cam(x, targets=MultiLabel([[9], [1]]))
    with pytest.raises(ValueError, match="labels for 1 images, the batch has 2"):
        cam(x, targets=MultiLabel([[1]]))


def test_target_function_errors(net, x):
    cam = camkit.GradCAM(net, layers=["layer4"])
    with pytest.raises(ValueError, match=r"return shape \(2,\) or \(2, K\), got \(6,\)"):
        cam(x, targets=lambda s: s[0])
    with pytest.raises(TypeError, match="must return a tensor"):
        cam(x, targets=lambda s: 1.0)
    with pytest.raises(ValueError, match=r"targets do not depend on layer"):
        cam(x, targets=lambda s: torch.ones(2, dtype=s.dtype))
    with pytest.raises(ValueError, match=r"SegmentationRegion needs scores of shape \(B, C, H, W\)"):
        cam(x, targets=SegmentationRegion(1))


# --------------------------------------------------------------------------- outputs


class DictOut(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"logits": self.net(x), "extra": torch.zeros(1)}


class TupleOut(DictOut):
    def forward(self, x):
        return torch.zeros(1), self.net(x)


class ObjectOut(DictOut):
    def forward(self, x):
        return SimpleNamespace(logits=self.net(x), hidden=x)


@pytest.mark.parametrize("wrapper, output", [(DictOut, "logits"), (TupleOut, 1), (ObjectOut, "logits"),
                                             (DictOut, lambda out: out["logits"])])
def test_output_selects_the_scores(net, x, wrapper, output):
    plain = camkit.LayerCAM(net, layers=["layer3", "layer4"])(x, topk=2)
    res = camkit.LayerCAM(wrapper(net), layers=["net.layer3", "net.layer4"], output=output)(x, topk=2)
    torch.testing.assert_close(res.maps, plain.maps)
    torch.testing.assert_close(res.logits, plain.logits)
    cam = camkit.CAM(wrapper(net), fc="net.fc", output=output)(x, topk=2)  # the layer search reads output= too
    torch.testing.assert_close(cam.layer_maps["net.layer4"], camkit.CAM(net)(x, topk=2).layer_maps["layer4"])


def test_output_errors_name_what_the_model_returned(net, x):
    with pytest.raises(ValueError, match=r"returned a dict with keys \['logits', 'extra'\]; pass output="):
        camkit.GradCAM(DictOut(net), layers=["net.layer4"])(x)
    with pytest.raises(ValueError, match=r"returned a tuple of 2 \(\[0\] tensor \(1,\), \[1\] tensor \(2, 6\)\)"):
        camkit.GradCAM(TupleOut(net), layers=["net.layer4"])(x)
    with pytest.raises(ValueError, match=r"tensor attributes \['hidden', 'logits'\]"):
        camkit.GradCAM(ObjectOut(net), layers=["net.layer4"])(x)
    with pytest.raises(ValueError, match=r"output='logit' is neither a key nor an attribute.*keys \['logits'"):
        camkit.GradCAM(DictOut(net), layers=["net.layer4"], output="logit")(x)
    with pytest.raises(ValueError, match="output=5 does not index"):
        camkit.GradCAM(TupleOut(net), layers=["net.layer4"], output=5)(x)


def test_regression_output(net, x):
    model = nn.Sequential(net, nn.Linear(6, 1), nn.Flatten(0)).double()  # (B,) output
    res = camkit.GradCAM(model, layers=["0.layer4"])(x, targets=lambda y: y)
    ref, _ = hand_maps(model, ["0.layer4"], x, lambda y: y[:, None], gradcam_hand)
    torch.testing.assert_close(res.layer_maps["0.layer4"], ref["0.layer4"])
    with pytest.raises(ValueError, match=r"needs scores of shape \(B, C\), got \(2,\)"):
        camkit.GradCAM(model, layers=["0.layer4"])(x)  # top-1 of a (B,) output means nothing


# --------------------------------------------------------------------------- segmentation


@pytest.fixture(scope="module")
def fcn():
    """torchvision's FCN-ResNet50 (its FCN class, dilated ResNet50 backbone, FCNHead, upsampled
    {"out": ...}) 8 times narrower: the region targets and hooks below do not depend on the width, and
    the full model's float64 hand computations cost seconds per call (the full model's preset runs end
    to end in test_adapters.py::test_segmentation_preset_end_to_end_against_autograd)."""
    torch.manual_seed(0)
    return narrow_fcn_resnet50(num_classes=5).double().eval()


@pytest.mark.parametrize("method, formula", [("gradcam", gradcam_hand), ("layercam", layercam_hand)])
def test_segmentation_region_equals_hand_computation(fcn, method, formula):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    layers = ["backbone.layer3", "backbone.layer4"]
    cam = camkit.methods.METHODS[method](fcn, layers=layers, output="out")
    with torch.no_grad():
        pred = fcn(x)["out"].argmax(1)
    classes = [int(pred[0, 0, 0]), int(pred[1, -1, -1])]

    def region(out, mask=None):
        s = out["out"]
        cols = []
        for c in classes:
            m = (s.detach().argmax(1) == c) if mask is None else mask
            cols.append((s[:, c] * m).sum(dim=(1, 2)))
        return torch.stack(cols, dim=1)

    res = cam(x, targets=SegmentationRegion(classes))
    ref, values = hand_maps(fcn, layers, x, region, formula)
    for n in layers:
        torch.testing.assert_close(res.layer_maps[n], ref[n], rtol=1e-4, atol=1e-10)
        assert ref[n].abs().sum() > 0
    torch.testing.assert_close(res.scores, values)
    assert res.targets.tolist() == [classes, classes] and res.maps.shape == (2, 2, 32, 32)

    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[5:20, 10:30] = True
    res = cam(x, targets=SegmentationRegion(classes, mask=mask))
    ref, _ = hand_maps(fcn, layers, x, lambda out: region(out, mask), formula)
    torch.testing.assert_close(res.layer_maps["backbone.layer4"], ref["backbone.layer4"], rtol=1e-4, atol=1e-10)
    per_image = torch.zeros(2, 32, 32, dtype=torch.bool)  # (B, H, W): a different region per image
    per_image[0, :16] = True
    per_image[1, :, 8:] = True
    res = cam(x, targets=SegmentationRegion(classes, mask=per_image))
    ref, values = hand_maps(fcn, layers, x, lambda out: region(out, per_image), formula)
    torch.testing.assert_close(res.layer_maps["backbone.layer4"], ref["backbone.layer4"], rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(res.scores, values)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not fit"):
        cam(x, targets=SegmentationRegion(1, mask=torch.ones(3, 3, dtype=torch.bool)))


# --------------------------------------------------------------------------- raw maps


def test_normalize_none_gives_the_upsampled_raw_maps(net, x):
    layers = ["layer3", "layer4"]
    size = tuple(x.shape[-2:])

    def up(m):
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)

    one = camkit.GradCAM(net, layers=["layer4"], normalize=None)(x, topk=2)
    torch.testing.assert_close(one.maps, up(one.layer_maps["layer4"]))
    both = camkit.LayerCAM(net, layers=layers, normalize=None)(x, topk=2)
    torch.testing.assert_close(both.maps, torch.maximum(*[up(both.layer_maps[n]) for n in layers]))
    weighted = camkit.LayerCAM(net, layers=layers, normalize=None, fusion="weighted", weights=[0.7, 0.3])(x, topk=2)
    torch.testing.assert_close(weighted.maps, 0.7 * up(weighted.layer_maps["layer3"]) + 0.3 * up(weighted.layer_maps["layer4"]))
    assert both.maps.max() > 1  # not clipped to [0, 1]


def test_callable_normalizer_output_is_kept(net, x):
    res = camkit.GradCAM(net, layers=["layer4"], normalize=lambda t: 3 * t + 1)(x)
    up = F.interpolate(3 * res.layer_maps["layer4"] + 1, size=tuple(x.shape[-2:]), mode="bilinear",
                       align_corners=False)
    torch.testing.assert_close(res.maps, up)
    assert res.maps.min() >= 1 and res.maps.max() > 1
