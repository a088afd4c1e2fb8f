"""The peers' methods against the peers: pytorch-grad-cam 1.5.7 and torchcam 0.5.0 on the
same ResNet18 (random weights, float64; for the perturbation methods, which run the model once
per channel, ResNet18 8 times narrower: tests/small_models.py), layer, input and targets, compared at the
layer's resolution (tests/peer_reference.py), plus hand references where a peer's
definition differs, K targets in one call against K single calls, the options, the
perturbation methods' shortcuts and the model left as found.

Tolerances: relative to the largest value of the reference map (``close``).
Definition differences, one line each (the README's methods table says the same):

- XGrad-CAM: pytorch-grad-cam adds 1e-7 (torchcam 1e-8) to sum(A); camkit has no eps
  (weight 0 where sum(A) = 0).
- Eigen-CAM / Eigen-Grad-CAM / eigen_smooth: the principal direction's sign is
  LAPACK's in pytorch-grad-cam, camkit's makes the loadings sum >= 0; compared up to
  that sign, which must be the one camkit documents.
- Score-CAM: pytorch-grad-cam upsamples the masks with align_corners=True (swapped for
  align_corners=False in the comparison); torchcam min-max-normalizes before
  upsampling (equal on a 2x2 layer, whose four values are the upsampled map's
  corners); both add 1e-8 to the range; softmax over the channels of the raw target
  scores in all three (torchcam's baseline score cancels in the softmax).
- Ablation-CAM: pytorch-grad-cam ablates with 0 only where the layer's output has
  minimum 0, else with min - 1e7; camkit always with 0 (the paper): compared on a
  post-ReLU layer.
- Smooth Grad-CAM++: torchcam weights by ReLU of the last noisy sample's gradient and
  forms the map from the last noisy sample's activations; camkit (the paper) uses the
  mean gradient and the clean activations; torchcam's alpha denominator has
  sum_ab A(a, b) G^3(a, b) where Grad-CAM++ has sum_ab A(a, b) * G^3(i, j), plus 1e-8.
  Compared on layer4 (constant gradient) with one sample through torchcam's weights,
  and against a hand reference.
- aug_smooth: with top-1 targets pytorch-grad-cam re-picks the class per augmentation,
  camkit keeps the un-augmented image's (the comparison gives the classes).
- FullGrad: pytorch-grad-cam min-max-normalizes each channel's |b G| (so a channel's bias
  value cancels) with 1e-7, then resizes with cv2; the authors' code (camkit's default)
  normalizes each layer's C maps together with 1e-6 and upsamples with
  align_corners=True; camkit has no eps and align_corners=False (``per_channel=True``
  gives pytorch-grad-cam's, compared with its eps patched out).
- Equivalent by construction (no test can tell them apart): Score-CAM's masks are
  min-max-normalized after upsampling, which makes the low-resolution normalization
  (done first, for the de-duplication of equal channels) a no-op on the result.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from model_state import assert_as_found, mixed, snapshot
from peer_reference import (
    ClassifierOutputTarget,
    pgc,
    pgc_maps,
    pgc_upsampling_align_corners_false,
    torchcam_maps,
    torchcam_methods,
)
from small_models import narrow_resnet18
from torch import nn

import camkit.methods as cm
from camkit.errors import InputError
from camkit.normalize import relu_max


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    ref = ref.to(ours.dtype)
    scale = ref.abs().max().clamp(min=1e-30)
    err = (ours - ref).abs().max() / scale
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol:g}"


def _random_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` in float64, eval mode, with BatchNorm's affine weights and running statistics drawn
    (a fresh BatchNorm is the identity, whose effective bias FullGrad would read as 0)."""
    model = model.double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
    return model


@pytest.fixture(scope="module")
def rn18():
    """ResNet18, random weights, BatchNorm drawn too (_random_batchnorm)."""
    torch.manual_seed(0)
    return _random_batchnorm(torchvision.models.resnet18())


