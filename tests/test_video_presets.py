"""Presets for torchvision's video classifiers (issue 21): camkit.adapters.resolve / build on r3d_18,
mc3_18, r2plus1d_18, s3d, swin3d_t, mvit_v1_b, mvit_v2_s.

References: CAM and Grad-CAM written out on activations and gradients from plain torch.autograd
(r3d_18 with seeded weights at (1, 3, 4, 32, 32)); the layer names, their output shapes and MViT's
token grids read from a forward of the model itself on the meta device (hooks written here, the
grids MViT's own blocks return), against the layers named in torchvision's source.
"""
from __future__ import annotations

from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import camkit
from camkit.adapters import build, list_layers, resolve
from camkit.adapters.video import clip_size

SPATIAL = (-3, -2, -1)


def seeded(arch: str) -> nn.Module:
    """torchvision's ``arch`` (num_classes=5) built on the meta device, then given seeded weights
    (slices of one random vector, He-scaled) and identity BatchNorm statistics: its own init costs ~1 s."""
    with torch.device("meta"):
        m = getattr(torchvision.models.video, arch)(num_classes=5)
    m = m.to_empty(device="cpu").eval()
    params = dict(m.named_parameters())
    pool = torch.randn(max(p.numel() for p in params.values()), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, p in params.items():
            if p.dim() > 1:
                p.copy_(pool[:p.numel()].view_as(p) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm3d):
                mod.reset_running_stats()
            if hasattr(mod, "define_relative_position_index"):  # video Swin's index buffer, made in __init__
                mod.define_relative_position_index()
    return m


def minmax_volume(m: Tensor) -> Tensor:
    lo, hi = m.amin(SPATIAL, keepdim=True), m.amax(SPATIAL, keepdim=True)
    return torch.where(hi > lo, (m - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)


def test_r3d_18_preset_cam_and_gradcam_equal_hand_autograd():
    """resolve(r3d_18): layer4 for Grad-CAM and CAM with fc, layer2-4 for LayerCAM; the maps through the
    preset's method_kwargs equal CAM (W[c] . A) and Grad-CAM (ReLU(sum_c mean(dY/dA) A)) written out."""
    model = seeded("r3d_18")
    flags = [p.requires_grad for p in model.parameters()]
    preset = resolve(model)
    assert (preset.family, preset.layers, preset.gradcam_layer, preset.cam_layer, preset.fc) == \
        ("tv-video-resnet", ("layer2", "layer3", "layer4"), "layer4", "layer4", "fc")
    assert preset.input_size == (112, 112) and preset.categories == tuple(f"class {k}" for k in range(5))
    assert preset.task == "video"
    x = torch.rand(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([[1, 3]])
    kept = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: kept.setdefault("A", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    A = kept["A"]
    G = torch.stack([torch.autograd.grad(out[0, int(c)], A, retain_graph=True)[0] for c in t[0]], 1)
    A = A.detach()
    ref_grad = torch.einsum("bkc,bcthw->bkthw", G.mean(SPATIAL), A).clamp(min=0)
    ref_cam = torch.einsum("kc,bcthw->bkthw", model.fc.weight.detach()[t[0]], A)
    assert float(ref_grad.amax()) > 0 and G.abs().amax() > 0
    res = camkit.METHODS["gradcam"](model, **preset.method_kwargs("gradcam"))(x, t)
    torch.testing.assert_close(res.layer_maps["layer4"], ref_grad, rtol=1e-4, atol=1e-6 * float(ref_grad.amax()))
    ref_maps = F.interpolate(minmax_volume(ref_grad), size=(4, 32, 32), mode="trilinear", align_corners=False)
    torch.testing.assert_close(res.maps, ref_maps, rtol=1e-4, atol=1e-5)
    cam = camkit.METHODS["cam"](model, **preset.method_kwargs("cam"))(x, t)
    torch.testing.assert_close(cam.layer_maps["layer4"], ref_cam, rtol=1e-4, atol=1e-5)
    assert preset.method_kwargs("cam")["fc"] == "fc"
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())


# What torchvision's source names (models/video/*.py): the layers whose outputs are the stages' ends,
# the pooling's input (Grad-CAM), and the GAP + linear head where there is one.
EXPECTED: Dict[str, Tuple[Tuple[str, ...], str, object, object]] = {
    "mc3_18": (("layer2", "layer3", "layer4"), "layer4", "layer4", "fc"),
    "r2plus1d_18": (("layer2", "layer3", "layer4"), "layer4", "layer4", "fc"),
    "s3d": (("features.6", "features.12", "features.15"), "features.15", None, None),
    "swin3d_t": (("features.2", "features.4", "features.6"), "norm", "norm", "head"),
    "mvit_v1_b": (("blocks.13.norm1", "blocks.14.norm1", "blocks.15.norm1"), "blocks.15.norm1", None, None),
    "mvit_v2_s": (("blocks.13.norm1", "blocks.14.norm1", "blocks.15.norm1"), "blocks.15.norm1", None, None),
}


def meta_shapes(model: nn.Module, x: Tensor) -> Dict[str, object]:
    """Each module's output on the meta device (MViT blocks: the (t, h, w) grid each block returns)."""
    got: Dict[str, object] = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: got.setdefault(n, o)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return got


SLOW = pytest.mark.slow(reason="a meta forward of a few hundred modules at the native clip size (0.2-0.5 s each)")


@pytest.mark.parametrize("arch", [pytest.param(a, marks=SLOW) if a in ("r2plus1d_18", "s3d", "swin3d_t", "mvit_v2_s") else a
                                  for a in EXPECTED])
def test_video_presets_structure(arch):
    """On the meta device: the preset's layers are torchvision's stage ends, each read by the preset's
    reshape as (B, C, t, h, w) with C the layer's width at the native clip size; MViT's token grids
    are the ones its blocks return; CAM where the head is GAP + linear."""
    with torch.device("meta"):
        model = getattr(torchvision.models.video, arch)(num_classes=5).eval()
    preset = resolve(model)
    layers, gradcam, cam, fc = EXPECTED[arch]
    assert (preset.layers, preset.gradcam_layer, preset.cam_layer, preset.fc) == (layers, gradcam, cam, fc)
    assert len(preset.categories) == 5 and preset.input_size == clip_size(model)[1:]
    if arch.startswith("mvit"):  # torchvision's block settings: query pooling (1, 2, 2) at blocks 1, 3 and 14
        assert clip_size(model) == (16, 224, 224) and preset.reshape.grids == ((8, 7, 7), (8, 14, 14))
        maps = torch.randn(2, 768, 8, 7, 7, generator=torch.Generator().manual_seed(0))
        tokens = torch.cat([torch.zeros(2, 1, 768), maps.flatten(2).transpose(1, 2)], 1)  # as MViT.forward lays them
        assert torch.equal(preset.reshape(tokens), maps)
    if arch == "mvit_v1_b":
        return  # torch's meta kernels fail in its block 1 (96 vs 192 channels); its CPU forward does not
    got = meta_shapes(model, torch.zeros(1, 3, *clip_size(model), device="meta"))
    for name in layers + (gradcam,):
        raw = got[name]
        a = raw if preset.reshape is None else preset.reshape(raw)
        last = arch.startswith(("swin", "mvit"))  # channels last: (B, t, h, w, C) and tokens (B, N, C)
        assert a.dim() == 5 and a.shape[:2] == (1, raw.shape[-1] if last else raw.shape[1])
        if arch.startswith("swin"):
            assert a.shape[2:] == raw.shape[1:4]
        if arch.startswith("mvit"):  # the grid block i reads is the one block i - 1 returned
            i = int(name.split(".")[1])
            assert tuple(a.shape[2:]) == tuple(got[f"blocks.{i - 1}"][1])
    kw = preset.method_kwargs("gradcam")
    assert kw["layers"] == [gradcam] and kw.get("reshape") is preset.reshape
    if cam is None:
        with pytest.raises(camkit.InputError, match="CAM needs global average pooling"):
            preset.method_kwargs("cam")


def test_build_video_models_by_name_and_their_transform():
    """build("tv:r3d_18", weights="none") gives the video preset with Kinetics-400's class names and
    transform (torchvision's VideoClassification: a (T, C, H, W) clip -> (C, T, 112, 112))."""
    from torchvision.models.video import R3D_18_Weights

    with torch.device("meta"):
        model, preset = build("tv:r3d_18", weights="none")
    assert preset.family == "tv-video-resnet" and preset.categories == tuple(R3D_18_Weights.DEFAULT.meta["categories"])
    clip = torch.randint(0, 256, (5, 3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = preset.transform(clip)
    assert out.shape == (3, 5, 112, 112) and preset.mean == tuple(R3D_18_Weights.DEFAULT.transforms().mean)
    with torch.device("meta"):
        _, mvit = build("tv:mvit_v2_s", weights="none")
    assert mvit.family == "tv-mvit" and mvit.mean == (0.45, 0.45, 0.45)
    shapes = {i.name: i.shape for i in list_layers(model, (112, 112))}  # a (1, 3, 16, 112, 112) clip
    assert shapes["layer4"] == (1, 512, 2, 7, 7) and shapes["fc"] == (1, 400)


@pytest.mark.slow(reason="video Swin and MViT (28M / 35M parameters) with seeded weights, 8 x 64 x 64 clips: seconds")
@pytest.mark.parametrize("arch", ["swin3d_t", "mvit_v2_s"])
def test_swin3d_and_mvit_gradcam_through_the_preset_equal_hand_autograd(arch):
    """Grad-CAM (and video Swin's CAM) through the preset equal the formulas on plain autograd, the layer's
    output laid out by hand: Swin's (B, t, h, w, C) permuted, MViT's tokens without the class token on
    the (t, h, w) grid the block before returns."""
    model = seeded(arch)
    if arch == "mvit_v2_s":  # a smaller clip than its 16 x 224 x 224: relative positions scale with the grid
        model.pos_encoding.temporal_size, model.pos_encoding.spatial_size = 4, (16, 16)
    preset = resolve(model)
    layer = preset.gradcam_layer
    x = torch.rand(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([[0, 3]])
    kept: Dict[str, object] = {}
    hooks = [model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.update(A=o))]
    if arch == "mvit_v2_s":
        hooks.append(model.blocks[14].register_forward_hook(lambda m, i, o: kept.update(thw=o[1])))
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    raw = kept["A"]
    G = torch.stack([torch.autograd.grad(out[0, int(c)], raw, retain_graph=True)[0] for c in t[0]], 1)

    def lay(a: Tensor) -> Tensor:  # (..., layer output) -> (..., C, t, h, w)
        if arch == "swin3d_t":
            return a.movedim(-1, -4)
        return a[..., 1:, :].transpose(-1, -2).unflatten(-1, tuple(kept["thw"]))

    A, G = lay(raw.detach()), lay(G)
    assert A.shape[-3:].numel() > 1
    ref = torch.einsum("bkc,bcthw->bkthw", G.mean(SPATIAL), A).clamp(min=0)
    res = camkit.METHODS["gradcam"](model, **preset.method_kwargs("gradcam"))(x, t)
    torch.testing.assert_close(res.layer_maps[layer], ref, rtol=1e-4, atol=1e-6 * float(ref.amax()))
    if preset.cam_layer is not None:
        cam = camkit.METHODS["cam"](model, **preset.method_kwargs("cam"))(x, t).layer_maps[layer]
        torch.testing.assert_close(cam, torch.einsum("kc,bcthw->bkthw", model.head.weight.detach()[t[0]], A),
                                   rtol=1e-4, atol=1e-5)
