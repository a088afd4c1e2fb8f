"""The automatic layer for models without a preset (adapters/autolayer.py), and the torchvision Swin V2 and
MaxViT presets: each checked against layers named by hand from the models' definitions and against hand
autograd / hand CAM computations."""
from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torchvision.models as tvm
from model_state import assert_as_found, mixed, snapshot
from torch import nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

from camkit import adapters
from camkit.adapters import AutoLayerWarning, NoPresetError
from camkit.methods import METHODS


def _x(b: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# --------------------------------------------------------------------------- small custom models


def _plain() -> nn.Module:
    """conv, relu, conv (stride 2), relu, GAP (a (B, 6, 1, 1) map), flatten, linear: the last spatial layer is
    "3", the ReLU after the second conv (the pooling's 1x1 output is not spatial)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


class _Nested(nn.Module):
    """Stages inside a container, a functional mean for the pooling: the outermost module returning the last
    map is ``body`` (not ``body.1.1``, which returns the same tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
                                  nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": self.head(self.body(x).mean(dim=(2, 3)))}  # a dict with logits, transformers style


class _SharedAndChannelsLast(nn.Module):
    """A ReLU and a 1x1 conv each used twice (hooked, they would record twice: refused) and a channels-last
    LayerNorm ``(B, h, w, C)`` before the pooling: the last usable spatial layer is ``conv2``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act, self.mix = nn.ReLU(), nn.Conv2d(6, 6, 1)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mix(self.mix(self.act(self.conv2(self.act(self.conv1(x))))))
        return self.fc(self.norm(a.permute(0, 2, 3, 1)).mean(dim=(1, 2)))


@pytest.mark.parametrize("factory,layer,fc", [(_plain, "3", "6"), (_Nested, "body", "head"),
                                              (_SharedAndChannelsLast, "conv2", None)])
def test_the_automatic_layer_is_the_last_spatial_layer_named_by_hand(factory, layer, fc):
    torch.manual_seed(0)
    model = factory().double().eval()
    with pytest.warns(AutoLayerWarning, match=rf"no preset for .*: using layer '{layer}' .*last spatial layer "
                                              r"before global pooling.*layers=\[\.\.\.\]"):
        preset = adapters.resolve(model)
    assert preset.family == "auto" and preset.layers == (layer,) and preset.gradcam_layer == layer
    assert preset.fc == fc and preset.cam_layer == (layer if fc else None)
    assert preset.output == ("logits" if factory is _Nested else None)
    res = METHODS["gradcam"](model, **preset.method_kwargs("gradcam"))(_x())
    assert list(res.layer_maps) == [layer] and res.maps.shape == (2, 1, 32, 32)


def test_cam_on_the_automatic_layer_equals_the_hand_cam():
    torch.manual_seed(0)
    model, x = _plain().double().eval(), _x()
    with pytest.warns(AutoLayerWarning):
        preset = adapters.resolve(model)
    res = METHODS["cam"](model, **preset.method_kwargs("cam"))(x)
    with torch.no_grad():
        A = model[:4](x)
        c = model(x).argmax(1)
        hand = torch.einsum("bc,bchw->bhw", model[6].weight[c], A)
    torch.testing.assert_close(res.layer_maps["3"][:, 0], hand, rtol=1e-9, atol=1e-12)


def test_the_search_leaves_the_model_as_found():
    torch.manual_seed(0)
    model = mixed(_Nested(), "body.0")
    before = snapshot(model)
    with pytest.warns(AutoLayerWarning):
        adapters.resolve(model)
    assert_as_found(model, before)


def test_a_model_without_a_spatial_layer_has_no_preset():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5)).eval()  # runs at 32 x 32 only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing chosen: no AutoLayerWarning either
        with pytest.raises(NoPresetError, match="no preset for .*Sequential and no automatic layer: no layer outputs "
                                                r"a spatial map \(B, C, h, w\) in a dry run at 32x32.*layers=\[\.\.\.\]"):
            adapters.resolve(mlp)

    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("takes no images")

    with pytest.raises(NoPresetError, match="dry run failed at every size tried .224x224: takes no images"):
        adapters.resolve(Odd())


# --------------------------------------------------------------------------- torchvision Swin V2 and MaxViT


@functools.cache
def _swin_v2() -> nn.Module:
    """swin_v2_t's architecture (V2 blocks and patch merging) at a small width."""
    torch.manual_seed(0)
    return tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1], num_heads=[1, 1, 1],
                               window_size=[4, 4], block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2,
                               num_classes=5).double().eval()


