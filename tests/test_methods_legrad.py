"""LeGrad against torchcam 0.5.0's LeGrad (its own output, unnormalized, at the patch grid) on a tiny
torchvision ViT, and against the paper's definition (Bousselham et al., 2024) on a tiny timm ViT:
the blocks' forward written out in the test with the attention probabilities computed explicitly,
``s^l = head(norm(mean_n z^l))``, ``mean_l mean_{heads, queries} ReLU(d s^l_c / d P^l)`` over the patch keys.

Definition differences: none with torchcam (same pooling, mean over blocks, ReLU, prefix tokens dropped).
torchcam only takes blocks with a ``self_attention: nn.MultiheadAttention`` child (torchvision's ViT);
camkit also reads timm's ``Attention`` (its explicit softmax path for the call).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision
from model_state import assert_as_found, snapshot
from PIL import Image
from torchvision import transforms as T

import camkit
from camkit import cli
from camkit.adapters import resolve
from camkit.errors import InputError
from camkit.geometry import to_original
from camkit.methods import cli_names

timm = pytest.importorskip("timm")
tcm = pytest.importorskip("torchcam.methods")


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    ref = ref.to(ours.dtype)
    err = (ours - ref).abs().max() / ref.abs().max().clamp(min=1e-30)
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol:g}"


@pytest.fixture(scope="module")
def tv_vit():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                             mlp_dim=32, num_classes=5).double().eval()
    with torch.no_grad():  # torchvision zero-initializes the head
        m.heads.head.weight.normal_()
        m.heads.head.bias.normal_()
    return m


@pytest.fixture(scope="module")
def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5,
                             depth=2, embed_dim=24, num_heads=2).double().eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32, dtype=torch.float64)


def test_legrad_matches_torchcam(tv_vit, x):
    blocks = list(tv_vit.encoder.layers)
    classes = torch.tensor([[1, 4], [3, 0]])
    before = snapshot(tv_vit)
    res = camkit.LeGrad(tv_vit)(x, targets=classes)  # default: every block with attention; K = 2 in one call
    assert_as_found(tv_vit, before)
    (name,) = res.layer_maps
    assert name == "encoder.layers.encoder_layer_2"
    peer = []
    for k in range(2):
        with tcm.LeGrad(tv_vit, blocks) as ex:
            scores = tv_vit(x)
            peer.append(ex([int(c) for c in classes[:, k]], scores, normalized=False)[0].detach())
    close(res.layer_maps[name], torch.stack(peer, 1), 1e-10)
    # two blocks given by modules inside them (the presets name each block's norm1 / ln_1)
    two = camkit.LeGrad(tv_vit, layers=["encoder.layers.encoder_layer_1.ln_1", "encoder.layers.encoder_layer_2"])
    with tcm.LeGrad(tv_vit, blocks[1:]) as ex:
        scores = tv_vit(x)
        ref = ex([1, 3], scores, normalized=False)[0].detach()
    close(two(x, targets=[1, 3]).layer_maps[name][:, 0], ref, 1e-10)


def paper_legrad(model, x, classes):
    """LeGrad by hand on a timm ViT: its blocks' forward with explicit attention probabilities."""
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    probs, zs = [], []
    for blk in model.blocks:
        a, h = blk.attn, blk.norm1(t)
        b, n, c = h.shape
        q, k, v = a.qkv(h).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        p = ((a.q_norm(q) * a.scale) @ a.k_norm(k).transpose(-2, -1)).softmax(dim=-1)
        probs.append(p)
        t = t + blk.ls1(a.proj(a.norm((p @ v).transpose(1, 2).reshape(b, n, c))))
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
        zs.append(t)
    close(model.forward_head(model.norm(t)), model(x), 1e-12)  # the hand forward is the model's
    maps = []
    for col in classes.T.tolist():
        rel = []
        for z, p in zip(zs, probs):
            s = model.head(model.norm(z.mean(dim=1)))
            (g,) = torch.autograd.grad(s[torch.arange(len(col)), col].sum(), p, retain_graph=True)
            rel.append(g.clamp(min=0).mean(dim=(1, 2))[:, 1:])
        maps.append(torch.stack(rel).mean(0).reshape(-1, 4, 4))
    return torch.stack(maps, 1)


