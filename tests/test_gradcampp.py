"""Grad-CAM++ against its paper's definition and against pytorch-grad-cam.

The paper (Chattopadhay et al., 2018, eq. 19) weights channel k of the layer
output A by ``w_k = sum_ij alpha_ij ReLU(dY/dA_ij)`` with ``Y = exp(S)`` (S the
class score) and ``alpha_ij = d2Y / (2 d2Y + sum_ab A_ab d3Y)``, where d2Y and
d3Y are the 2nd and 3rd derivatives of Y with respect to A_ij. Here they are
computed by autograd (double and triple backward), element by element, on a
small ReLU network above A, where the paper's closed form is exact (the
second derivative of S vanishes). camkit drops the common factor exp(S).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import camkit

torch.set_default_dtype(torch.float32)


def small_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1),  # "stem": its output is A
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
    ).double().eval()


def paper_gradcampp(model: nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
    """Eq. 19 of the paper on one image: derivatives of Y = exp(S_c) by autograd."""
    A = model[0](x).detach().requires_grad_(True)  # (1, C, h, w)
    S = model[1:](A)[0, c]
    Y = torch.exp(S)
    (d1,) = torch.autograd.grad(Y, A, create_graph=True)
    flat1 = d1.reshape(-1)
    d2 = torch.zeros(flat1.numel(), dtype=A.dtype)
    d3 = torch.zeros(flat1.numel(), dtype=A.dtype)
    for i in range(flat1.numel()):
        (g2,) = torch.autograd.grad(flat1[i], A, create_graph=True)
        second = g2.reshape(-1)[i]
        d2[i] = second.detach()
        (g3,) = torch.autograd.grad(second, A, retain_graph=True)
        d3[i] = g3.reshape(-1)[i]
    d2, d3 = d2.view_as(A)[0], d3.view_as(A)[0]
    a = A.detach()[0]
    denom = 2 * d2 + a.sum(dim=(1, 2))[:, None, None] * d3
    # Where dY/dA_ij = 0 the derivatives vanish too (0 / 0): ReLU(dY/dA) = 0
    # there, so alpha is irrelevant; set it to 0.
    alpha = torch.where(denom != 0, d2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
    w = (alpha * torch.relu(d1.detach()[0])).sum(dim=(1, 2))
    return torch.relu((w[:, None, None] * a).sum(0)), Y.detach()


def test_gradcampp_matches_the_papers_definition():
    model = small_net()
    torch.manual_seed(4)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    targets = torch.tensor([[1, 3], [0, 4]])
    res = camkit.GradCAMpp(model, layers=["0"])(x, targets=targets)
    checked = 0
    for b in range(2):
        for k in range(2):
            ref, Y = paper_gradcampp(model, x[b:b + 1], int(targets[b, k]))
            got = res.layer_maps["0"][b, k] * Y  # camkit omits the factor exp(S) = Y
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
            checked += int(ref.abs().sum() > 0)
    assert checked >= 3  # non-trivial maps were compared


def test_gradcampp_matches_pytorch_grad_cam():
    """pytorch-grad-cam 1.5.7 adds eps = 1e-6 to alpha's denominator (camkit: none,
    alpha = 0 where the denominator is 0) and min-max scales with 1e-7 in the
    divisor. With gradients well above sqrt(eps) the maps agree within 1e-4; with
    gradients near 1e-3 the eps term alone moves them by a few percent."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class AtLayer(pgc.GradCAMPlusPlus):  # maps at the layer's resolution: no cv2 resize
        def get_target_width_height(self, input_tensor):
            return None

    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=6).eval()
    with torch.no_grad():  # gradients well above sqrt(eps): the eps term is then negligible
        model.fc.weight.mul_(1e3)
    x = torch.randn(2, 3, 64, 64)
    targets = [2, 5]
    with AtLayer(model=model, target_layers=[model.layer3]) as peer:
        theirs = torch.from_numpy(peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets]))
    ours = camkit.GradCAMpp(model, layers=["layer3"])(x, targets=targets).layer_maps["layer3"][:, 0]
    torch.testing.assert_close(camkit.normalize.minmax(ours), theirs, rtol=0, atol=1e-4)
    assert theirs.amax() > 0.99
