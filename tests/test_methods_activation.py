"""KPCA-CAM, Seg-Eigen-CAM, FEM, RandomCAM, Deep Feature Factorization, Guided Backprop / Guided Grad-CAM
and FullGrad's eigen_smooth against pytorch-grad-cam 1.5.7 (same model, layer, input and targets, at the
layer's resolution through tests/peer_reference.py, or the peer's own functions) and against the papers'
formulas written out here where the peer differs. Models: ResNet18 8 times narrower (tests/small_models.py;
torchvision's blocks: in-place ReLUs, one ReLU module called twice per block), float64, 32 px.

Definition differences (measured in the tests that name them; the README lines give the numbers):

- KPCA-CAM: the component's sign is scikit-learn's (largest |u| positive) in the peer, camkit's makes the
  projection correlate positively with the centered channel sum; compared up to that sign.
- FEM: the peer weights the activations by the masks' means (``sum_c mean(M_c) A_c``), the paper (camkit)
  the masks by the channel means (``sum_c mu_c M_c``); ``mask_weights=True`` is the peer's, compared exactly.
- RandomCAM: the peer draws from NumPy's global RNG on every call, camkit from a private seeded generator.
- Deep Feature Factorization: the peer runs scikit-learn's coordinate-descent NMF, camkit multiplicative
  updates; both recover a planted factorization (checked against the truth).
- Guided Backprop: the peer replaces the ReLU modules and puts back new not-in-place ones (the model is
  changed), returns image 0's top-1 only; camkit hooks for one call.
- FullGrad eigen_smooth: the peer projects the input term's 3 colour channels separately, renormalizes every
  term (at the input's size, before the 1/8 resize), uses LAPACK's sign and no ReLU; camkit projects the terms
  FullGrad sums (renormalized with per_channel=True), with its sign rule, ReLU after.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from model_state import assert_as_found, mixed, snapshot
from peer_reference import ClassifierOutputTarget, pgc, pgc_maps
from small_models import narrow_resnet18
from torch import nn

import camkit
import camkit.methods as cm
from camkit.errors import InputError


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    ref = ref.to(ours.dtype)
    err = (ours - ref).abs().max() / ref.abs().max().clamp(min=1e-30)
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol:g}"


@pytest.fixture(scope="module")
def rn():
    torch.manual_seed(0)
    model = narrow_resnet18(num_classes=5).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def top2(model, x):
    with torch.no_grad():
        return model(x).topk(2, dim=1).indices


def raw(cls, model, layer, x, targets, **kw):
    with cls(model, layers=[layer], normalize=None, **kw) as cam:
        return cam(x, targets=targets).layer_maps[layer]


# --------------------------------------------------------------------------- KPCA-CAM


@pytest.mark.parametrize("kernel, gamma", [("sigmoid", None), ("rbf", 0.05), ("poly", None), ("cosine", None)])
def test_kpcacam_matches_pytorch_grad_cam_up_to_the_documented_sign(rn, x, kernel, gamma):
    x = x[:1]
    t = top2(rn, x)[:, :1]
    peer = pgc_maps(pgc.KPCA_CAM, rn, rn.layer1, x, t, kernel=kernel, gamma=gamma)  # 8x8: 64 positions
    A = peer["acts"][:, 0]
    p = cm.kpca_projection(A, kernel=kernel, gamma=gamma)
    ref = peer["raw"][:, 0]
    sign = torch.sign((p * ref).flatten(1).sum(1))[:, None, None]
    close(p, sign * ref, 1e-6)
    s = (A - A.mean(dim=(2, 3), keepdim=True)).sum(1)  # the rule: correlate with the centered channel sum
    assert ((p * s).flatten(1).sum(1) >= 0).all()
    close(raw(cm.KPCACAM, rn, "layer1", x, t, kernel=kernel, gamma=gamma)[:, 0], p.clamp(min=0), 1e-12)


def test_kpcacam_linear_kernel_is_eigencam_n_components_sums_sklearns_and_bad_options_refused(rn, x):
    t = top2(rn, x)[:, :1]
    eig = pgc_maps(pgc.EigenCAM, rn, rn.layer2, x, t)
    p = cm.kpca_projection(eig["acts"][:, 0], kernel="linear")
    ref = eig["raw"][:, 0]
    close(p, torch.sign((p * ref).flatten(1).sum(1))[:, None, None] * ref, 1e-6)  # the peer returns float32
    KernelPCA = pytest.importorskip("sklearn.decomposition").KernelPCA  # the peer's own KPCA, two components
    A = eig["acts"][0, 0]
    X = A.flatten(1).T - A.flatten(1).T.mean(0)
    Z = torch.as_tensor(KernelPCA(n_components=2, kernel="rbf", gamma=0.02).fit_transform(X.numpy()))  # (n, 2)
    Z = Z * torch.sign((Z * X.sum(1, keepdim=True)).sum(0))  # each component by camkit's sign rule
    close(cm.kpca_projection(A[None], kernel="rbf", gamma=0.02, n_components=2)[0], Z.sum(1).view(4, 4), 1e-8)
    with pytest.raises(InputError, match="unknown kernel 'laplace'"):
        cm.KPCACAM(rn, layers=["layer2"], kernel="laplace")
    with pytest.raises(InputError, match="larger than the layer's 16 channels"):
        cm.KPCACAM(rn, layers=["layer2"], n_components=17)(x)
    with pytest.raises(InputError, match="eigen_smooth"):
        cm.KPCACAM(rn, layers=["layer2"], eigen_smooth=True)


# --------------------------------------------------------------------------- Seg-Eigen-CAM, FEM, RandomCAM


def test_segeigencam_matches_pytorch_grad_cam(rn, x):
    t = top2(rn, x)
    peer = pgc_maps(pgc.SegEigenCAM, rn, rn.layer2, x, t)
    close(raw(cm.SegEigenCAM, rn, "layer2", x, t), peer["raw"].clamp(min=0), 1e-8)


def test_segeigencam_sign_is_eq_13_where_camkits_eigen_rule_disagrees():
    """|G| * A of rank one whose projection with positive loadings is [-3, 1, 1, 1] (|min| > |max|): Eq. 13
    flips it to [3, -1, -1, -1], ReLU [3, 0, 0, 0]; pytorch-grad-cam's own function agrees."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    v = torch.tensor([1.0, 1.0], dtype=torch.float64) / 2 ** 0.5
    A = (5 + torch.tensor([-3.0, 1.0, 1.0, 1.0], dtype=torch.float64)[None] * v[:, None]).view(1, 2, 2, 2)
    G = -torch.ones(1, 1, 2, 2, 2, dtype=torch.float64)  # |G| = 1
    ours = cm.segeigencam_formula(A, G)[0, 0]
    close(ours, torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64), 1e-12)
    peer = torch.as_tensor(get_2d_projection_with_sign_correction(A.numpy()))[0]
    close(ours, peer.double().clamp(min=0), 1e-6)