def test_legrad_matches_the_paper_on_timm(timm_vit, x):
    fused = [b.attn.fused_attn for b in timm_vit.blocks]
    before = snapshot(timm_vit)
    cam = camkit.LeGrad(timm_vit, layers=["blocks.0.norm1", "blocks.1.norm1"])
    res = cam(x, topk=2)
    assert_as_found(timm_vit, before)
    assert [b.attn.fused_attn for b in timm_vit.blocks] == fused
    close(res.layer_maps["blocks.1"], paper_legrad(timm_vit, x, res.targets), 1e-10)
    loop = camkit.LeGrad(timm_vit, batched_backward=False)(x, topk=2)
    close(loop.layer_maps["blocks.1"], res.layer_maps["blocks.1"], 1e-12)
    m = res.maps
    assert m.shape == (2, 2, 32, 32) and float(m.amin()) == 0.0 and float(m.amax()) == 1.0


def test_legrad_bad_input(timm_vit, x):
    rn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                             torch.nn.Flatten(), torch.nn.Linear(4, 5)).double().eval()
    for layers in (None, "1"):
        with pytest.raises(InputError, match="no attention layer"):
            camkit.LeGrad(rn, layers=layers)
    with pytest.raises(InputError, match="eigen_smooth"):
        camkit.LeGrad(timm_vit, eigen_smooth=True)
    with pytest.raises(InputError, match="class targets"):
        camkit.LeGrad(timm_vit)(x, targets=lambda s: s[:, 0])
    with pytest.raises(InputError, match="grid"):
        camkit.LeGrad(timm_vit, grid=(3, 5))(x)
    fused = [b.attn.fused_attn for b in timm_vit.blocks]

    def boom(m, i, o):
        raise RuntimeError("boom")

    h = timm_vit.blocks[1].mlp.register_forward_hook(boom)  # the model fails inside the call
    try:
        before = snapshot(timm_vit)
        with pytest.raises(InputError, match="failed on the input"):
            camkit.LeGrad(timm_vit)(x)
        assert_as_found(timm_vit, before)
    finally:
        h.remove()
    assert [b.attn.fused_attn for b in timm_vit.blocks] == fused
    assert "legrad" in cli_names()
    # the presets offer LeGrad on vision transformers only
    assert "legrad" in resolve(timm_vit).methods
    cnn = resolve(torchvision.models.resnet18(num_classes=5))
    assert "legrad" not in cnn.methods and "gradcam" in cnn.methods
    with pytest.raises(InputError, match="vision transformers"):
        cnn.default_layers("legrad")


def test_legrad_from_the_command_line(monkeypatch, tmp_path, capsys):
    """``camkit explain --method legrad`` on a timm ViT preset (its last three blocks' norm1, mapped to the
    blocks): the saved map is the library's LeGrad map on the photo."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2,
                            num_classes=3).eval()
    tf = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor()])
    preset = dataclasses.replace(resolve(vit), transform=tf, input_size=(32, 32), categories=("a", "b", "c"))
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: (vit, preset))
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(img)
    rc = cli.main(["explain", str(img), "--method", "legrad", "--save-maps", "--no-figures", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    photo = Image.open(img).convert("RGB")
    res = camkit.LeGrad(vit, **preset.method_kwargs("legrad"))(tf(photo)[None])
    assert list(res.layer_maps) == ["blocks.2"]
    ref = to_original(res.maps[0, 0], photo, tf).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "img_legrad.npy"), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["tv", "timm"])
def test_legrad_on_a_frozen_model_equals_the_trainable_one(which, tv_vit, timm_vit, x):
    """Frozen weights: attention without autograd history is recorded as a leaf (and nn.MultiheadAttention may
    take its fast path, whose output is replayed from the weights): the same maps."""
    model = tv_vit if which == "tv" else timm_vit
    ref = camkit.LeGrad(model)(x, targets=[[1, 2], [0, 4]]).layer_maps
    model.requires_grad_(False)
    try:
        frozen = camkit.LeGrad(model)(x, targets=[[1, 2], [0, 4]]).layer_maps
    finally:
        model.requires_grad_(True)
    (name,) = ref
    close(frozen[name], ref[name], 1e-12)
