"""Maps that can train (issue 21, item 6): ``create_graph=True`` keeps each map's autograd graph
back to the model's parameters, so a loss on the maps can be differentiated.

Reference: a hand double backward with plain torch.autograd: the layer's output A, the targets'
gradients G = d y / d A taken with ``create_graph=True``, the paper's formula on them, the loss,
then d loss / d parameters. The camkit call itself writes no ``.grad`` and leaves the model as
found (tests/model_state.py).
"""
from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch
from model_state import assert_as_found, mixed, snapshot
from torch import Tensor, nn

import camkit
from camkit import InputError

HW = (-2, -1)


class Net(nn.Module):
    """stem (conv, BatchNorm, ReLU) then head (conv, ReLU, GAP, linear): G at the stem varies in space
    and depends on the head's weights, A on the stem's, so the loss's gradient takes both paths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                  nn.Linear(5, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stem(x))


def net() -> Net:
    torch.manual_seed(0)
    m = Net().double().eval()
    with torch.no_grad():
        m.stem[1].running_mean.uniform_(-0.1, 0.1)
    return m


@pytest.fixture(scope="module")
def model():
    return net()


X = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
CLASSES = torch.tensor([[0, 2], [1, 0]])
WEIGHT = torch.linspace(-1.0, 2.0, 36, dtype=torch.float64).view(6, 6)  # the loss: sum(maps * WEIGHT)


def weighted(w: Tensor, A: Tensor) -> Tensor:
    return torch.einsum("bkc,bchw->bkhw", w, A).clamp(min=0)


def gradcampp(A: Tensor, G: Tensor) -> Tensor:
    denom = 2 * G ** 2 + A.sum(HW)[:, None, :, None, None] * G ** 3
    alpha = torch.where(denom != 0, G ** 2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
    return weighted((alpha * G.clamp(min=0)).sum(HW), A)


def proj(E: Tensor) -> Tensor:
    M = E.flatten(-2).transpose(-1, -2)
    M = M - M.mean(-2, keepdim=True)
    v = torch.linalg.svd(M, full_matrices=False)[2][..., 0, :]
    v = torch.where(v.sum(-1, keepdim=True) < 0, -v, v)
    return (M @ v[..., None])[..., 0].unflatten(-1, E.shape[-2:])


FORMULAS = {
    "gradcam": lambda A, G: weighted(G.mean(HW), A),
    "gradcampp": gradcampp,
    "layercam": lambda A, G: (G.clamp(min=0) * A[:, None]).sum(2).clamp(min=0),
    "hirescam": lambda A, G: (G * A[:, None]).sum(2).clamp(min=0),
    "xgradcam": lambda A, G: weighted((G * A[:, None]).sum(HW) / A.sum(HW)[:, None], A),
    "gradcamelementwise": lambda A, G: (G * A[:, None]).clamp(min=0).sum(2),
    "eigengradcam": lambda A, G: proj(G * A[:, None]).clamp(min=0),
}


def hand_grads(model: Net, formula, normalize: bool = False):
    """d sum(maps * WEIGHT) / d parameters by a plain double backward."""
    params = list(model.parameters())
    A = model.stem(X)
    out = model.head(A)
    G = torch.stack([torch.autograd.grad(out.gather(1, CLASSES[:, k:k + 1]).sum(), A, create_graph=True)[0]
                     for k in range(2)], 1)
    m = formula(A, G)
    if normalize:
        lo, hi = m.amin(HW, keepdim=True), m.amax(HW, keepdim=True)
        m = (m - lo) / (hi - lo)
    return grads((m * WEIGHT).sum(), params)


def grads(loss: Tensor, params) -> list:
    """d loss / d params, zeros for parameters the loss does not use (the last layer's bias: no map uses it)."""
    got = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]


def camkit_grads(model: Net, maps: Tensor):
    return grads((maps * WEIGHT).sum(), list(model.parameters()))


