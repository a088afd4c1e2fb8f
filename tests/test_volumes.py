"""Videos and 3-D volumes (issue 21, item 2): inputs (B, C, T, H, W) into Conv3d models.

References: each formula written out over (t, h, w) on activations and gradients taken with plain
torch.autograd.grad (no camkit code), trilinear upsampling by torch's F.interpolate, min-max per
volume written out; torchcam 0.5.0 on its own video test case (its tests' Conv3d model and a
(1, 3, 8, 16, 16) input) for CAM, Grad-CAM, XGrad-CAM, LayerCAM, Score-CAM and its 3-D normalization.
Grad-CAM++ is not compared with torchcam: torchcam's alpha differs by definition (README); the
hand formula checks it. torchvision's r3d_18 runs at (1, 3, 4, 32, 32) (built once, on the meta
device, then given seeded weights: its own initialisation costs a second).
"""
from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

import camkit
from camkit import InputError
from camkit.metrics import deletion_insertion, iou, pointing_game
from camkit.normalize import normalize_volume
from camkit.video import frame_strip, save_gif

SPATIAL = (-3, -2, -1)


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


class Tiny3D(nn.Module):
    """A small medical-style 3-D CNN: one input channel (a scan), BatchNorm, max pooling, GAP + linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                                      nn.MaxPool3d(2), nn.Conv3d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def tiny3d():
    torch.manual_seed(0)
    m = Tiny3D().double().eval()
    with torch.no_grad():  # running statistics that are not the identity
        m.features[1].running_mean.uniform_(-0.2, 0.2)
        m.features[1].running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def scan():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 4, 8, 8, generator=g, dtype=torch.float64)


CLASSES = torch.tensor([[0, 2], [1, 0]])


def hand(model: nn.Module, x: Tensor, layer: str, classes: Tensor):
    """A (B, C, t, h, w) and G (B, K, C, t, h, w) with plain autograd."""
    kept = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    A = kept["a"]
    G = [torch.autograd.grad(out.gather(1, classes[:, k:k + 1]).sum(), A, retain_graph=True)[0]
         for k in range(classes.shape[1])]
    return A.detach(), torch.stack(G, 1)


def proj(E: Tensor) -> Tensor:
    """First principal component of the position vectors of E (..., C, t, h, w), sign: loadings sum >= 0."""
    M = E.flatten(-3).transpose(-1, -2)
    M = M - M.mean(-2, keepdim=True)
    v = torch.linalg.svd(M, full_matrices=False)[2][..., 0, :]
    v = torch.where(v.sum(-1, keepdim=True) < 0, -v, v)
    return (M @ v[..., None])[..., 0].unflatten(-1, E.shape[-3:])


def weighted(w: Tensor, A: Tensor) -> Tensor:
    return torch.einsum("bkc,bcthw->bkthw", w, A).clamp(min=0)


def gradcampp(A: Tensor, G: Tensor) -> Tensor:
    denom = 2 * G ** 2 + A.sum(SPATIAL)[:, None, :, None, None, None] * G ** 3
    alpha = torch.where(denom != 0, G ** 2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
    return weighted((alpha * G.clamp(min=0)).sum(SPATIAL), A)


FORMULAS = {
    "gradcam": lambda A, G: weighted(G.mean(SPATIAL), A),
    "gradcampp": gradcampp,
    "layercam": lambda A, G: (G.clamp(min=0) * A[:, None]).sum(2).clamp(min=0),
    "hirescam": lambda A, G: (G * A[:, None]).sum(2).clamp(min=0),
    "xgradcam": lambda A, G: weighted((G * A[:, None]).sum(SPATIAL) / A.sum(SPATIAL)[:, None], A),
    "gradcamelementwise": lambda A, G: (G * A[:, None]).clamp(min=0).sum(2),
    "eigengradcam": lambda A, G: proj(G * A[:, None]).clamp(min=0),
}


def minmax_volume(m: Tensor) -> Tensor:
    lo, hi = m.amin(SPATIAL, keepdim=True), m.amax(SPATIAL, keepdim=True)
    return torch.where(hi > lo, (m - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)


def trilinear(m: Tensor, size) -> Tensor:
    return F.interpolate(m, size=tuple(size), mode="trilinear", align_corners=False)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_gradient_methods_on_a_volume_equal_the_formulas_on_hand_autograd(tiny3d, scan, name):
    """layer_maps (B, K, t, h, w) equal the formula written over (t, h, w); maps (B, K, T, H, W) equal
    those min-max normalized per volume (not per frame), then upsampled trilinearly."""
    A, G = hand(tiny3d, scan, "features.3", CLASSES)  # after the max pool: half resolution, varying G
    res = camkit.METHODS[name](tiny3d, layers=["features.3"])(scan, CLASSES)
    ref = FORMULAS[name](A, G)
    assert res.layer_maps["features.3"].shape == (2, 2, 2, 4, 4) and float(ref.amax()) > 0
    torch.testing.assert_close(res.layer_maps["features.3"], ref, rtol=1e-9, atol=1e-12)
    assert res.maps.shape == (2, 2, 4, 8, 8)
    torch.testing.assert_close(res.maps, trilinear(minmax_volume(ref), (4, 8, 8)), rtol=1e-9, atol=1e-9)


def test_cam_eigencam_and_smooth_gradcampp_on_a_volume(tiny3d, scan):
    """CAM = W[c] . A over the volume; Eigen-CAM the first component over t*h*w positions; CAM finds
    its layer with a 3-D dry run; Smooth Grad-CAM++ with std=0 is Grad-CAM++ (its noise has the
    video's shape)."""
    A, G = hand(tiny3d, scan, "features.5", CLASSES)
    cam = camkit.CAM(tiny3d)
    assert cam.layer_names == ["features"]  # the last module whose output is features.5's
    res = cam(scan, CLASSES)
    ref = torch.einsum("bkc,bcthw->bkthw", tiny3d.fc.weight.detach()[CLASSES], A)
    torch.testing.assert_close(res.layer_maps["features"], ref, rtol=1e-9, atol=1e-12)
    eig = camkit.EigenCAM(tiny3d, layers=["features.5"])(scan, CLASSES).layer_maps["features.5"]
    torch.testing.assert_close(eig, proj(A).clamp(min=0)[:, None].expand(-1, 2, -1, -1, -1), rtol=1e-8, atol=1e-10)
    sg = camkit.SmoothGradCAMpp(tiny3d, layers=["features.3"], num_samples=2, std=0.0)(scan, CLASSES)
    torch.testing.assert_close(sg.layer_maps["features.3"], gradcampp(*hand(tiny3d, scan, "features.3", CLASSES)),
                               rtol=1e-9, atol=1e-12)


def test_scorecam_and_ablationcam_on_a_volume_equal_hand_perturbations(tiny3d, scan):
    """Score-CAM: the scan times each channel's trilinearly upsampled, per-volume min-max map, the
    targets' softmax over the channels; Ablation-CAM: the drop when a channel is set to 0. Both
    written out with plain forwards (Score-CAM's run on a BatchNorm-folded copy: float64 rounding)."""
    layer, module = "features.3", tiny3d.features[3]
    A, _ = hand(tiny3d, scan, layer, CLASSES)
    C = A.shape[1]
    with torch.no_grad():
        y = tiny3d(scan).gather(1, CLASSES)
        masks = minmax_volume(trilinear(A, scan.shape[2:]))
        S = torch.stack([tiny3d(scan * masks[:, c:c + 1]).gather(1, CLASSES) for c in range(C)], -1)
        ablated = []
        for c in range(C):
            keep = (torch.arange(C) != c).to(A.dtype).view(1, C, 1, 1, 1)
            handle = module.register_forward_hook(lambda m, i, o, keep=keep: o * keep)
            try:
                ablated.append(tiny3d(scan).gather(1, CLASSES))
            finally:
                handle.remove()
    score = camkit.ScoreCAM(tiny3d, layers=[layer])(scan, CLASSES)
    torch.testing.assert_close(score.layer_maps[layer], weighted(S.softmax(-1), A), rtol=1e-7, atol=1e-10)
    abl = camkit.AblationCAM(tiny3d, layers=[layer])(scan, CLASSES)
    w = (y[..., None] - torch.stack(ablated, -1)) / y[..., None]
    torch.testing.assert_close(abl.layer_maps[layer], weighted(w, A), rtol=1e-9, atol=1e-12)
    assert score.maps.shape == abl.maps.shape == (2, 2, 4, 8, 8)


def test_fullgrad_on_a_volume_equals_its_terms_written_out(tiny3d, scan):
    """FullGrad on a 3-D CNN: psi(|dy/dx * x|) + the Conv3d / BatchNorm3d bias terms, each min-max over its
    (C, t, h, w) together and summed over C, upsampled trilinearly, summed, min-max per volume."""
    f = tiny3d.features
    bn_bias = f[1].bias - f[1].running_mean * f[1].weight / torch.sqrt(f[1].running_var + f[1].eps)
    biases = {"features.0": f[0].bias, "features.1": bn_bias, "features.4": f[4].bias}
    kept = {}
    handles = [tiny3d.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: kept.setdefault(n, o))
               for n in biases]
    x = scan.clone().requires_grad_(True)
    try:
        out = tiny3d(x)
    finally:
        for h in handles:
            h.remove()
    tensors = [x] + [kept[n] for n in biases]
    G = [torch.stack(g, 1) for g in zip(*[torch.autograd.grad(out.gather(1, CLASSES[:, k:k + 1]).sum(), tensors,
                                                               retain_graph=True) for k in range(2)])]

    def psi_sum(g: Tensor, b: Tensor) -> Tensor:
        m = (g * b).abs()
        lo, hi = m.amin((2, 3, 4, 5), keepdim=True), m.amax((2, 3, 4, 5), keepdim=True)
        return ((m - lo) / (hi - lo)).sum(2)

    terms = [psi_sum(G[0], x.detach()[:, None])]
    terms += [psi_sum(g, b.detach().view(-1, 1, 1, 1)) for g, b in zip(G[1:], biases.values())]
    ref = minmax_volume(sum(trilinear(t, (4, 8, 8)) for t in terms))
    res = camkit.FullGrad(tiny3d)(scan, CLASSES)
    assert sorted(res.layer_maps) == sorted(["input", *biases])
    torch.testing.assert_close(res.maps, ref, rtol=1e-9, atol=1e-9)