@pytest.fixture(scope="module")
def rn18_narrow():
    """The same ResNet18 8 times narrower (tests/small_models.py: torchvision's class and blocks; layer1
    8 channels): for the perturbation methods, which run the model once per channel of the layer, in
    camkit and again in each peer."""
    torch.manual_seed(0)
    return _random_batchnorm(narrow_resnet18(num_classes=1000))


@pytest.fixture(scope="module")
def x64():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64, dtype=torch.float64)


@pytest.fixture(scope="module")
def x32():
    torch.manual_seed(3)
    return torch.randn(2, 3, 32, 32, dtype=torch.float64)


@pytest.fixture(scope="module")
def x16():
    torch.manual_seed(4)
    return torch.randn(1, 3, 16, 16, dtype=torch.float64)


@pytest.fixture(scope="module")
def x8():
    """8 px: ResNet18's layer1 is 2x2 with 64 channels, so perturbation methods stay cheap."""
    torch.manual_seed(2)
    return torch.randn(2, 3, 8, 8, dtype=torch.float64)


def top2(model, x):
    with torch.no_grad():
        return model(x).topk(2, dim=1).indices


def camkit_raw(cls, model, layer, x, targets, **kw):
    with cls(model, layers=[layer], normalize=None, **kw) as cam:
        return cam(x, targets=targets).layer_maps[layer]