@pytest.mark.parametrize("name", list(FORMULAS))
def test_the_gradient_of_a_loss_on_the_maps_equals_a_hand_double_backward(model, name):
    res = camkit.METHODS[name](model, layers=["stem"], create_graph=True)(X, CLASSES)
    ours = camkit_grads(model, res.layer_maps["stem"])
    ref = hand_grads(model, FORMULAS[name])
    assert all(p.grad is None for p in model.parameters())
    assert sum(float(g.abs().sum()) for g in ref[4:]) > 0  # the head's weights: through G (double backward)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_normalized_maps_and_k_backward_calls_keep_the_graph_too(model):
    """res.maps (min-max, computed on first access) and batched_backward=False also carry the graph."""
    res = camkit.GradCAM(model, layers=["stem"], create_graph=True, batched_backward=False)(X, CLASSES)
    for a, b in zip(camkit_grads(model, res.maps), hand_grads(model, FORMULAS["gradcam"], normalize=True)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_cam_and_eigencam_keep_the_graph(model):
    """CAM: W[c] . A on the layer feeding the pooling; Eigen-CAM: the first component of A."""
    params = list(model.parameters())
    res = camkit.CAM(model, layers=["head.1"], fc="head.4", create_graph=True)(X, CLASSES)
    A = model.head[1](model.head[0](model.stem(X)))
    ref = grads((torch.einsum("bkc,bchw->bkhw", model.head[4].weight[CLASSES], A) * WEIGHT).sum(), params)
    for a, b in zip(camkit_grads(model, res.layer_maps["head.1"]), ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    eig = camkit.EigenCAM(model, layers=["stem"], create_graph=True)(X, CLASSES).layer_maps["stem"]
    ref = grads((proj(model.stem(X)).clamp(min=0)[:, None] * WEIGHT).sum() * 2, params[:3])
    for a, b in zip(camkit_grads(model, eig)[:3], ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_a_volume_map_can_train():
    """Grad-CAM on a 3-D layer with create_graph=True: the loss's gradient equals the hand double backward."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(4, 2)).double()
    x = torch.rand(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = camkit.GradCAM(m, layers=["1"], create_graph=True)(x, 1)
    w = torch.arange(48, dtype=torch.float64).view(3, 4, 4)
    ours = grads((res.layer_maps["1"] * w).sum(), list(m.parameters()))
    A = m[1](m[0](x))
    G = torch.autograd.grad(m[2:](A)[:, 1].sum(), A, create_graph=True)[0]
    ref_map = torch.einsum("bc,bcthw->bthw", G.mean((-3, -2, -1)), A).clamp(min=0)
    ref = grads((ref_map * w).sum(), list(m.parameters()))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_the_call_leaves_the_model_as_found_and_the_default_keeps_no_graph():
    m = mixed(net(), eval_child="stem")  # train mode, a frozen parameter, a .grad, a user hook
    before = snapshot(m)
    res = camkit.GradCAM(m, layers=["stem"], create_graph=True)(X, CLASSES)
    assert res.maps.requires_grad and res.layer_maps["stem"].requires_grad
    assert_as_found(m, before)
    assert not camkit.GradCAM(m, layers=["stem"])(X, CLASSES).maps.requires_grad


@pytest.mark.parametrize("cls", [camkit.ScoreCAM, camkit.AblationCAM, camkit.FullGrad, camkit.SmoothGradCAMpp,
                                 camkit.ReCAM])
def test_methods_without_a_gradient_path_refuse_create_graph(model, cls):
    with pytest.raises(InputError, match=f"{cls.__name__} has no differentiable path"):
        cls(model, layers=["stem"], create_graph=True)


def test_create_graph_inside_inference_mode_is_refused(model):
    cam = camkit.CAM(model, layers=["head.1"], fc="head.4", create_graph=True)  # no backward of its own
    with torch.inference_mode(), pytest.raises(InputError, match="inside torch.inference_mode"):
        cam(X, CLASSES)


def test_the_training_example_runs_and_the_maps_term_moves_the_parameters():
    """examples/train_with_maps.py: one step with the maps' term and one without, from the same
    weights and batch, end at different parameters (the term's gradient reaches the optimizer)."""
    ns = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "train_with_maps.py"))
    after = {}
    for weight in (0.0, 1.0):
        m = ns["small_cnn"]()
        history = ns["train"](m, steps=1, size=12, weight=weight)
        assert all(math.isfinite(v) for v in history["ce"] + history["outside"])
        after[weight] = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert float((after[0.0] - after[1.0]).abs().max()) > 1e-4
