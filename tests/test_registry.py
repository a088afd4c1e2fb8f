"""Each method declares itself once: a toy method registered here, in this file alone, appears in
METHODS, in the command line's --method choices, in the presets' defaults and in the specs."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor

import camkit
from camkit import cli
from camkit.adapters import resolve
from camkit.app import MethodSpec
from camkit.errors import InputError
from camkit.methods import METHODS, cli_names, method_info, register_method, unregister_method
from camkit.methods.base import _GradientMethod


def toy_formula(A: Tensor, G: Tensor, eigen: bool = False) -> Tensor:
    """The activations' channel sum, whatever the target: ``ReLU(sum_k A_k)``."""
    return A.sum(dim=1, keepdim=True).expand(-1, G.shape[1], -1, -1).clamp(min=0)


@pytest.fixture
def toycam():
    @register_method("toycam", layers="last")
    class ToyCAM(_GradientMethod):
        formula = staticmethod(toy_formula)

    yield ToyCAM
    unregister_method("toycam")


def _subparser(name: str):
    subs = next(a for a in cli.parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    return subs[name]


def test_a_toy_method_registered_in_one_place_is_everywhere(toycam, capsys, tmp_path):
    assert METHODS["toycam"] is toycam and "toycam" in cli_names()
    assert method_info("ToyCAM").cls is toycam and toycam.info.fuses
    export_method = next(a for a in _subparser("export")._actions if "--method" in a.option_strings)
    assert "toycam" in export_method.choices
    assert "toycam" in next(a for a in _subparser("explain")._actions if "--method" in a.option_strings).help
    model = torchvision.models.resnet18(num_classes=4).eval()
    preset = resolve(model)
    assert preset.default_layers("toycam") == ("layer4",) and "toycam" in preset.methods
    method = MethodSpec("toycam").build(model, preset)
    x = torch.randn(2, 3, 64, 64)
    res = method(x, topk=2)
    with torch.no_grad():  # layer4's output by hand, its channel sum, min-max, upsampled
        a = torch.nn.Sequential(*list(model.children())[:-2])(x).sum(1).clamp(min=0)
    lo, hi = a.amin((1, 2), keepdim=True), a.amax((1, 2), keepdim=True)
    ref = torch.nn.functional.interpolate(((a - lo) / (hi - lo))[:, None], size=(64, 64), mode="bilinear")
    torch.testing.assert_close(res.layer_maps["layer4"][:, 0], a)
    torch.testing.assert_close(res.maps, ref.expand(-1, 2, -1, -1))
    assert "layers=['layer4']" in repr(method)


def test_the_registry_refuses_a_taken_name_and_an_unknown_kind():
    with pytest.raises(InputError, match="already registered"):
        register_method("gradcam", layers="last")(type("Other", (_GradientMethod,), {}))
    with pytest.raises(InputError, match="unknown layer kind"):
        register_method("x", layers="everywhere")
    with pytest.raises(InputError, match="unknown method 'nosuch'; choose from"):
        MethodSpec("nosuch")
    assert "toycam" not in METHODS and "toycam" not in cli_names()  # the fixture's toy is gone again


def test_options_are_one_frozen_object_checked_once():
    model = torchvision.models.resnet18(num_classes=4).eval()
    cam = camkit.ScoreCAM(model, "layer4", batch_size=8, softmax=False)
    assert (cam.options.batch_size, cam.options.softmax, cam.batch_size) == (8, False, 8)
    with pytest.raises(AttributeError):
        cam.options.batch_size = 3  # frozen
    with pytest.raises(InputError, match="ScoreCAM has no option 'batchsize'; its options: .*batch_size"):
        camkit.ScoreCAM(model, "layer4", batchsize=8)
    with pytest.raises(InputError, match="batch_size must be a positive int"):
        camkit.AblationCAM(model, "layer4", batch_size=0)
    with pytest.raises(InputError, match="num_samples must be a positive int"):
        camkit.SmoothGradCAMpp(model, "layer4", num_samples=0)
    with pytest.raises(InputError, match="GradCAM has no option 'per_channel'"):
        camkit.GradCAM(model, "layer4", per_channel=True)
    with pytest.raises(InputError, match="FullGrad does not fuse layers"):
        camkit.FullGrad(model, fusion="weighted", weights=[1.0])
    assert repr(cam) == "ScoreCAM(layers=['layer4'], batch_size=8, softmax=False)"
