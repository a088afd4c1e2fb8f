"""The methods' promises under attack: the model left exactly as found (mixed
modes, errors, two threads, the global RNG), non-finite values, half precision
and autocast, dtype / batch / TorchScript / checkpointing misuse, and the small
API edges. Each test failed on the code before these guarantees (c26a845)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import timm
import torch
import torch.utils.checkpoint
import torchvision
from small_models import narrow_resnet18
from torch import nn

import camkit
from camkit.heads import CAMModel, PaperReCAMHead, ReCAMHead
from camkit.methods import METHODS


def snapshot(model: nn.Module):
    return {
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_untouched(model: nn.Module, before) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"]
    assert after["training"] == before["training"], "a module's training flag changed"
    assert after["requires_grad"] == before["requires_grad"]
    assert all(after["grads"]), "a parameter .grad was written"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"buffer or parameter {k} changed"


#: Methods that run the model once per channel of each hooked layer (Score-CAM: 768 masked forwards per
#: image on ResNet18's layer3 + layer4): their state checks run on ResNet18 8 times narrower (96 channels;
#: tests/small_models.py: the same torchvision class, blocks, mixed modes and BatchNorm folding).
PER_CHANNEL = ("scorecam", "ablationcam")
#: Methods with two backward passes or a contrast of several classes: the narrow ResNet18 keeps them cheap.
NARROW = PER_CHANNEL + ("shapleycam", "finercam", "refinecam")
#: Methods for vision transformers (attention layers): a tiny timm ViT in the same mixed state.
VIT = ("legrad",)


def mixed_resnet(narrow: bool = False) -> nn.Module:
    torch.manual_seed(0)
    m = narrow_resnet18(num_classes=5) if narrow else torchvision.models.resnet18(num_classes=5)
    m.train()
    m.layer1.eval()  # a mixed state: train at the root, eval in layer1
    return m


def explainer(name: str, model: nn.Module):
    if name == "cam":
        return camkit.CAM(model)
    if name in ("recam", "paper_recam") + VIT:
        return METHODS[name](model)
    if name == "dff":  # one layer, the one its classifier (fc) scores
        return METHODS[name](model, layers=["layer4"])
    return METHODS[name](model, layers=["layer3", "layer4"] if not isinstance(model, CAMModel) else ["head.relu"])


def model_for(name: str) -> nn.Module:
    if name in ("recam", "paper_recam"):
        torch.manual_seed(0)
        back = torchvision.models.resnet18().train()
        back.layer1.eval()
        head = ReCAMHead(512, 5) if name == "recam" else PaperReCAMHead(512, 5)
        model = CAMModel(nn.Sequential(*list(back.children())[:-2]), head, freeze=False)
        model.train()
        model.head.eval()
        return model
    if name in VIT:
        torch.manual_seed(0)
        vit = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=16, depth=2, embed_dim=24,
                                num_heads=2, num_classes=5).train()
        vit.blocks[0].eval()
        return vit
    return mixed_resnet(narrow=name in NARROW)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_leaves_a_mixed_mode_model_and_the_rng_as_found(name):
    model = model_for(name)
    before = snapshot(model)
    cam = explainer(name, model)
    x = torch.randn(2, 3, 64, 64)
    rng = torch.get_rng_state()
    res = cam(x, topk=2)
    assert torch.equal(torch.get_rng_state(), rng), "the call consumed the global RNG"
    assert_untouched(model, before)
    assert res.maps.shape == (2, 2, 64, 64) and torch.isfinite(res.maps).all()
    with pytest.raises(ValueError):  # also on error
        cam(torch.full((1, 3, 64, 64), float("nan")))
    assert_untouched(model, before)


class Slow(nn.Module):
    """Sleeps mid-forward so that two threads' calls overlap."""

    def forward(self, x):
        time.sleep(0.005)
        return x