@functools.cache
def _maxvit() -> nn.Module:
    """maxvit_t's architecture at a small width, three blocks, built for 32 x 32 inputs."""
    torch.manual_seed(0)
    return tvm.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16, 16],
                      block_layers=[1, 1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5).double().eval()


def test_swin_v2_cam_on_norm_equals_the_hand_cam():
    model, x = _swin_v2(), _x()
    preset = adapters.resolve(model)
    assert preset.family == "torchvision-swin" and preset.layers == ("features.1", "features.3", "features.5")
    assert preset.cam_layer == preset.gradcam_layer == "norm" and preset.fc == "head"
    res = METHODS["cam"](model, **preset.method_kwargs("cam"))(x)
    with torch.no_grad():
        A = model.norm(model.features(x)).permute(0, 3, 1, 2)  # channels-last (B, h, w, C) -> (B, C, h, w)
        c = model(x).argmax(1)
        hand = torch.einsum("bc,bchw->bhw", model.head.weight[c], A)
    torch.testing.assert_close(res.layer_maps["norm"][:, 0], hand, rtol=1e-9, atol=1e-12)


def test_maxvit_gradcam_on_the_last_block_equals_hand_autograd_and_cam_does_not_apply():
    model, x = _maxvit(), _x()
    preset = adapters.resolve(model)
    assert preset.family == "torchvision-maxvit" and preset.input_size == (32, 32)
    assert preset.layers == ("blocks.0", "blocks.1", "blocks.2") and preset.gradcam_layer == "blocks.2"
    assert preset.cam_layer is None and "cam" not in preset.methods and "legrad" not in preset.methods
    res = METHODS["gradcam"](model, **preset.method_kwargs("gradcam"))(x)
    got = {}
    h = model.blocks[2].register_forward_hook(lambda m, i, o: got.setdefault("a", o))
    logits = model(x)
    h.remove()
    A = got["a"]
    (G,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), A)
    hand = torch.relu((G.mean(dim=(2, 3), keepdim=True) * A).sum(1)).detach()
    torch.testing.assert_close(res.layer_maps["blocks.2"][:, 0], hand, rtol=1e-9, atol=1e-12)
    fc = model.classifier[-1]  # CAM's premise fails: the head normalizes the pooled features first
    assert not torch.allclose(fc(A.mean(dim=(2, 3))), logits)


@pytest.mark.slow(reason="full-size maxvit_t and swin_v2_t (random weights): ~3 s of dry runs and backwards at 224 x 224")
def test_full_size_maxvit_t_and_swin_v2_t():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for name, layers, last in [("maxvit_t", ("blocks.1", "blocks.2", "blocks.3"), "blocks.3"),
                               ("swin_v2_t", ("features.3", "features.5", "features.7"), "norm")]:
        model = tvm.get_model(name, weights=None, num_classes=5).eval()
        preset = adapters.resolve(model)
        assert preset.layers == layers and preset.gradcam_layer == last and preset.input_size == (224, 224)
        assert ("cam" in preset.methods) == (name == "swin_v2_t")
        for method in ("gradcam", "layercam"):
            res = METHODS[method](model, **preset.method_kwargs(method))(x)
            assert res.maps.shape == (1, 1, 224, 224) and bool(torch.isfinite(res.maps).all())
