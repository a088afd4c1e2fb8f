"""The hook engine: exact capture, the model left as found, the backward's reach,
and clear errors for bad input."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

import camkit
from camkit.hooks import ActivationRecorder, resolve_layers


def snapshot(model: nn.Module):
    return {
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_untouched(model, before):
    after = snapshot(model)
    assert after["hooks"] == before["hooks"]
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(after["grads"]), "a parameter .grad was written"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


def test_captures_pre_relu_conv_output(vgg64, img64):
    """features.28 is a conv followed by ReLU(inplace=True): the capture keeps negatives."""
    rec = ActivationRecorder(vgg64, resolve_layers(vgg64, ["features.28", "features.29"]))
    with rec.recording() as acts, torch.no_grad():
        vgg64(img64)
        conv_out = acts["features.28"].clone()
        relu_out = acts["features.29"].clone()
    expected = vgg64.features[:29](img64)
    torch.testing.assert_close(conv_out, expected)
    assert (conv_out < 0).any()
    torch.testing.assert_close(relu_out, expected.clamp(min=0))
    assert rec.activations == {} and not rec.attached


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp", "layercam"])
@pytest.mark.parametrize("frozen", [False, True])
def test_model_untouched_after_success(method, frozen):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)
    model.eval()
    model.layer2.train()  # a mixed state must survive too
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    before = snapshot(model)
    x = torch.randn(2, 3, 64, 64)
    if method == "cam":
        with camkit.CAM(model) as cam:
            res = cam(x, targets=torch.tensor([[1, 2], [3, 4]]))
    else:
        with camkit.methods.METHODS[method](model, layers=["layer2", "layer4"]) as cam:
            res = cam(x, topk=2)
            assert snapshot(model)["hooks"] == before["hooks"] + 2  # attached inside the block
    assert_untouched(model, before)  # incl. batch-norm statistics of the training-mode layer2
    assert res.maps.shape == (2, 2, 64, 64)
    # explained in eval mode: the logits are the eval-mode model's
    model.eval()
    torch.testing.assert_close(res.logits, model(x).detach())


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("inside_with", [False, True])
def test_model_untouched_after_exception(inside_with):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Boom())
    before = snapshot(model)
    cam = camkit.LayerCAM(model, layers=["0"])
    with pytest.raises(ValueError, match="the model failed on the input .*: boom"):
        if inside_with:
            with cam:
                cam(torch.randn(1, 3, 8, 8))
        else:
            cam(torch.randn(1, 3, 8, 8))
    assert_untouched(model, before)
    assert cam._recorder.activations == {}


@pytest.mark.parametrize("method", ["layercam", "cam"])
@pytest.mark.parametrize("inside_with", [False, True])
def test_no_recorded_activation_outlives_the_call(monkeypatch, method, inside_with):
    """Every tensor the recorder stored (for gradient methods: the leaf that
    replaces the first hooked output, and the graph it roots) is freed when the
    call returns, in or out of a ``with`` block."""
    stored = []
    make_hook = ActivationRecorder._hook_for

    def tracking(self, name):
        hook = make_hook(self, name)

        def wrapped(module, inp, out):
            res = hook(module, inp, out)
            if name in self.activations:
                stored.append(weakref.ref(self.activations[name]))
            return res
        return wrapped

    monkeypatch.setattr(ActivationRecorder, "_hook_for", tracking)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    cam = (camkit.CAM(model) if method == "cam" else camkit.LayerCAM(model, layers=["layer3", "layer4"]))
    if inside_with:
        with cam:
            res = cam(x, topk=2)
            gc.collect()
            assert len(stored) == len(cam.layers) and all(r() is None for r in stored), "an activation outlived the call"
    else:
        res = cam(x, topk=2)
    gc.collect()
    assert len(stored) == len(cam.layers) and all(r() is None for r in stored), "an activation outlived the call"
    assert res.maps.shape == (2, 2, 32, 32)


class CountBackward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        CountBackward.calls += 1
        return g


class Spy(nn.Module):
    def forward(self, x):
        return CountBackward.apply(x)


def test_backward_stops_at_shallowest_hooked_layer():
    torch.manual_seed(0)
    # VGG11's feature layers as torchvision builds them (without its 25088 x 4096 classifier, unused here)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    model = nn.Sequential(features[:3], Spy(), features[3:], nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    model(x)  # materialize the lazy layer
    CountBackward.calls = 0
    model(x).sum().backward()
    assert CountBackward.calls == 1  # the spy sees a full backward
    CountBackward.calls = 0
    model.zero_grad(set_to_none=True)
    camkit.LayerCAM(model, layers=["2.3", "2.8"])(x.detach())
    assert CountBackward.calls == 0
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- errors


def test_unknown_layer_lists_close_matches(vgg64):
    with pytest.raises(ValueError, match=r"unknown layer 'feature\.29'.*features\.29"):
        camkit.LayerCAM(vgg64, layers=["feature.29"])


def test_layer_errors(vgg64):
    with pytest.raises(ValueError, match="layers is empty"):
        camkit.GradCAM(vgg64, layers=[])
    with pytest.raises(ValueError, match="not a submodule"):
        camkit.GradCAM(vgg64, layers=[nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="listed twice"):
        camkit.GradCAM(vgg64, layers=["features.29", vgg64.features[29]])
    with pytest.raises(ValueError, match="one weight per layer"):
        camkit.LayerCAM(vgg64, layers=["features.22", "features.29"], fusion="weighted", weights=[0.5])
    with pytest.raises(ValueError, match="unknown fusion"):
        camkit.LayerCAM(vgg64, layers=["features.29"], fusion="median")
    with pytest.raises(ValueError, match="unknown normalizer"):
        camkit.LayerCAM(vgg64, layers=["features.29"], normalize="softmax")


def test_input_errors(vgg64, img64):
    cam = camkit.GradCAM(vgg64, layers=["features.29"])
    with pytest.raises(ValueError, match=r"expected input of shape \(B, C, H, W\), got \(3, 64, 64\).*x\[None\]"):
        cam(img64[0])
    with pytest.raises(ValueError, match=r"model failed on the input of shape \(2, 1, 64, 64\).*to have 3 channels"):
        cam(img64[:, :1])
    with pytest.raises(TypeError, match="image batch tensor"):
        cam(img64.numpy())


def test_target_errors(vgg64, img64):
    cam = camkit.GradCAM(vgg64, layers=["features.29"])
    with pytest.raises(ValueError, match=r"target class 1000 out of range: classes are 0\.\.999"):
        cam(img64, targets=[1, 1000])
    with pytest.raises(ValueError, match=r"target class -1 out of range"):
        cam(img64, targets=[-1, 0])
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\) .* got \(3,\)"):
        cam(img64, targets=[1, 2, 3])
    with pytest.raises(ValueError, match="class indices must be integers, got dtype torch.float32"):
        cam(img64, targets=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="either targets or topk"):
        cam(img64, targets=[1, 2], topk=2)
    with pytest.raises(ValueError, match="exceeds the number of classes"):
        cam(img64, topk=1001)


def test_layer_that_runs_twice_or_never():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="ran 2 times in one forward pass"):
        camkit.GradCAM(model, layers=["layer1.0.relu"])(x)
    assert snapshot(model)["hooks"] == 0

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 2, 1)
            self.unused = nn.Conv2d(3, 2, 1)
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.used(x).mean((2, 3)))

    with pytest.raises(ValueError, match="did not run"):
        camkit.GradCAM(Skip(), layers=["unused"])(x)


def test_token_layer_without_reshape_is_refused():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.block = nn.Identity()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            t = self.block(self.embed(x).flatten(2).transpose(1, 2))  # (B, N, C)
            return self.fc(t.mean(1))

    model = Tokens()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"outputs shape \(2, 16, 8\); expected \(B, C, h, w\)"):
        camkit.GradCAM(model, layers=["block"])(x)
    to_map = lambda t: t.transpose(1, 2).unflatten(2, (4, 4))  # noqa: E731
    res = camkit.GradCAM(model, layers=["block"], reshape=to_map)(x, targets=[0, 2])
    ref = camkit.GradCAM(model, layers=["embed"])(x, targets=[0, 2])
    torch.testing.assert_close(res.layer_maps["block"], ref.layer_maps["embed"])