def test_fem_is_the_papers_formula_and_mask_weights_the_peers(rn, x):
    t = top2(rn, x)[:, :1]
    peer = pgc_maps(pgc.FEM, rn, rn.layer1, x, t)
    close(raw(cm.FEM, rn, "layer1", x, t, mask_weights=True)[:, 0], peer["raw"][:, 0].clamp(min=0), 1e-10)
    A = peer["acts"][:, 0]
    paper = torch.zeros(A.shape[0], *A.shape[2:], dtype=A.dtype)
    for b in range(A.shape[0]):
        for c in range(A.shape[1]):
            a = A[b, c]
            mu, sd = a.mean(), ((a - a.mean()) ** 2).mean().sqrt()
            paper[b] += mu * (a >= mu + 2 * sd)
    ours = raw(cm.FEM, rn, "layer1", x, t)[:, 0]
    close(ours, paper.clamp(min=0), 1e-10)
    assert not torch.allclose(ours, peer["raw"][:, 0].clamp(min=0))  # the difference the README measures


def test_randomcam_formula_is_the_peers_and_its_weights_are_seeded_privately(rn, x):
    t = top2(rn, x)
    np.random.seed(3)
    peer = pgc_maps(pgc.RandomCAM, rn, rn.layer2, x, t[:, :1])
    np.random.seed(3)
    w = torch.as_tensor(np.random.uniform(-1, 1, size=(2, 16)))[:, None]
    close(cm.randomcam_formula(peer["acts"][:, 0], w), peer["raw"].clamp(min=0), 1e-12)
    state = torch.get_rng_state()
    got = raw(cm.RandomCAM, rn, "layer2", x, t, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    w = torch.rand(2, 2, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2 - 1
    A = peer["acts"][:, 0]
    close(got, torch.einsum("bkc,bchw->bkhw", w, A).clamp(min=0), 1e-12)
    assert torch.equal(got, raw(cm.RandomCAM, rn, "layer2", x, t, seed=7))
    assert not torch.equal(got, raw(cm.RandomCAM, rn, "layer2", x, t, seed=8))


# --------------------------------------------------------------------------- Deep Feature Factorization


class Planted(nn.Module):
    """A 1x1 conv with non-negative weights on 3 non-negative input channels with disjoint supports:
    its output is an exact rank-3 NMF ``W H`` whose factors are unique up to scale and order."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 1, bias=False)
        groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])  # each concept mostly in its own channels
        self.conv.weight.data = (F.one_hot(groups, 3) + 0.2 * torch.rand(8, 3, generator=g))[..., None, None]
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 3)
        self.fc.weight.data = torch.linalg.pinv(self.conv.weight.data[:, :, 0, 0])  # concept j scores class j

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def planted_input():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    region = torch.randint(0, 4, (2, 8, 8), generator=g)  # 3: background (every channel 0, so no shift)
    vals = torch.rand(2, 8, 8, generator=g, dtype=torch.float64) + 0.5
    for c in range(3):
        x[:, c] = torch.where(region == c, vals, torch.zeros_like(vals))
    return x


def test_dff_recovers_a_planted_factorization_as_the_peer_does():
    from scipy.optimize import linear_sum_assignment

    dff_peer = pytest.importorskip("pytorch_grad_cam.feature_factorization.deep_feature_factorization").dff
    model, x = Planted().double().eval(), planted_input()
    res = cm.DeepFeatureFactorization(model, layers=["relu"], n_components=3)(x, targets=[[0, 1, 2]] * 2)
    truth = x / x.amax(dim=(0, 2, 3), keepdim=True)  # (B, 3, h, w), each concept's max 1
    _, peer_maps = dff_peer(model.relu(model.conv(x)).detach().numpy(), n_components=3)
    for maps in (res.concept_maps, torch.as_tensor(peer_maps)):
        corr = torch.corrcoef(torch.cat([maps.transpose(0, 1).flatten(1), truth.transpose(0, 1).flatten(1)]))[:3, 3:]
        rows, cols = linear_sum_assignment(-corr.numpy())
        assert corr[rows, cols].min() > 0.995
    ours = res.concept_maps.transpose(0, 1).flatten(1)
    order = [int((ours @ truth.transpose(0, 1).flatten(1)[j]).argmax()) for j in range(3)]
    close(res.concept_maps[:, order], truth, 0.1)  # measured 0.049
    close(res.concepts[order], model.conv.weight[:, :, 0, 0].T * x.amax(dim=(0, 2, 3))[:, None], 0.1)
    assert res.concept_index.tolist() == [order] * 2  # concept j scores class j highest
    close(res.layer_maps["relu"], res.concept_maps[:, order], 1e-12)
    assert res.concept_scores.shape == (3, 3) and res.maps.shape == (2, 3, 8, 8)
    with pytest.raises(InputError, match="larger than the layer's 8 channels"):
        cm.DeepFeatureFactorization(model, layers=["relu"], n_components=9)(x)


# --------------------------------------------------------------------------- Guided Backprop, Guided Grad-CAM


def test_guided_backprop_matches_pytorch_grad_cam_and_leaves_the_model_as_found(rn, x):
    peer_model = copy.deepcopy(rn)
    g = torch.as_tensor(pgc.GuidedBackpropReLUModel(peer_model, device="cpu")(x[:1].clone(), None))  # (H, W, 3)
    assert not any(m.inplace for m in peer_model.modules() if isinstance(m, nn.ReLU))  # the peer changed the model
    model = mixed(copy.deepcopy(rn), "layer1")
    before = snapshot(model)
    res = cm.GuidedBackprop(model, normalize=None)(x[:1])
    close(res.layer_maps["input"][0, 0], g.abs().amax(dim=-1), 1e-10)
    close(cm.GuidedBackprop(model, normalize=None, reduce="abs_sum")(x[:1]).maps[0, 0], g.abs().sum(-1), 1e-10)
    with pytest.raises(InputError):
        cm.GuidedBackprop(model)(x[:1], targets=[5000])
    assert_as_found(model, before)
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_guided_k_targets_in_one_call_and_guided_gradcam(rn, x):
    t = top2(rn, x)
    both = cm.GuidedBackprop(rn, normalize=None)(x, targets=t)
    for k in range(2):
        close(both.maps[:, k], cm.GuidedBackprop(rn, normalize=None)(x, targets=t[:, k]).maps[:, 0], 1e-10)
    gc = pgc_maps(pgc.GradCAM, rn, rn.layer3, x, t)["raw"].clamp(min=0)  # plain gradients: Grad-CAM's own map
    up = F.interpolate(gc, size=(32, 32), mode="bilinear", align_corners=False)
    res = cm.GuidedGradCAM(rn, layers=["layer3"], normalize=None)(x, targets=t)
    close(res.layer_maps["layer3"], gc, 1e-8)
    close(res.maps, both.maps * up, 1e-8)
    gc4 = pgc_maps(pgc.GradCAM, rn, rn.layer4, x, t)["raw"].clamp(min=0)
    up4 = F.interpolate(gc4, size=(32, 32), mode="bilinear", align_corners=False)
    def by_max(u, m):  # an all-zero map stays 0
        peak = m.amax(dim=(2, 3), keepdim=True)
        return torch.where(peak > 0, u / torch.where(peak > 0, peak, 1.0), 0.0)

    fused = torch.maximum(by_max(up, gc), by_max(up4, gc4))
    two = cm.GuidedGradCAM(rn, layers=["layer3", "layer4"])(x, targets=t).maps  # min-max of the product
    close(two, camkit.normalize.minmax(both.maps * fused), 1e-6)


def test_guided_backprop_refuses_models_without_relu_modules():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.relu(self.conv(x)).mean(dim=(2, 3))

    for m in (model, Functional()):
        with pytest.raises(InputError, match="no nn.ReLU module"):
            cm.GuidedBackprop(m)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cm.GuidedBackprop(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), layers=["0"])
    assert "ignored" in str(w[0].message)


# --------------------------------------------------------------------------- FullGrad eigen_smooth


def eigen_reference(terms, size, renormalize):
    """The terms resized to the input (min-max normalized with ``renormalize``) then to 1/8 of it, centered, projected on the first right singular
    vector (sign: loadings sum >= 0), ReLU, resized back (plain torch, written out)."""
    small = (size[0] // 8, size[1] // 8)
    E = torch.stack([F.interpolate(m, size=size, mode="bilinear") for m in terms], dim=2)  # (B, K, L, H, W)
    if renormalize:  # each term min-max normalized at the input's size (0 for a constant one)
        lo, hi = E.amin(dim=(-2, -1), keepdim=True), E.amax(dim=(-2, -1), keepdim=True)
        E = torch.where(hi > lo, (E - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
    E = F.interpolate(E.flatten(1, 2), size=small, mode="bilinear").unflatten(1, E.shape[1:3])
    M = E.flatten(-2).transpose(-1, -2)
    M = M - M.mean(dim=-2, keepdim=True)
    v = torch.linalg.svd(M, full_matrices=False).Vh[..., 0, :]
    v = v * torch.where(v.sum(-1, keepdim=True) < 0, -1.0, 1.0)
    p = (M @ v[..., None])[..., 0].unflatten(-1, small).clamp(min=0)
    return F.interpolate(p, size=size, mode="bilinear")


def peer_eigen_reference(model, x, t, bias_terms):
    """pytorch-grad-cam's FullGrad eigen_smooth written out: the input term per colour channel
    (min-max of |x dy/dx|) and each bias layer's term, at the input's size, each min-max normalized, resized
    to 1/8, centered and projected on the first right singular vector (no sign rule, no ReLU), min-max
    normalized, resized back, min-max normalized. Returns (B, H, W) for one target per image; the sign is
    left to the caller."""
    size = tuple(x.shape[-2:])
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
    E = torch.cat([(g * x).abs()] + [F.interpolate(b, size=size, mode="bilinear") for b in bias_terms], 1)
    E = F.interpolate(camkit.normalize.minmax(E), size=(size[0] // 8, size[1] // 8), mode="bilinear")
    M = E.flatten(-2).transpose(-1, -2)
    M = M - M.mean(dim=-2, keepdim=True)
    p = (M @ torch.linalg.svd(M, full_matrices=False).Vh[:, 0, :, None])[..., 0].unflatten(-1, E.shape[-2:])
    up = F.interpolate(camkit.normalize.minmax(p[:, None]), size=size, mode="bilinear")
    return camkit.normalize.minmax(up)[:, 0]


def test_fullgrad_eigen_smooth_is_the_projection_of_its_terms_and_the_peers_definition_is_known(rn, x):
    t = top2(rn, x)
    terms = cm.FullGrad(rn, normalize=None, per_channel=True)(x, targets=t).layer_maps
    ours = cm.FullGrad(rn, normalize=None, per_channel=True, eigen_smooth=True)(x, targets=t).maps
    close(ours, eigen_reference(list(terms.values()), (32, 32), True), 1e-8)
    plain = cm.FullGrad(rn, normalize=None, eigen_smooth=True)(x, targets=t[:, :1]).maps
    plain_terms = cm.FullGrad(rn, normalize=None)(x, targets=t[:, :1]).layer_maps
    close(plain, eigen_reference(list(plain_terms.values()), (32, 32), False), 1e-8)
    peer = pgc.FullGrad(rn, [])
    try:
        out = torch.as_tensor(peer(x, [ClassifierOutputTarget(int(c)) for c in t[:, 0]], eigen_smooth=True))
    finally:
        peer.activations_and_grads.release()
    ref = peer_eigen_reference(rn, x, t[:, 0], [m[:, :1] for n, m in terms.items() if n != "input"])
    flipped = ((ref - 0.5) * (out.double() - 0.5)).flatten(1).sum(1) < 0  # its sign is LAPACK's
    ref = torch.where(flipped[:, None, None], 1 - ref, ref)
    assert (ref - out).abs().max() < 2e-3  # float32, eps 1e-7 in each min-max (2.5e-4; colours summed: 0.010)


# --------------------------------------------------------------------------- every new method


NEW = {"kpcacam": {}, "fem": {}, "randomcam": {}, "segeigencam": {}, "dff": {"n_components": 2, "max_iter": 10},
       "guidedbackprop": {}, "guidedgradcam": {}}


def test_new_methods_are_registered_for_the_cli_and_leave_the_model_as_found(x):
    assert set(NEW) <= set(cm.cli_names()) and set(NEW) <= set(cm.METHODS)
    assert all(getattr(camkit, cm.METHODS[n].__name__) is cm.METHODS[n] for n in NEW)
    torch.manual_seed(0)
    model = mixed(narrow_resnet18(num_classes=5).double(), "layer1")
    before = snapshot(model)
    for name, kw in NEW.items():
        layers = None if name == "guidedbackprop" else ["layer4"]
        with cm.METHODS[name](model, layers=layers, **kw) as cam:
            res = cam(x[:1], topk=2)
            assert res.maps.shape == (1, 2, 32, 32) and torch.isfinite(res.maps).all(), name
            with pytest.raises(InputError):
                cam(x[:1], targets=[5000])
    res = cm.FullGrad(model, eigen_smooth=True)(x[:1], topk=2)
    assert res.maps.shape == (1, 2, 32, 32)
    assert_as_found(model, before)


def test_speed_script_smoke(tmp_path):
    """benchmarks/new_methods_activation.py end to end on a tiny net (one round, no warm-up): both runners
    timed, the ratio and the provenance written."""
    import json

    from benchmarks.new_methods_activation import main

    md, js = main(["--arch", "tiny", "--size", "16", "--rounds", "1", "--warm-size", "0", "--no-memory",
                   "--method", "FEM", "Guided Backprop", "--out", str(tmp_path / "a.md")])
    data = json.loads(js.read_text())
    assert [r["method"] for r in data["results"]] == ["FEM", "Guided Backprop"]
    assert all(set(r["times_s"]) == {f"camkit {r['method']}", f"pytorch-grad-cam {r['method']}"}
               for r in data["results"])
    assert "peer / camkit" in md.read_text() and data["provenance"]["git_commit"]


# --------------------------------------------------------------------------- pytorch-grad-cam's own test cases, ported


def narrow_vgg11():
    """VGG11's features (torchvision's make_layers, configuration "A", module names as in vgg11) 8 times
    narrower, average pool to 7x7 and one linear layer (the full classifier's 120M weights take seconds to draw)."""
    from collections import OrderedDict

    from torchvision.models.vgg import make_layers

    cfg = [c if c == "M" else c // 8 for c in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]]
    return nn.Sequential(OrderedDict(features=make_layers(cfg), avgpool=nn.AdaptiveAvgPool2d(7),
                                     flatten=nn.Flatten(), classifier=nn.Linear(64 * 49, 1000))).eval()


@pytest.mark.parametrize("arch, layers, shape, target", [
    ("resnet18", ["layer4.1", "layer4.0"], (2, 32, 32), None), ("vgg11", ["features.20"], (1, 32, 40), 100)])
def test_peer_run_all_models_case_fullgrad_and_new_methods_with_eigen_smooth(arch, layers, shape, target):
    """tests/test_run_all_models.py of pytorch-grad-cam (random weights here, offline; VGG11 narrower): FullGrad with
    eigen_smooth=True (which camkit refused before) and the new methods run on its models, layers, sizes
    and targets, one map per image at the input's size."""
    torch.manual_seed(0)
    model = narrow_vgg11() if arch == "vgg11" else torchvision.models.resnet18(weights=None).eval()
    b, h, w = shape
    x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0))
    targets = None if target is None else [target] * b
    runs = [cm.FullGrad(model, eigen_smooth=True), cm.SegEigenCAM(model, layers=layers),
            cm.FEM(model, layers=layers, eigen_smooth=True), cm.RandomCAM(model, layers=layers, eigen_smooth=True),
            cm.KPCACAM(model, layers=layers)]
    for cam in runs:
        maps = cam(x, targets=targets).maps
        assert maps.shape == (b, 1, h, w) and torch.isfinite(maps).all(), type(cam).__name__


def test_peer_svd_no_side_effect_case():
    """tests/test_svd_no_side_effect.py of pytorch-grad-cam: the projections leave their input as it was
    (one NaN in it); camkit's map of that image is NaN (camkit's non-finite policy; the peer zeroes the NaN)."""
    a = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    a[0, 0, 0, 0], a[0, 0, 1, 1] = float("nan"), 1.0
    a[:, 1] = torch.tensor([[2.0, 3.0], [4.0, 5.0]])
    before = a.clone()
    for out in (cm.kpca_projection(a), cm.eigen_projection(a), cm.segeigencam_formula(a, torch.ones(2, 1, 2, 2, 2))):
        assert torch.equal(a.isnan(), before.isnan()) and torch.equal(a.nan_to_num(), before.nan_to_num())
        assert out[0].isnan().all() and torch.isfinite(out[1]).all()