def sign_rule(E: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """camkit's documented eigen sign: the projection correlates positively with the
    centered channel sum. E (..., C, h, w), p (..., h, w) -> +-1 (...)."""
    s = E.sum(dim=-3).flatten(-2)
    s = s - s.mean(dim=-1, keepdim=True)
    return torch.where((p.flatten(-2) * s).sum(-1) < 0, -1.0, 1.0).to(p.dtype)


# --------------------------------------------------------------------------- gradient methods


@pytest.mark.parametrize("method, pgc_name, rtol", [
    ("HiResCAM", "HiResCAM", 1e-9),
    ("GradCAMElementWise", "GradCAMElementWise", 1e-9),
    ("XGradCAM", "XGradCAM", 1e-6),  # eps 1e-7 in pytorch-grad-cam
])
def test_gradient_methods_match_pytorch_grad_cam(rn18, x64, method, pgc_name, rtol):
    t = top2(rn18, x64)
    ours = camkit_raw(getattr(cm, method), rn18, "layer3", x64, t)
    ref = pgc_maps(getattr(pgc, pgc_name), rn18, rn18.layer3, x64, t)
    close(ours, ref["raw"].clamp(min=0), rtol)


def test_xgradcam_matches_torchcam(rn18, x64):
    t = top2(rn18, x64)
    ours = camkit_raw(cm.XGradCAM, rn18, "layer3", x64, t)
    close(ours, torchcam_maps(torchcam_methods.XGradCAM, rn18, "layer3", x64, t), 1e-6)  # eps 1e-8 in torchcam


@pytest.mark.parametrize("method", ["EigenGradCAM", "EigenCAM"])
def test_eigen_methods_match_pytorch_grad_cam_up_to_the_documented_sign(rn18, x64, method):
    t = top2(rn18, x64)
    ours = camkit_raw(getattr(cm, method), rn18, "layer3", x64, t)
    ref = pgc_maps(getattr(pgc, method), rn18, rn18.layer3, x64, t)
    A = ref["acts"]
    E = A * ref["grads"] if method == "EigenGradCAM" else A
    p = ref["raw"]  # the signed projection, before the ReLU
    close(ours, (sign_rule(E, p)[..., None, None] * p).clamp(min=0), 1e-6)  # its projection is float32


def test_eigen_smooth_matches_pytorch_grad_cam(rn18, x64):
    t = top2(rn18, x64)
    ours = camkit_raw(cm.GradCAM, rn18, "layer3", x64, t, eigen_smooth=True)
    ref = pgc_maps(pgc.GradCAM, rn18, rn18.layer3, x64, t, eigen_smooth=True)
    w = ref["grads"].mean(dim=(-2, -1))
    E = w[..., None, None] * ref["acts"]  # pytorch-grad-cam's weighted activations
    close(ours, (sign_rule(E, ref["raw"])[..., None, None] * ref["raw"]).clamp(min=0), 1e-6)


def test_eigen_projection_sign_is_deterministic():
    # two channels, one position pattern: the loadings of the principal direction are (1, 1) / sqrt 2 up to sign
    base = torch.tensor([[0.0, 1.0], [2.0, 5.0]], dtype=torch.float64)
    E = torch.stack([base, 2 * base])  # (C=2, 2, 2)
    p = cm.eigen_projection(E)
    centered = base - base.mean()
    expected = centered * 5 / torch.tensor(5.0, dtype=torch.float64).sqrt()  # M v, v = (1, 2) / sqrt 5
    assert torch.allclose(p, expected)
    assert torch.allclose(cm.eigen_projection(-E), -expected)  # flipped data, flipped map: no sign flip-flop


def test_aug_smooth_matches_pytorch_grad_cam(rn18, x32):
    t = top2(rn18, x32)[:, :1]
    with cm.GradCAM(rn18, layers=["layer3"], aug_smooth=True) as cam:
        ours = cam(x32, targets=t).maps
    ref = pgc_maps(pgc.GradCAM, rn18, rn18.layer3, x32, t, aug_smooth=True)["out"]
    # the mean of min-max-normalized, flipped-back maps, upsampled: linear, so upsampling commutes
    up = F.interpolate(ref, size=tuple(x32.shape[-2:]), mode="bilinear", align_corners=False)
    close(ours, up, 1e-6)  # pytorch-grad-cam's two min-max scalings add 1e-7 each


def test_aug_smooth_averages_flipped_back_maps(rn18, x32):
    t = top2(rn18, x32)
    with cm.GradCAM(rn18, layers=["layer3"], aug_smooth=True) as cam:
        res = cam(x32, targets=t)
    with cm.GradCAM(rn18, layers=["layer3"]) as cam:
        singles = [cam(f * x32.flip(-1) if fl else f * x32, targets=t) for fl, f in cm.AUGMENTATIONS]
    maps = torch.stack([r.maps.flip(-1) if fl else r.maps for r, (fl, _) in zip(singles, cm.AUGMENTATIONS)])
    close(res.maps, maps.mean(0), 1e-12)
    assert torch.equal(res.targets, t)
    with cm.GradCAM(rn18, layers=["layer3"], aug_smooth=True) as cam:  # top-2 fixed by the plain input
        assert torch.equal(cam(x32, topk=2).targets, t)


def test_aug_smooth_keeps_the_plain_images_top_classes():
    """A model whose top class flips with the image: the flipped augmentations keep class 0."""

    class LeftRight(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            a = torch.relu(self.conv(x))
            half = a.shape[-1] // 2
            return torch.stack([a[..., :half].mean((1, 2, 3)), a[..., half:].mean((1, 2, 3))], 1)

    torch.manual_seed(0)
    net = LeftRight().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    x[..., :4] *= 4
    with torch.no_grad():
        assert (net(x).argmax(1) == 0).all() and (net(x.flip(-1)).argmax(1) == 1).all()
    with cm.GradCAM(net, layers=["conv"], aug_smooth=True) as cam:
        close(cam(x, topk=1).maps, cam(x, targets=0).maps, 1e-12)


# --------------------------------------------------------------------------- Score-CAM family


def test_scorecam_matches_both_peers(rn18_narrow, x8, x16):
    """pytorch-grad-cam on a 4x4 layer (it normalizes after upsampling, as camkit does),
    torchcam on a 2x2 one (it normalizes before; equal there)."""
    t = top2(rn18_narrow, x16)[:, 1:]
    ours = camkit_raw(cm.ScoreCAM, rn18_narrow, "layer1", x16, t)
    with pgc_upsampling_align_corners_false():
        ref = pgc_maps(pgc.ScoreCAM, rn18_narrow, rn18_narrow.layer1, x16, t)["raw"].clamp(min=0)
    close(ours, ref, 1e-5)  # pytorch-grad-cam's scores are float32
    t = top2(rn18_narrow, x8)[:, 1:]
    ours = camkit_raw(cm.ScoreCAM, rn18_narrow, "layer1", x8, t)
    close(ours, torchcam_maps(torchcam_methods.ScoreCAM, rn18_narrow, "layer1", x8, t), 1e-7)


def test_scorecam_shortcuts_keep_the_maps(rn18_narrow, x8):
    """Deduplicated masks and the BatchNorm-folded channels-last copy against neither."""
    x = x8[1:]
    t = top2(rn18_narrow, x)
    plain = cm.ScoreCAM(rn18_narrow, layers=["layer1"], normalize=None, fold_batchnorm=False)
    plain.dedupe = False
    ref = plain(x, targets=t).layer_maps["layer1"]
    close(camkit_raw(cm.ScoreCAM, rn18_narrow, "layer1", x, t, batch_size=7), ref, 1e-9)


def test_scorecam_does_not_fold_a_model_with_hooks(rn18_narrow, x8):
    """A hook on the model (here: it doubles the logits) is part of its function; a traced copy would lose it."""
    x = x8[:1]
    t = top2(rn18_narrow, x)[:, :1]
    handle = rn18_narrow.register_forward_hook(lambda m, i, o: 2 * o)
    try:
        ours = camkit_raw(cm.ScoreCAM, rn18_narrow, "layer1", x, t)
        unfolded = camkit_raw(cm.ScoreCAM, rn18_narrow, "layer1", x, t, fold_batchnorm=False)
    finally:
        handle.remove()
    close(ours, unfolded, 1e-12)


def test_sscam_and_iscam_match_torchcam(rn18_narrow, x8):
    """IS-CAM equals torchcam's. SS-CAM with negligible noise (torchcam refuses std=0) equals torchcam's (the same masks, draws and
    softmax); with noise the two draw differently by design (torchcam per chunk from the global RNG, camkit
    per image and channel: tests/test_hardening.py checks camkit's draw against the definition)."""
    x, t = x8[:1], top2(rn18_narrow, x8)[:1, :1]
    ours = camkit_raw(cm.SSCAM, rn18_narrow, "layer1", x, t, num_samples=2, std=1e-9, batch_size=128)
    ref = torchcam_maps(torchcam_methods.SSCAM, rn18_narrow, "layer1", x, t, num_samples=2, std=1e-9, batch_size=128)
    close(ours, ref, 1e-7)
    ours = camkit_raw(cm.ISCAM, rn18_narrow, "layer1", x, t, num_samples=2)
    close(ours, torchcam_maps(torchcam_methods.ISCAM, rn18_narrow, "layer1", x, t, num_samples=2), 1e-7)


# --------------------------------------------------------------------------- Ablation-CAM


def test_ablationcam_matches_pytorch_grad_cam(rn18_narrow, x8):
    t = top2(rn18_narrow, x8)
    ours = camkit_raw(cm.AblationCAM, rn18_narrow, "layer1", x8, t)
    close(ours, pgc_maps(pgc.AblationCAM, rn18_narrow, rn18_narrow.layer1, x8, t)["raw"].clamp(min=0), 1e-5)  # float32 scores


def ablation_reference(model, layer, x, classes):
    """The plain definition: the whole model on the batch with channel k of the layer zeroed."""
    mod = dict(model.named_modules())[layer]
    acts = {}
    h = mod.register_forward_hook(lambda m, i, o: acts.setdefault("A", o))
    with torch.no_grad():
        y = model(x).gather(1, classes)
    h.remove()
    A = acts["A"]
    S = []
    for k in range(A.shape[1]):
        def zero(m, i, o, k=k):
            o = o.clone()
            o[:, k] = 0
            return o
        h = mod.register_forward_hook(zero)
        with torch.no_grad():
            S.append(model(x).gather(1, classes))
        h.remove()
    w = (y[..., None] - torch.stack(S, -1)) / y[..., None]
    return torch.einsum("bkc,bchw->bkhw", w, A).clamp(min=0)


def test_ablation_reusing_the_layers_below_equals_the_plain_definition(rn18_narrow, x8):
    """Inside a residual block (the skip from below broadcasts against the copies) and on a
    model that concatenates a tensor from below (the call falls back to whole forwards)."""
    t = top2(rn18_narrow, x8)
    for layer in ("layer1.1.conv2",):
        ref = ablation_reference(rn18_narrow, layer, x8, t)
        close(camkit_raw(cm.AblationCAM, rn18_narrow, layer, x8, t, batch_size=5), ref, 1e-9)  # 8 channels: 5 + 3
        close(camkit_raw(cm.AblationCAM, rn18_narrow, layer, x8, t, reuse_below=False), ref, 1e-9)

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            a = torch.relu(self.a(x))
            return self.head(torch.cat([a, torch.relu(self.b(a))], 1).mean((2, 3)))

    torch.manual_seed(0)
    net = Concat().double().eval()
    xs = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    close(camkit_raw(cm.AblationCAM, net, "b", xs, [[0, 2], [1, 0]]),
          ablation_reference(net, "b", xs, torch.tensor([[0, 2], [1, 0]])), 1e-9)


# --------------------------------------------------------------------------- Smooth Grad-CAM++


def test_smoothgradcampp_weights_match_torchcam(rn18, x64):
    """On layer4 (GAP + linear above: the gradient is constant over positions, so torchcam's
    sum_ab A G^3 equals Grad-CAM++'s sum_ab A * G^3), one sample, torchcam's weights on the clean A."""
    x, t = x64, top2(rn18, x64)[:, 0]
    ours = camkit_raw(cm.SmoothGradCAMpp, rn18, "layer4", x, t[:, None], num_samples=1, seed=3)
    with torchcam_methods.SmoothGradCAMpp(rn18, "layer4", num_samples=1, input_shape=(3, 64, 64)) as ex:
        scores = rn18(x)
        A = ex.hook_a[0].clone()  # the clean activations
        torch.manual_seed(3)
        w = ex._get_weights(t.tolist(), scores, eps=0.0)[0]  # torchcam's default eps=1e-8 moves maps by 4e-4
    close(ours[:, 0], torch.einsum("bc,bchw->bhw", w, A).clamp(min=0), 1e-9)


def test_smoothgradcampp_matches_hand_reference(rn18, x64):
    t = top2(rn18, x64)
    n, std, seed = 3, 0.3, 4
    ours = camkit_raw(cm.SmoothGradCAMpp, rn18, "layer3", x64, t, num_samples=n, std=std, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    acts = {}
    h = rn18.layer3.register_forward_hook(lambda m, i, o: acts.__setitem__("A", o))
    try:
        with torch.no_grad():
            rn18(x64)
        A = acts["A"]
        sums = [0, 0, 0]
        for _ in range(n):
            xn = x64 + torch.randn(x64.shape, generator=gen).mul_(std).double()
            logits = rn18(xn)
            G = torch.stack([torch.autograd.grad(logits.gather(1, t[:, k:k + 1]).sum(), acts["A"],
                                                 retain_graph=True)[0] for k in range(2)], 1)
            sums = [s + G ** p for s, p in zip(sums, (1, 2, 3))]
    finally:
        h.remove()
    D1, D2, D3 = (s / n for s in sums)
    denom = 2 * D2 + A.sum((-2, -1))[:, None, :, None, None] * D3
    alpha = torch.where(denom != 0, D2 / denom, torch.zeros_like(D2))
    w = (alpha * D1.clamp(min=0)).sum((-2, -1))
    close(ours, torch.einsum("bkc,bchw->bkhw", w, A).clamp(min=0), 1e-9)


# --------------------------------------------------------------------------- every new method


NEW = {
    "HiResCAM": {}, "XGradCAM": {}, "GradCAMElementWise": {}, "EigenGradCAM": {}, "EigenCAM": {},
    "SmoothGradCAMpp": {"num_samples": 2}, "ScoreCAM": {}, "AblationCAM": {}, "SSCAM": {"num_samples": 2},
    "ISCAM": {"num_samples": 2},
}
PERTURB = {"ScoreCAM", "AblationCAM", "SSCAM", "ISCAM"}


@pytest.mark.parametrize("method", sorted(set(NEW) - {"SSCAM", "ISCAM"}))  # they share ScoreCAM's forwards
def test_k_targets_equal_k_single_calls_and_layers_fuse(rn18, rn18_narrow, x8, x64, method):
    x, layers = (x8, ["layer1"]) if method in PERTURB else (x64, ["layer2", "layer3"])
    rn18 = rn18_narrow if method in PERTURB else rn18
    t = top2(rn18, x)
    kw = NEW[method]
    with getattr(cm, method)(rn18, layers=layers, **kw) as cam:
        both = cam(x, targets=t)
        singles = [cam(x, targets=t[:, k]) for k in range(2)]
    for k, one in enumerate(singles):
        for name in layers:
            close(both.layer_maps[name][:, k], one.layer_maps[name][:, 0], 1e-9)
        close(both.maps[:, k], one.maps[:, 0], 1e-9)
    assert both.maps.shape == (2, 2, *x.shape[-2:]) and 0 <= both.maps.min() and both.maps.max() <= 1


@pytest.mark.parametrize("method", sorted(NEW))
def test_model_and_rng_left_as_found(x8, method):
    torch.manual_seed(0)
    model = mixed((narrow_resnet18(1000) if method in PERTURB else torchvision.models.resnet18()).double(), "layer1")
    before = snapshot(model)
    cls = getattr(cm, method)
    with cls(model, layers=["layer1"], **NEW[method]) as cam:
        cam(x8[:1])
        with pytest.raises(InputError):
            cam(x8[:1], targets=[5000])
    assert_as_found(model, before)


def test_argument_errors(rn18):
    with pytest.raises(InputError, match="batch_size"):
        cm.ScoreCAM(rn18, layers=["layer1"], batch_size=0)
    with pytest.raises(InputError, match="num_samples"):
        cm.SmoothGradCAMpp(rn18, layers=["layer1"], num_samples=0)
    with pytest.raises(InputError, match="num_samples"):
        cm.SSCAM(rn18, layers=["layer1"], num_samples=-1)
    with pytest.raises(InputError, match="reshape"):
        cm.AblationCAM(rn18, layers=["layer1"], reshape=lambda a: a)
    with pytest.raises(InputError, match="PaperReCAMHead"):
        cm.PaperReCAM(rn18)


# --------------------------------------------------------------------------- the paper's ReCAM


def test_paper_recam_is_the_heads_maps_divided_by_their_max():
    from camkit.heads import CAMModel, PaperReCAMHead

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
    head = PaperReCAMHead(6, 4)
    model = CAMModel(backbone, head).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([[0, 3], [2, 1]])
    res = cm.PaperReCAM(model)(x, targets=t)
    f = backbone(x)
    M = torch.relu(head.conv(f))
    W = head.predictor.weight * head.fc.weight  # the element-wise product, Chen et al.'s forward2
    raw = torch.stack([torch.einsum("bn,bnhw->bhw", W[t[:, k]], M) for k in range(2)], 1).clamp(min=0)
    close(res.layer_maps["head"], raw, 1e-12)
    up = F.interpolate(relu_max(raw), size=(16, 16), mode="bilinear", align_corners=False)
    close(res.maps, up, 1e-12)
    close(res.logits, head(f), 1e-12)
    assert cm.METHODS["paper_recam"] is cm.PaperReCAM


# --------------------------------------------------------------------------- FullGrad


def test_fullgrad_per_channel_matches_pytorch_grad_cam(rn18, x32):
    """At input resolution (pytorch-grad-cam's FullGrad cannot stay at a layer's): its cv2
    resize in float32 against camkit's bilinear upsampling; its 1e-7 in each min-max
    (which moves maps by 1e-3 where a channel's term is tiny) patched to 0."""
    import pytorch_grad_cam.utils.image as pgc_image

    t = top2(rn18, x32)
    with cm.FullGrad(rn18, per_channel=True) as cam:
        res = cam(x32, targets=t)
    orig = pgc_image.scale_cam_image

    def no_eps(cam, target_size=None):
        out = orig(cam, target_size)  # (c - min) / (1e-7 + max) per map, resized: redo it without the 1e-7
        rng = [float(c.max() - c.min()) for c in cam]
        return out * np.float32([[[(r + 1e-7) / r if r > 0 else 1.0]] for r in rng])

    pgc_image.scale_cam_image = no_eps
    try:
        for k in range(2):
            ref = pgc.FullGrad(rn18, [])
            try:
                out = torch.as_tensor(ref(x32, [ClassifierOutputTarget(int(c)) for c in t[:, k]]))
            finally:
                ref.activations_and_grads.release()
            close(res.maps[:, k], out, 1e-5)
    finally:
        pgc_image.scale_cam_image = orig
    assert set(res.layer_maps) == {"input"} | {n for n, m in rn18.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_fullgrad_matches_the_authors_normalization(rn18, x32):
    """The authors' code (idiap/fullgrad-saliency, saliency/fullgrad.py): per image and layer, |b G| shifted by
    its min and divided by its max over all channels and positions (they add 1e-6, camkit none), summed over
    the channels, upsampled (they use align_corners=True, camkit False, as for every map), summed."""
    t = top2(rn18, x32)[:, :1]
    res = cm.FullGrad(rn18, normalize=None)(x32, targets=t)
    mods = {n: m for n, m in rn18.named_modules() if isinstance(m, nn.BatchNorm2d)}
    acts = {}
    def keep(n):  # downstream gets a copy: the in-place ReLU after each BatchNorm must not become its output
        return lambda mod, i, o: (acts.__setitem__(n, o), o.clone())[1]

    hooks = [m.register_forward_hook(keep(n)) for n, m in mods.items()]
    try:
        xg = x32.clone().requires_grad_(True)
        y = rn18(xg).gather(1, t).sum()
        grads = torch.autograd.grad(y, [xg] + [acts[n] for n in mods])
    finally:
        for h in hooks:
            h.remove()

    def post(v):  # their _postProcess without the eps
        v = v.abs()
        v = v - v.flatten(1).min(1).values[:, None, None, None]
        return v / v.flatten(1).max(1).values[:, None, None, None]

    total = post(grads[0] * x32).sum(1)
    for m, g in zip(mods.values(), grads[1:]):
        b = m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
        term = post(g * b[:, None, None]).sum(1, keepdim=True)
        total = total + F.interpolate(term, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    close(res.maps[:, 0], total, 1e-10)


def test_eigen_projection_of_non_finite_contributions_is_nan():
    E = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)
    E[1, 0, 2, 1, 0] = float("nan")
    p = cm.eigen_projection(E)
    assert torch.isnan(p[1, 0]).all() and torch.isfinite(p[0]).all() and torch.isfinite(p[1, 1:]).all()


def test_fullgrad_hooks_timm_batchnormact_before_its_activation():
    """timm's BatchNormAct2d returns act(bn(x)): FullGrad's bias term needs the gradient at bn(x),
    which its ``drop`` submodule returns; checked against plain autograd at bn(x)."""
    BatchNormAct2d = pytest.importorskip("timm.layers").BatchNormAct2d
    torch.manual_seed(0)
    bn = BatchNormAct2d(4, act_layer=nn.ReLU6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.uniform_(bn.bias, -1, 1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), bn, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    res = cm.FullGrad(model, normalize=None)(x, targets=[1, 2])
    assert set(res.layer_maps) == {"input", "1.drop"}
    z = F.batch_norm(model[0](x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    y = model[2:](F.relu6(z)).gather(1, torch.tensor([[1], [2]])).sum()  # not bn.act: in place
    (g,) = torch.autograd.grad(y, [z])
    b = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    m = (g * b[:, None, None]).abs().flatten(1)
    m = ((m - m.min(1, keepdim=True).values) / (m.max(1, keepdim=True).values - m.min(1, keepdim=True).values))
    close(res.layer_maps["1.drop"][:, 0], m.view(2, 4, 6, 6).sum(1), 1e-10)
