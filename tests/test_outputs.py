"""``output=`` functions that compute (issue 21's first bug): they run with gradients on, so a
gradient method differentiates through them, as plain autograd does."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import camkit
from camkit.methods import METHODS

GRADIENT = [n for n, c in METHODS.items() if getattr(c, "needs_grad", False)]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=6).eval()


def test_a_computing_output_function_equals_plain_autograd(net):
    """Grad-CAM of ``output=lambda o: o[:, :4] * 2 - o[:, 4:].sum(1, keepdim=True)`` against a hand
    Grad-CAM of the same function with torch.autograd."""
    x = torch.randn(2, 3, 64, 64)
    fn = lambda o: o[:, :4] * 2 - o[:, 4:].sum(1, keepdim=True)  # noqa: E731
    res = camkit.GradCAM(net, "layer4", output=fn, normalize=None)(x, targets=[1, 3])
    acts = {}
    h = net.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    y = fn(net(x))
    h.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(y[0, 1] + y[1, 3], a)
    ref = (g.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
    torch.testing.assert_close(res.layer_maps["layer4"][:, 0], ref.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", GRADIENT)
def test_every_gradient_method_takes_a_computing_output(net, name):
    """``o * 1.0`` is the output itself: the same maps as output=None (it raised 'the targets do not
    depend on layer(s)' before)."""
    import warnings

    x = torch.randn(1, 3, 48, 48)
    layers = ["layer4"]
    if name == "legrad":  # a vision-transformer method: a tiny timm ViT, its blocks
        torch.manual_seed(0)
        net = timm.create_model("vit_tiny_patch16_224", img_size=48, patch_size=16, depth=2, embed_dim=24,
                                num_heads=2, num_classes=6).eval()
        layers = ["blocks.0", "blocks.1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FullGrad: layers= ignored
        plain = METHODS[name](net, layers=layers)(x, targets=[2])
        computed = METHODS[name](net, layers=layers, output=lambda o: o * 1.0)(x, targets=[2])
    torch.testing.assert_close(computed.maps, plain.maps)