def test_fusion_of_two_volume_layers(tiny3d, scan):
    """LayerCAM on two layers of different (t, h, w): per-volume min-max, trilinear, then max / mean /
    torchcam's tanh_max, equal to the fusion written out."""
    layers = ["features.2", "features.3"]
    per = [minmax_volume(FORMULAS["layercam"](*hand(tiny3d, scan, n, CLASSES))) for n in layers]
    ups = [trilinear(m, (4, 8, 8)) for m in per]
    mean = torch.stack(ups).mean(0)
    expected = {"max": torch.maximum(*ups), "mean": minmax_volume(mean),
                "tanh_max": trilinear(torch.maximum(*[trilinear(torch.tanh(2 * m), (4, 8, 8)) for m in per]), (4, 8, 8))}
    for fusion, ref in expected.items():
        res = camkit.LayerCAM(tiny3d, layers=layers, fusion=fusion)(scan, CLASSES)
        torch.testing.assert_close(res.maps, ref, rtol=1e-9, atol=1e-9, msg=fusion)
    assert camkit.LayerCAM(tiny3d, layers=layers)(scan, CLASSES).maps_at((2, 4, 4)).shape == (2, 2, 2, 4, 4)


def test_normalize_volume_is_one_map_per_volume():
    m = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(normalize_volume(m), minmax_volume(m))
    r = m.clamp(min=0)
    torch.testing.assert_close(normalize_volume(m, "relu_max"), r / r.amax(SPATIAL, keepdim=True))
    assert not torch.allclose(normalize_volume(m), camkit.normalize.minmax(m))  # not frame by frame
    with pytest.raises(InputError, match=r"\(\.\.\., T, H, W\)"):
        normalize_volume(torch.rand(4, 4))


