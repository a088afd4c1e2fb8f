"""batched_backward=None (the default) picks the backward by camkit.methods.base.prefer_batched: one
vmapped call where the graph reads large weights, K retained-graph calls where it moves large
activations (on a CPU); either gives the same maps as plain autograd."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

import camkit
from camkit.methods import base


def _net(width: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, width, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(4),
        flat=nn.Flatten(), fc=nn.Linear(width * 16, classes))).eval()


def _grad_calls(monkeypatch) -> list:
    """Every torch.autograd.grad call camkit makes, as its is_grads_batched flag."""
    calls, real = [], torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(bool(kwargs.get("is_grads_batched", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(base.torch.autograd, "grad", counting)
    return calls


def _reference(model: nn.Module, x: torch.Tensor, classes, softmax: bool = False) -> torch.Tensor:
    """LayerCAM of layer 'relu' with plain autograd, one backward per target (of the logit, or of the
    softmax probability): (B, K, h, w)."""
    out = {}
    h = model.relu.register_forward_hook(lambda m, i, o: out.__setitem__("a", o))
    try:
        logits = model(x)
    finally:
        h.remove()
    logits = logits.softmax(1) if softmax else logits
    maps = []
    for k in range(len(classes[0])):
        score = logits.gather(1, torch.tensor([[c[k]] for c in classes])).sum()
        (g,) = torch.autograd.grad(score, out["a"], retain_graph=True)
        maps.append((g.clamp(min=0) * out["a"]).sum(1).clamp(min=0))
    return torch.stack(maps, 1).detach()


@pytest.mark.parametrize("size, want_batched", [(8, True), (96, False)], ids=["weights_dominate", "activations_dominate"])
def test_default_follows_the_rule_and_matches_autograd(monkeypatch, size, want_batched):
    model = _net(16, 400)  # fc: 256 x 400 weights (~0.4 MB); conv output 16 x size^2 per image
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    act = 2 * 16 * size * size * 4
    assert (weights >= base.CPU_BATCHED_MIN_RATIO * act) is want_batched  # the two cases straddle the rule
    classes = [[3, 7, 11], [5, 0, 2]]
    calls = _grad_calls(monkeypatch)
    res = camkit.LayerCAM(model, layers="relu", normalize=None)(x, targets=classes)
    assert calls == ([True] if want_batched else [False, False, False])
    torch.testing.assert_close(res.layer_maps["relu"], _reference(model, x, classes), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chosen", [True, False])
def test_an_explicit_choice_wins(monkeypatch, chosen):
    model = _net(16, 400)
    x = torch.randn(2, 3, 8, 8)
    calls = _grad_calls(monkeypatch)
    camkit.GradCAM(model, layers="relu", batched_backward=chosen)(x, topk=3)
    assert calls == ([True] if chosen else [False, False, False])


def test_rule_on_accelerators_is_batched():
    a = torch.empty(0)
    meta = torch.empty(1 << 20, device="meta")  # a non-CPU activation, however large
    lin = base.weight_bytes(nn.Linear(1, 1))
    assert lin == 2 * 4  # a weight and a bias, float32
    assert base.prefer_batched(lin, [meta]) is True
    assert base.prefer_batched(lin, []) is True
    assert base.prefer_batched(lin, [a.new_zeros(1 << 20)]) is False


@pytest.mark.parametrize("kind", ["classes", "topk", "softmax", "gather_fn", "scaled_gather_fn"])
def test_batched_backward_of_class_logits_starts_at_the_scores(monkeypatch, kind):
    """Values that are, by their autograd graph, a gather of the (B, C) scores (indices, topk, a function
    that gathers) seed the scores with one-hots in the batched backward; anything else (a softmax, a gather
    of 2 x the scores) differentiates its (B, K) values. All equal plain autograd per target."""
    model = _net(16, 400)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    shapes, real = [], torch.autograd.grad

    def recording(outputs, *args, **kwargs):
        shapes.append(tuple(outputs.shape))
        return real(outputs, *args, **kwargs)

    monkeypatch.setattr(base.torch.autograd, "grad", recording)
    classes = [[3, 7, 11], [5, 0, 5]]
    with torch.no_grad():
        top = model(x).topk(3, dim=1).indices.tolist()
    idx = torch.tensor(classes)
    spec = {"classes": classes, "topk": None, "softmax": camkit.targets.Softmax(classes),
            "gather_fn": lambda s: s.gather(1, idx), "scaled_gather_fn": lambda s: (2 * s).gather(1, idx)}[kind]
    res = camkit.LayerCAM(model, layers="relu", normalize=None, batched_backward=True)(
        x, targets=spec, topk=3 if kind == "topk" else None)
    assert shapes == [(2, 3) if kind in ("softmax", "scaled_gather_fn") else (2, 400)]
    ref = _reference(model, x, top if kind == "topk" else classes, softmax=kind == "softmax")
    ref = 2 * ref if kind == "scaled_gather_fn" else ref
    torch.testing.assert_close(res.layer_maps["relu"], ref, rtol=1e-5, atol=1e-7)