def test_two_threads_two_explainers_one_model():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4)
    model = nn.Sequential(net.conv1, net.bn1, net.relu, Slow(), net.layer1, net.layer2, Slow(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))
    model.train()
    before = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    cams = [camkit.GradCAM(model, layers=["5"]), camkit.LayerCAM(model, layers=["4", "5"])]
    expected = [c(x, topk=2).maps for c in cams]
    errors, results = [], [[], []]

    def work(i):
        try:
            for _ in range(6):
                results[i].append(cams[i](x, topk=2).maps)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_untouched(model, before)  # still in train mode, batch-norm statistics unchanged
    for i in range(2):
        for m in results[i]:
            torch.testing.assert_close(m, expected[i])


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "smoothgradcampp", "fullgrad"])
def test_one_method_object_serves_two_threads(name):
    """The methods that run the model again read the call's input from the call's context (CallContext.x), so
    one method object serves two threads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Slow(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    cam = METHODS[name](model, layers=None if name == "fullgrad" else ["3"])
    x = torch.randn(1, 3, 12, 12)
    expected = cam(x).maps
    errors, results = [], []

    def work():
        try:
            for _ in range(4):
                results.append(cam(x).maps)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 8 and all(torch.equal(m, expected) for m in results)


def test_a_foreign_forward_in_another_thread_is_not_recorded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Slow(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    cam = camkit.GradCAM(model, layers=["0"])
    ref = cam(x).maps
    stop = threading.Event()

    def user_forward():
        with torch.no_grad():
            while not stop.is_set():
                model(torch.randn(1, 3, 16, 16))

    t = threading.Thread(target=user_forward)
    t.start()
    try:
        with cam:
            for _ in range(5):
                torch.testing.assert_close(cam(x).maps, ref)
    finally:
        stop.set()
        t.join()


# --------------------------------------------------------------------------- non-finite values


def test_non_finite_input_or_output_is_refused_per_image():
    model = mixed_resnet().eval()
    cam = camkit.LayerCAM(model, ["layer3", "layer4"])
    x = torch.randn(3, 3, 32, 32)
    x[1, 0, 0, 0] = float("nan")
    x[2, 2, 5, 5] = float("inf")
    with pytest.raises(ValueError, match=r"the input has NaN or Inf values in image\(s\) \[1, 2\]"):
        cam(x)
    with pytest.raises(ValueError, match=r"NaN or Inf values in image\(s\) \[0\]"):
        camkit.LayerCAM(model, ["layer3", "layer4"], normalize="sigmoid")(torch.full((1, 3, 64, 64), float("nan")))
    with torch.no_grad():
        model.fc.weight[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"the model's output is NaN or Inf for image\(s\) \[0, 1, 2\]"):
        cam(torch.randn(3, 3, 32, 32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        camkit.CAM(model)(torch.randn(1, 3, 32, 32))


def test_finite_values_whose_sum_overflows_are_not_refused():
    """The finite check sums each image first (cheap) and looks value by value only where a sum is not
    finite: an image of finite values near float32's max (its sum overflows) passes, a NaN in another
    image is still named alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Hardtanh(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    cam = camkit.GradCAM(model, ["1"])
    x = torch.randn(2, 3, 8, 8)
    x[0] = 3e38
    assert not torch.isfinite(x[0].sum()) and torch.isfinite(x).all()
    res = cam(x)
    assert torch.isfinite(res.maps).all()
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"the input has NaN or Inf values in image\(s\) \[1\]$"):
        cam(x)