# --------------------------------------------------------------------------- torchcam's video case


def torchcam_video_model() -> nn.Module:
    """torchcam's tests' mock_video_model, written out."""
    return nn.Sequential(
        nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 16, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool3d((1, 1, 1))),
        nn.Flatten(1), nn.Linear(16, 1)).eval()


def test_torchcam_video_case():
    """torchcam's (1, 3, 8, 16, 16) into its Conv3d model: CAM, Grad-CAM, XGrad-CAM, LayerCAM and Score-CAM
    raw maps equal torchcam's; CAM's normalized maps equal torchcam's normalized ones; normalize_volume equals
    torchcam's 3-D normalization (its eps=1e-8 aside)."""
    tcm = pytest.importorskip("torchcam.methods")

    def torchcam_maps(cls, model, layer, x, classes, **kw):
        with cls(model, layer, input_shape=tuple(x.shape[1:]), **kw) as ex:
            return ex(class_idx=classes[:, 0].tolist(), scores=model(x), normalized=False)[0].detach()[:, None]

    torch.manual_seed(1)
    model = torchcam_video_model()
    x = torch.rand((1, 3, 8, 16, 16), generator=torch.Generator().manual_seed(0))
    t = torch.zeros(1, 1, dtype=torch.long)
    for ours, theirs, kw in [(camkit.GradCAM, tcm.GradCAM, {}), (camkit.XGradCAM, tcm.XGradCAM, {}),
                             (camkit.LayerCAM, tcm.LayerCAM, {}), (camkit.ScoreCAM, tcm.ScoreCAM, {}),
                             (camkit.CAM, tcm.CAM, {"fc": "2"})]:
        ref = torchcam_maps(theirs, model, "0.3", x, t, **({"fc_layer": "2"} if kw else {}))
        res = ours(model, layers=["0.3"], **kw)(x, t)
        assert ref.shape == res.layer_maps["0.3"].shape == res.maps.shape == (1, 1, 8, 16, 16)
        assert float(ref.amax()) > 0, ours.__name__
        torch.testing.assert_close(res.layer_maps["0.3"], ref, rtol=1e-5, atol=1e-6 * float(ref.amax()))
    with tcm.CAM(model, "0.3", fc_layer="2", input_shape=(3, 8, 16, 16)) as ex:
        normalized = ex(class_idx=0, scores=model(x))[0].detach()
    torch.testing.assert_close(res.maps[:, 0], normalized, rtol=0, atol=1e-6)
    raw = torch.randn(2, 8, 16, 16)
    theirs = tcm.core._CAM._normalize(raw.clone(), spatial_dims=3)
    torch.testing.assert_close(normalize_volume(raw), theirs, rtol=0, atol=3e-7)


