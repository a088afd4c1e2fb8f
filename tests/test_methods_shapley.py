"""ShapleyCAM against pytorch-grad-cam 1.5.7's ShapleyCAM (its own output, at the layer's resolution)
and against the paper's definition (Cai et al., 2025: ``w_k = mean_ij(G - 1/2 H A)``) written out with
plain autograd: one ``torch.autograd.grad`` per image and target, the Hessian-vector product by double
backward. Small float64 models: a GELU/SiLU conv net (curvature above the layer, so ``H A != 0`` with a
logit target) and an 8 times narrower ResNet18 (piecewise linear: ``H A = 0`` unless the target has
curvature, as the paper's ReST has).

Definition differences: none on these models (pytorch-grad-cam differentiates the sum of the targets
over the batch, which equals the per-image gradients because images do not interact in eval mode).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from model_state import assert_as_found, snapshot
from small_models import narrow_resnet18
from torch import nn

import camkit
from camkit.errors import InputError
from camkit.methods import cli_names

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget  # noqa: E402


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    ref = ref.to(ours.dtype)
    err = (ours - ref).abs().max() / ref.abs().max().clamp(min=1e-30)
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol:g}"


@pytest.fixture(scope="module")
def smooth_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 6),
    ).double().eval()


@pytest.fixture(scope="module")
def narrow():
    torch.manual_seed(0)
    return narrow_resnet18(num_classes=6).double().eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 16, dtype=torch.float64)


def pgc_shapley(model, layer, x, classes, target_cls=ClassifierOutputTarget, eigen_smooth=False):
    """pytorch-grad-cam's ShapleyCAM raw map (get_cam_image's output, before its ReLU), (B, K, h, w)."""

    class AtLayer(pgc.ShapleyCAM):
        def get_target_width_height(self, input_tensor):
            return None

        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            self.kept = np.asarray(cam)
            return cam

    out = []
    for k in range(classes.shape[1]):
        cam = AtLayer(model, [layer])
        try:
            cam(x, [target_cls(int(c)) for c in classes[:, k]], eigen_smooth=eigen_smooth)
        finally:
            cam.activations_and_grads.release()
        out.append(torch.as_tensor(cam.kept))
    return torch.stack(out, 1)


def paper_shapley(model, layer, x, classes, rest=False):
    """The paper's ShapleyCAM by hand: per image and target, G = dy/dA, HA = d<G, A>/dA, then
    ReLU(sum_k mean_ij(G - HA / 2) A_k)."""
    rows = []
    for b in range(x.shape[0]):
        kept = {}
        h = layer.register_forward_hook(lambda m, i, o, kept=kept: kept.setdefault("a", o))
        try:
            y = model(x[b:b + 1].clone())
        finally:
            h.remove()
        A = kept["a"]
        per_k = []
        for c in classes[b].tolist():
            val = y[0, c]
            if rest:
                val = y[0, c] - torch.nn.functional.cross_entropy(y, torch.tensor([c]))
            (G,) = torch.autograd.grad(val, A, create_graph=True)
            (HA,) = torch.autograd.grad(G, A, grad_outputs=A.detach(), retain_graph=True)
            w = (G - 0.5 * HA).mean(dim=(2, 3))[0]
            per_k.append(torch.relu((w[:, None, None] * A[0]).sum(0)).detach())
        rows.append(torch.stack(per_k))
    return torch.stack(rows)


def test_shapleycam_matches_pytorch_grad_cam_and_the_paper(smooth_net, x):
    classes = torch.tensor([[0, 3], [5, 1]])
    before = snapshot(smooth_net)
    res = camkit.ShapleyCAM(smooth_net, layers="3")(x, targets=classes)  # K = 2 from one call
    assert_as_found(smooth_net, before)
    ours = res.layer_maps["3"]
    close(ours, pgc_shapley(smooth_net, smooth_net[3], x, classes).clamp(min=0), 1e-10)
    close(ours, paper_shapley(smooth_net, smooth_net[3], x, classes), 1e-10)
    # the second-order term matters here (the test would not see it dropped)
    grad = camkit.GradCAM(smooth_net, layers="3")(x, targets=classes).layer_maps["3"]
    assert (ours - grad).abs().max() > 1e-3 * ours.abs().max()


def test_shapleycam_rest_utility_matches_peer_on_a_relu_net(narrow, x):
    classes = torch.tensor([[2, 4], [0, 1]])
    ours = camkit.ShapleyCAM(narrow, layers="layer3", utility="rest")(x, targets=classes).layer_maps["layer3"]
    ref = pgc_shapley(narrow, narrow.layer3, x, classes, ClassifierOutputReST).clamp(min=0)
    close(ours, ref, 1e-10)
    close(ours, paper_shapley(narrow, narrow.layer3, x, classes, rest=True), 1e-10)
    # a logit target on a piecewise-linear net: H A = 0, ShapleyCAM is Grad-CAM
    plain = camkit.ShapleyCAM(narrow, layers="layer3")(x, targets=classes).layer_maps["layer3"]
    close(plain, camkit.GradCAM(narrow, layers="layer3")(x, targets=classes).layer_maps["layer3"], 1e-12)
    assert (ours - plain).abs().max() > 1e-3 * plain.abs().max()


def test_shapleycam_k_targets_batched_equal_single_calls(smooth_net, x):
    cam = camkit.ShapleyCAM(smooth_net, layers=["1", "3"])
    both = cam(x, targets=[[1, 4], [2, 0]])
    loop = camkit.ShapleyCAM(smooth_net, layers=["1", "3"], batched_backward=False)(x, targets=[[1, 4], [2, 0]])
    for k, col in enumerate(([1, 2], [4, 0])):
        one = cam(x, targets=col)
        for n in ("1", "3"):
            close(both.layer_maps[n][:, k], one.layer_maps[n][:, 0], 1e-12)
            close(loop.layer_maps[n][:, k], one.layer_maps[n][:, 0], 1e-12)


def test_shapleycam_bad_input(smooth_net, x):
    with pytest.raises(InputError, match="utility"):
        camkit.ShapleyCAM(smooth_net, layers="3", utility="softmax")
    with pytest.raises(InputError, match="rest"):
        camkit.ShapleyCAM(smooth_net, layers="3", utility="rest")(x, targets=lambda s: s[:, 0])
    assert "shapleycam" in cli_names()


def test_shapleycam_eigen_smooth_matches_pytorch_grad_cam_up_to_the_sign(smooth_net, x):
    """eigen_smooth: the first principal component of w_k A_k (pytorch-grad-cam's sign is LAPACK's,
    camkit's makes the loadings sum >= 0; its projection is float32)."""
    classes = torch.tensor([[2], [4]])
    ours = camkit.ShapleyCAM(smooth_net, layers="3", eigen_smooth=True)(x, targets=classes).layer_maps["3"]
    raw = pgc_shapley(smooth_net, smooth_net[3], x, classes, eigen_smooth=True).double()
    for b in range(2):
        err = min(float((ours[b] - (s * raw[b]).clamp(min=0)).abs().max()) for s in (1, -1))
        assert err <= 1e-5 * float(raw[b].abs().max())
    plain = camkit.ShapleyCAM(smooth_net, layers="3")(x, targets=classes).layer_maps["3"]
    assert (ours - plain).abs().max() > 1e-3 * plain.abs().max()


def test_shapleycam_on_a_frozen_linear_head_is_gradcam(x):
    """The gradients of a frozen GAP + linear head carry no autograd history: H A = 0 (it raised)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    net = net.double().eval().requires_grad_(False)
    for batched in (True, False):
        ours = camkit.ShapleyCAM(net, layers="1", batched_backward=batched)(x, topk=2).layer_maps["1"]
        close(ours, camkit.GradCAM(net, layers="1")(x, topk=2).layer_maps["1"], 1e-12)


def test_shapleycam_on_fused_attention_is_one_clear_error():
    """torch's fused attention has no double backward: one InputError naming the way out (it was torch's
    raw RuntimeError), the model left as found; with timm's eager attention the call runs."""
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5,
                          depth=1, embed_dim=16, num_heads=2).eval()
    kw = camkit.adapters.resolve(m).method_kwargs("shapleycam")
    x = torch.randn(1, 3, 32, 32)
    before = snapshot(m)
    with pytest.raises(InputError, match="ShapleyCAM needs second derivatives.*fused_attn = False"):
        camkit.ShapleyCAM(m, **kw)(x)
    assert_as_found(m, before)
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = False
    assert camkit.ShapleyCAM(m, **kw)(x).maps.shape == (1, 1, 32, 32)