def test_tiny_float64_gradients_are_not_called_zero():
    """Gradients of 1e-300 (float64) are not exactly zero: no blank-maps warning (a float32 sum of them
    would underflow to 0)."""
    import warnings

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model = model.double().eval()
    with torch.no_grad():
        model[4].weight.fill_(1e-300)
        model[0].bias.fill_(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = camkit.GradCAM(model, ["0"])(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    assert (res.layer_maps["0"] > 0).any()


def overflowing_half_model() -> nn.Module:
    """Finite logits, but LayerCAM's channel sum is 256 * 10 * 100 = 256000 > 65504 (float16's max)."""
    conv = nn.Conv2d(3, 512, 1)
    fc = nn.Linear(512, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(100.0)
        fc.weight.zero_()
        fc.weight[0, :256] = 40.0
        fc.weight[0, 256:] = -40.0  # the logit cancels to 0; the positive gradients do not
        fc.bias.zero_()
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).half().eval()


def test_half_precision_map_math_does_not_overflow():
    model = overflowing_half_model()
    x = torch.randn(1, 3, 2, 2).half()
    res = camkit.LayerCAM(model, ["0"], normalize=None)(x, targets=[0])
    assert res.maps.dtype == torch.float32 and res.layer_maps["0"].dtype == torch.float32
    assert torch.isfinite(res.layer_maps["0"]).all()
    torch.testing.assert_close(res.layer_maps["0"], torch.full((1, 1, 2, 2), 256000.0))
    ref = camkit.LayerCAM(model.float(), ["0"], normalize=None)(x.float(), targets=[0])
    torch.testing.assert_close(res.layer_maps["0"], ref.layer_maps["0"])


def test_cam_on_a_half_model_finds_its_head():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = camkit.CAM(model)(x, topk=2)
    half = camkit.CAM(model.half())(x.half(), topk=2)
    assert half.maps.dtype == torch.float32
    torch.testing.assert_close(half.maps, ref.maps, atol=2e-2, rtol=0)


def test_bf16_autocast_computes_maps_in_float32():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    cam = camkit.LayerCAM(model, ["layer3", "layer4"])
    ref = cam(x, targets=[1, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cam(x, targets=[1, 3])
        maps = low.maps  # also when read inside the autocast block
    assert low.layer_maps["layer4"].dtype == torch.float32 and maps.dtype == torch.float32
    assert (maps - ref.maps).abs().max() < 0.1  # bf16 activations and gradients, float32 formulas
    assert torch.corrcoef(torch.stack([maps.flatten(), ref.maps.flatten()]))[0, 1] > 0.99


# --------------------------------------------------------------------------- misuse


def test_input_dtype_must_fit_the_model():
    model = mixed_resnet().eval()
    cam = camkit.GradCAM(model, ["layer4"])
    with pytest.raises(ValueError, match="must be a floating-point image batch.*got dtype torch.uint8"):
        cam(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"dtype torch.float64 differs from the model's torch.float32"):
        cam(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dtype torch.float32 differs from the model's torch.float16"):
        camkit.GradCAM(model.half(), ["layer4"])(torch.zeros(1, 3, 32, 32))


def test_output_batch_must_match_the_input():
    class BatchMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def forward(self, x):
            return self.body(x).mean(0, keepdim=True)

    with pytest.raises(ValueError, match=r"output has shape \(1, 3\) for 2 input images"):
        camkit.GradCAM(BatchMean(), ["body.0"])(torch.randn(2, 3, 8, 8))


def test_lazy_stem_and_a_stem_registered_after_other_convs():
    torch.manual_seed(0)
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    res = camkit.GradCAM(lazy, ["0"])(torch.randn(1, 2, 8, 8))  # not materialized yet: in_channels unknown
    assert res.maps.shape == (1, 1, 8, 8)
    res = camkit.GradCAM(lazy, ["0"])(torch.randn(1, 2, 8, 8))  # materialized by the first call, on 2 channels
    assert res.maps.shape == (1, 1, 8, 8)

    class LateStem(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(8, 3, 1)  # registered first, not the stem
            self.stem = nn.Conv2d(1, 8, 3)

        def forward(self, x):
            return self.head(self.stem(x)).mean((2, 3))

    res = camkit.GradCAM(LateStem(), ["stem"])(torch.randn(2, 1, 8, 8))
    assert res.maps.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"model failed on the input of shape \(2, 3, 8, 8\).*channels"):
        camkit.GradCAM(LateStem(), ["stem"])(torch.randn(2, 3, 8, 8))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_torchscript_and_checkpointing_are_named():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="TorchScript.*do not run Python forward hooks"):
        camkit.GradCAM(traced, ["layer4"])
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(ValueError, match="TorchScript.*do not run Python forward hooks"):
        camkit.GradCAM(scripted, ["0"])
    tm = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    tm.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match=r"gradient checkpointing is on.*set_grad_checkpointing\(False\)"):
        camkit.GradCAM(tm, ["layer4"])(torch.randn(1, 3, 32, 32))
    tm.set_grad_checkpointing(False)
    assert camkit.GradCAM(tm, ["layer4"])(torch.randn(1, 3, 32, 32)).maps.shape == (1, 1, 32, 32)

    class Reentrant(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=True).mean((2, 3)))

    with pytest.raises(ValueError, match=r"gradient checkpointing \(torch.utils.checkpoint"):
        camkit.GradCAM(Reentrant(), ["block.0"])(torch.randn(1, 3, 8, 8))


def test_api_edges():
    model = mixed_resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    cam = camkit.GradCAM(model, ["layer4"])
    with pytest.raises(ValueError, match="topk must be a positive int, got True"):
        cam(x, topk=True)
    torch.testing.assert_close(cam(x, topk=np.int64(2)).maps, cam(x, topk=2).maps)
    three = cam(x, targets=3).maps
    for same in (np.int64(3), torch.tensor(3), [3, 3], np.array([3, 3])):
        torch.testing.assert_close(cam(x, targets=same).maps, three)
    with pytest.raises(TypeError, match="class indices must be integers, got a bool"):
        cam(x, targets=True)
    with pytest.raises(ValueError, match=r"layers is required"):
        camkit.GradCAM(model, layers=None)
    with pytest.raises(ValueError, match="fusion='max' takes no weights"):
        camkit.LayerCAM(model, ["layer3", "layer4"], weights=[0.5, 0.5])
    one = camkit.LayerCAM(model, ["layer4"], fusion="weighted", weights=[0.5])(x)
    plain = camkit.LayerCAM(model, ["layer4"])(x)
    torch.testing.assert_close(one.maps, torch.tanh(2 * 0.5 * plain.maps))  # tanh also for one layer
    with pytest.raises(ValueError, match=r"target class 7 out of range: classes are 0\.\.4"):
        cam(x, targets=[0, 7])