# --------------------------------------------------------------------------- torchvision's r3d_18


@pytest.fixture(scope="module")
def r3d():
    import torchvision

    with torch.device("meta"):
        m = torchvision.models.video.r3d_18(num_classes=5)
    m = m.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm3d):
                mod.reset_running_stats()
    return m


def test_r3d_18_gradcam_and_cam_equal_hand_autograd(r3d):
    x = torch.rand(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([[1, 3]])
    A, G = hand(r3d, x, "layer4", t)
    res = camkit.GradCAM(r3d, layers=["layer4"])(x, t)
    assert res.layer_maps["layer4"].shape == (1, 2) + tuple(A.shape[2:]) and res.maps.shape == (1, 2, 4, 32, 32)
    ref = FORMULAS["gradcam"](A, G)
    assert float(ref.amax()) > 0
    torch.testing.assert_close(res.layer_maps["layer4"], ref, rtol=1e-4, atol=1e-6 * float(ref.amax()))
    cam = camkit.CAM(r3d, layers=["layer4"])(x, t).layer_maps["layer4"]
    torch.testing.assert_close(cam, torch.einsum("bkc,bcthw->bkthw", r3d.fc.weight.detach()[t], A),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow(reason="builds three torchvision video models at their own init (several seconds)")
@pytest.mark.parametrize("arch,layer", [("mc3_18", "layer4"), ("r2plus1d_18", "layer4"), ("s3d", "features.15")])
def test_other_torchvision_video_models(arch, layer):
    import torchvision

    torch.manual_seed(0)
    m = getattr(torchvision.models.video, arch)(num_classes=5).eval()
    x = torch.rand(1, 3, 8, 64, 64) if arch != "s3d" else torch.rand(1, 3, 16, 224, 224)
    t = torch.tensor([[0, 4]])
    A, G = hand(m, x, layer, t)
    res = camkit.GradCAM(m, layers=[layer])(x, t)
    torch.testing.assert_close(res.layer_maps[layer], FORMULAS["gradcam"](A, G), rtol=1e-4, atol=1e-8)
    assert res.maps.shape == (1, 2) + tuple(x.shape[2:])


# --------------------------------------------------------------------------- bad input, metrics, overlays


def test_bad_input_on_volumes(tiny3d, scan):
    flat = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(2, 3)).double()
    with pytest.raises(InputError, match=r"5-D input .* first convolution '0' is a Conv2d"):
        camkit.GradCAM(flat, layers=["0"])(scan)
    with pytest.raises(InputError, match=r"'features.0' is a Conv3d: .* got a 4-D input"):
        camkit.GradCAM(tiny3d, layers=["features.5"])(scan[:, :, 0])
    with pytest.raises(InputError, match="ReCAM does not support videos or 3-D volumes"):
        camkit.ReCAM(tiny3d)
    with pytest.raises(InputError, match="FullGrad's eigen_smooth is written for 2-D images"):
        camkit.FullGrad(tiny3d, eigen_smooth=True)(scan)
    last = nn.Sequential(nn.Conv3d(1, 5, 3, padding=1), Permute(0, 2, 3, 4, 1), nn.LayerNorm(5),
                         Permute(0, 4, 1, 2, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(5, 3)).double()
    with pytest.raises(InputError, match=r"channels last \(B, t, h, w, C\), with C = 5"):
        camkit.GradCAM(last, layers=["2"])(scan)
    res = camkit.GradCAM(last, layers=["2"], reshape=lambda t: t.permute(0, 4, 1, 2, 3))(scan)
    assert res.layer_maps["2"].shape == (2, 1, 4, 8, 8)
    res = camkit.GradCAM(tiny3d, layers=["features.5"])(scan)
    fast = camkit.GradCAM(tiny3d, layers=["features.5"], channels_last=True)(scan)  # channels_last_3d
    torch.testing.assert_close(fast.maps, res.maps)
    with pytest.raises(InputError, match="maps_at takes a size of 3 numbers"):
        res.maps_at((8, 8))
    with pytest.raises(InputError, match="videos and 3-D volumes"):
        deletion_insertion(tiny3d, scan, res.maps[:, 0], 0)


def test_metrics_on_volumes():
    """iou and pointing_game with dims=3 score each (T, H, W) volume as one map."""
    maps = torch.zeros(2, 3, 4, 4)
    masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    maps[0, 1, 2, 2] = 1.0   # the peak in frame 1
    masks[0, 1, 2, 2] = True
    maps[1, 0, 0, 0] = 1.0
    masks[1, 2, 3, 3] = True  # 2 frames, 3 rows and 3 columns away
    assert pointing_game(maps, masks, dims=3).tolist() == [True, False]
    assert pointing_game(maps, masks, tolerance=4, dims=3).tolist() == [True, False]  # sqrt(22) > 4
    assert pointing_game(maps, masks, tolerance=5, dims=3).tolist() == [True, True]
    assert iou(maps, masks, dims=3).tolist() == [1.0, 0.0]
    assert iou(maps, masks).shape == (2, 3)  # frame by frame without dims
    with pytest.raises(InputError, match="dims must be 2"):
        iou(maps, masks, dims=4)


def blue_red(v: np.ndarray) -> np.ndarray:
    """A colormap: 0 blue (0, 0, 1), 1 red (1, 0, 0)."""
    return np.stack([v, np.zeros_like(v), 1 - v], axis=-1)


def test_frame_strip_and_gif(tmp_path):
    """Frame t of the strip is frame t blended with the map's frame t: with alpha=1 a map of 0 is
    the colormap's blue, a map of 1 its red; the GIF's frame 1 is half grey (128), half red."""
    video = torch.full((3, 2, 6, 5), 0.5)
    cam = torch.stack([torch.zeros(6, 5), torch.ones(6, 5)])
    strip = frame_strip(video, cam, alpha=1.0, cmap=blue_red, labels=False, pad=2)
    assert strip.size == (2 * (5 + 2) + 2, 6 + 4)
    a = np.asarray(strip)
    assert a[2 + 3, 2 + 2].tolist() == [0, 0, 255] and a[2 + 3, 9 + 2].tolist() == [255, 0, 0]
    path = save_gif(tmp_path / "clip.gif", video, cam[None, None], fps=5, cmap=blue_red)
    with Image.open(path) as gif:
        assert gif.n_frames == 2 and gif.size == (5, 6) and gif.info["duration"] == 200
        gif.seek(1)  # up to the GIF palette's rounding
        assert np.abs(np.asarray(gif.convert("RGB"))[3, 2].astype(int) - [192, 64, 64]).max() <= 4
    with pytest.raises(InputError, match=r"\(T, H, W\)"):
        frame_strip(video, torch.zeros(6, 5))


def test_the_video_example_runs(tmp_path):
    """examples/video.py on a small random 3-D CNN: maps over the clip, a strip and a GIF written."""
    ns = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "video.py"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.AdaptiveAvgPool3d(1),
                          nn.Flatten(1), nn.Linear(4, 3)).eval()
    got = ns["main"](model, layer="2", frames=4, size=16, out=tmp_path, cmap=blue_red)
    assert got["maps"].shape == (1, 2, 4, 16, 16) and got["layer_maps"].shape == (1, 2, 2, 8, 8)
    assert [p.name for p in got["files"]] == ["strip.png", "clip.gif"] and all(p.stat().st_size > 0 for p in got["files"])
